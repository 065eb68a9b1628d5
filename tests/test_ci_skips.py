"""Under CI=true a test that would skip (a service not running) fails instead, unless it is marked
`may_skip`; without CI it skips as usual (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).parent / "probes" / "skip_probe.py"


def run_probe(ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", str(PROBE), "-q", "-p", "no:cacheprovider"],
                          cwd=PROBE.parent.parent.parent, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_under_ci_and_passes_as_a_skip_elsewhere():
    ci = run_probe("true")
    assert ci.returncode == 1, ci.stdout
    assert "1 failed, 1 skipped" in ci.stdout
    assert "CI=true allows no skip: no such service on 127.0.0.1:1" in ci.stdout
    local = run_probe(None)
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout
