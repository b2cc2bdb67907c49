"""The data-quality gate: run a table's suite on pandas/Polars/Arrow data before publication.

``validate(table, data, partition, context)`` runs the table's suite (`expectations.suites`)
with Great Expectations 1.x on pandas (GX's SQL path does not work with DuckDB) and returns
a `Report`; `raise_if_failed` turns failed reports into `ValidationFailed`, whose message is
one line naming the table(s), the partition, the failed expectations and the report path.
Publishing code validates *everything* first and writes only when every report passed, so
a failing suite leaves the previous version of the partition in place.

Reports, one JSON per (table, partition, run) plus GX's Data Docs HTML site:

- local lake: ``{lake}/_reports/{partition}/{run_id}/{table}.json`` and the Data Docs at
  ``{lake}/_reports/gx/uncommitted/data_docs/local_site/index.html``;
- ``s3://`` lake: the same below a local folder (``TESS_FFI_REPORTS``, default
  ``./reports``); the JSON is also copied to ``{lake}/_reports/...`` in the bucket.

The GX project (suites, validation definitions, checkpoints, results) lives in
``{reports}/gx``; concurrent validations (threads, processes) take an exclusive ``flock``
on ``{reports}/.gx.lock`` while they use it. GX is imported on first use (~4 s) with its
analytics and progress bars off.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import itertools
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from expectations.suites import (
    CHUNKED,
    SORT_BY,
    PartitionContext,
    build_suite,
    derive,
)
from lakehouse.schemas import TABLES, star_id_base
from lakehouse.store import Lakehouse, LakehouseError

log = logging.getLogger("tess_ffi.quality")

REPORTS_ENV = "TESS_FFI_REPORTS"
DEFAULT_REPORTS = "./reports"
DATASOURCE = "tess_ffi"
BATCH_DEFINITION = "whole-dataframe"
#: failed expectations named in the one-line reason, per table
MAX_REASONS = 3
#: rows per validated slice of a chunked table held in memory
SLICE_ROWS = 2_000_000
#: in-memory batches larger than this [bytes] get no GX data fingerprint (see `_gx`)
FINGERPRINT_MAX_BYTES = 32e6
_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}


class ValidationFailed(LakehouseError):
    """A suite failed: the partition was not published (one-line message, with the report)."""

    def __init__(self, message: str, reports: list[Report] | None = None) -> None:
        super().__init__(message)
        self.reports = reports or []


@dataclass
class Report:
    """The outcome of one table's suite on one partition in one run."""

    table: str
    partition: str  # e.g. s0001-1-1
    run_id: str
    success: bool
    n_rows: int
    n_chunks: int
    n_expectations: int
    failed: list[dict] = field(default_factory=list)  # one dict per failed expectation
    failed_chunks: list[str] = field(default_factory=list)
    json_path: str = ""
    data_docs: str = ""  # file:// URL of the Data Docs page of (a chunk of) this validation
    data_docs_index: str = ""
    validated_at: str = ""

    def reason(self) -> str:
        """Short text of the failed expectations, e.g. ``flux_err > 0 ... (3 rows)``."""
        parts = []
        for f in self.failed[:MAX_REASONS]:
            what = f.get("description") or f"{f['expectation']}({f.get('column') or ''})"
            count = f.get("unexpected_count")
            if f.get("exception"):
                parts.append(f"{what} (error: {f['exception']})")
            elif count:
                parts.append(f"{what} ({count} rows)")
            elif f.get("observed_value") is not None:
                parts.append(f"{what} (observed {_short(f['observed_value'])})")
            else:
                parts.append(what)
        if len(self.failed) > MAX_REASONS:
            parts.append(f"+{len(self.failed) - MAX_REASONS} more")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def _short(value, n: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def failure_message(reports: list[Report]) -> str:
    """The one-line reason of failed reports (empty when all passed)."""
    bad = [r for r in reports if not r.success]
    if not bad:
        return ""
    first = bad[0]
    tables = "; ".join(f"{r.table}: {r.reason()}" for r in bad)
    return (
        f"data-quality gate failed for {first.partition} (run {first.run_id}), "
        f"not published: {tables}; report {first.json_path}"
    )


def raise_if_failed(reports: list[Report]) -> None:
    """Raise `ValidationFailed` (one line) when any report failed."""
    message = failure_message(reports)
    if message:
        raise ValidationFailed(message, reports)


# --------------------------------------------------------------------------- conversion

_NULLABLE = {
    pa.int8(): "Int8",
    pa.int16(): "Int16",
    pa.int32(): "Int32",
    pa.int64(): "Int64",
    pa.uint8(): "UInt8",
    pa.uint16(): "UInt16",
    pa.uint32(): "UInt32",
    pa.uint64(): "UInt64",
    pa.bool_(): "boolean",
}


def to_arrow(data) -> pa.Table:
    """An Arrow table from Arrow, Polars or pandas data."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    mod = type(data).__module__
    if mod.startswith("polars"):
        return data.to_arrow()
    if mod.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"cannot validate data of type {type(data).__name__}")


def to_pandas(data):
    """A pandas dataframe for GX: integer/bool columns with nulls become nullable dtypes,
    strings ``string`` dtype, so types and nulls survive the conversion."""
    import pandas as pd

    if type(data).__module__.startswith("pandas"):
        return data.copy()
    table = to_arrow(data)
    cols = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            cols[name] = pd.Series(col.to_pandas(types_mapper=_string_mapper), name=name)
        elif col.null_count and t in _NULLABLE:
            cols[name] = pd.Series(
                col.to_pandas(types_mapper={t: pd.api.types.pandas_dtype(_NULLABLE[t])}.get),
                name=name,
            )
        else:
            cols[name] = pd.Series(col.to_pandas(), name=name)
    return pd.DataFrame(cols, index=pd.RangeIndex(table.num_rows))


def _string_mapper(t):
    import pandas as pd

    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pd.StringDtype()
    return None


def _prepare(table: str, data, ctx: PartitionContext):
    df = to_pandas(data)
    keys = [k for k in SORT_BY.get(table, ()) if k in df.columns]
    if keys and len(df):
        df = df.sort_values(keys, kind="stable").reset_index(drop=True)
    return derive(table, df, ctx)


# --------------------------------------------------------------------------- reports dir


def reports_dir(lake: Lakehouse | None = None) -> Path:
    """Where reports go: ``{lake}/_reports`` for a local lake, else ``TESS_FFI_REPORTS``
    (default ``./reports``)."""
    if lake is not None and not lake.is_s3:
        return Path(lake.uri) / "_reports"
    env = os.environ.get(REPORTS_ENV, "").strip()
    return Path(env or DEFAULT_REPORTS).expanduser().resolve()


def new_run_id(key: str | None = None) -> str:
    """A run id for reports: UTC time plus the run key (or a random suffix)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = re.sub(r"[^A-Za-z0-9_.-]", "-", key) if key else uuid.uuid4().hex[:8]
    return f"{stamp}-{suffix}"


# --------------------------------------------------------------------------- GX project


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.execution_engine import pandas_execution_engine as engine

    # GX fingerprints every in-memory batch below HASH_THRESHOLD bytes (an md5 of all its
    # rows, only stored as a batch marker): ~0.3 s per 2-million-row chunk, per validation
    engine.HASH_THRESHOLD = min(engine.HASH_THRESHOLD, FINGERPRINT_MAX_BYTES)
    return gx


@contextlib.contextmanager
def _project_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".gx.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _context(root: Path):
    """The file-mode GX project under ``root`` (created on first use, progress bars off)."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    fresh = not (root / "gx" / "great_expectations.yml").exists()
    context = gx.get_context(mode="file", project_root_dir=str(root))
    if fresh or context.variables.progress_bars is None:
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        context.variables.save()
    return context


class _Validator:
    """Suite + validation definition + checkpoint of one table for one partition.

    They are replaced on every use (delete + add: cheaper in GX than an update, which
    compares every expectation), under the project lock.
    """

    def __init__(
        self, context, table: str, ctx: PartitionContext, n_rows: int | None, suffix: str = ""
    ) -> None:
        gx = _gx()
        name = f"{table}.{ctx.label}{suffix}"
        ds = context.data_sources.add_or_update_pandas(DATASOURCE)
        try:
            asset = ds.get_asset(table)
        except LookupError:
            asset = ds.add_dataframe_asset(table)
        try:
            batch = asset.get_batch_definition(BATCH_DEFINITION)
        except KeyError:
            batch = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
        for factory in (context.checkpoints, context.validation_definitions, context.suites):
            with contextlib.suppress(Exception):
                factory.delete(name)
        self.suite = context.suites.add(
            gx.ExpectationSuite(name=name, expectations=build_suite(table, ctx, n_rows))
        )
        self.definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=self.suite)
        )
        self.checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[self.definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
                result_format=_RESULT_FORMAT,
            )
        )
        self.context = context
        self.batch = batch
        self.n_expectations = len(self.suite.expectations)

    def _validate(self, df, result_format):
        # Batch.validate stores nothing (ValidationDefinition.run would store every result)
        batch = self.batch.get_batch(batch_parameters={"dataframe": df})
        return batch.validate(self.suite, result_format=result_format)

    def passes(self, df) -> bool:
        """Quick pass/fail (GX ``BOOLEAN_ONLY``: no unexpected-value lists, nothing stored)."""
        return bool(self._validate(df, {"result_format": "BOOLEAN_ONLY"}).success)

    def details(self, df):
        """Full result (``SUMMARY``) without storing it."""
        return self._validate(df, _RESULT_FORMAT)

    def document(self, df, run_id: str):
        """Full result through the checkpoint: stored, rendered into the Data Docs.

        Returns (validation result, file:// URL of its Data Docs page or "").
        """
        from great_expectations.core.run_identifier import RunIdentifier

        res = self.checkpoint.run(
            batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=run_id)
        )
        key, result = next(iter(res.run_results.items()))
        url = ""
        with contextlib.suppress(Exception):
            urls = self.context.get_docs_sites_urls(resource_identifier=key)
            url = next((u["site_url"] for u in urls if u.get("site_url")), "")
        return result, url


def _failures(result) -> list[dict]:
    out = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kw = cfg.kwargs
        res = r.result or {}
        exc = (r.exception_info or {}).get("exception_message") if r.exception_info else None
        if exc is None and isinstance(r.exception_info, dict):
            for v in r.exception_info.values():
                if isinstance(v, dict) and v.get("raised_exception"):
                    exc = v.get("exception_message")
        column = (
            kw.get("column")
            or kw.get("column_list")
            or ([kw["column_A"], kw["column_B"]] if "column_A" in kw else None)
        )
        out.append(
            _jsonable(
                {
                    "expectation": cfg.type,
                    "description": cfg.description or "",
                    "column": column,
                    "unexpected_count": res.get("unexpected_count"),
                    "unexpected_percent": res.get("unexpected_percent"),
                    "observed_value": res.get("observed_value"),
                    "sample": (res.get("partial_unexpected_list") or [])[:5],
                    "exception": str(exc).splitlines()[0][:200] if exc else None,
                }
            )
        )
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _merge(total: dict[str, dict], failures: list[dict], chunk: str) -> None:
    """Add one chunk's failures to the running per-expectation totals."""
    for f in failures:
        key = f"{f['expectation']}|{f['description']}|{f['column']}"
        if key not in total:
            total[key] = {**f, "chunks": [chunk]}
            continue
        t = total[key]
        t["chunks"].append(chunk)
        if f.get("unexpected_count") is not None:
            t["unexpected_count"] = (t.get("unexpected_count") or 0) + f["unexpected_count"]


# --------------------------------------------------------------------------- the gate


class Gate:
    """A validation session: one reports folder, one run id, one GX project.

    Every table gets a JSON report; failed validations (and all of them with ``docs=True``)
    are also stored in the GX project and rendered into its Data Docs.
    """

    def __init__(
        self,
        lake: Lakehouse | str | None = None,
        run_id: str | None = None,
        reports: str | os.PathLike | None = None,
        docs: bool = False,
    ) -> None:
        self.lake = lake if isinstance(lake, Lakehouse) or lake is None else Lakehouse(lake)
        self.root = Path(reports).resolve() if reports else reports_dir(self.lake)
        self.run_id = run_id or new_run_id()
        self.docs = docs

    # -- public
    def validate(self, table: str, data, ctx: PartitionContext) -> Report:
        """Run ``table``'s suite on the whole of ``data`` (pandas, Polars or Arrow)."""
        df = _prepare(table, data, ctx)
        failed, url = [], ""
        with _project_lock(self.root):
            v = _Validator(_context(self.root), table, ctx, len(df))
            ok = v.passes(df)
            if not ok or self.docs:
                result, url = v.document(df, self.run_id)
                failed = _failures(result)
                ok = bool(result.success)
        report = Report(
            table=table,
            partition=ctx.label,
            run_id=self.run_id,
            success=ok,
            n_rows=len(df),
            n_chunks=1,
            n_expectations=v.n_expectations,
            failed=failed,
            data_docs=url,
        )
        return self._save(report)

    def validate_chunks(
        self, table: str, chunks: Iterable[tuple[str, pa.Table]], ctx: PartitionContext
    ) -> list[Report]:
        """Validate a big table chunk by chunk (each chunk holds whole groups, see
        `expectations.suites.CHUNKED`), then its derived coverage table. Returns both reports.
        """
        key = CHUNKED[table]
        totals: dict[str, dict] = {}
        counts: dict[int, list[int]] = {}
        failed_chunks: list[str] = []
        n_rows = n_chunks = 0
        url = ""
        documented = False
        with _project_lock(self.root):
            context = _context(self.root)
            v_all = _Validator(context, table, ctx, None)
            v_empty = None  # an empty chunk: the suite without column aggregates
            for label, chunk in chunks:
                df = _prepare(table, chunk, ctx)
                n_rows += len(df)
                if len(df) == 0:
                    v_empty = v_empty or _Validator(context, table, ctx, 0, ".empty")
                v = v_all if len(df) else v_empty
                n_chunks += 1
                if key in df.columns and len(df):
                    values, n = np.unique(
                        df[key].to_numpy(dtype="float64", na_value=np.nan), return_counts=True
                    )
                    for val, c in zip(values, n, strict=True):
                        if math.isfinite(val):
                            entry = counts.setdefault(int(val), [0, 0])
                            entry[0] += int(c)
                            entry[1] += 1
                if v.passes(df):
                    if self.docs and n_chunks == 1:  # a page for the first chunk
                        _res, url = v.document(df, self.run_id)
                    continue
                failed_chunks.append(label)
                if not documented:  # a Data Docs page for the first failing chunk
                    result, url = v.document(df, self.run_id)
                    documented = True
                else:
                    result = v.details(df)
                _merge(totals, _failures(result), label)
        report = Report(
            table=table,
            partition=ctx.label,
            run_id=self.run_id,
            success=not failed_chunks,
            n_rows=n_rows,
            n_chunks=n_chunks,
            n_expectations=v_all.n_expectations,
            failed=list(totals.values()),
            failed_chunks=failed_chunks,
            data_docs=url,
        )
        coverage = self.validate(f"{table}_coverage", _coverage(table, counts, ctx), ctx)
        return [self._save(report), coverage]

    # -- reports
    def _save(self, report: Report) -> Report:
        report.validated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        report.data_docs_index = (
            self.root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        ).as_uri()
        rel = Path(report.partition) / self.run_id / f"{report.table}.json"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        report.json_path = str(path)
        text = json.dumps(_jsonable(report.to_dict()), indent=2) + "\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        if self.lake is not None and self.lake.is_s3:
            try:
                self.lake.fs.pipe_file(self.lake.path("_reports", str(rel)), text.encode())
            except Exception as exc:  # the local report is what counts
                log.warning("report not copied to the lake: %s", str(exc).splitlines()[0])
        if not report.success:
            log.warning("%s %s: %s", report.table, report.partition, report.reason())
        return report


def _coverage(table: str, counts: dict[int, list[int]], ctx: PartitionContext):
    """Derived per-group coverage of a chunked table (see `expectations.suites`)."""
    keys = set(counts)
    if table == "photometry":
        known = set((ctx.frame_btjd or {}).keys())
        keys |= known
        name, flag = "cadence", "in_frames"
        is_known = (lambda k: k in known) if ctx.frame_btjd is not None else (lambda k: True)
    else:
        base = star_id_base(ctx.sector, ctx.camera, ctx.ccd)
        n = ctx.n_stars
        name, flag = "star_id", "in_catalogue"

        def is_known(k: int) -> bool:
            return n is None or base <= k < base + n

    ordered = sorted(keys)
    return pa.table(
        {
            name: pa.array(ordered, pa.int64()),
            "n_rows": pa.array([counts.get(k, [0, 0])[0] for k in ordered], pa.int64()),
            "n_chunks": pa.array([counts.get(k, [0, 0])[1] for k in ordered], pa.int64()),
            flag: pa.array([is_known(k) for k in ordered], pa.bool_()),
        }
    )


def group_slices(table: pa.Table, key: str, max_rows: int = SLICE_ROWS) -> Iterator[pa.Table]:
    """Slices of an in-memory table holding whole ``key`` groups (sorted by ``key`` first
    when its rows are not grouped), each about ``max_rows`` rows."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return
    values = table.column(key).to_numpy(zero_copy_only=False)
    if np.any(np.diff(values) < 0):
        order = pc.sort_indices(table, sort_keys=[(key, "ascending")])
        table = table.take(order)
        values = table.column(key).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    bounds = [0]
    for s in starts[1:]:
        if s - bounds[-1] >= max_rows:
            bounds.append(int(s))
    bounds.append(table.num_rows)
    for a, b in itertools.pairwise(bounds):
        yield table.slice(a, b - a)


# --------------------------------------------------------------------------- shortcuts


def validate(
    table: str,
    df,
    partition,
    context: PartitionContext | None = None,
    *,
    lake: Lakehouse | str | None = None,
    run_id: str | None = None,
) -> Report:
    """Validate one table's data for one partition; returns its `Report` (does not raise).

    ``partition``: a `lakehouse.store.Partition` or (sector, camera, ccd); ``context``
    defaults to one without frames/stars (time span, coverage and star counts unchecked).
    Chunked tables (photometry, lightcurves) are split into whole groups here.
    """
    sector, camera, ccd = _ids(partition)
    ctx = context or PartitionContext(sector, camera, ccd)
    gate = Gate(lake, run_id)
    if table in CHUNKED:
        slices = group_slices(to_arrow(df), CHUNKED[table])
        labelled = ((f"slice-{i:05d}", s) for i, s in enumerate(slices))
        return gate.validate_chunks(table, labelled, ctx)[0]
    return gate.validate(table, df, ctx)


def validate_tables(
    lake: Lakehouse | str | None,
    tables: dict[str, pa.Table],
    partition,
    *,
    run_id: str | None = None,
    context: PartitionContext | None = None,
) -> list[Report]:
    """Validate several tables of one partition (e.g. the analytics tables before they are
    written); raises `ValidationFailed` when any fails, so the caller writes nothing.

    The context (time span, cadences, star count) comes from the partition's published
    ``frames`` and ``stars`` unless given.
    """
    lake = lake if isinstance(lake, Lakehouse) else Lakehouse(lake)
    sector, camera, ccd = _ids(partition)
    ctx = context or context_from_lake(lake, sector, camera, ccd)
    gate = Gate(lake, run_id)
    reports: list[Report] = []
    for name, data in tables.items():
        if name in CHUNKED:
            slices = group_slices(to_arrow(data), CHUNKED[name])
            labelled = ((f"slice-{i:05d}", s) for i, s in enumerate(slices))
            reports += gate.validate_chunks(name, labelled, ctx)
        else:
            reports.append(gate.validate(name, data, ctx))
    raise_if_failed(reports)
    return reports


def context_from_lake(lake: Lakehouse, sector: int, camera: int, ccd: int) -> PartitionContext:
    """The context of a partition from its published ``frames`` and ``stars``."""
    frames = lake.read("frames", sector, camera, ccd) if lake.has_table("frames") else None
    stars = lake.read("stars", sector, camera, ccd) if lake.has_table("stars") else None
    return PartitionContext.from_tables(sector, camera, ccd, frames=frames, stars=stars)


def _ids(partition) -> tuple[int, int, int]:
    if hasattr(partition, "sector"):
        return int(partition.sector), int(partition.camera), int(partition.ccd)
    sector, camera, ccd = partition
    return int(sector), int(camera), int(ccd)


def preload_gx() -> None:
    """Import Great Expectations in a background thread (it takes seconds), so the gate at
    the end of a long run does not wait for it."""
    import sys
    import threading

    if "great_expectations" in sys.modules:
        return

    def _load() -> None:
        with contextlib.suppress(Exception):
            _gx()

    threading.Thread(target=_load, name="import-great-expectations", daemon=True).start()


# --------------------------------------------------------------------------- re-validation

#: the tables of a partition that `validate_partition` re-checks, in order
PARTITION_TABLES = (
    "frames",
    "stars",
    "rejected_frames",
    "photometry",
    "epoch_qc",
    "star_qc",
    "lightcurves",
    "features",
    "candidates",
    "ingest_manifest",
)


def _partition_filter(sector: int, camera: int, ccd: int):
    import pyarrow.dataset as ds

    return (
        (ds.field("sector") == sector) & (ds.field("camera") == camera) & (ds.field("ccd") == ccd)
    )


def _grouped_reads(
    dataset, part, key: str, keys: list[int], schema: pa.Schema
) -> Iterator[tuple[str, pa.Table]]:
    """Read a published chunked table in groups of whole ``key`` values, ~SLICE_ROWS each
    (the Parquet statistics let each read skip most row groups)."""
    import pyarrow.dataset as ds

    ordered = sorted(keys)
    if ordered:
        per_key = max(1, dataset.count_rows(filter=part) // len(ordered))
        step = max(1, SLICE_ROWS // per_key)
        for i in range(0, len(ordered), step):
            lo, hi = ordered[i], ordered[min(i + step, len(ordered)) - 1]
            expr = part & (ds.field(key) >= lo) & (ds.field(key) <= hi)
            yield f"{key}-{lo}-{hi}", _contract(dataset.to_table(filter=expr), schema)
    # rows whose key is none of the known ones (they fail the coverage suite)
    rest = dataset.to_table(filter=part & ~ds.field(key).isin(ordered))
    if rest.num_rows:
        yield f"{key}-unknown", _contract(rest, schema)


def _contract(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns in contract order and types (as ``Lakehouse.read`` returns them)."""
    return table.select(schema.names).cast(schema)


def validate_partition(
    lake: Lakehouse | str | None,
    sector: int,
    camera: int,
    ccd: int,
    *,
    docs: bool = True,
    run_id: str | None = None,
) -> list[Report]:
    """Re-run the suites on the *published* tables of one partition (``tess-ffi validate``).

    Returns one report per table that has rows of the partition (and the coverage reports
    of photometry and lightcurves); does not raise on failures. Raises `LakehouseError`
    when nothing of the partition is published.
    """
    lake = lake if isinstance(lake, Lakehouse) else Lakehouse(lake)
    label = f"s{int(sector):04d}-{int(camera)}-{int(ccd)}"

    def read(name):
        if not lake.has_table(name):
            return None
        if name == "ingest_manifest":
            t = lake.read(name)
            import pyarrow.compute as pc

            mask = pc.and_(
                pc.and_(pc.equal(t["sector"], sector), pc.equal(t["camera"], camera)),
                pc.equal(t["ccd"], ccd),
            )
            return t.filter(mask)
        return lake.read(name, sector, camera, ccd)

    frames, stars, rejected = read("frames"), read("stars"), read("rejected_frames")
    planned = None
    if frames is not None:
        names = frames.column("file_name").to_pylist()
        names += rejected.column("file_name").to_pylist() if rejected is not None else []
        planned = names
    ctx = PartitionContext.from_tables(
        sector, camera, ccd, frames=frames, stars=stars, planned_files=planned, rejected=rejected
    )
    gate = Gate(lake, run_id or new_run_id("validate"), docs=docs)
    reports: list[Report] = []
    for name in PARTITION_TABLES:
        if name in CHUNKED:
            if not lake.has_table(name):
                continue
            if name == "photometry":
                keys = sorted((ctx.frame_btjd or {}).keys())
            else:
                n = ctx.n_stars or 0
                base = star_id_base(sector, camera, ccd)
                keys = list(range(base, base + n))
            dataset = lake.delta(name).to_pyarrow_dataset()
            part = _partition_filter(sector, camera, ccd)
            if dataset.count_rows(filter=part) == 0:
                continue
            chunks = _grouped_reads(dataset, part, CHUNKED[name], keys, TABLES[name])
            reports += gate.validate_chunks(name, chunks, ctx)
            continue
        data = {"frames": frames, "stars": stars, "rejected_frames": rejected}.get(name)
        if data is None:
            data = read(name)
        if data is None or (data.num_rows == 0 and name not in ("rejected_frames",)):
            continue
        reports.append(gate.validate(name, data, ctx))
    if not reports or all(r.n_rows == 0 for r in reports):
        raise LakehouseError(f"nothing of {label} is published in the lake at {lake.uri}")
    return reports
