"""A Responses API request (stateless: the whole conversation in `input`) as an OpenAI chat request.

`instructions` becomes the system message; `input` a string (one user message) or items: messages
(developer messages become system ones, which every chat template knows), `function_call` /
`custom_tool_call` items become an assistant message's tool calls, their `*_output` items tool
messages; `reasoning` items are dropped (a chat backend cannot take them back). Flat function tools
become chat's nested ones. A custom (freeform) tool, such as Codex's `apply_patch`, becomes a
function tool with one string parameter, `input`, and its calls come back as `custom_tool_call`
items carrying that string. Hosted tools (web_search, file_search, local_shell, ...) are dropped:
no chat backend runs them. No DIALECT here: responses.py is the dialect."""

from __future__ import annotations

import orjson

from ..errors import BadRequest
from .chat import url_image

CUSTOM_INPUT = "input"
"""The one parameter of the function a custom tool becomes."""


def _text_part(part: dict) -> str | None:
    if part.get("type") in ("input_text", "output_text", "text"):
        return str(part.get("text") or "")
    if part.get("type") == "refusal":
        return str(part.get("refusal") or "")
    return None


def _content(content: object, param: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{param}: content must be a string or a list of parts", param=param)
    parts: list[dict] = []
    for i, part in enumerate(content):
        text = _text_part(part) if isinstance(part, dict) else None
        if text is not None:
            parts.append({"type": "text", "text": text})
        elif isinstance(part, dict) and part.get("type") == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(url_image(part["image_url"], part.get("detail")))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise BadRequest(f"{param}.{i}: content of type {kind!r} is not supported by this gateway "
                             "(file ids need stored files)", param=f"{param}.{i}.type")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: object) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(t for p in output if isinstance(p, dict) and (t := _text_part(p)) is not None)
    return orjson.dumps(output).decode()


def _add_call(messages: list[dict], call: dict) -> None:
    """A tool call joins the assistant message just before it, or starts one."""
    last = messages[-1] if messages else None
    if last is None or last["role"] != "assistant":
        last = {"role": "assistant", "content": None}
        messages.append(last)
    last.setdefault("tool_calls", []).append(call)


def _messages(body: dict) -> list[dict]:
    messages: list[dict] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    for i, item in enumerate(items):
        kind, param = item.get("type") or ("message" if "role" in item else None), f"input.{i}"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequest(f"{param}.role: unknown role {role!r}", param=f"{param}.role")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _content(item.get("content"), f"{param}.content")})
        elif kind in ("function_call", "custom_tool_call"):
            arguments = (str(item.get("arguments") or "{}") if kind == "function_call"
                         else orjson.dumps({CUSTOM_INPUT: str(item.get("input") or "")}).decode())
            _add_call(messages, {"id": str(item.get("call_id") or ""), "type": "function",
                                 "function": {"name": str(item.get("name") or ""), "arguments": arguments}})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""),
                             "content": _output_text(item.get("output"))})
        elif kind == "item_reference":
            raise BadRequest(f"{param}: item references need stored responses, which this gateway does not keep; "
                             "send the items themselves", param=f"{param}.type")
        elif kind != "reasoning":
            raise BadRequest(f"{param}: input items of type {kind!r} are not supported by this gateway",
                             param=f"{param}.type")
    return messages


def _tools(body: dict, chat: dict) -> frozenset[str]:
    tools, custom = [], set()
    for tool in body.get("tools") or ():
        kind = tool.get("type")
        if kind == "function":
            function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            function.setdefault("parameters", {"type": "object", "properties": {}})
            tools.append({"type": "function", "function": function})
        elif kind == "custom":
            custom.add(tool["name"])
            note = "Freeform tool: put the whole input, as plain text, in `input`."
            fmt = tool.get("format") or {}
            if fmt.get("type") == "grammar" and fmt.get("definition"):
                note += f" The input must follow this {fmt.get('syntax') or ''} grammar:\n{fmt['definition']}"
            description = f"{tool.get('description') or ''}\n\n{note}".strip()
            tools.append({"type": "function", "function": {"name": tool["name"], "description": description,
                          "parameters": {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string"}},
                                         "required": [CUSTOM_INPUT]}}})
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, str):
            chat["tool_choice"] = choice
        elif isinstance(choice, dict) and choice.get("type") in ("function", "custom") and choice.get("name"):
            chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    return frozenset(custom)


def _response_format(text: dict | None) -> dict | None:
    fmt = (text or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                        if k in fmt}}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    return None


def to_chat(body: dict) -> tuple[dict, frozenset[str]]:
    """A validated Responses request as a chat request body, and the names of its custom tools."""
    if body.get("previous_response_id"):
        raise BadRequest("previous_response_id: this gateway does not store responses; send the whole "
                         "conversation in `input` with store: false", param="previous_response_id",
                         code="store_unsupported")
    if body.get("store") is True:
        raise BadRequest("store: this gateway does not store responses; send store: false (the whole "
                         "conversation in `input` each turn)", param="store", code="store_unsupported")
    chat: dict = {"model": body["model"], "messages": _messages(body)}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        chat["user"] = user
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    custom = _tools(body, chat)
    if body.get("stream") is True:
        chat["stream"] = True
    return chat, custom
