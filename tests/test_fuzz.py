"""schemathesis over every route of a live gateway (master key), on SQLite and Postgres: no
generated request, valid or not, may get a 5xx, and every answer must match what /openapi.json
says (status declared, JSON as described). `make test` runs a few examples per route;
`make fuzz` many (KEYSTILE_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from .conftest import relay_config
from .servers import Keystile

EXAMPLES = int(os.environ.get("KEYSTILE_FUZZ_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(request, tmp_path_factory, upstream):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with Keystile(tmp_path_factory.mktemp(f"fuzz-{request.param}"), relay_config(upstream), database_url=url) as s:
        yield s


def _fuzz(operation, mode: GenerationMode, gateway: Keystile) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=[Phase.generate, Phase.shrink])
    def run(case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {gateway.master_key}"}, checks=CHECKS,
                               timeout=15)

    run()


def test_no_5xx_and_answers_match_the_spec(gateway):
    """Each route with valid and with invalid input; one route's failure does not hide another's.
    (schemathesis' own pytest loader does not run on pytest 9, so the operations are driven here.)"""
    api = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    failures, tried = [], 0
    # Model management last: a model it adds (a random wildcard name, an unreachable provider)
    # changes what the inference routes reach, and their 502s would be the fuzzer's doing.
    operations = sorted((r.ok() for r in api.get_all_operations()), key=lambda op: op.path.startswith("/model/"))
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            tried += 1
            try:
                _fuzz(operation, mode, gateway)
            except Unsatisfiable:  # nothing in this operation can be made invalid
                pass
            except (Exception, BaseExceptionGroup) as exc:  # reported all together below
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])
    assert tried >= 60
    assert not failures, "\n\n".join(failures)
