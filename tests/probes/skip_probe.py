"""Run by tests/test_ci_skips.py only (the name keeps the suite from collecting it)."""

import pytest


def test_needs_a_service_that_is_missing():
    pytest.skip("no such service on 127.0.0.1:1")


@pytest.mark.may_skip
def test_optional_feature():
    pytest.skip("this machine's package lacks the feature")
