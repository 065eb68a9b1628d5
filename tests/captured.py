"""Requests as Claude Code and Codex CLI send them (bodies and headers captured from Claude Code
2.1.197 and Codex CLI 0.171.0), replayed by the dialect tests (test_anthropic.py, test_responses.py)
and by the client recipes of docs/clients.md (test_docs.py). `model` is the caller's to set; the
last turn is a tool's result, so the fake upstream's `echo*` and `tools*` models answer with it."""

from __future__ import annotations

CLAUDE_CODE_BODY = {
    "max_tokens": 32000, "temperature": 1, "stream": True,
    "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.37; cc_entrypoint=cli;"},
               {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>context</system-reminder>"},
            {"type": "text", "text": "list the files", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "Available agent types for the Agent tool: ..."},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should run ls.", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "README.md", "is_error": False}]}],
    "tools": [{"name": "Bash", "description": "Run a command",
               "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                                "required": ["command"], "additionalProperties": False,
                                "$schema": "http://json-schema.org/draft-07/schema#"},
               "cache_control": {"type": "ephemeral"}}],
    "metadata": {"user_id": '{"device_id":"0e36","account_uuid":"","session_id":"5327"}'},
    "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
}
CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
                      "mid-conversation-system-2026-04-07,effort-2025-11-24",
    "anthropic-dangerous-direct-browser-access": "true", "x-app": "cli",
    "user-agent": "claude-cli/2.1.197 (external, sdk-cli)"}
CLAUDE_CODE_PATH = "/v1/messages?beta=true"
CLAUDE_CODE_ANSWER = "the tool said: README.md"

CODEX_SHELL = {"type": "function", "name": "shell", "description": "Runs a shell command", "strict": False,
               "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}},
                                                               "workdir": {"type": "string"}},
                              "required": ["command"], "additionalProperties": False}}
CODEX_PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch to files",
               "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
CODEX_BODY = {
    "instructions": "You are Codex, a coding agent.", "stream": True, "store": False,
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "run the tests"}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}], "encrypted_content": None},
        {"type": "function_call", "name": "shell", "arguments": '{"command":["pytest"]}', "call_id": "call_9"},
        {"type": "function_call_output", "call_id": "call_9", "output": "2 passed"},
        {"type": "custom_tool_call", "name": "apply_patch", "input": "*** Begin Patch", "call_id": "call_10"},
        {"type": "custom_tool_call_output", "call_id": "call_10", "output": "Done!"},
    ],
    "tools": [CODEX_SHELL, CODEX_PATCH, {"type": "web_search"}], "tool_choice": "auto", "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"}, "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "019a-session", "text": {"verbosity": "medium"},
}
CODEX_HEADERS = {"OpenAI-Beta": "responses=experimental", "originator": "codex_cli_rs", "session_id": "019a-session",
                 "Accept": "text/event-stream"}
CODEX_ANSWER = "the tool said: Done!"
