"""The lakehouse: Delta Lake tables under one URI, partitioned by sector/camera/ccd.

Why Delta Lake (through ``deltalake``, delta-rs): publishing a partition is one atomic
commit to the table's transaction log (``mode="overwrite"`` with a partition predicate),
so readers see the previous or the new version of a CCD, never half of one and never
both; the previous version stays readable (time travel) until vacuumed; the data files
are plain Parquet that DuckDB, Polars (``scan_delta``) and pyarrow read directly; and the
same code path works on a local folder and on S3.

Resumable runs write their intermediate Parquet chunks under
``{lake}/_staging/s{SSSS}-{camera}-{ccd}/{run_key}/`` (each chunk appears atomically:
written under a temporary name, then renamed or PUT whole), and publish them at the end.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse.schemas import PARTITION_COLUMNS, TABLES

DEFAULT_LAKE = "./lake"


class LakehouseError(RuntimeError):
    """A lakehouse read or write that cannot be done, with a one-line reason."""


#: exceptions of the storage stack that mean "the lake cannot be read or written now"
_IO_MODULES = ("botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp", "deltalake", "_internal")


def _one_line_io(exc: BaseException) -> str:
    """A compact one-line text of a storage error (delta-rs errors span several lines)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    parts = [p.strip(" ↳\t") for p in text.splitlines() if p.strip(" ↳\t")]
    line = "; ".join(parts) if parts else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _lake_io(what: str):
    """Turn storage failures of a Lakehouse method into a one-line `LakehouseError`
    (``FileNotFoundError`` and `LakehouseError` pass through unchanged)."""
    import functools

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except (LakehouseError, FileNotFoundError):
                raise
            except Exception as exc:
                storage = isinstance(exc, OSError) or type(exc).__module__.startswith(_IO_MODULES)
                if not storage:
                    raise
                raise LakehouseError(
                    f"lake {self.uri}: {what} failed: {type(exc).__name__}: {_one_line_io(exc)}"
                ) from exc

        return wrapper

    return decorate


def resolve_uri(uri: str | os.PathLike | None = None) -> str:
    """The lake URI: the argument, else ``TESS_FFI_LAKE``, else ``./lake`` (absolute path)."""
    value = str(uri) if uri else os.environ.get("TESS_FFI_LAKE") or DEFAULT_LAKE
    if value.startswith("s3://"):
        return value.rstrip("/")
    if "://" in value and not value.startswith("file://"):
        raise LakehouseError(
            f"unsupported lake URI {value!r}: use a local path or s3://bucket/prefix"
        )
    return str(Path(value.removeprefix("file://")).expanduser().resolve())


