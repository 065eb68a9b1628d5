"""The llama.cpp worker process: one GGUF model, one generation at a time.

Started by backends.llamacpp as `python -m backends.llamacpp_worker`; the only module of Keystile
that imports llama_cpp. It speaks newline-delimited JSON (orjson) on stdin/stdout:

  in   first line: the configuration {"public_name", "model_path", "n_ctx", "n_threads", "llama_kwargs"}
       {"id": n, "op": "chat"|"complete"|"embed", "params": {...}}  queued, run one at a time
       {"id": n, "op": "tokenize"|"detokenize", "params": {...}}    answered at once, even mid-generation
                                                                    (backends/llamacpp_tokens.py)
       {"id": n, "op": "cancel"}                                    stop request n between two tokens
  out  {"op": "ready", "metadata": {...}} once the model is loaded (layers, sizes, GGUF fields), or {"op": "fatal", "message"} and exit 1
       {"id": n, "chunk": {...}}* then {"id": n, "result": {...}} or {"id": n, "error": {"kind", "message"}}

EOF on stdin ends the worker. Anything llama.cpp prints goes to stderr, never into the protocol.
"""

from __future__ import annotations

import base64
import faulthandler
import inspect
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson

from .llamacpp_tokens import Tokens, Unsupported, intercept

# Keyword arguments the parent decides; a deployment's extras may not override them.
_RESERVED = {"model_path", "n_ctx", "n_threads", "verbose", "embedding", "pooling_type"}


class _Cancelled(Exception):
    """The parent cancelled the running request (client gone or timed out)."""


