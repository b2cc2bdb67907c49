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
