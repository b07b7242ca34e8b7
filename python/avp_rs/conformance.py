"""The AVP conformance runner in process (``avp conformance run``).

``run()`` loads the golden corpus, checks it against its manifest, runs
the built-in implementation (and/or adapter commands), applies the
expectations files and returns the same verdicts, JSON report and
terminal text as the CLI, plus its exit code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import _native


@dataclass(frozen=True)
class Report:
    """A finished run: ``exit_code`` as the CLI's (0 conforms, 1 failed,
    3 corpus integrity, 4 harness error), ``report`` as the CLI's ``--json``,
    ``text`` as its terminal output."""

    exit_code: int
    report: Any
    text: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def verdicts(self, subject: int = 0) -> dict:
        """``{case_id: verdict}`` of one subject."""
        return {r["id"]: r["verdict"] for r in self.report["subjects"][subject]["results"]}


def run(
    vectors: Optional[str] = None,
    builtin: Sequence[str] = ("compatible",),
    adapters: Sequence[str] = (),
    only: Sequence[str] = (),
    expectations: Optional[str] = None,
    strict: bool = False,
    timeout: float = 30.0,
    verbose: bool = False,
) -> Report:
    """Runs the corpus (default: ``./conformance/vectors``) against
    ``builtin`` subjects ("compatible", "strict") and adapter commands.
    Raises ``AvpError`` (kind ``usage``/``conformance``) where the CLI exits 2/3."""
    if vectors is None:
        vectors = os.path.join("conformance", "vectors")
    code, text_json, text = _native.run_json(
        os.fspath(vectors), list(builtin), list(adapters), list(only),
        None if expectations is None else os.fspath(expectations), strict, timeout, verbose,
    )
    return Report(exit_code=code, report=json.loads(text_json), text=text)
