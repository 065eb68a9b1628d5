"""`keystile serve` refuses to start, with a message naming what to fix, on a bad config file,
a database behind the code's migrations, or no master key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

KEYSTILE = Path(sys.executable).parent / "keystile"


def serve(tmp_path: Path, config: dict | str, *, migrate: bool = True, **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("KEYSTILE_")},
               "KEYSTILE_MASTER_KEY": "sk-master-test", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/k.db", **env}
    if migrate:
        subprocess.run([str(KEYSTILE), "db", "upgrade"], env=environ, cwd=tmp_path, check=True, capture_output=True)
    return subprocess.run([str(KEYSTILE), "serve", "--config", str(path), "--port", "1"], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def entry(**params) -> dict:
    return {"model_name": "m1", "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1", **params}}


@pytest.mark.parametrize("config, expected", [
    ({"model_list": [{"model_name": "m1", "litellm_params": {}}]}, "model_list[0] (model_name: m1).litellm_params.model"),
    ({"model_list": [entry(model="gpt-4o")]}, "must be 'provider/name'"),
    ({"model_list": [entry(timeout=-1)]}, "litellm_params.timeout"),
    ({"model_list": [entry()], "keystile_settings": {"max_request_byte": 5}}, "keystile_settings.max_request_byte"),
    ({"model_list": [entry(api_key="os.environ/KEYSTILE_TEST_MISSING_VAR")]}, "KEYSTILE_TEST_MISSING_VAR is not set"),
    ({"model_list": [{"model_name": "v", "litellm_params": {"model": "hosted_vllm/llama"}}]},
     "model_list[0] (model_name: v): provider 'hosted_vllm' needs api_base"),
    ({"model_list": [{"model_name": "l", "litellm_params": {"model": "llamacpp/package:no_such_pkg/x.gguf"}}]},
     "no_such_pkg"),
    ("model_list: [unclosed", "not valid YAML"),
])
def test_bad_config_names_the_entry_and_field(tmp_path, config, expected):
    r = serve(tmp_path, config)
    assert r.returncode != 0 and expected in r.stderr + r.stdout, r.stderr
    assert "Traceback" not in r.stderr


def test_database_behind_the_migrations_is_refused(tmp_path):
    r = serve(tmp_path, {"model_list": [entry()]}, migrate=False)
    assert r.returncode != 0 and "keystile db upgrade" in r.stderr


def test_no_master_key_is_refused(tmp_path):
    r = serve(tmp_path, {"model_list": [entry()]}, KEYSTILE_MASTER_KEY="")
    assert r.returncode != 0 and "KEYSTILE_MASTER_KEY" in r.stderr
