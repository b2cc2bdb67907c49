"""The lakehouse and the FFI source on a real S3 server (SeaweedFS on 127.0.0.1).

Delta tables are written and read through delta-rs, DuckDB (httpfs, ``tess-ffi sql``),
Polars and pyarrow with the endpoint, keys and region from the environment only; an FFI
sector in the stpubdata layout is ingested from S3 into an S3 lake and gives the same tables
as a local run; FFIs are fetched with byte-range reads of only the HDUs they need.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits

from lakehouse.schemas import FRAMES
from lakehouse.sql import QueryRefused, run_query
from lakehouse.store import Lakehouse
from tasks.simulate import simulate_sector
from tasks.sources import S3Source, _RangeReader, open_source, stpubdata_key
from tess_ffi import platform
from tests.platform_services import (
    client_environ,
    listening_addresses,
    platform_config,
    run_cli,
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """SeaweedFS (`weed mini`) on loopback, the AWS_* variables set for this module."""
    cfg = platform_config(tmp_path_factory.mktemp("seaweedfs"))
    creds = platform.load_or_create_credentials(cfg)
    with pytest.MonkeyPatch.context() as mp:
        try:
            pid = platform.start_seaweedfs(cfg, timeout=120)
            assert listening_addresses(pid) == {"127.0.0.1"}  # loopback only
            platform.write_env_file(cfg, creds)
            for key, value in platform.client_env(cfg, creds).items():
                if key.startswith("AWS_"):
                    mp.setenv(key, value)
            yield cfg, creds
        finally:
            platform.down(cfg)
            assert platform.running_pid(cfg, "seaweedfs") is None


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A small simulated CCD: 128x128 science pixels, 6 cadences, 150 stars."""
    out = tmp_path_factory.mktemp("ffi-s3")
    return simulate_sector(
        out, sector=1, camera=1, ccd=1, n_cadences=6, n_stars=150, science_size=128, seed=11
    )


def _frames_rows(sector: int, camera: int, ccd: int, n: int, offset: float = 0.0) -> pa.Table:
    cols = {}
    for field in FRAMES:
        if field.name == "sector":
            cols[field.name] = pa.array([sector] * n, field.type)
        elif field.name == "camera":
            cols[field.name] = pa.array([camera] * n, field.type)
        elif field.name == "ccd":
            cols[field.name] = pa.array([ccd] * n, field.type)
        elif pa.types.is_string(field.type):
            cols[field.name] = pa.array([f"f{i}" for i in range(n)])
        elif pa.types.is_integer(field.type):
            cols[field.name] = pa.array(range(n), field.type)
        else:
            cols[field.name] = pa.array(np.arange(n) + offset, field.type)
    return pa.table(cols, schema=FRAMES)


def test_delta_tables_on_s3_through_every_reader(s3):
    """delta-rs writes; pyarrow, Polars (scan_delta, scan_parquet) and DuckDB read back."""
    import polars as pl

    lake = Lakehouse("s3://tess-test/readers")
    assert lake.tables() == []
    assert lake.write_partition("frames", _frames_rows(1, 1, 1, 5), 1, 1, 1) == 0
    assert lake.write_partition("frames", _frames_rows(1, 1, 2, 3), 1, 1, 2) == 1
    # replacing a partition is one commit; the other partition is untouched
    assert lake.write_partition("frames", _frames_rows(1, 1, 1, 4, 100.0), 1, 1, 1) == 2
    assert lake.tables() == ["frames"]
    table = lake.read("frames").sort_by([("ccd", "ascending"), ("cadence", "ascending")])
    assert table.schema.equals(FRAMES)
    assert table.column("ccd").to_pylist() == [1] * 4 + [2] * 3
    assert table.column("btjd").to_pylist()[:4] == [100.0, 101.0, 102.0, 103.0]
    # time travel: the first version still has the 5 original rows of CCD 1
    assert lake.delta("frames", version=0).to_pyarrow_table().num_rows == 5

    files = lake.file_uris("frames")
    assert files and all(f.startswith("s3://tess-test/readers/frames/") for f in files)
    assert lake.scan("frames").select(pl.len()).collect().item() == 7
    # Polars straight from the environment (no storage options): AWS_* + AWS_ALLOW_HTTP
    assert pl.scan_parquet(files).select(pl.len()).collect().item() == 7
    assert pl.scan_delta("s3://tess-test/readers/frames").select(pl.len()).collect().item() == 7

    got = run_query("SELECT ccd, count(*) AS n FROM frames GROUP BY ccd ORDER BY ccd", lake)
    assert got.to_pylist() == [{"ccd": 1, "n": 4}, {"ccd": 2, "n": 3}]
    with pytest.raises(QueryRefused):
        run_query("DELETE FROM frames", lake)
    with pytest.raises(Exception, match=r"(?i)permission|not allowed|access"):
        run_query("SELECT * FROM read_csv('/etc/passwd')", lake)


