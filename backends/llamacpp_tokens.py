"""What the llama.cpp worker (backends/llamacpp_worker.py) does with a loaded model's tokenizer:
tokenize text, or a chat exactly as a chat completion would put it before the model; detokenize;
and the fill-in-the-middle prompt of a completion with a `suffix`. Runs in the worker process, on
its `llama_cpp.Llama`; nothing here imports llama_cpp itself.

Fill-in-the-middle needs the model's FIM tokens. llama-cpp-python (0.3.36) hard-codes their ids to
0 in `create_completion`, so they are read here: llama.cpp's own (the GGUF's
`tokenizer.ggml.fim_pre_token_id`/`fim_suf…`/`fim_mid…`, or vocabulary tokens it recognises such as
`<fim_prefix>`, `<|fim_prefix|>`, `<PRE>`; a deployment's `kv_overrides` may set the ids), else
the older `tokenizer.ggml.prefix_token_id`/`suffix…`/`middle…` keys. The prompt is then given to
llama-cpp-python as tokens."""

from __future__ import annotations

import threading
from typing import Any


class Unsupported(Exception):
    """The model cannot do what was asked (a 400 for the caller)."""


class Rendered(Exception):
    """Raised from create_completion while a chat is being rendered: the tokens it would evaluate."""

    def __init__(self, tokens: list[int]):
        super().__init__("rendered")
        self.tokens = tokens


RENDERING = threading.local()
"""Set (`active`) on the thread that renders a chat: create_completion raises Rendered there
instead of generating (other threads generate as usual)."""


def intercept(llm: Any, args: tuple, kwargs: dict) -> None:
    """Called first by the worker's Llama.create_completion: while rendering, stop with the prompt's tokens."""
    if getattr(RENDERING, "active", False):
        prompt = kwargs.get("prompt", args[0] if args else "")
        raise Rendered(list(prompt) if isinstance(prompt, list) else
                       llm.tokenize(str(prompt).encode("utf-8"), add_bos=True, special=True))


class Tokens:
    def __init__(self, llama_cpp: Any, llm: Any):
        self._llm = llm
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        ids = (llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
               llama_cpp.llama_vocab_fim_mid(vocab))
        if min(ids) < 0:
            legacy = [llm.metadata.get(f"tokenizer.ggml.{name}_token_id") for name in ("prefix", "suffix", "middle")]
            if all(isinstance(v, str) and v.lstrip("-").isdigit() for v in legacy):
                ids = tuple(int(v) for v in legacy)  # type: ignore[assignment]
        self.fim: tuple[int, int, int] | None = ids if min(ids) >= 0 else None

    def tokenize(self, params: dict) -> dict:
        """`{text | messages (+ tools), add_special, pieces}` -> `{tokens, token_strings?, max_model_len}`.
        Text is tokenized with special tokens parsed (`<|im_start|>` is one token), with the BOS the
        model adds when `add_special`; messages through the model's chat handler, as a chat
        completion renders them (template, BOS, generation prompt)."""
        llm = self._llm
        if params.get("messages") is not None:
            tokens = self._render(params["messages"], params.get("tools"))
        else:
            text = params.get("text")
            if not isinstance(text, str):
                raise ValueError("text must be a string")
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=bool(params.get("add_special")), special=True)
        result: dict[str, Any] = {"tokens": tokens, "max_model_len": int(llm.n_ctx())}
        if params.get("pieces"):
            result["token_strings"] = [llm.detokenize([t], special=True).decode("utf-8", errors="replace")
                                       for t in tokens]
        return result

    def detokenize(self, params: dict) -> dict:
        tokens = self._checked(params.get("tokens"))
        return {"text": self._llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")}

    def _checked(self, tokens: Any) -> list[int]:
        """Token ids from a request, each in the vocabulary (llama.cpp reads out of bounds on others)."""
        n_vocab = int(self._llm.n_vocab())
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise ValueError("tokens must be a list of integers")
        bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise ValueError(f"token {bad} is not in this model's vocabulary (0..{n_vocab - 1})")
        return tokens

    def _render(self, messages: Any, tools: Any) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        RENDERING.active = True
        try:
            self._llm.create_chat_completion(messages=messages, tools=tools, max_tokens=1)
        except Rendered as done:
            return done.tokens
        except Unsupported:
            raise
        except Exception as exc:  # the template's own failures (jinja2's) on what the caller sent
            raise ValueError(f"the model's chat template cannot render these messages: "
                             f"{type(exc).__name__}: {exc}") from exc
        finally:
            RENDERING.active = False
        raise Unsupported("this model's chat handler does not render a prompt that can be tokenized")

    def fim_prompt(self, prefix: str | list[int], suffix: str) -> list[int]:
        """The tokens of a fill-in-the-middle prompt: BOS if the model adds one, then prefix,
        suffix and middle (suffix first for a deployment with `spm_infill: true`)."""
        if self.fim is None:
            raise Unsupported("this model has no fill-in-the-middle tokens (its GGUF names no FIM prefix, "
                              "suffix and middle tokens), so `suffix` cannot be used; send the whole prompt "
                              "without `suffix`, or set them with the deployment's kv_overrides "
                              "(tokenizer.ggml.fim_pre_token_id, fim_suf_token_id, fim_mid_token_id)")
        llm = self._llm
        pre, suf, mid = self.fim
        head = self._checked(prefix) if isinstance(prefix, list) else \
            llm.tokenize(prefix.encode("utf-8"), add_bos=False, special=False) if prefix else []
        tail = llm.tokenize(suffix.encode("utf-8"), add_bos=False, special=False) if suffix else []
        bos = llm.token_bos()
        start = [bos] if bos >= 0 and llm._model.add_bos_token() else []
        middle = [suf, *tail, pre, *head] if getattr(llm, "spm_infill", False) else [pre, *head, suf, *tail]
        return [*start, *middle, mid]
