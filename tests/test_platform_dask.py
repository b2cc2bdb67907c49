"""Scale-out: ingest-ccd's batch tasks on Dask (prefect-dask) give the thread runner's tables.

Two Dask set-ups, both on 127.0.0.1 and both gone afterwards: the LocalCluster that
``--runner dask`` creates when no address is given, and an existing cluster reached with
``--dask-address tcp://HOST:PORT`` (the way a real cluster is used).
"""

from __future__ import annotations

import numpy as np
import psutil
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.ingest import ingest_ccd
from lakehouse.store import Lakehouse
from tasks.simulate import simulate_sector
from tess_ffi.cli import app, run_ingest
from tess_ffi.runners import make_task_runner, prefect_api_url


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A small simulated CCD: 128x128 science pixels, 8 cadences in 4 batches."""
    out = tmp_path_factory.mktemp("ffi-dask")
    return simulate_sector(
        out, sector=1, camera=1, ccd=1, n_cadences=8, n_stars=150, science_size=128, seed=21
    )


def _tables(lake: str) -> dict:
    lh = Lakehouse(lake)
    return {
        "frames": lh.read("frames").sort_by("cadence"),
        "stars": lh.read("stars").sort_by("star_id"),
        "photometry": lh.read("photometry").sort_by(
            [("star_id", "ascending"), ("cadence", "ascending")]
        ),
    }


def _assert_same_table(got: pa.Table, expected: pa.Table, what: str) -> None:
    """Same schema, rows and values; floats to the last bits (1e-12 relative).

    numpy's SIMD sums depend on array alignment, so the same batch computed in another
    process may differ in the last bit of a float; everything else must be identical.
    """
    assert got.schema.equals(expected.schema), what
    assert got.num_rows == expected.num_rows > 0, what
    for name in expected.column_names:
        a, b = got.column(name), expected.column(name)
        if pa.types.is_floating(b.type):
            np.testing.assert_allclose(
                a.to_numpy(), b.to_numpy(), rtol=1e-12, atol=0, equal_nan=True, err_msg=what
            )
        else:
            assert a.equals(b), (what, name)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_dask_runs_give_the_tables_of_the_thread_runner(sim, tmp_path):
    from distributed import Client, LocalCluster

    source = str(sim.paths[0].parent)
    thread_lake = str(tmp_path / "threads")
    ingest_ccd(1, 1, 1, source=source, lake=thread_lake, batch_size=2)
    expected = _tables(thread_lake)
    before = _children()

    # --runner dask: a LocalCluster of 2 worker processes, created and closed by the run
    local_lake = str(tmp_path / "dask-local")
    summary = run_ingest(1, 1, 1, source, local_lake, workers=2, batch_size=2, runner="dask")
    assert summary["frames"] == 8 and summary["frames_measured_now"] == 8

    # --dask-address: an existing cluster (think: `dask scheduler` + `dask worker` elsewhere)
    # (workers of a real cluster get PREFECT_API_URL from their environment)
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        env={"PREFECT_API_URL": prefect_api_url()},
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        remote_lake = str(tmp_path / "dask-remote")
        run_ingest(1, 1, 1, source, remote_lake, batch_size=2, runner="dask", dask_address=address)
        # the batch tasks really ran on that cluster
        with Client(address) as client:
            keys = client.run_on_scheduler(
                lambda dask_scheduler: [str(t[0]) for t in dask_scheduler.transition_log]
            )
        assert sum("photometry_batch_task" in k for k in set(keys)) == 4, sorted(set(keys))[:10]

    for lake in (local_lake, remote_lake):
        got = _tables(lake)
        for name, table in expected.items():
            _assert_same_table(got[name], table, f"{lake}: {name}")
    # no Dask process outlives its run (multiprocessing's resource tracker lives on with us)
    leftover = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())
    ]
    _gone, alive = psutil.wait_procs(leftover, timeout=15)
    assert not alive, [p.cmdline() for p in alive]


def test_runner_options_are_checked():
    runner = CliRunner()
    res = runner.invoke(
        app, ["process", "-s", "1", "-c", "1", "-d", "1", "--dask-address", "tcp://127.0.0.1:1"]
    )
    assert res.exit_code == 2 and "needs --runner dask" in res.output
    res = runner.invoke(app, ["process", "-s", "1", "-c", "1", "-d", "1", "--runner", "spark"])
    assert res.exit_code == 2 and "unknown --runner" in res.output
    with pytest.raises(ValueError, match="expected tcp://"):
        make_task_runner("dask", dask_address="127.0.0.1:8786")
    assert type(make_task_runner("thread", 3)).__name__ == "ThreadPoolTaskRunner"