class _Progress:
    """Per-generation bookkeeping fed by every sampled token: cancellation and token counts."""

    def __init__(self, request_id: int, cancelled: set[int], is_eog: Callable[[int], bool]):
        self.request_id = request_id
        self._cancelled = cancelled
        self._is_eog = is_eog
        self.prompt_tokens: int | None = None
        self.sampled = 0
        self.last_token: int | None = None

    def check(self) -> None:
        if self.request_id in self._cancelled:
            raise _Cancelled

    def on_sample(self, n_tokens: int, token: int) -> None:
        if self.prompt_tokens is None:
            self.prompt_tokens = n_tokens  # at the first sample the context holds exactly the prompt
        self.sampled += 1
        self.last_token = token

    def usage(self) -> dict[str, int]:
        # llama.cpp does not count the end-of-generation token as a completion token.
        completion = self.sampled - (1 if self.last_token is not None and self._is_eog(self.last_token) else 0)
        prompt = self.prompt_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Worker:
    def __init__(self, config: dict[str, Any], out: BinaryIO):
        self.config = config
        self.public_name: str = config["public_name"]
        self._out = out
        self._out_lock = threading.Lock()
        self._jobs: queue.Queue[dict | None] = queue.Queue()
        self._cancelled: set[int] = set()
        self._llama_cpp: Any = None  # the module, imported by load()
        self._llm: Any = None
        self._embedder: Any = None
        self._tokens: Tokens | None = None
        self._is_eog: Callable[[int], bool] = lambda token: False

    # -- transport -------------------------------------------------------------------------------

    def send(self, message: dict) -> None:
        data = orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        with self._out_lock:
            self._out.write(data)
            self._out.flush()

    def read_stdin(self, stdin: BinaryIO) -> None:
        """Reader thread: queue generations, note cancellations, answer tokenize right away."""
        try:
            for line in stdin:
                if not line.strip():
                    continue
                message = orjson.loads(line)
                op = message.get("op")
                if op == "cancel":
                    self._cancelled.add(message["id"])
                elif op in ("tokenize", "detokenize"):
                    self._tokenize(message)
                else:
                    self._jobs.put(message)
        finally:
            self._jobs.put(None)

    # -- lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        cls = _counting_llama_class(llama_cpp.Llama)
        self._llm = cls(**self._llama_kwargs(llama_cpp.Llama))
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self._tokens = Tokens(llama_cpp, self._llm)

    def metadata(self) -> dict[str, Any]:
        """What the loaded GGUF says about the model (for the gateway's /info)."""
        llm, lc = self._llm, self._llama_cpp
        meta = {k: v for k, v in (getattr(llm, "metadata", None) or {}).items()
                if k.startswith("general.") and k in ("general.name", "general.architecture", "general.size_label",
                                                       "general.basename", "general.finetune")}
        return {
            "model_layers": int(lc.llama_model_n_layer(llm.model)),
            "embedding_size": int(lc.llama_model_n_embd(llm.model)),
            "attention_heads": int(lc.llama_model_n_head(llm.model)),
            "vocab_size": int(llm.n_vocab()),
            "context_length": int(lc.llama_model_n_ctx_train(llm.model)),
            "n_ctx": int(llm.n_ctx()),
            "parameters": int(lc.llama_model_n_params(llm.model)),
            **{k.removeprefix("general."): v for k, v in meta.items()},
        }

    def _llama_kwargs(self, llama_cls: Any) -> dict[str, Any]:
        accepted = set(inspect.signature(llama_cls.__init__).parameters) - _RESERVED - {"self", "kwargs"}
        extra = {k: v for k, v in (self.config.get("llama_kwargs") or {}).items() if k in accepted}
        ignored = sorted(set(self.config.get("llama_kwargs") or {}) - set(extra))
        if ignored:
            print(f"llamacpp worker: ignoring unknown options {ignored}", file=sys.stderr)
        return {
            **extra,
            "model_path": self.config["model_path"],
            "n_ctx": self.config["n_ctx"],
            "n_threads": self.config["n_threads"],
            "n_threads_batch": extra.get("n_threads_batch") or self.config["n_threads"],
            "verbose": False,
        }

    def serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            request_id = job["id"]
            for stale in [i for i in list(self._cancelled) if i < request_id]:
                self._cancelled.discard(stale)  # cancels that arrived after their request had finished
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                self.send({"id": request_id, "error": {"kind": "cancelled", "message": "cancelled", "tokens": 0}})
                continue
            self._run(job)

    # -- requests --------------------------------------------------------------------------------

    def _run(self, job: dict) -> None:
        request_id, op, params = job["id"], job["op"], dict(job.get("params") or {})
        progress = _Progress(request_id, self._cancelled, self._is_eog)
        self._llm.progress = progress
        try:
            if op == "embed":
                self.send({"id": request_id, "result": self._embed(params)})
                return
            stream = bool(params.pop("stream", False))
            output = self._generate(op, params, stream)
            if not stream:
                self.send({"id": request_id, "result": output})
                return
            for chunk in output:
                self.send({"id": request_id, "chunk": chunk})
            if request_id in self._cancelled:
                raise _Cancelled
            self.send({"id": request_id, "result": {"usage": progress.usage()}})
        except _Cancelled:
            error = {"kind": "cancelled", "message": "cancelled", "tokens": progress.sampled}
            self.send({"id": request_id, "error": error})
        except Unsupported as exc:
            self.send({"id": request_id, "error": {"kind": "unsupported", "message": str(exc)}})
        except (ValueError, TypeError, KeyError) as exc:
            message = str(exc) or type(exc).__name__
            code = "context_length_exceeded" if "exceed" in message else None
            self.send({"id": request_id, "error": {"kind": "invalid", "message": message, "code": code}})
        except Exception as exc:  # everything else is the worker's failure, not the caller's
            self.send({"id": request_id, "error": {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}})
        finally:
            self._llm.progress = None
            self._cancelled.discard(request_id)

    def _generate(self, op: str, params: dict, stream: bool) -> Any:
        llm = self._llm
        if params.get("logprobs") is not None and params.get("logprobs") is not False:
            if not (self.config.get("llama_kwargs") or {}).get("logits_all"):
                raise Unsupported("logprobs need the deployment option logits_all: true on this llama.cpp model")
            if op == "chat":
                params["top_logprobs"] = params.get("top_logprobs") or 0
        else:
            params.pop("logprobs", None)
            params.pop("top_logprobs", None)
        if isinstance(params.get("grammar"), str):
            from llama_cpp.llama_grammar import LlamaGrammar

            params["grammar"] = LlamaGrammar.from_string(params["grammar"], verbose=False)
        if op == "chat":
            return llm.create_chat_completion(**params, stream=stream, model=self.public_name)
        if op == "complete":
            if params.get("suffix") is not None:  # fill in the middle, with the model's own FIM tokens
                assert self._tokens is not None
                params["prompt"] = self._tokens.fim_prompt(params.get("prompt") or "", params.pop("suffix"))
            return llm.create_completion(**params, stream=stream, model=self.public_name)
        raise ValueError(f"unknown operation {op!r}")

    def _embed(self, params: dict) -> dict:
        inputs = params.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts:
            raise ValueError("input must be a non-empty string or a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise Unsupported("this llama.cpp model embeds text only, not token arrays")
        if not all(texts):
            raise ValueError("input must not contain empty strings")
        embedder = self._embedding_model()
        dimensions = params.get("dimensions")
        if dimensions is not None and dimensions != embedder.n_embd():
            raise Unsupported(f"this model's embeddings have {embedder.n_embd()} dimensions, not {dimensions}")
        vectors, count = embedder.embed(texts, normalize=True, truncate=False, return_count=True)
        as_base64 = params.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _b64(vector) if as_base64 else vector}
            for i, vector in enumerate(vectors)
        ]
        usage = {"prompt_tokens": count, "total_tokens": count}
        return {"object": "list", "data": data, "model": self.public_name, "usage": usage}

    def _embedding_model(self) -> Any:
        """A second Llama over the same file in embedding mode, made on the first embed request."""
        if self._embedder is None:
            llama_cpp = self._llama_cpp
            arch = self._llm.metadata.get("general.architecture", "")
            # Embedding models declare their pooling; for a chat model, mean-pool the token vectors.
            declared = f"{arch}.pooling_type" in self._llm.metadata
            pooling = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if declared else llama_cpp.LLAMA_POOLING_TYPE_MEAN
            kwargs = self._llama_kwargs(llama_cpp.Llama)
            kwargs.update(embedding=True, pooling_type=pooling, n_batch=kwargs["n_ctx"], n_ubatch=kwargs["n_ctx"])
            kwargs.pop("logits_all", None)
            self._embedder = llama_cpp.Llama(**kwargs)
        return self._embedder

    def _tokenize(self, message: dict) -> None:
        request_id, tokens = message["id"], self._tokens
        if tokens is None:
            self.send({"id": request_id, "error": {"kind": "loading", "message": "model is loading"}})
            return
        params = message.get("params") or {}
        try:
            result = tokens.tokenize(params) if message["op"] == "tokenize" else tokens.detokenize(params)
            self.send({"id": request_id, "result": result})
        except Unsupported as exc:
            self.send({"id": request_id, "error": {"kind": "unsupported", "message": str(exc)}})
        except (ValueError, TypeError, KeyError) as exc:
            self.send({"id": request_id, "error": {"kind": "invalid", "message": str(exc) or type(exc).__name__}})
        except Exception as exc:  # reported, never fatal to the worker
            self.send({"id": request_id, "error": {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}})


