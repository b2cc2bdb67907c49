"""Sector discovery at every source kind and the ingest_manifest table (fast, no servers)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from flows.ingest_new_sectors import _redact
from lakehouse.manifest import ManifestRow, read_manifest, write_manifest
from lakehouse.schemas import INGEST_MANIFEST, TABLES
from lakehouse.sql import run_query
from lakehouse.store import Lakehouse
from tasks.sources import HttpMirrorSource, LocalSource, MastSource
from tests.mast_server import MastServer, make_tiny_sector

FAST = {"attempts": 1, "base_delay": 0.0}


def test_every_source_lists_its_sectors_and_ccds(tmp_path):
    root = tmp_path / "served"
    make_tiny_sector(root, sector=1, cameras=(1, 2), ccds=(1, 3), n_frames=1)
    make_tiny_sector(root / "s12", sector=12, cameras=(4,), ccds=(2,), n_frames=1)
    expected = {1: [(1, 1), (1, 3), (2, 1), (2, 3)], 12: [(4, 2)]}
    for index_style in ("python", "apache", "nginx"):
        with MastServer(root, index_style=index_style) as srv:
            for src in (
                MastSource(base_url=srv.url, **FAST),
                HttpMirrorSource(srv.mirror_url, **FAST),
            ):
                with src:
                    assert src.available_sectors() == [1, 12], (index_style, src.describe())
                    for sector, ccds in expected.items():
                        assert src.available_ccds(sector) == ccds
                    if isinstance(src, HttpMirrorSource):
                        assert src.available_ccds(13) == []
    local = LocalSource(root)
    assert local.available_ccds(12) == [(4, 2)]


def test_manifest_roundtrip_and_sql(tmp_path):
    lake = Lakehouse(str(tmp_path / "lake"))
    assert read_manifest(lake) == {}
    t0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    rows = {
        (1, 1, 1): ManifestRow(
            1, 1, 1, "done", "find-variables", 1, "r2", "r1", "r2", "mast", t0, t0, t0, t0, ""
        ),
        (1, 1, 2): ManifestRow(1, 1, 2, "failed", "ingest-ccd", 2, "r3", "r3", message="HTTP 404"),
        (2, 4, 4): ManifestRow(2, 4, 4, "queued", "ingest-ccd"),
    }
    assert write_manifest(lake, rows) == 0
    got = read_manifest(lake)
    assert set(got) == set(rows)
    assert got[(1, 1, 1)] == rows[(1, 1, 1)]
    assert got[(1, 1, 2)].message == "HTTP 404" and got[(2, 4, 4)].flow_run_id is None
    rows[(2, 4, 4)].status = "ingesting"
    assert write_manifest(lake, rows) == 1  # the whole table, one commit
    assert TABLES["ingest_manifest"] is INGEST_MANIFEST
    assert lake.read("ingest_manifest").schema.equals(INGEST_MANIFEST)
    res = run_query(
        "SELECT status, count(*) AS n FROM ingest_manifest GROUP BY status ORDER BY status", lake
    )
    assert res.to_pylist() == [
        {"status": "done", "n": 1},
        {"status": "failed", "n": 1},
        {"status": "ingesting", "n": 1},
    ]
    assert isinstance(lake.read("ingest_manifest"), pa.Table)


def test_sources_are_recorded_without_credentials():
    assert _redact("https://user:pa55@mirror.example/base") == "https://mirror.example/base"
    assert _redact("https://mirror.example/base") == "https://mirror.example/base"
    assert _redact("mast") == "mast" and _redact("s3://bucket/prefix") == "s3://bucket/prefix"