def test_staging_sees_objects_written_by_another_client(s3):
    """No stale listing: a chunk written by another process is seen at once (s3fs cache off)."""
    cfg, creds = s3
    lake = Lakehouse("s3://tess-test/staging-cache")
    folder = lake.path("_staging", "s0001-1-1", "run")
    first = f"{folder}/photometry/batch-00000.parquet"
    second = f"{folder}/photometry/batch-00001.parquet"
    lake.write_chunk(first, pa.table({"a": [1]}))
    assert lake.list_chunks(f"{folder}/photometry") == [first]
    # another client (think: a Dask worker) stages the next chunk
    other = platform.s3_filesystem(cfg, creds)
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [2]}), sink)
    other.pipe_file(second, sink.getvalue().to_pybytes())
    assert lake.exists(second)
    assert lake.list_chunks(f"{folder}/photometry") == [first, second]
    lake.remove(lake.path("_staging"))
    assert not lake.exists(first)


def _upload_stpubdata(fs, paths: list[Path], root: str) -> None:
    for p in paths:
        fs.pipe_file(f"{root}/{stpubdata_key(p.name)}", p.read_bytes())


def test_ingest_from_s3_source_into_s3_lake(s3, sim, tmp_path):
    """stpubdata layout on S3 -> S3 lake: the tables of a local run; `tess-ffi sql` reads them."""
    from flows.ingest import ingest_ccd

    cfg, creds = s3
    fs = platform.s3_filesystem(cfg, creds)
    _upload_stpubdata(fs, sim.paths, "tess-test/mirror")
    src = open_source("s3://tess-test/mirror")
    assert isinstance(src, S3Source)
    assert src.available_sectors() == [1]
    assert src.available_ccds(1) == [(1, 1)]
    assert [r.file_name for r in src.list_frames(1, 1, 1)] == sorted(p.name for p in sim.paths)

    summary = ingest_ccd(1, 1, 1, source="s3://tess-test/mirror", lake="s3://tess-test/ing")
    local = tmp_path / "lake"
    ingest_ccd(1, 1, 1, source=str(sim.paths[0].parent), lake=str(local))
    s3_lake, local_lake = Lakehouse("s3://tess-test/ing"), Lakehouse(str(local))
    for table, keys in (
        ("frames", ["cadence"]),
        ("stars", ["star_id"]),
        ("photometry", ["star_id", "cadence"]),
    ):
        order = [(k, "ascending") for k in keys]
        a = s3_lake.read(table).sort_by(order)
        b = local_lake.read(table).sort_by(order)
        assert a.num_rows > 0 and a.equals(b), table
    assert summary["lake"] == "s3://tess-test/ing"
    staged = [p for p in fs.find("tess-test/ing/_staging") if p.endswith(".parquet")]
    assert staged == []  # no staged chunk left after publishing

    env = client_environ(cfg.env_file, TESS_FFI_LAKE="s3://tess-test/ing")
    res = run_cli(
        ["sql", "SELECT count(*) AS n, count(DISTINCT star_id) AS s FROM photometry", "-f", "csv"],
        env,
    )
    assert res.returncode == 0, res.stderr
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    assert int(row["n"]) == summary["photometry_rows"] and int(row["s"]) == summary["stars"]
    assert creds.secret_key not in res.stdout + res.stderr


def test_s3_source_fetches_only_the_needed_hdus(s3, sim, tmp_path):
    """Byte ranges: headers first (a few kB), then exactly HDUs 0-2; a trailing HDU is skipped."""
    cfg, creds = s3
    fs = platform.s3_filesystem(cfg, creds)
    original = sim.paths[0]
    padded = tmp_path / original.name
    with fits.open(original) as hdul:
        extra = fits.ImageHDU(np.zeros((512, 512), np.float32), name="EXTRA")
        fits.HDUList([*hdul, extra]).writeto(padded)
    key = f"tess-test/padded/{stpubdata_key(original.name)}"
    fs.pipe_file(key, padded.read_bytes())
    size = padded.stat().st_size
    assert size > original.stat().st_size + 1_000_000

    src = S3Source("tess-test", "padded", attempts=1)
    (ref,) = src.list_frames(1, 1, 1)
    reader = _RangeReader(src.fs, ref.location, size)
    from tasks.ffi import hdu_spans

    spans, truncated = hdu_spans(reader, size, ref.file_name)
    assert not truncated and [s.index for s in spans] == [0, 1, 2]
    assert reader.fetched < 100_000  # the layout of a multi-MB file from its headers
    got = src.fetch(ref, tmp_path / "dl")
    assert got.read_bytes() == original.read_bytes()  # exactly the three FFI HDUs


def test_credentials_never_in_messages(s3, tmp_path):
    """A wrong secret fails with a one-line error that does not echo any key."""
    cfg, creds = s3
    bogus = "wrong-secret-" + "Z" * 20
    env = client_environ(
        cfg.env_file, AWS_SECRET_ACCESS_KEY=bogus, TESS_FFI_LAKE="s3://tess-test/readers"
    )
    res = run_cli(["sql", "SELECT 1"], env)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert bogus not in out and creds.secret_key not in out
    assert "Traceback" not in out
