"""The command line as a user runs it: process, sql, simulate; bad input gives exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tess_ffi.cli import app

BIN = Path(sys.executable).parent / "tess-ffi"
runner = CliRunner()


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory):
    """simulate + process through the real installed command (subprocess, as a user would)."""
    root = tmp_path_factory.mktemp("cli")
    ffi, lake = root / "ffi", root / "lake"
    sim = subprocess.run(
        [
            str(BIN),
            "simulate",
            "--out",
            str(ffi),
            "--cadences",
            "12",
            "--stars",
            "120",
            "--size",
            "128",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sim.returncode == 0, sim.stderr
    assert len(list(ffi.glob("tess*-s0001-1-1-*_ffic.fits"))) == 12
    proc = subprocess.run(
        [
            str(BIN),
            "process",
            "--sector",
            "1",
            "--camera",
            "1",
            "--ccd",
            "1",
            "--source",
            str(ffi),
            "--lake",
            str(lake),
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PREFECT_LOGGING_LEVEL": "ERROR"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    return lake, summary


def test_process_then_sql_json_and_csv(small_lake):
    lake, summary = small_lake
    assert summary["frames"] == 12 and summary["stars"] > 20
    res = runner.invoke(
        app,
        [
            "sql",
            "SELECT count(*) AS n, count(DISTINCT cadence) AS c FROM photometry",
            "--lake",
            str(lake),
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)[0]
    assert row == {"n": summary["stars"] * 12, "c": 12}
    res = runner.invoke(
        app,
        [
            "sql",
            "SELECT star_id, x, y FROM stars ORDER BY star_id LIMIT 3",
            "--lake",
            str(lake),
            "--format",
            "csv",
        ],
    )
    assert res.exit_code == 0
    lines = res.output.strip().splitlines()
    assert lines[0].replace('"', "") == "star_id,x,y" and len(lines) == 4
    assert lines[1].startswith("11100000,")  # sector 1, camera 1, ccd 1, rank 0


def test_sql_env_lake_and_table_output(small_lake, monkeypatch):
    lake, _ = small_lake
    monkeypatch.setenv("TESS_FFI_LAKE", str(lake))
    res = runner.invoke(
        app, ["sql", "SELECT sector, camera, ccd, count(*) AS n FROM frames GROUP BY ALL"]
    )
    assert res.exit_code == 0, res.output
    assert "12" in res.output


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM photometry",
        "CREATE TABLE x AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/tess-ffi-copy.csv'",
        "ATTACH '/tmp/x.duckdb'",
        "INSTALL httpfs",
        "SELECT * FROM read_csv('/etc/passwd')",
    ],
)
def test_sql_is_read_only(small_lake, query):
    lake, _ = small_lake
    res = runner.invoke(app, ["sql", query, "--lake", str(lake)])
    assert res.exit_code != 0
    assert res.output.count("\n") <= 2 and "error:" in res.output
    assert not Path("/tmp/tess-ffi-copy.csv").exists()


@pytest.mark.parametrize(
    "args, word",
    [
        (["process", "--sector", "0", "--camera", "1", "--ccd", "1"], "sector"),
        (["process", "--sector", "1", "--camera", "5", "--ccd", "1"], "camera"),
        (["process", "--sector", "1", "--camera", "1", "--ccd", "0"], "ccd"),
        (["process", "-s", "1", "-c", "1", "-d", "1", "--cadence-skip", "0"], "cadence-skip"),
    ],
)
def test_bad_arguments_exit_2(args, word):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert word in res.output


def test_unknown_source_is_a_one_line_error(tmp_path):
    res = runner.invoke(
        app,
        [
            "process",
            "-s",
            "1",
            "-c",
            "1",
            "-d",
            "1",
            "--source",
            str(tmp_path / "missing"),
            "--lake",
            str(tmp_path / "lake"),
        ],
    )
    assert res.exit_code == 1
    assert "unknown FFI source" in res.output
    assert not (tmp_path / "lake").exists() or not any((tmp_path / "lake").iterdir())


def test_offline_mast_fails_fast_and_clearly(tmp_path, monkeypatch):
    from tests.mast_server import closed_port_url

    monkeypatch.setenv("TESS_FFI_MAST_URL", closed_port_url())
    res = runner.invoke(
        app,
        [
            "process",
            "-s",
            "1",
            "-c",
            "1",
            "-d",
            "1",
            "--source",
            "mast",
            "--lake",
            str(tmp_path / "lake"),
        ],
    )
    assert res.exit_code == 1
    assert "cannot reach MAST" in res.output


def test_sql_on_a_missing_table_is_one_line(tmp_path):
    res = runner.invoke(app, ["sql", "SELECT * FROM photometry", "--lake", str(tmp_path)])
    assert res.exit_code == 1
    assert "error:" in res.output and "photometry" in res.output
