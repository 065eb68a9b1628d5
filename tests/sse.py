"""Reading a raw SSE answer in tests: each event's `event:` name and its `data:` JSON, in order,
checking that every event is framed as `event:` + `data:` and names the type its data carries."""

from __future__ import annotations

import httpx
import orjson


def events(url: str, body: dict, headers: dict, *, timeout: float = 60) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    with httpx.stream("POST", url, json=body, headers=headers, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                assert name is not None, f"data without an event name: {line}"
                data = orjson.loads(line[6:])
                assert data["type"] == name, (name, data)
                out.append((name, data))
                name = None
    return out
