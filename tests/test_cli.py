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
    assert res.exit_code == 2  # a bad argument, caught before any work
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


# ------------------------------------------------------------------ bad input (data quality)


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


@pytest.mark.parametrize(
    "case",
    [
        "source-file",
        "lake-file",
        "lake-under-file",
        "lake-scheme",
        "download-file",
        "download-under-file",
        "source-credentials",
        "lake-credentials",
        "sector-too-big",
    ],
)
def test_bad_paths_and_uris_exit_2(case, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    src, lake = tmp_path / "ffi", tmp_path / "lake"
    src.mkdir()
    args = {"--source": str(src), "--lake": str(lake)}
    word = {
        "source-file": ("--source", str(afile), "not a directory"),
        "lake-file": ("--lake", str(afile), "is a file"),
        "lake-under-file": ("--lake", str(afile / "lake"), "is a file"),
        "lake-scheme": ("--lake", "gs://bucket/lake", "unsupported URI"),
        "download-file": ("--download-dir", str(afile), "is a file"),
        "download-under-file": ("--download-dir", str(afile / "dl"), "not writable"),
        "source-credentials": ("--source", "https://me:hunter2pw@mirror.example/", "credentials"),
        "lake-credentials": ("--lake", "s3://KEYID:hunter2pw@bucket/lake", "credentials"),
        "sector-too-big": ("--sector", "10000", "sector"),
    }[case]
    args[word[0]] = word[1]
    argv = ["process", "-c", "1", "-d", "1"] + [x for kv in args.items() for x in kv]
    if "--sector" not in args:
        argv += ["-s", "1"]
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    assert word[2] in res.output
    assert "hunter2pw" not in res.output  # a credential is never echoed
    if case != "sector-too-big":
        _one_error_line(res.output)
    assert not lake.exists()


def test_sql_and_simulate_refuse_a_file_path(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = runner.invoke(app, ["sql", "SELECT 1", "--lake", str(afile)])
    assert res.exit_code == 2 and "is a file" in _one_error_line(res.output)
    res = runner.invoke(app, ["simulate", "--out", str(afile), "--cadences", "1"])
    assert res.exit_code == 2 and "is a file" in _one_error_line(res.output)
    res = runner.invoke(app, ["validate", "-s", "1", "-c", "5", "-d", "1"])
    assert res.exit_code == 2


@pytest.mark.parametrize(
    "query",
    [
        "LOAD httpfs",
        "INSTALL httpfs",
        "SET threads = 1",
        "RESET threads",
        "PRAGMA version",
        "pragma threads=1",
        "CALL pragma_version()",
        "/* hidden */ PRAGMA version",
        "SELECT 1; PRAGMA version",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN COPY (SELECT 1) TO '/tmp/tess-ffi-copy.csv'",
        "CHECKPOINT",
        "EXPORT DATABASE '/tmp/tess-ffi-export'",
        "DETACH memory",
        "USE memory",
        "INSERT INTO frames SELECT * FROM frames",
        "UPDATE frames SET dx = 0",
    ],
)
def test_sql_refuses_everything_but_reading(small_lake, query):
    lake, _ = small_lake
    res = runner.invoke(app, ["sql", query, "--lake", str(lake)])
    assert res.exit_code == 2, res.output
    assert "read-only" in _one_error_line(res.output)
    assert not Path("/tmp/tess-ffi-copy.csv").exists()
    assert not Path("/tmp/tess-ffi-export").exists()


def test_sql_still_reads(small_lake):
    lake, summary = small_lake
    for query in (
        "WITH f AS (SELECT * FROM frames) SELECT count(*) AS n FROM f",
        "SELECT ';PRAGMA' AS x, count(*) AS n FROM frames",  # keywords in strings are data
        "FROM frames SELECT count(*) AS n",
    ):
        res = runner.invoke(app, ["sql", query, "--lake", str(lake), "--format", "json"])
        assert res.exit_code == 0, (query, res.output)
        assert json.loads(res.output)[0]["n"] == summary["frames"]


def test_credentials_never_appear_in_output_logs_or_parameters(tmp_path, monkeypatch, capfd):
    """A run against an S3 lake that cannot be reached fails with one line, and the secret
    key is nowhere: not in the output, the Prefect logs nor the flow run's parameters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter
    from prefect.client.schemas.sorting import FlowRunSort

    from tests.mast_server import closed_port_url, make_tiny_sector

    secret = "tessSECRETvalue0987654321"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "TESSKEYID0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_url())
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    src = tmp_path / "ffi"
    make_tiny_sector(src, n_frames=2)
    lake = f"s3://tess-leak-test/{tmp_path.name}"
    outputs = []
    res = runner.invoke(
        app, ["process", "-s", "1", "-c", "1", "-d", "1", "--source", str(src), "--lake", lake]
    )
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and lake in errors[0]  # (Prefect's own log lines come before)
    outputs.append(res.output)
    for argv in (
        ["sql", "SELECT count(*) FROM frames"],
        ["validate", "-s", "1", "-c", "1", "-d", "1"],
    ):
        res = runner.invoke(app, [*argv, "--lake", lake])
        assert res.exit_code == 1, res.output
        outputs.append(_one_error_line(res.output))
    captured = capfd.readouterr()
    outputs += [captured.out, captured.err]
    assert all(secret not in text for text in outputs)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(), sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50
        )
        ours = [r for r in runs if (r.parameters or {}).get("lake") == lake]
        assert ours, "the flow run was not recorded"
        for run in ours:
            assert secret not in json.dumps(run.parameters, default=str)
            assert secret not in str(run.state.message if run.state else "")
            logs = client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [run.id]}), limit=200)
            assert logs and all(secret not in log.message for log in logs)
