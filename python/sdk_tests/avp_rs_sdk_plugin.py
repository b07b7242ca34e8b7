"""pytest plugin: runs the avp SDK's own tests with ``avp_rs.install()`` in
effect (or, with AVP_RS_SDK_BASELINE=1, without it) and writes every test's
outcome to the JSON file named by AVP_RS_SDK_OUTCOMES for run.py to judge."""

import json
import os

import pytest

_outcomes = {}


def pytest_configure(config):
    if os.environ.get("AVP_RS_SDK_BASELINE") != "1":
        import avp_rs

        avp_rs.install()


@pytest.fixture(autouse=True)
def _avp_rs_still_installed():
    # A test that monkeypatches the SDK must not silently run without us.
    if os.environ.get("AVP_RS_SDK_BASELINE") != "1":
        import avp_rs

        assert avp_rs.is_installed()
    yield


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        previous = _outcomes.get(report.nodeid)
        if previous in ("failed", "error"):
            return
        outcome = report.outcome
        if report.when != "call" and outcome == "failed":
            outcome = "error"
        _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session):
    path = os.environ.get("AVP_RS_SDK_OUTCOMES")
    if path:
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=1, sort_keys=True)
