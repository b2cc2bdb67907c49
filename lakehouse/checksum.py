"""Content checksums of lakehouse tables: equal content gives equal checksums.

A table is cast to its contract schema (``lakehouse.schemas.TABLES``), sorted by its key
(partition columns + ``expectations.suites.KEYS``) and written as Arrow IPC; the SHA-256 of
those bytes is the checksum. Row order, file layout and Delta versions do not matter; every
value (bit for bit, NaN included) does. `compare` also counts rows lost and duplicated
against a reference by key, which is what the fault tests report.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.schemas import PARTITION_COLUMNS, TABLES

#: key columns of each table within a partition (unique there)
KEYS: dict[str, tuple[str, ...]] = {
    "frames": ("cadence",),
    "stars": ("star_id",),
    "photometry": ("star_id", "cadence"),
    "rejected_frames": ("file_name",),
    "epoch_qc": ("cadence",),
    "star_qc": ("star_id",),
    "lightcurves": ("star_id", "cadence"),
    "features": ("star_id",),
    "candidates": ("rank",),
    "ingest_manifest": (),
}


def sort_key(table_name: str, table: pa.Table) -> list[str]:
    """Columns to sort ``table_name`` by: partition columns present, then its key."""
    cols = [c for c in PARTITION_COLUMNS if c in table.column_names]
    cols += [k for k in KEYS.get(table_name, ()) if k not in cols and k in table.column_names]
    return cols or list(table.column_names[:1])


def canonical(table_name: str, table: pa.Table) -> pa.Table:
    """``table`` cast to its contract schema and sorted by its key."""
    schema = TABLES.get(table_name)
    if schema is not None and set(schema.names) <= set(table.column_names):
        table = table.select(schema.names).cast(schema)
    keys = sort_key(table_name, table)
    if table.num_rows:
        table = table.sort_by([(k, "ascending") for k in keys])
    return table.combine_chunks()


def checksum(table_name: str, table: pa.Table) -> str:
    """SHA-256 (hex) of the canonical Arrow IPC bytes of a table."""
    t = canonical(table_name, table)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as writer:
        for batch in t.to_batches(max_chunksize=1 << 20):
            writer.write_batch(batch)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


@dataclass
class Comparison:
    """A table compared with a reference: rows lost / duplicated / extra, equal content."""

    table: str
    rows: int
    reference_rows: int
    lost: int  # reference keys missing here
    duplicated: int  # rows beyond one per key, plus rows whose key the reference lacks
    equal: bool  # same checksum


def _keys(table_name: str, table: pa.Table) -> pa.Array:
    cols = sort_key(table_name, table)
    if len(cols) == 1:
        return table.column(cols[0]).combine_chunks()
    parts = [pc.cast(table.column(c), pa.string()) for c in cols]
    return pc.binary_join_element_wise(*parts, "|").combine_chunks()


def compare(table_name: str, table: pa.Table, reference: pa.Table) -> Comparison:
    """Compare a table with a reference of the same name, by key and by checksum."""
    keys, ref_keys = _keys(table_name, table), _keys(table_name, reference)
    distinct = pc.unique(keys)
    ref_distinct = pc.unique(ref_keys)
    lost = len(ref_distinct) - (pc.sum(pc.is_in(ref_distinct, value_set=distinct)).as_py() or 0)
    extra = len(distinct) - (pc.sum(pc.is_in(distinct, value_set=ref_distinct)).as_py() or 0)
    duplicated = (table.num_rows - len(distinct)) + extra
    return Comparison(
        table=table_name,
        rows=table.num_rows,
        reference_rows=reference.num_rows,
        lost=int(lost or 0),
        duplicated=int(duplicated),
        equal=checksum(table_name, table) == checksum(table_name, reference),
    )