def s3_storage_options() -> dict[str, str]:
    """Storage options for delta-rs from the standard AWS environment variables.

    Credentials are read from the environment at call time and never logged or returned
    in error messages.
    """
    opts: dict[str, str] = {}
    env = os.environ
    for key, opt in (
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        ("AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN"),
        ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
    ):
        if env.get(key):
            opts[opt] = env[key]
    opts["AWS_REGION"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL", "")
    if endpoint.startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"
    if endpoint:
        opts["AWS_S3_ADDRESSING_STYLE"] = "path"
        opts["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    # Delta commits on S3: a conditional PUT (``If-None-Match: *``, supported by AWS S3,
    # SeaweedFS, MinIO, R2) creates log entry N+1 only if nobody else did, so concurrent
    # writers cannot overwrite each other's commit and no lock service is needed. For a
    # store without conditional writes, TESS_FFI_S3_CONDITIONAL_PUT=0 falls back to
    # copy-then-delete commits, which are safe only with one writer per table at a time.
    if env.get("TESS_FFI_S3_CONDITIONAL_PUT", "1").strip().lower() in {"0", "false", "no"}:
        opts["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    else:
        opts["conditional_put"] = "etag"
    return opts


def s3_filesystem_options() -> dict:
    """fsspec/s3fs options from the same environment variables as :func:`s3_storage_options`."""
    env = os.environ
    opts: dict = {}
    if env.get("AWS_ACCESS_KEY_ID"):
        opts["key"] = env["AWS_ACCESS_KEY_ID"]
        opts["secret"] = env.get("AWS_SECRET_ACCESS_KEY")
    if env.get("AWS_ENDPOINT_URL"):
        opts["endpoint_url"] = env["AWS_ENDPOINT_URL"]
    if env.get("AWS_SESSION_TOKEN"):
        opts["token"] = env["AWS_SESSION_TOKEN"]
    opts["client_kwargs"] = {
        "region_name": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    }
    # no listing cache and no shared instance: another process (a Dask worker, a second
    # flow run) may add staged chunks or tables at any time, and a cached directory listing
    # would hide them (s3fs answers exists()/info() from a cached parent listing)
    opts["use_listings_cache"] = False
    opts["skip_instance_cache"] = True
    return opts


@dataclass(frozen=True)
class Partition:
    """One CCD of one sector: the unit of ingestion and publication."""

    sector: int
    camera: int
    ccd: int

    @property
    def predicate(self) -> str:
        """Delta predicate selecting exactly this partition."""
        return f"sector = {self.sector} AND camera = {self.camera} AND ccd = {self.ccd}"

    @property
    def label(self) -> str:
        """Short label, e.g. ``s0001-1-1``."""
        return f"s{self.sector:04d}-{self.camera}-{self.ccd}"


class Lakehouse:
    """All tables of one lake URI (local folder or ``s3://bucket/prefix``)."""

    def __init__(self, uri: str | os.PathLike | None = None) -> None:
        self.uri = resolve_uri(uri)
        self.is_s3 = self.uri.startswith("s3://")
        if self.is_s3:
            self.fs = fsspec.filesystem("s3", **s3_filesystem_options())
            self._root = self.uri.removeprefix("s3://")
        else:
            self.fs = fsspec.filesystem("file")
            self._root = self.uri

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        """Filesystem path (no scheme) below the lake root."""
        return posixpath.join(self._root, *parts)

    def url(self, *parts: str) -> str:
        """Full URI (with ``s3://`` where applicable) below the lake root."""
        p = self.path(*parts)
        return f"s3://{p}" if self.is_s3 else p

    def table_uri(self, table: str) -> str:
        """URI of a Delta table."""
        return self.url(table)

    @property
    def storage_options(self) -> dict[str, str] | None:
        """delta-rs storage options (None for local folders)."""
        return s3_storage_options() if self.is_s3 else None

    # ----------------------------------------------------------------- tables
    @_lake_io("reading a table's log")
    def has_table(self, table: str) -> bool:
        """True when the Delta table exists (has a transaction log)."""
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.table_uri(table), storage_options=self.storage_options)

    @_lake_io("listing tables")
    def tables(self) -> list[str]:
        """Names of the published tables, sorted."""
        try:
            entries = self.fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return []
        names = sorted(posixpath.basename(e.rstrip("/")) for e in entries)
        return [n for n in names if not n.startswith("_") and self.has_table(n)]

    def delta(self, table: str, version: int | None = None):
        """The ``deltalake.DeltaTable`` of a table (raises LakehouseError when absent)."""
        from deltalake import DeltaTable

        if not self.has_table(table):
            raise LakehouseError(f"table {table!r} does not exist in the lake at {self.uri}")
        return DeltaTable(
            self.table_uri(table), version=version, storage_options=self.storage_options
        )

    @_lake_io("listing a table's files")
    def file_uris(self, table: str, partition: Partition | None = None) -> list[str]:
        """Parquet files of the current version of a table (optionally one partition)."""
        dt = self.delta(table)
        filters = None
        if partition is not None:
            filters = [
                ("sector", "=", str(partition.sector)),
                ("camera", "=", str(partition.camera)),
                ("ccd", "=", str(partition.ccd)),
            ]
        return list(dt.file_uris(filters))

    @_lake_io("reading a table")
    def read(
        self,
        table: str,
        sector: int | None = None,
        camera: int | None = None,
        ccd: int | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Read the published version of a table, optionally one sector/camera/CCD."""
        import pyarrow.dataset as ds

        dt = self.delta(table)
        dataset = dt.to_pyarrow_dataset()
        expr = None
        for name, value in (("sector", sector), ("camera", camera), ("ccd", ccd)):
            if value is not None:
                term = ds.field(name) == value
                expr = term if expr is None else expr & term
        result = dataset.to_table(columns=columns, filter=expr)
        schema = TABLES.get(table)
        if schema is not None and columns is None:
            result = result.select(schema.names).cast(schema)
        return result

    def scan(self, table: str):
        """A Polars LazyFrame over the published version of a table."""
        import polars as pl

        return pl.scan_delta(self.table_uri(table), storage_options=self.storage_options)

    def version(self, table: str) -> int | None:
        """Current Delta version of a table, None when absent."""
        return self.delta(table).version() if self.has_table(table) else None

    @_lake_io("publishing a partition")
    def write_partition(
        self,
        table: str,
        data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
        sector: int,
        camera: int,
        ccd: int,
        schema: pa.Schema | None = None,
    ) -> int:
        """Atomically replace one sector/camera/CCD partition of a table; returns the new version.

        ``data`` must hold exactly that partition (checked while streaming) and is cast to
        the table's schema from ``lakehouse.schemas.TABLES`` (or ``schema``).
        """
        from deltalake import write_deltalake

        schema = schema or TABLES[table]
        part = Partition(sector, camera, ccd)
        reader = _as_reader(data, schema, part)
        write_deltalake(
            self.table_uri(table),
            reader,
            partition_by=list(PARTITION_COLUMNS),
            mode="overwrite",
            predicate=part.predicate,
            storage_options=self.storage_options,
            schema_mode=None,
        )
        return self.delta(table).version()

    # ---------------------------------------------------------------- staging
    def staging_dir(self, part: Partition, run_key: str) -> str:
        """Staging folder (no scheme) of one resumable run."""
        return self.path("_staging", part.label, run_key)

    @_lake_io("staging a chunk")
    def write_chunk(self, path: str, table: pa.Table) -> None:
        """Write a Parquet chunk so that it appears atomically at ``path``.

        Float columns are written BYTE_STREAM_SPLIT + lz4 without a dictionary (measured
        values hardly repeat: a dictionary costs time and bytes), the other columns (ids,
        cadences, partition values, flags) dictionary-encoded + zstd.
        """
        parent = posixpath.dirname(path)
        self.fs.makedirs(parent, exist_ok=True)
        options = _chunk_options(table.schema)
        if self.is_s3:
            # serialise first, then one PUT (multipart above 50 MB): the object appears whole
            # or not at all, and a failed serialisation leaves nothing behind (closing a
            # half-written s3fs file would upload the partial bytes)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, **options)
            self.fs.pipe_file(path, sink.getvalue().to_pybytes())
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        pq.write_table(table, tmp, **options)
        os.replace(tmp, path)

    @_lake_io("checking a path")
    def exists(self, path: str) -> bool:
        """True when a path below the lake exists."""
        return self.fs.exists(path)

    @_lake_io("listing staged chunks")
    def list_chunks(self, folder: str) -> list[str]:
        """Completed Parquet chunks in a staging folder, sorted by name."""
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".parquet"))

    @_lake_io("reading a staged chunk")
    def read_chunk(self, path: str) -> pa.Table:
        """Read one staged Parquet chunk."""
        with self.fs.open(path, "rb") as fh:
            return pq.read_table(fh)

    def iter_chunks(self, paths: list[str]) -> Iterator[pa.RecordBatch]:
        """Stream the record batches of staged chunks in order (bounded memory)."""
        for p in paths:
            with self.fs.open(p, "rb") as fh:
                pf = pq.ParquetFile(fh)
                yield from pf.iter_batches()

    @_lake_io("removing staged files")
    def remove(self, path: str) -> None:
        """Remove a staging folder or file (missing is fine)."""
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def _chunk_options(schema: pa.Schema) -> dict:
    """``pq.write_table`` options of a staged chunk (see `Lakehouse.write_chunk`)."""
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    return {
        "compression": {f.name: "lz4" if f.name in floats else "zstd" for f in schema},
        "use_dictionary": [f.name for f in schema if f.name not in floats],
        "column_encoding": dict.fromkeys(floats, "BYTE_STREAM_SPLIT"),
    }


def _as_reader(
    data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
    schema: pa.Schema,
    part: Partition,
) -> pa.RecordBatchReader:
    """Cast ``data`` batch by batch to ``schema``, checking it holds only ``part``."""
    import pyarrow.compute as pc

    if isinstance(data, pa.Table):
        batches: Iterable[pa.RecordBatch] = data.to_batches()
    elif isinstance(data, pa.RecordBatchReader):
        batches = data
    else:
        batches = data

    def cast_batches() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            for name, value in (
                ("sector", part.sector),
                ("camera", part.camera),
                ("ccd", part.ccd),
            ):
                col = batch.column(name)
                if not pc.all(pc.equal(col, value)).as_py():
                    raise LakehouseError(
                        f"rows of another partition in a write to {part.label} (column {name})"
                    )
            table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            yield from table.to_batches()

    return pa.RecordBatchReader.from_batches(schema, cast_batches())
