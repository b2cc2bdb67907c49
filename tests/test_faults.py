"""Faults injected into real ingest runs: nothing lost, nothing duplicated.

Every test runs the ``ingest-ccd`` flow on a small simulated CCD with one fault injected
and compares the final tables (frames, stars, photometry) with a clean run over the good
frames by content checksum (`lakehouse.checksum`). Data faults must become recorded skips
(``rejected_frames``, the run goes on); infrastructure faults must fail the run with a
one-line reason, and the next run with the same arguments must resume and finish.

Each test adds a row to the fault table printed at the end of the session (``make faults``):
fault, times injected, runs survived (runs that ended correctly: completed with the clean
tables, or were refused / stopped with a one-line error and a later run completed), rows
lost and rows duplicated (counted by key against the clean run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits

from flows.ingest import ingest_ccd
from lakehouse.checksum import compare
from lakehouse.lease import LeaseHeld
from lakehouse.store import Lakehouse, LakehouseError
from tasks import ingestion, sources
from tasks.ffi import btjd_to_timestamp, ffi_file_name, read_frame_meta
from tasks.simulate import simulate_sector
from tests.mast_server import MastServer

#: good frames: with up to 6 extra files a run selects <= 14 frames, all of which are then
#: reference-catalog candidates, so the catalog is the clean run's (first 7 good frames)
N_FRAMES = 8
BATCH = 4
TESS_FFI = str(Path(sys.executable).parent / "tess-ffi")
SECRET = "tessFaultSecret0123456789"
#: fast retries for the HTTP faults (the defaults wait 0.5, 1, 2 s and time out after 60 s)
FAST = {"base_delay": 0.05, "max_delay": 0.2, "timeout": 2.0, "connect_timeout": 2.0}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> list[Path]:
    """8 good simulated FFIs of sector 1, camera 1, CCD 1 (96x96 science pixels)."""
    out = tmp_path_factory.mktemp("good-ffi")
    sim = simulate_sector(
        out, sector=1, camera=1, ccd=1, n_cadences=N_FRAMES, n_stars=80, science_size=96, seed=21
    )
    return sorted(sim.paths)


@pytest.fixture(scope="module")
def reference(good, tmp_path_factory) -> dict[str, pa.Table]:
    """The tables of a clean run over the good frames."""
    lake = tmp_path_factory.mktemp("reference") / "lake"
    ingest_ccd(1, 1, 1, source=str(good[0].parent), lake=str(lake), batch_size=BATCH)
    return tables(lake)


@pytest.fixture(scope="module")
def prefect_api_url() -> str:
    """The API of this session's Prefect server, for the flow runs of subprocesses."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return server.api_url


@pytest.fixture
def fast_sources(monkeypatch):
    """Short timeouts and retry delays for the sources the ingest tasks open."""
    real = sources.open_source
    monkeypatch.setattr(ingestion, "open_source", lambda spec, **kw: real(spec, **{**FAST, **kw}))


# --------------------------------------------------------------------------- helpers


def tables(lake, names=("frames", "stars", "photometry")) -> dict[str, pa.Table]:
    lh = Lakehouse(str(lake))
    return {n: lh.read(n) for n in names}


def outcome(lake, reference) -> tuple[int, int]:
    """Rows lost and duplicated vs the reference; asserts equal content checksums."""
    got = tables(lake)
    lost = dup = 0
    for name, ref in reference.items():
        c = compare(name, got[name], ref)
        lost += c.lost
        dup += c.duplicated
        assert c.equal, f"{name}: content differs from the clean run ({c})"
    return lost, dup


def record(table, fault: str, injected: int, survived: int, lost: int, dup: int) -> None:
    table.append(
        {
            "fault": fault,
            "injected": injected,
            "runs_survived": survived,
            "rows_lost": lost,
            "rows_duplicated": dup,
        }
    )


def source_dir(tmp_path: Path, good: list[Path], name: str = "src") -> Path:
    """A folder with (links to) the good frames."""
    d = tmp_path / name
    d.mkdir()
    for p in good:
        (d / p.name).symlink_to(p)
    return d


def extra_name(good: list[Path], k: int, **kw) -> str:
    """A new FFI file name just after good frame ``k`` (sorts between k and k+1)."""
    meta = read_frame_meta(good[k])
    return ffi_file_name(btjd_to_timestamp(meta.tstop + 0.002), 1, 1, 1, **kw)


