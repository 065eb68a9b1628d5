from __future__ import annotations

import pytest

from .servers import Keystile
from .upstream import FakeUpstream


@pytest.fixture(scope="session")
def upstream():
    with FakeUpstream() as fake:
        yield fake


def relay_config(upstream: FakeUpstream, **settings) -> dict:
    """A model map whose models all point at the fake upstream; the name picks its behaviour."""
    def entry(public: str, upstream_model: str, **params) -> dict:
        return {"model_name": public, "litellm_params": {"model": f"openai/{upstream_model}",
                                                          "api_base": upstream.base_url, "api_key": "upstream-secret",
                                                          **params}}
    return {
        "model_list": [
            entry("echo", "echo-upstream"),
            entry("failing", "fail"),
            entry("badreq", "badreq"),
            entry("hanging", "hang", timeout=1),
            entry("dropping", "drop"),
            entry("slow", "slowstream"),
            entry("with-fallback", "fail"),
        ],
        "keystile_settings": {"max_request_bytes": 65536, "num_retries": 1,
                              "fallbacks": [{"with-fallback": ["echo"]}], **settings},
    }


@pytest.fixture(scope="session")
def relay(tmp_path_factory, upstream):
    with Keystile(tmp_path_factory.mktemp("relay"), relay_config(upstream)) as server:
        yield server
