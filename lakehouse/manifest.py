"""The ``ingest_manifest`` table: which sector/camera/CCDs the scheduled discovery has started.

One row per CCD (see ``lakehouse.schemas.INGEST_MANIFEST``). The table is small and has a
single writer (the ``ingest-new-sectors`` flow, whose deployment runs one tick at a time),
so a tick rewrites it whole, each write one Delta commit (only when something changed):
readers see a consistent manifest, never a half-written one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields

import pyarrow as pa

from lakehouse.schemas import INGEST_MANIFEST
from lakehouse.store import Lakehouse

TABLE = "ingest_manifest"


def utcnow() -> dt.datetime:
    """Now, UTC, microseconds."""
    return dt.datetime.now(dt.UTC)


@dataclass
class ManifestRow:
    """One CCD of the manifest (columns of ``INGEST_MANIFEST``)."""

    sector: int
    camera: int
    ccd: int
    status: str
    step: str
    attempts: int = 0
    flow_run_id: str | None = None
    ingest_flow_run_id: str | None = None
    analysis_flow_run_id: str | None = None
    source: str = ""
    first_seen: dt.datetime = field(default_factory=utcnow)
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    updated_at: dt.datetime = field(default_factory=utcnow)
    message: str = ""

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.sector, self.camera, self.ccd)

    @property
    def label(self) -> str:
        return f"s{self.sector:04d}-{self.camera}-{self.ccd}"


_NAMES = [f.name for f in fields(ManifestRow)]
assert _NAMES == INGEST_MANIFEST.names, "ManifestRow and INGEST_MANIFEST disagree"


def read_manifest(lake: Lakehouse) -> dict[tuple[int, int, int], ManifestRow]:
    """The manifest rows by (sector, camera, ccd); empty when the table does not exist yet."""
    if not lake.has_table(TABLE):
        return {}
    table = lake.delta(TABLE).to_pyarrow_table()
    table = table.select(INGEST_MANIFEST.names).cast(INGEST_MANIFEST)
    rows = {}
    for rec in table.to_pylist():
        row = ManifestRow(**rec)
        rows[row.key] = row
    return rows


def write_manifest(lake: Lakehouse, rows: dict[tuple[int, int, int], ManifestRow]) -> int:
    """Replace the whole manifest in one Delta commit; returns the new table version."""
    from deltalake import write_deltalake

    ordered = [asdict(rows[k]) for k in sorted(rows)]
    table = pa.Table.from_pylist(ordered, schema=INGEST_MANIFEST)
    write_deltalake(
        lake.table_uri(TABLE),
        table,
        mode="overwrite",
        storage_options=lake.storage_options,
    )
    return lake.delta(TABLE).version()
