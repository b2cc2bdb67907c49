"""The platform end to end: `tess-ffi up` (make up), `tess-ffi serve`, UI-style runs, the cron tick.

One stack for the module, on free loopback ports in a temporary folder: SeaweedFS + a Prefect
server started by ``tess-ffi up``, the deployments served by ``tess-ffi serve`` and an HTTP
mirror of simulated FFIs. Flow runs are created through the Prefect API call the UI makes
(``POST /deployments/{id}/create_flow_run``), the lakehouse is queried on S3 with
``tess-ffi sql``, and ``ingest-new-sectors`` ticks against a mirror that gains a sector.
The last test restarts the stack and finds the data again. Everything is stopped by pid.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import types

import pytest

from lakehouse.manifest import read_manifest
from lakehouse.store import Lakehouse
from tasks.simulate import simulate_sector
from tess_ffi import platform
from tests.mast_server import MastServer
from tests.platform_services import (
    ServeProcess,
    client_environ,
    listening_addresses,
    platform_config,
    read_env_file,
    run_cli,
    wait_flow_run,
)

INGEST = "ingest-ccd/ingest-ccd"
TICK = "ingest-new-sectors/ingest-new-sectors"
ANALYSIS = "find-variables/find-variables"
SIM = {"n_cadences": 6, "n_stars": 120, "science_size": 128}


def _analysis_deployed() -> bool:
    from deployments.platform import analysis_flow

    return analysis_flow() is not None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`tess-ffi up` + an FFI mirror + `tess-ffi serve`; all stopped at the end."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("platform")
    cfg = platform_config(root)
    ffi = root / "ffi"
    for ccd in (1, 2):
        simulate_sector(ffi / f"s1-{ccd}", sector=1, camera=1, ccd=ccd, seed=ccd, **SIM)
    up_args = [
        "up",
        f"--state-dir={cfg.state_dir}",
        f"--env-file={cfg.env_file}",
        f"--prefect-port={cfg.prefect_port}",
        f"--s3-port={cfg.s3_port}",
        f"--bucket={cfg.bucket}",
        f"--prefix={cfg.prefix}",
    ]
    ns = types.SimpleNamespace(cfg=cfg, root=root, ffi=ffi, up_args=up_args)
    try:
        res = run_cli(up_args, dict(os.environ), timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        ns.up_output = res.stdout + res.stderr
        # the served runner looks for new flow runs every second (default 10 s)
        ns.env = client_environ(cfg.env_file, PREFECT_RUNNER_POLL_FREQUENCY="1")
        ns.creds = platform.load_or_create_credentials(cfg)
        with (
            MastServer(ffi) as mirror,
            pytest.MonkeyPatch.context() as mp,
            temporary_settings({PREFECT_API_URL: cfg.prefect_api_url}),
            get_client(sync_client=True) as client,
            ServeProcess(
                ["--cron", "0 6 * * *", "--limit", "3", "--source", mirror.mirror_url],
                ns.env,
                root / "serve.log",
            ) as serve,
        ):
            for key, value in read_env_file(cfg.env_file).items():
                if key.startswith("AWS_"):
                    mp.setenv(key, value)
            names = [INGEST, TICK] + ([ANALYSIS] if _analysis_deployed() else [])
            ns.deployments = serve.wait_for_deployments(client, names)
            ns.mirror, ns.client, ns.serve = mirror, client, serve
            yield ns
    finally:
        run_cli(["down", f"--state-dir={cfg.state_dir}"], dict(os.environ), timeout=120)
        platform.down(cfg)  # in case the CLI could not


def test_up_starts_both_services_on_loopback(stack):
    cfg = stack.cfg
    env = read_env_file(cfg.env_file)
    assert set(env) >= {
        "PREFECT_API_URL",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "TESS_FFI_LAKE",
    }
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{cfg.prefect_port}/api"
    assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{cfg.s3_port}"
    assert env["TESS_FFI_LAKE"] == "s3://tess-test/lake"
    assert stat.S_IMODE(cfg.env_file.stat().st_mode) == 0o600
    assert stack.creds.secret_key not in stack.up_output  # `up` never prints the keys
    for name in ("prefect", "seaweedfs"):
        pid = platform.running_pid(cfg, name)
        assert pid, name
        assert listening_addresses(pid) == {"127.0.0.1"}, name
    res = run_cli(["status", "--services", f"--state-dir={cfg.state_dir}"], stack.env)
    assert res.returncode == 0 and "running" in res.stdout


def test_deployments_have_typed_parameters_and_a_schedule(stack):
    ingest = stack.deployments[INGEST]
    props = ingest.parameter_openapi_schema["properties"]
    assert {props[k]["type"] for k in ("sector", "camera", "ccd", "cadence_skip")} == {"integer"}
    assert props["source"]["type"] == "string"
    assert {t["type"] for t in props["lake"]["anyOf"]} == {"string", "null"}
    assert set(ingest.parameter_openapi_schema["required"]) == {"sector", "camera", "ccd"}
    assert ingest.parameters["source"] == stack.mirror.mirror_url  # `serve --source`
    tick = stack.deployments[TICK]
    (schedule,) = tick.schedules
    assert schedule.active and schedule.schedule.cron == "0 6 * * *"
    assert tick.global_concurrency_limit.limit == 1  # one tick at a time


def test_ui_run_of_ingest_ccd_then_sql_on_the_s3_lake(stack):
    """Start ingest-ccd the way the UI does, wait, query the S3 lakehouse with `tess-ffi sql`."""
    client = stack.client
    params = {
        "sector": 1,
        "camera": 1,
        "ccd": 1,
        "source": stack.mirror.mirror_url,
        "cadence_skip": 2,
        "lake": "s3://tess-test/ui",
    }
    flow_run = client.create_flow_run_from_deployment(
        stack.deployments[INGEST].id, parameters=params
    )
    done = wait_flow_run(client, flow_run.id, timeout=240)
    assert done.state.is_completed(), (done.state, stack.serve.output()[-3000:])
    stack.ui_run_id = flow_run.id

    env = dict(stack.env, TESS_FFI_LAKE="s3://tess-test/ui")
    query = (
        "SELECT count(*) AS n, count(DISTINCT cadence) AS cadences, "
        "count(DISTINCT star_id) AS stars FROM photometry"
    )
    res = run_cli(["sql", query, "--format", "csv"], env)
    assert res.returncode == 0, res.stderr
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    assert int(row["cadences"]) == SIM["n_cadences"] // 2  # cadence_skip=2 reached the flow
    assert int(row["stars"]) > 50 and int(row["n"]) == int(row["stars"]) * int(row["cadences"])
    stack.ui_rows = int(row["n"])


def _tick(stack, lake: str, analyse: bool = True) -> dict:
    params = {
        "source": stack.mirror.mirror_url,
        "lake": lake,
        "wait_minutes": 4.0,  # the tick follows its runs (and chains find-variables)
        "analyse": analyse,
    }
    fr = stack.client.create_flow_run_from_deployment(stack.deployments[TICK].id, parameters=params)
    done = wait_flow_run(stack.client, fr.id, timeout=330)
    assert done.state.is_completed(), (done.state, stack.serve.output()[-3000:])
    return {r.label: r for r in read_manifest(Lakehouse(lake)).values()}


def _ingest_runs(stack) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return stack.client.read_flow_runs(
        deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[stack.deployments[INGEST].id])
        )
    )


def test_cron_tick_discovers_new_sectors_idempotently_and_retries_failures(stack):
    lake = "s3://tess-test/cron"
    analysed = _analysis_deployed()
    final_step = "find-variables" if analysed else "ingest-ccd"
    before = len(_ingest_runs(stack))
    # tick 1: sector 1 has CCDs 1-1 and 1-2; the mirror refuses one FFI of 1-2 (HTTP 403:
    # not a missing file, which ingest-ccd would skip, but a failure of the run)
    broken = sorted(p.name for p in (stack.ffi / "s1-2").glob("*_ffic.fits"))[-1]
    stack.mirror.fail_times(broken, status=403, times=1000)
    rows = _tick(stack, lake)
    assert set(rows) == {"s0001-1-1", "s0001-1-2"}
    assert rows["s0001-1-1"].status == "done" and rows["s0001-1-1"].step == final_step
    assert rows["s0001-1-2"].status == "failed" and rows["s0001-1-2"].attempts == 1
    assert rows["s0001-1-2"].message
    assert len(_ingest_runs(stack)) == before + 2

    # between the ticks the mirror recovers and sector 2 appears
    stack.mirror.clear_faults()
    simulate_sector(stack.ffi / "s2-1", sector=2, camera=1, ccd=1, seed=5, **SIM)
    rows = _tick(stack, lake, analyse=False)  # (no analysis: keeps the test short)
    assert {k: r.status for k, r in rows.items()} == {
        "s0001-1-1": "done",
        "s0001-1-2": "done",
        "s0002-1-1": "done",
    }
    assert rows["s0001-1-2"].step == "ingest-ccd" and rows["s0001-1-2"].attempts == 2
    assert rows["s0001-1-2"].message == ""
    assert rows["s0001-1-2"].ingest_flow_run_id != rows["s0001-1-1"].ingest_flow_run_id
    assert len(_ingest_runs(stack)) == before + 4  # the retry and the new sector only
    version = Lakehouse(lake).version("ingest_manifest")

    # tick 3: nothing new -> nothing started, the manifest is not even rewritten
    rows3 = _tick(stack, lake)
    assert {k: (r.status, r.flow_run_id) for k, r in rows3.items()} == {
        k: (r.status, r.flow_run_id) for k, r in rows.items()
    }
    assert len(_ingest_runs(stack)) == before + 4
    assert Lakehouse(lake).version("ingest_manifest") == version

    frames = Lakehouse(lake).read("frames", columns=["sector", "camera", "ccd"])
    assert set(
        zip(*[frames.column(c).to_pylist() for c in ("sector", "camera", "ccd")], strict=True)
    ) == {
        (1, 1, 1),
        (1, 1, 2),
        (2, 1, 1),
    }
    if analysed:  # tick 1 chained find-variables after the completed ingest
        assert rows["s0001-1-1"].analysis_flow_run_id
        assert Lakehouse(lake).has_table("candidates")


def test_credentials_never_reach_prefect(stack):
    """No flow-run parameter, log line or serve output holds the S3 keys."""
    secret, access = stack.creds.secret_key, stack.creds.access_key
    runs = stack.client.read_flow_runs()
    assert runs
    for fr in runs:
        assert secret not in repr(fr.parameters) and access not in repr(fr.parameters)
    offset, lines = 0, 0
    while True:
        logs = stack.client.read_logs(offset=offset, limit=200)
        for log in logs:
            assert secret not in log.message and access not in log.message
        lines += len(logs)
        if len(logs) < 200:
            break
        offset += len(logs)
    assert lines > 0  # the served runs do send their logs
    assert secret not in stack.serve.output()


def test_down_and_up_keep_the_data(stack):
    """`tess-ffi down` stops both services; after `up` the lake and the run history are back."""
    cfg = stack.cfg
    stack.serve.__exit__(None, None, None)
    res = run_cli(["down", f"--state-dir={cfg.state_dir}"], stack.env)
    assert res.returncode == 0 and "prefect" in res.stdout and "seaweedfs" in res.stdout
    assert platform.running_pid(cfg, "prefect") is None
    assert platform.running_pid(cfg, "seaweedfs") is None
    assert not platform.port_in_use(cfg.prefect_port) and not platform.port_in_use(cfg.s3_port)

    res = run_cli(stack.up_args, stack.env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert read_env_file(cfg.env_file)["AWS_SECRET_ACCESS_KEY"] == stack.creds.secret_key
    env = dict(stack.env, TESS_FFI_LAKE="s3://tess-test/ui")
    res = run_cli(["sql", "SELECT count(*) AS n FROM photometry", "--format", "csv"], env)
    assert res.returncode == 0, res.stderr
    assert int(next(csv.DictReader(io.StringIO(res.stdout)))["n"]) == stack.ui_rows
    assert stack.client.read_flow_run(stack.ui_run_id).state.is_completed()