def _counting_llama_class(base: type) -> type:
    """Llama whose every sampled token passes through `progress`: the one hook llama-cpp-python
    calls per token for both chat and text completions, streamed or not. Its create_completion,
    which every chat handler ends in, hands a chat being rendered for tokenize its tokens."""

    class CountingLlama(base):  # type: ignore[misc, valid-type]
        progress: _Progress | None = None

        def create_completion(self, *args: Any, **kwargs: Any) -> Any:
            intercept(self, args, kwargs)  # a chat being rendered for tokenize stops here
            return super().create_completion(*args, **kwargs)

        def sample(self, *args: Any, **kwargs: Any) -> int:
            if self.progress is not None:
                self.progress.check()
            token = super().sample(*args, **kwargs)
            if self.progress is not None:
                self.progress.on_sample(self.n_tokens, int(token))
            return token

    return CountingLlama


def _b64(vector: Any) -> str:
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _protocol_stdout() -> BinaryIO:
    """Keep the real stdout for the protocol; point fd 1 at stderr so stray prints can't corrupt it."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return out


def main() -> int:
    faulthandler.enable()  # a crash in llama.cpp (SIGSEGV, SIGILL) prints where it was to stderr
    stdin = sys.stdin.buffer
    config = orjson.loads(stdin.readline())
    out = _protocol_stdout()
    worker = Worker(config, out)
    try:
        worker.load()
    except Exception as exc:  # report any load failure to the parent, then exit
        worker.send({"op": "fatal", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    reader = threading.Thread(target=worker.read_stdin, args=(stdin,), daemon=True)
    reader.start()
    worker.send({"op": "ready", "metadata": worker.metadata()})
    try:
        worker.serve()
    except BrokenPipeError:
        return 0  # the parent went away
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
