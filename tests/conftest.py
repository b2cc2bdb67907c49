"""Shared test set-up: an isolated Prefect home, offline defaults and the test data folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_prefect_home = tempfile.mkdtemp(prefix="tess-ffi-prefect-")
os.environ.setdefault("PREFECT_HOME", _prefect_home)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("TESS_FFI_LAKE", None)

import pytest  # noqa: E402

import tess_ffi  # noqa: E402, F401

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the real TESS files used by the tests (see tests/data/PROVENANCE.md)."""
    return DATA


# ------------------------------------------------------------------ data-quality & faults
# reports of s3:// lakes go to TESS_FFI_REPORTS (default ./reports): keep them out of the repo
os.environ.setdefault("TESS_FFI_REPORTS", tempfile.mkdtemp(prefix="tess-ffi-reports-"))

#: rows of the fault table (tests/test_faults.py), printed at the end of the session
FAULT_ROWS: list[dict] = []


@pytest.fixture(scope="session")
def fault_table() -> list[dict]:
    """Session-wide collector of fault-injection results (see tests/test_faults.py)."""
    return FAULT_ROWS


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the fault table when fault tests ran (``make faults``, ``make test``)."""
    if not FAULT_ROWS:
        return
    import json

    cols = ("fault", "injected", "runs_survived", "rows_lost", "rows_duplicated")
    head = ("fault", "times injected", "runs survived", "rows lost", "rows duplicated")
    rows = [[str(r[c]) for c in cols] for r in FAULT_ROWS]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    tr = terminalreporter
    tr.section("fault injection")
    tr.write_line("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    tr.write_line("  ".join("-" * w for w in widths))
    for r in rows:
        tr.write_line("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    out = Path(config.rootpath) / ".pytest_cache" / "faults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(FAULT_ROWS, indent=2) + "\n")
    tr.write_line(f"(also in {out})")
