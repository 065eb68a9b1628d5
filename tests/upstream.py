"""A small real OpenAI-compatible upstream for tests, served by uvicorn on a free port.

The requested model name picks the behaviour: `echo*` answers normally (JSON and SSE), `fail`
answers 500, `badreq` answers 400, `hang` never answers, `drop` streams two chunks and then drops
the connection, `slowstream` waits between chunks, `ratelimited` answers 429 with `Retry-After: 3`,
`spaced*` answers like `echo*` but writes its JSON with spaces (`"choices": []`, as Python's json
module does), `pausing` goes quiet for PAUSE_S after its first chunk, `pause` answers after 0.1 s.
`tools*` calls the first tool it is offered (a sentence, then the call, its arguments streamed in two
pieces; `toolsilent*` without the sentence) and, once the last message is a tool result, answers
with that result. `/v1/rerank` (and Cohere's `/v2/rerank`) scores documents by the words they share
with the query. `/tokenize` and `/detokenize` (vLLM's, at the root) use one token per UTF-8 byte for
`echo*` models (`echo-llamacpp*` in llama.cpp server's shapes: `content` in, `{id, piece}` tokens
and `content` out; `fail` answers 500, `hang` never answers); for any other model they answer 404, as
a server without those routes does. `/v1/fim/completions` answers in Mistral's shape (`fim: prompt|suffix`;
streamed in two chunks, the last with the usage, as Codestral does). Every request body is recorded."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from typing import Self

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PAUSE_S = 5.5


def _tool_call(body: dict) -> dict | None:
    """The call a `tools*` model makes: to the first tool, with the last user text as `q`."""
    if not body.get("tools") or not body["model"].startswith("tool") or body["messages"][-1]["role"] == "tool":
        return None
    user = next((m.get("content") for m in reversed(body["messages"]) if m["role"] == "user"), "")
    return {"id": "call_abc123", "type": "function", "function": {
        "name": body["tools"][0]["function"]["name"], "arguments": orjson.dumps({"q": str(user)}).decode()}}


def _text(body: dict) -> str:
    if "messages" in body:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return f"the tool said: {last.get('content')}"
        content = last.get("content")
        return f"echo: {content}" if isinstance(content, str) else "echo"
    return f"echo: {body.get('prompt')}"


def _dumps(model: str, obj: dict) -> bytes:
    return json.dumps(obj).encode() if model.startswith("spaced") else orjson.dumps(obj)


class Served:
    """A Starlette app served by uvicorn in a thread on `self.port` while the `with` block runs."""

    port: int

    def serve(self, app: Starlette) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)


class FakeUpstream(Served):
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        app = Starlette(routes=[
            Route("/v1/chat/completions", self.completion, methods=["POST"]),
            Route("/v1/completions", self.completion, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/rerank", self.rerank, methods=["POST"]),
            Route("/v2/rerank", self.rerank, methods=["POST"]),
            Route("/v1/fim/completions", self.fim, methods=["POST"]),
            Route("/tokenize", self.tokenizer, methods=["POST"]),
            Route("/detokenize", self.tokenizer, methods=["POST"]),
            Route("/v1/images/generations", self.images, methods=["POST"]),
            Route("/v1/moderations", self.moderations, methods=["POST"]),
        ])
        self.serve(app)

    def _record(self, request: Request, body: dict) -> None:
        """A request's body and headers, at one index of `requests` and `headers` (tests pair them)."""
        self.requests.append(body)
        self.headers.append(dict(request.headers))

    def forget(self) -> None:
        """Forget the requests recorded so far (bodies and headers alike, which tests pair by index)."""
        self.requests.clear()
        self.headers.clear()

    async def models(self, request: Request) -> Response:
        return Response(orjson.dumps({"object": "list", "data": []}), media_type="application/json")

    async def rerank(self, request: Request) -> Response:
        """Cohere/vLLM's rerank shape: every document in its own order, scored by the words it
        shares with the query (the gateway sorts and cuts to top_n)."""
        body = orjson.loads(await request.body())
        self._record(request, body)
        query = set(body["query"].lower().split())
        docs = [d if isinstance(d, str) else d.get("text", "") for d in body["documents"]]
        results = [{"index": i, "relevance_score": len(query & set(d.lower().split())) / (len(query) or 1)}
                   for i, d in enumerate(docs)]
        return Response(orjson.dumps({"id": "rr-1", "model": body.get("model"), "results": results,
                                      "usage": {"total_tokens": sum(len(d.split()) for d in docs)},
                                      "meta": {"billed_units": {"search_units": 1}}}),
                        media_type="application/json")

    async def fim(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self._record(request, body)
        if body["model"] == "fail":
            return Response(orjson.dumps({"object": "error", "message": "fim exploded"}), status_code=500,
                            media_type="application/json")
        text = f"fim: {body['prompt']}|{body.get('suffix')}"
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        head = {"id": "fim-1", "object": "chat.completion", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            return Response(orjson.dumps({**head, "usage": usage, "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text, "tool_calls": None}}]}),
                            media_type="application/json")
        half = len(text) // 2

        async def events():
            chunk = {**head, "object": "chat.completion.chunk"}
            yield b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "finish_reason": None,
                                            "delta": {"role": "assistant", "content": text[:half]}}]}) + b"\n\n"
            yield b"data: " + orjson.dumps({**chunk, "usage": usage, "choices": [{"index": 0, "finish_reason": "stop",
                                            "delta": {"content": text[half:]}}]}) + b"\n\n"
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    async def tokenizer(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self._record(request, body)
        model = body.get("model") or ""
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "fail":
            return Response(orjson.dumps({"error": {"message": "tokenizer exploded"}}), status_code=500,
                            media_type="application/json")
        if not model.startswith("echo"):
            return Response(b'{"detail":"Not Found"}', status_code=404, media_type="application/json")
        if request.url.path == "/detokenize":
            if not all(isinstance(t, int) and 0 <= t < 256 for t in body.get("tokens") or ()):
                return Response(orjson.dumps({"error": {"message": "token out of vocabulary"}}), status_code=400,
                                media_type="application/json")
            text = bytes(body["tokens"]).decode("utf-8", "replace")
            return Response(orjson.dumps({"content" if model.startswith("echo-llamacpp") else "prompt": text}),
                            media_type="application/json")
        if model.startswith("echo-llamacpp"):  # llama.cpp's server: `content`, and pieces when asked
            tokens = list(body["content"].encode("utf-8"))
            return Response(orjson.dumps({"tokens": [{"id": t, "piece": chr(t)} for t in tokens]
                                          if body.get("with_pieces") else tokens}), media_type="application/json")
        text = body.get("prompt") if "messages" not in body else \
            "".join(f"<{m['role']}>{m.get('content')}" for m in body["messages"]) + "<assistant>"
        tokens = list(text.encode("utf-8"))
        answer = {"count": len(tokens), "max_model_len": 4096, "tokens": tokens}
        if body.get("return_token_strs"):
            answer["token_strs"] = [bytes([t]).decode("utf-8", "replace") for t in tokens]
        return Response(orjson.dumps(answer), media_type="application/json")
    async def images(self, request: Request) -> Response:
        """OpenAI's image answer: `n` images (default 1), as URLs naming the prompt, or base64."""
        body = orjson.loads(await request.body())
        self._record(request, body)
        n = body.get("n") or 1
        item = ({"b64_json": "aW1hZ2U="} if body.get("response_format") == "b64_json" else
                {"url": f"https://images.example/{body['prompt'].replace(' ', '-')}.png"})
        return Response(orjson.dumps({"created": 1, "data": [{**item, "revised_prompt": body["prompt"]}] * n}),
                        media_type="application/json")

    async def moderations(self, request: Request) -> Response:
        """OpenAI's moderation answer: an input mentioning 'kill' is flagged as violence."""
        body = orjson.loads(await request.body())
        self._record(request, body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        results = []
        for text in inputs:
            flagged = "kill" in str(text).lower()
            results.append({"flagged": flagged, "categories": {"violence": flagged, "hate": False},
                            "category_scores": {"violence": 0.97 if flagged else 0.01, "hate": 0.0}})
        return Response(orjson.dumps({"id": f"modr-{uuid.uuid4().hex[:12]}", "model": body["model"],
                                      "results": results}), media_type="application/json")

    async def embeddings(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self._record(request, body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, float(len(str(x)))]}
                for i, x in enumerate(inputs)]
        return Response(orjson.dumps({"object": "list", "data": data, "model": body["model"],
                                      "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}),
                        media_type="application/json")

    async def completion(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self._record(request, body)
        model = body["model"]
        chat = request.url.path.endswith("/chat/completions")
        if model == "fail":
            return Response(orjson.dumps({"error": {"message": "upstream exploded", "type": "server_error"}}),
                            status_code=500, media_type="application/json")
        if model == "badreq":
            return Response(orjson.dumps({"error": {"message": "max_tokens is too large", "param": "max_tokens",
                                                    "code": "invalid_value"}}),
                            status_code=400, media_type="application/json")
        if model == "ratelimited":
            return Response(orjson.dumps({"error": {"message": "Rate limit reached for requests", "type": "requests",
                                                    "code": "rate_limit_exceeded"}}),
                            status_code=429, media_type="application/json", headers={"Retry-After": "3"})
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "pause":  # a short generation: 0.1 s per answer (async jobs queue up behind it)
            await asyncio.sleep(0.1)
        if model == "slowstart":  # a slow first token (long prefill): nothing at all for 3 s, then the answer
            await asyncio.sleep(3.0)
        call = _tool_call(body) if chat else None
        text = ("" if model.startswith("toolsilent") else "Let me look that up.") if call else _text(body)
        words = text.split(" ") if text else []
        out = len(words) + (3 if call else 0)
        usage = {"prompt_tokens": 7, "completion_tokens": out, "total_tokens": 7 + out}
        answer_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"  # unique, as OpenAI's
        if body.get("stream"):
            return StreamingResponse(self._stream(body, model, chat, words, usage, call, answer_id),
                                     media_type="text/event-stream")
        message: dict = {"role": "assistant", "content": text or None}
        if call:
            message["tool_calls"] = [call]
        choice = ({"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
        return Response(_dumps(model, {
            "id": answer_id, "object": "chat.completion" if chat else "text_completion", "created": 1,
            "model": model, "choices": [choice], "usage": usage,
        }), media_type="application/json")

    async def _stream(self, body, model, chat, words, usage, call=None, answer_id="c1"):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict) -> bytes:
            return b"data: " + _dumps(model, {"id": answer_id, "object": kind, "created": 1, "model": model,
                                              "choices": [choice]}) + b"\n\n"
        for i, word in enumerate(words):
            if model == "pausing" and i == 1:
                await asyncio.sleep(PAUSE_S)
            if model == "drop" and i == 2:
                raise ConnectionResetError("upstream dropped the stream")
            if model == "slowstream":
                await asyncio.sleep(0.2)
            piece = word if i == 0 else " " + word
            yield chunk({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat else
                        {"index": 0, "text": piece, "finish_reason": None})
        if model == "drop":
            raise ConnectionResetError("upstream dropped the stream")
        if call:
            args = call["function"]["arguments"]
            yield chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                         "function": {"name": call["function"]["name"], "arguments": ""}}]}, "finish_reason": None})
            for piece in (args[:5], args[5:]):
                yield chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                             "finish_reason": None})
            yield chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield b"data: " + _dumps(model, {"id": answer_id, "object": kind, "created": 1, "model": model,
                                             "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"
