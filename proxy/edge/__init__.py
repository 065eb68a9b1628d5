"""The HTTP edge, the only part of the gateway that knows ASGI/Starlette/FastAPI: the dialects'
routes dispatched straight from ASGI (asgi.py), body reading (body.py), sending answers and SSE
with disconnect watching (send.py), FastAPI's error handlers (handlers.py) and /docs (docs.py)."""
