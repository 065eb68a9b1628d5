"""The backends' own error tree. Each adapter translates its library's exceptions into these at
its boundary; proxy/errors.py alone maps them to HTTP."""


class BackendError(Exception):
    """Base of every error a backend raises. `retriable` tells the router another deployment may
    succeed where this one failed."""

    retriable = True

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class UpstreamHTTPError(BackendError):
    """The upstream answered with an error status. 4xx other than 408/429 are the caller's fault
    and not worth retrying elsewhere."""

    def __init__(self, message: str, *, status: int, code: str | None = None, param: str | None = None,
                 retry_after: float | None = None, body: bytes | None = None):
        super().__init__(message, status=status, code=code)
        self.param = param
        self.retry_after = retry_after  # seconds, from the upstream's Retry-After
        self.body = body  # the upstream's own error body, where it is to reach the client as it is
        self.retriable = status in (408, 429) or status >= 500


class UpstreamTimeout(BackendError):
    """No answer (or no next chunk) within the deployment's timeout."""


class UpstreamUnreachable(BackendError):
    """Connection refused, reset or dropped (also mid-stream)."""


class ModelLoading(BackendError):
    """The model is not ready yet (a llama.cpp worker still loading its GGUF)."""


class BackendOverloaded(BackendError):
    """The backend's bounded queue is full."""

    retriable = True


class WorkerCrashed(BackendError):
    """A managed worker process died while serving the request."""


class ModelCrashed(WorkerCrashed):
    """A local model's worker keeps dying without serving a token (or is being restarted after a
    death): nothing can be served now. `retry_after` is when the next attempt is due."""

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message, status=503, code="model_crashed")
        self.retry_after = retry_after


class ModelRemoved(BackendError):
    """The model was removed (POST /model/delete, a stopped deployment) while the request waited."""

    retriable = False


class NotSupported(BackendError):
    """The backend cannot do this operation (e.g. embeddings on a chat-only upstream)."""

    retriable = False
