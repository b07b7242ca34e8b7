"""Shared paths for the avp_rs tests."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "conformance" / "vectors"


@pytest.fixture(autouse=True)
def _sdk_untouched():
    # Tests that install() must put the SDK back; the others must not see it.
    import avp_rs

    avp_rs.uninstall()
    yield
    avp_rs.uninstall()