def write_modified(src: Path, dest: Path, *, image=None, primary=None, header1=None) -> Path:
    """A copy of an FFI with its image and/or header keywords changed (None deletes)."""
    with fits.open(src) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    if image is not None:
        hdul[1].data = image
    for hdr, changes in ((hdul[0].header, primary), (hdul[1].header, header1)):
        for key, value in (changes or {}).items():
            if value is None:
                hdr.remove(key, ignore_missing=True)
            else:
                hdr[key] = value
    hdul.writeto(dest, overwrite=True)
    return dest


def one_line(text: str) -> bool:
    return "\n" not in str(text).strip()


# --------------------------------------------------------------------------- data faults


def _truncated(good, d, k):
    data = good[k].read_bytes()
    (d / extra_name(good, k)).write_bytes(data[: len(data) // 2])


def _bad_header(good, d, k):
    data = bytearray(good[k].read_bytes())
    hdu1 = data.index(b"XTENSION=", 2880)
    card = data.index(b"BITPIX  =", hdu1)
    data[card : card + 80] = b"BITPIX  = 'garbage'".ljust(80)
    (d / extra_name(good, k)).write_bytes(bytes(data))


def _wrong_size(good, d, k):
    (d / extra_name(good, k)).write_bytes(good[k].read_bytes() + b"\0" * 1000)


def _nonfinite_image(good, d, k):
    with fits.open(good[k]) as h:
        shape = h[1].data.shape
    img = np.full(shape, np.nan, dtype=np.float32)
    img[::2] = np.inf
    write_modified(good[k], d / extra_name(good, k), image=img)


def _zero_image(good, d, k):
    with fits.open(good[k]) as h:
        shape = h[1].data.shape
    write_modified(good[k], d / extra_name(good, k), image=np.zeros(shape, np.float32))


def _missing_keyword(good, d, k):
    write_modified(good[k], d / extra_name(good, k), header1={"TSTART": None})


def _other_ccd_header(good, d, k):
    write_modified(good[k], d / extra_name(good, k), primary={"CCD": 2}, header1={"CCD": 2})


def _other_sector_header(good, d, k):
    write_modified(good[k], d / extra_name(good, k), primary={"SECTOR": 2})


def _duplicate_cadence(good, d, k):
    # a reprocessed copy (SPOC version 0121) of frame k: same FFIINDEX, later by name
    shutil.copyfile(good[k], d / good[k].name.replace("-0120-s_ffic", "-0121-s_ffic"))


#: fault: (make the bad file next to good frame k, expected stage, text of the reason)
DATA_FAULTS = {
    "truncated FITS": (_truncated, "verify", "truncated"),
    "corrupt header": (_bad_header, "verify", "bad FITS header"),
    "wrong file size": (_wrong_size, "verify", "bad size"),
    "NaN/inf image": (_nonfinite_image, "verify", "all NaN/inf"),
    "all-zero image": (_zero_image, "verify", "all zero"),
    "missing keyword": (_missing_keyword, "verify", "missing keyword(s) TSTART"),
    "file of another CCD mixed in": (_other_ccd_header, "verify", "expected sector 1 camera 1"),
    "file of another sector mixed in": (_other_sector_header, "verify", "is sector 2"),
    "duplicate cadence": (_duplicate_cadence, "duplicate", "duplicate cadence"),
}
#: two runs with several bad files each (at most 6 extra files per run, see N_FRAMES)
DATA_RUNS = [list(DATA_FAULTS)[:5], list(DATA_FAULTS)[5:]]


@pytest.mark.parametrize("faults", DATA_RUNS, ids=["run1", "run2"])
def test_bad_files_are_recorded_skips(faults, good, reference, tmp_path, fault_table):
    """Bad files mixed into a CCD's folder are skipped and recorded, the rest is ingested."""
    src = source_dir(tmp_path, good)
    expected = {}
    for k, fault in enumerate(faults):
        make, stage, reason = DATA_FAULTS[fault]
        before = {p.name for p in src.iterdir()}
        make(good, src, k)
        (name,) = {p.name for p in src.iterdir()} - before
        expected[name] = (fault, stage, reason)
    # a file named for another camera is not part of this CCD's listing at all
    (src / good[3].name.replace("-s0001-1-1-", "-s0001-2-1-")).symlink_to(good[3])
    lake = tmp_path / "lake"
    summary = ingest_ccd(1, 1, 1, source=str(src), lake=str(lake), batch_size=BATCH)
    assert summary["frames"] == N_FRAMES + len(faults)
    assert summary["frames_rejected"] == len(faults)
    rejected = {r["file_name"]: r for r in Lakehouse(str(lake)).read("rejected_frames").to_pylist()}
    assert sorted(rejected) == sorted(expected)
    for name, (fault, stage, reason) in expected.items():
        row = rejected[name]
        assert row["stage"] == stage and reason in row["reason"], (fault, row)
        assert one_line(row["reason"]) and row["run_key"] == summary["run_key"]
    lost, dup = outcome(lake, reference)
    for fault in faults:
        record(fault_table, fault, 1, 1, lost, dup)


# --------------------------------------------------------------------------- HTTP faults

#: fault: (script the server for one frame, faulty answers it gets, good frame hit)
HTTP_FAULTS = {
    "HTTP 500 (twice)": (lambda srv, n: srv.fail_times(n, 500, times=2), 2, 1),
    "timeout": (lambda srv, n: srv.delay(n, 4.0, times=1), 1, 3),
    "connection reset (twice)": (lambda srv, n: srv.reset_times(n, times=2), 2, 5),
    "partial body (twice)": (lambda srv, n: srv.truncate_times(n, 0.5, times=2), 2, 7),
}


def test_http_faults_are_retried_or_recorded(
    good, reference, tmp_path, monkeypatch, fast_sources, fault_table
):
    """Transient HTTP faults are retried (nothing lost); a 404 is a recorded skip."""
    served = source_dir(tmp_path, good, "served")
    missing = extra_name(good, 4)
    shutil.copyfile(good[4], served / missing)  # listed in the bulk script, but 404
    with MastServer(served) as srv:
        monkeypatch.setenv("TESS_FFI_MAST_URL", srv.url)
        srv.not_found(missing)
        for script, _n, k in HTTP_FAULTS.values():
            script(srv, good[k].name)
        lake = tmp_path / "lake"
        summary = ingest_ccd(
            1,
            1,
            1,
            source="mast",
            lake=str(lake),
            batch_size=BATCH,
            download_dir=str(tmp_path / "dl"),
        )
        # frames 0-6 are fetched twice (reference catalog, then photometry), frame 7 once
        hits = {
            fault: srv.count(good[k].name) - (1 if k == 7 else 2)
            for fault, (_s, _n, k) in HTTP_FAULTS.items()
        }
        hits_404 = srv.count(missing)
    assert hits == {fault: n for fault, (_s, n, _k) in HTTP_FAULTS.items()}
    assert summary["frames"] == N_FRAMES + 1 and summary["frames_rejected"] == 1
    (row,) = Lakehouse(str(lake)).read("rejected_frames").to_pylist()
    assert row["file_name"] == missing and row["stage"] == "fetch"
    assert "HTTP 404" in row["reason"] and row["cadence"] is None
    lost, dup = outcome(lake, reference)
    for fault, n in hits.items():
        record(fault_table, fault, n, 1, lost, dup)
    record(fault_table, "HTTP 404", hits_404, 1, lost, dup)


def test_network_down_fails_loudly_then_resumes(
    good, reference, tmp_path, monkeypatch, fast_sources, fault_table
):
    served = source_dir(tmp_path, good, "served")
    victim = good[7].name  # in batch 1, not loaded by the reference catalog
    lake = tmp_path / "lake"
    args = dict(source="mast", lake=str(lake), batch_size=BATCH, download_dir=str(tmp_path / "dl"))
    with MastServer(served) as srv:
        monkeypatch.setenv("TESS_FFI_MAST_URL", srv.url)
        srv.fail_times(victim, 503, times=100)  # down for longer than the retries last
        with pytest.raises(sources.SourceError) as err:
            ingest_ccd(1, 1, 1, **args)
        injected = srv.count(victim)
        assert one_line(err.value) and "HTTP 503" in str(err.value) and victim in str(err.value)
        assert not Lakehouse(str(lake)).has_table("photometry")  # nothing published
        srv.clear_faults()
        summary = ingest_ccd(1, 1, 1, **args)
    assert 0 < summary["frames_measured_now"] < N_FRAMES  # resumed from the staged batches
    lost, dup = outcome(lake, reference)
    record(fault_table, "network down after retries", injected, 1, lost, dup)


# --------------------------------------------------------------------------- processes


def _staged(lake: Path, kind: str = "frames") -> int:
    return len(list((lake / "_staging").glob(f"*/*/{kind}/batch-*.parquet")))


def _wait(condition, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"ingest ended early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"condition not met after {timeout} s:\n{log.read_text()[-3000:]}")


def test_concurrent_run_then_sigkill_and_resume(
    good, reference, tmp_path, monkeypatch, prefect_api_url, fault_table
):
    """Run A (a real ``tess-ffi process``) holds the CCD; run B of the same CCD is refused
    at once; A is killed with SIGKILL mid-run; a new run takes over and resumes."""
    served = source_dir(tmp_path, good, "served")
    lake, dl, log = tmp_path / "lake", tmp_path / "dl", tmp_path / "a.log"
    cmd = [
        TESS_FFI,
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
        str(lake),
        "--batch-size",
        "2",
        "--download-dir",
        str(dl),
    ]
    with MastServer(served) as srv:
        # the last frame stalls (not one of the catalog's), so A is still running when we look
        srv.delay(good[-1].name, 120.0)
        env = {
            **os.environ,
            "PREFECT_API_URL": prefect_api_url,
            "TESS_FFI_MAST_URL": srv.url,
            "PREFECT_LOGGING_LEVEL": "ERROR",
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            lock = lake / "_locks" / "s0001-1-1.json"
            _wait(lambda: lock.exists() and _staged(lake) >= 3, proc, 180, log)
            # fault: a second run of the same CCD while A runs
            monkeypatch.setenv("TESS_FFI_MAST_URL", srv.url)
            with pytest.raises(LeaseHeld) as err:
                ingest_ccd(
                    1, 1, 1, source="mast", lake=str(lake), batch_size=2, download_dir=str(dl)
                )
            assert one_line(err.value) and f"pid {proc.pid}" in str(err.value)
            assert proc.poll() is None  # B did not wait for A, and A is unaffected
            # fault: A is killed with SIGKILL in the middle of its run
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        staged = _staged(lake)
        srv.clear_faults()
        summary = ingest_ccd(
            1, 1, 1, source="mast", lake=str(lake), batch_size=2, download_dir=str(dl)
        )
    assert staged >= 3 and summary["frames_measured_now"] <= N_FRAMES - 2 * staged
    assert not lock.exists()  # released by the resumed run
    lost, dup = outcome(lake, reference)
    record(fault_table, "two concurrent runs of one CCD", 1, 2, lost, dup)
    record(fault_table, "SIGKILL mid-ingestion, then resume", 1, 1, lost, dup)


# --------------------------------------------------------------------------- disk


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "2m"):
    """A tmpfs of ``size`` at ``path`` (None when this machine does not allow mounting)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("TESS_FFI_TEST_NO_MOUNT"):  # exercise the fallback
        yield None
        return
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _limited_file_size(limit: int):
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_download_disk_fails_loudly_then_resumes(
    good, reference, tmp_path, monkeypatch, fast_sources, prefect_api_url, fault_table
):
    served = source_dir(tmp_path, good, "served")
    lake = tmp_path / "lake"
    frame_bytes = good[0].stat().st_size
    with MastServer(served) as srv, tiny_disk(tmp_path / "tiny", "1m") as disk:
        monkeypatch.setenv("TESS_FFI_MAST_URL", srv.url)
        if disk is not None:  # a 1 MB filesystem: room for 4 of the 8 kept downloads
            assert 3 * frame_bytes < 2**20 < N_FRAMES * frame_bytes
            with pytest.raises(OSError) as err:
                ingest_ccd(
                    1,
                    1,
                    1,
                    source="mast",
                    lake=str(lake),
                    batch_size=BATCH,
                    download_dir=str(disk),
                    keep_files=True,
                )
            message = str(err.value)
            assert "No space left on device" in message
            dl = disk
        else:  # no mount here: the same process-wide limit on file size (EFBIG)
            dl = tmp_path / "dl"
            res = subprocess.run(
                [
                    TESS_FFI,
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
                    str(lake),
                    "--batch-size",
                    str(BATCH),
                    "--download-dir",
                    str(dl),
                ],
                env={
                    **os.environ,
                    "PREFECT_API_URL": prefect_api_url,
                    "TESS_FFI_MAST_URL": srv.url,
                },
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                preexec_fn=_limited_file_size(frame_bytes // 2),
            )
            message = res.stderr.strip().splitlines()[-1]
            assert res.returncode == 1 and "File too large" in message, res.stderr[-2000:]
        assert one_line(message)
        assert not Lakehouse(str(lake)).has_table("photometry")
        summary = ingest_ccd(
            1, 1, 1, source="mast", lake=str(lake), batch_size=BATCH, download_dir=str(dl)
        )
    assert summary["frames_published"] == N_FRAMES
    lost, dup = outcome(lake, reference)
    record(fault_table, "full temporary disk", 1, 1, lost, dup)


# --------------------------------------------------------------------------- S3


@contextlib.contextmanager
def _fast_s3_failures():
    """One try per S3 call while the store is down (s3fs retries 5 times, botocore 4 more:
    ~20 s per failing call); only the time to notice the outage changes, not what the
    pipeline does about it. The resumed run uses the normal retries."""
    import s3fs

    from lakehouse import store

    real_options, real_retries = store.s3_filesystem_options, s3fs.S3FileSystem.retries
    store.s3_filesystem_options = lambda: {
        **real_options(),
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
    }
    s3fs.S3FileSystem.retries = 1
    try:
        yield
    finally:
        store.s3_filesystem_options = real_options
        s3fs.S3FileSystem.retries = real_retries


def _wait_writable(lake: Lakehouse, timeout: float = 60) -> None:
    """Wait until a just restarted store accepts writes (its filer may still be joining)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lake.write_chunk(lake.path("_probe", "up.parquet"), pa.table({"up": [1]}))
            lake.remove(lake.path("_probe"))
            return
        except LakehouseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_s3_store_stops_mid_run_and_comes_back(good, reference, tmp_path, monkeypatch, fault_table):
    from tess_ffi import platform
    from tests.platform_services import platform_config

    cfg = platform_config(tmp_path / "s3")
    creds = platform.load_or_create_credentials(cfg)
    lake_uri = f"s3://{cfg.bucket}/faults"
    try:
        pid = platform.start_seaweedfs(cfg, timeout=120)
        for key, value in platform.client_env(cfg, creds).items():
            if key.startswith("AWS_"):
                monkeypatch.setenv(key, value)
        real_write = Lakehouse.write_chunk
        state = {"stopped": False}

        def write_then_stop(self, path, table):
            real_write(self, path, table)
            if "/frames/" in path and not state["stopped"]:
                state["stopped"] = True  # one batch is staged: the store goes away
                platform.stop_pid(pid, "weed")

        monkeypatch.setattr(Lakehouse, "write_chunk", write_then_stop)
        with _fast_s3_failures(), pytest.raises(LakehouseError) as err:
            ingest_ccd(1, 1, 1, source=str(good[0].parent), lake=lake_uri, batch_size=2)
        message = str(err.value)
        assert state["stopped"] and one_line(message) and lake_uri in message
        assert creds.secret_key not in message
        monkeypatch.setattr(Lakehouse, "write_chunk", real_write)
        platform.start_seaweedfs(cfg, timeout=120)  # the store comes back, data intact
        _wait_writable(Lakehouse(lake_uri))
        summary = ingest_ccd(1, 1, 1, source=str(good[0].parent), lake=lake_uri, batch_size=2)
        assert 0 < summary["frames_measured_now"] < N_FRAMES  # resumed from staged batches
        lost, dup = outcome(lake_uri, reference)
    finally:
        platform.down(cfg)
    record(fault_table, "S3 store stops mid-run, comes back", 1, 1, lost, dup)


def test_fault_table_rows_are_clean(fault_table):
    """Runs last in this module: every fault so far lost and duplicated nothing."""
    rows = list(fault_table)
    if not rows:
        pytest.skip("no fault test ran in this session")
    assert all(r["rows_lost"] == 0 and r["rows_duplicated"] == 0 for r in rows), rows
