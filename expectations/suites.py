"""Great Expectations suites: one per lakehouse table, parameterised by the partition.

A suite is a list of GX expectations built for one partition (sector/camera/CCD) from a
`PartitionContext`: the sector's time span and cadences from its frames, the number of
catalogue stars, the files the run selected and the ones it published. What GX cannot say
directly (bit masks, cross-table facts) is put into *derived columns* that `derive` adds
to the validated dataframe, so every rule still shows up in the Data Docs by name:

============================  ================================================================
derived column                meaning (expected value)
============================  ================================================================
``quality_unknown_bits``      ``quality`` bits outside ``KNOWN_QUALITY_BITS`` (0)
``dquality_unknown_bits``     ``dquality`` bits outside SPOC's 16 DQUALITY bits (0)
``flags_unknown_bits``        ``epoch_qc.flags`` bits outside ``EpochFlag`` (0)
``mask_unknown_bits``         ``lightcurves.mask_bits`` bits outside ``LcMask`` (0)
``bad_matches_flags``         ``epoch_qc.bad == (flags & BAD_EPOCH_FLAGS != 0)`` (True)
``frame_btjd``                the ``frames.btjd`` of the row's cadence (equal to ``btjd``)
``in_plan``                   the frame's file was selected by the run (True)
``is_published``              a rejected file is also in ``frames`` (False)
============================  ================================================================

Photometry of a full CCD (~10^8 rows) is validated chunk by chunk (each chunk holds whole
frames: a batch of frames x all stars); the per-frame coverage over all chunks is then a
small derived table ``photometry_coverage`` (one row per cadence: ``n_rows``, ``n_chunks``,
``in_frames``) with its own suite. ``lightcurves`` works the same way per star
(``lightcurves_coverage``: ``n_rows``, ``n_chunks``, ``in_catalogue``). Per-chunk uniqueness
of (star_id, cadence) + each cadence in one chunk only + unique cadences in ``frames`` =
uniqueness over the whole partition.

GX is imported lazily (it costs seconds); building a suite needs it, `derive` does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lakehouse.schemas import (
    BAD_EPOCH_FLAGS,
    KNOWN_QUALITY_BITS,
    MANIFEST_STATUSES,
    PARTITION_COLUMNS,
    REJECT_STAGES,
    TABLES,
    VAR_TYPES,
    EpochFlag,
    LcMask,
    star_id_base,
)

#: the frames of one sector/camera/CCD span at most this [d] (a sector lasts ~27 d)
MAX_SECTOR_SPAN_DAYS = 40.0
#: SPOC's DQUALITY uses bits 1 .. 2**15
DQUALITY_BITS = (1 << 16) - 1
#: stars per CCD: ``star_id`` = base + rank with rank < 10**5
MAX_STARS = 10**5
#: "finite" for GX: between -FINITE and +FINITE (GX ignores nulls in range checks)
FINITE = 1e30
#: ``candidates.period_source`` values
PERIOD_SOURCES = ("ls", "2*ls", "bls", "2*bls", "events", "none")
#: full FFI array: 2136 columns x 2078 rows [px]
FFI_COLS, FFI_ROWS = 2136, 2078

#: ``meta`` key of expectations on a column aggregate (left out for empty data, where the
#: aggregate is undefined and every row-wise rule holds)
AGGREGATE = "aggregate"
#: tables validated in chunks of whole groups, with a derived coverage table per group
CHUNKED: dict[str, str] = {"photometry": "cadence", "lightcurves": "star_id"}
#: rows are sorted by these columns before validation (order-dependent expectations)
SORT_BY: dict[str, tuple[str, ...]] = {"frames": ("cadence",), "epoch_qc": ("cadence",)}


@dataclass(frozen=True)
class PartitionContext:
    """What the suites of one partition are parameterised by (None = not known, not checked).

    ``time_span``: [min TSTART, max TSTOP] of the partition's frames, BTJD [d].
    ``frame_btjd``: cadence -> btjd of the frames. ``n_stars``: catalogue stars.
    ``planned_files``: every file the run selected; ``published_files``: those in ``frames``;
    ``rejected_files``: those in ``rejected_frames``.
    """

    sector: int
    camera: int
    ccd: int
    time_span: tuple[float, float] | None = None
    frame_btjd: Mapping[int, float] | None = field(default=None, compare=False, repr=False)
    n_stars: int | None = None
    planned_files: frozenset[str] | None = field(default=None, compare=False, repr=False)
    published_files: frozenset[str] | None = field(default=None, compare=False, repr=False)
    rejected_files: frozenset[str] | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """E.g. ``s0001-1-1``."""
        return f"s{self.sector:04d}-{self.camera}-{self.ccd}"

    @property
    def n_cadences(self) -> int | None:
        """Number of frames (cadences) of the partition, when known."""
        return None if self.frame_btjd is None else len(self.frame_btjd)

    @classmethod
    def from_tables(
        cls,
        sector: int,
        camera: int,
        ccd: int,
        frames: pa.Table | None = None,
        stars: pa.Table | None = None,
        planned_files: list[str] | None = None,
        rejected: pa.Table | None = None,
    ) -> PartitionContext:
        """The context of a partition from its ``frames``, ``stars`` and ``rejected_frames``
        (any may be None)."""
        span = btjd = published = None
        if frames is not None and frames.num_rows:
            tstart = frames.column("tstart").to_numpy(zero_copy_only=False)
            tstop = frames.column("tstop").to_numpy(zero_copy_only=False)
            lo, hi = np.nanmin(tstart), np.nanmax(tstop)
            if math.isfinite(lo) and math.isfinite(hi):
                span = (float(lo), float(hi))
            cad = frames.column("cadence").to_pylist()
            bt = frames.column("btjd").to_pylist()
            btjd = dict(zip(cad, bt, strict=True))
            published = frozenset(frames.column("file_name").to_pylist())
        elif frames is not None:
            btjd, published = {}, frozenset()
        return cls(
            int(sector),
            int(camera),
            int(ccd),
            time_span=span,
            frame_btjd=btjd,
            n_stars=None if stars is None else stars.num_rows,
            planned_files=None if planned_files is None else frozenset(planned_files),
            published_files=published,
            rejected_files=None
            if rejected is None
            else frozenset(rejected.column("file_name").to_pylist()),
        )


# ----------------------------------------------------------------------------- helpers


def _gxe():
    import great_expectations.expectations as gxe

    return gxe


def _when(column: str, value: int):
    from great_expectations.expectations.row_conditions import Column

    return Column(column) == value


def pandas_type(arrow_type: pa.DataType) -> str:
    """The type name GX observes for a column of ``arrow_type`` after `to_pandas`."""
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return arrow_type.to_pandas_dtype().__name__
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "str"
    if pa.types.is_timestamp(arrow_type):
        return "Timestamp" if arrow_type.tz else "datetime64"
    return "object"


def _schema_part(table: str, ctx: PartitionContext, derived: tuple[str, ...] = ()) -> list:
    """Columns in contract order (plus derived ones), their types, the partition values."""
    gxe = _gxe()
    schema = TABLES[table]
    out = [
        gxe.ExpectTableColumnsToMatchOrderedList(
            column_list=[*schema.names, *derived],
            description=f"columns of {table} as in lakehouse/schemas.py",
        )
    ]
    for f in schema:
        out.append(
            gxe.ExpectColumnValuesToBeOfType(
                column=f.name,
                type_=pandas_type(f.type),
                description=f"{f.name} is {f.type}",
            )
        )
    if table != "ingest_manifest":
        for col, value in zip(PARTITION_COLUMNS, (ctx.sector, ctx.camera, ctx.ccd), strict=True):
            out.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=col, value_set=[value], description=f"{col} is {value} (the partition)"
                )
            )
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=col, description=f"{col} set"))
    return out


def _between(column: str, lo=None, hi=None, *, strict_min=False, when=None, text=None):
    kwargs = {"column": column, "min_value": lo, "max_value": hi}
    if strict_min:
        kwargs["strict_min"] = True
    if when is not None:
        kwargs["row_condition"] = _when(*when)
    if text is None:
        rel = ">" if strict_min else ">="
        parts = []
        if lo is not None:
            parts.append(f"{column} {rel} {lo:g}")
        if hi is not None:
            parts.append(f"{column} <= {hi:g}")
        text = " and ".join(parts)
        if when is not None:
            text += f" where {when[0]} == {when[1]}"
    return _gxe().ExpectColumnValuesToBeBetween(**kwargs, description=text)


def _min_at_least(column: str, lo: float, text: str | None = None):
    """``column >= lo`` on every row, checked on the column's minimum (one vectorised
    reduction: GX's row-wise ``between`` falls back to a Python call per value for integer
    columns narrower than int64, ~0.5 us x 10^7 rows of a CCD). Nulls are ignored, as by
    ``between``; the report gives the observed minimum instead of a row count."""
    return _gxe().ExpectColumnMinToBeBetween(
        column=column,
        min_value=lo,
        description=text or f"{column} >= {lo:g}",
        meta={AGGREGATE: True},
    )


def _finite(column: str, when=None):
    gxe = _gxe()
    cond = {} if when is None else {"row_condition": _when(*when)}
    where = "" if when is None else f" where {when[0]} == {when[1]}"
    return [
        gxe.ExpectColumnValuesToNotBeNull(
            column=column, **cond, description=f"{column} not null/NaN{where}"
        ),
        _between(column, -FINITE, FINITE, when=when, text=f"{column} finite{where}"),
    ]


def _not_null(*columns: str) -> list:
    gxe = _gxe()
    return [gxe.ExpectColumnValuesToNotBeNull(column=c, description=f"{c} set") for c in columns]


def _unique(*columns: str) -> object:
    gxe = _gxe()
    if len(columns) == 1:
        return gxe.ExpectColumnValuesToBeUnique(
            column=columns[0], description=f"{columns[0]} unique"
        )
    return gxe.ExpectCompoundColumnsToBeUnique(
        column_list=list(columns), description=f"({', '.join(columns)}) unique"
    )


def _in_set(column: str, values, text: str | None = None):
    values = list(values)
    return _gxe().ExpectColumnValuesToBeInSet(
        column=column, value_set=values, description=text or f"{column} in {values}"
    )


def _star_ids(ctx: PartitionContext, column: str = "star_id") -> object:
    base = star_id_base(ctx.sector, ctx.camera, ctx.ccd)
    n = MAX_STARS if ctx.n_stars is None else max(ctx.n_stars, 1)
    return _between(
        column,
        base,
        base + n - 1,
        text=f"{column} of a catalogue star ({base} .. {base + n - 1})",
    )


def _time_span(ctx: PartitionContext, column: str = "btjd") -> list:
    if ctx.time_span is None:
        return []
    lo, hi = ctx.time_span
    return [
        _between(
            column, lo, hi, text=f"{column} inside the sector's time span {lo:.5f} .. {hi:.5f}"
        )
    ]


def _row_count(n: int | None, text: str) -> list:
    if n is None:
        return []
    return [_gxe().ExpectTableRowCountToEqual(value=int(n), description=text)]


def _ffi_name_regex(ctx: PartitionContext) -> str:
    return rf"^tess\d{{13}}-s{ctx.sector:04d}-{ctx.camera}-{ctx.ccd}-\d{{4}}-s_ffic\.fits$"


# ----------------------------------------------------------------------------- suites


def frames_suite(ctx: PartitionContext) -> list:
    """``frames``: one row per published FFI, time-ordered, inside the sector's span."""
    gxe = _gxe()
    derived = ("dquality_unknown_bits", "in_plan")
    out = _schema_part("frames", ctx, derived)
    out += _not_null("cadence", "btjd", "tstart", "tstop", "dquality", "file_name")
    out += [
        _unique("cadence"),
        _unique("file_name"),
        gxe.ExpectColumnValuesToMatchRegex(
            column="file_name",
            regex=_ffi_name_regex(ctx),
            description="file_name is a SPOC FFI name of this sector/camera/CCD",
        ),
        _between("cadence", 0, None),
        gxe.ExpectColumnValuesToBeIncreasing(
            column="btjd", strictly=True, description="btjd increases with cadence"
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="tstop", column_B="tstart", description="tstop > tstart"
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="btjd", column_B="tstart", or_equal=True, description="btjd >= tstart"
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="tstop", column_B="btjd", or_equal=True, description="btjd <= tstop"
        ),
        _between("dquality", 0, None),
        _in_set("dquality_unknown_bits", [0], "dquality has only SPOC DQUALITY bits (1..2**15)"),
        _in_set("in_plan", [True], "every frame was selected by the run"),
        _between("n_stars_measured", 0, ctx.n_stars),
        _between("dx", -50, 50, text="|dx| <= 50 px"),
        _between("dy", -50, 50, text="|dy| <= 50 px"),
    ]
    out += _finite("bkg_median")
    out += _finite("barycorr")
    if ctx.time_span is not None:
        lo = ctx.time_span[0]
        out.append(
            _between(
                "btjd",
                lo,
                lo + MAX_SECTOR_SPAN_DAYS,
                text=f"frames span at most {MAX_SECTOR_SPAN_DAYS:g} d",
            )
        )
    if ctx.planned_files is not None and ctx.rejected_files is not None:
        out += _row_count(
            len(ctx.planned_files - ctx.rejected_files),
            "every selected frame is published or in rejected_frames (nothing dropped)",
        )
    return out


def stars_suite(ctx: PartitionContext) -> list:
    """``stars``: the reference catalogue, dense ranks, positions on the CCD."""
    gxe = _gxe()
    out = _schema_part("stars", ctx)
    out += _not_null("star_id", "x", "y", "ref_flux", "aperture_radius", "aperture_correction")
    base = star_id_base(ctx.sector, ctx.camera, ctx.ccd)
    out += [
        _unique("star_id"),
        gxe.ExpectColumnValuesToBeIncreasing(
            column="star_id", strictly=True, description="star_id increasing (sorted)"
        ),
        _between("star_id", base, base + MAX_STARS - 1),
        _between("x", 0, FFI_COLS),
        _between("y", 0, FFI_ROWS),
        _between("ra", 0, 360),
        _between("dec", -90, 90),
        _between("ref_flux", 0, None, strict_min=True),
        _between("ref_flux_err", 0, None, strict_min=True),
        _in_set("aperture_radius", [1.5, 2.0, 2.5, 3.5]),
        _between("aperture_correction", 1.0, 10.0),
        _between("peak_snr", 0, None),
        _between("tic_id", 1, None, text="tic_id > 0 when matched"),
    ]
    out += _finite("tmag_est")
    return out


def stars_dense(ctx: PartitionContext, n_rows: int) -> list:
    """Ranks are dense: star_id = base + 0 .. n-1 (with uniqueness)."""
    base = star_id_base(ctx.sector, ctx.camera, ctx.ccd)
    return [
        _between(
            "star_id",
            base,
            base + max(n_rows, 1) - 1,
            text=f"star_id dense: base + rank, rank 0 .. {n_rows - 1}",
        )
    ]


def photometry_suite(ctx: PartitionContext) -> list:
    """One ``photometry`` chunk (whole frames x all stars)."""
    gxe = _gxe()
    out = _schema_part("photometry", ctx, ("frame_btjd", "quality_unknown_bits"))
    out += _not_null("star_id", "cadence", "btjd", "quality")
    out += [
        _unique("star_id", "cadence"),
        _star_ids(ctx),
        gxe.ExpectColumnValuesToNotBeNull(
            column="frame_btjd", description="cadence is a frame of the partition"
        ),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="btjd",
            column_B="frame_btjd",
            description="btjd is the frame's btjd (increasing with cadence)",
        ),
        _min_at_least("quality", 0),
        _in_set("quality_unknown_bits", [0], "quality has only documented bits"),
        _between("flux_err", 0, None, strict_min=True, when=("quality", 0)),
        _between("flux_err", 0, None, text="flux_err >= 0"),
    ]
    out += _time_span(ctx)
    out += _finite("flux", when=("quality", 0))
    out += _finite("flux_err", when=("quality", 0))
    out += _finite("bkg", when=("quality", 0))
    return out


def photometry_coverage_suite(ctx: PartitionContext) -> list:
    """Per-frame coverage of photometry: every frame has every star exactly once."""
    n = ctx.n_stars
    out = [
        _in_set("in_frames", [True], "every cadence of photometry is a published frame"),
        _in_set("n_chunks", [1], "a frame's rows are in one chunk (no duplicates across)"),
        _unique("cadence"),
    ]
    if n is not None:
        out.append(_between("n_rows", n, n, text=f"every frame has all {n} stars"))
    out += _row_count(ctx.n_cadences, "every published frame has photometry")
    return out


def rejected_frames_suite(ctx: PartitionContext) -> list:
    """``rejected_frames``: one reason per skipped file, none of them published."""
    gxe = _gxe()
    out = _schema_part("rejected_frames", ctx, ("in_plan", "is_published"))
    out += _not_null("file_name", "reason", "stage", "run_key")
    out += [
        _unique("file_name"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="reason", min_value=1, description="reason not empty"
        ),
        _in_set("stage", REJECT_STAGES),
        _between("cadence", 0, None, text="cadence >= 0 when known"),
        _in_set("in_plan", [True], "every rejected file was selected by the run"),
        _in_set("is_published", [False], "a rejected file is not in frames"),
    ]
    return out


def epoch_qc_suite(ctx: PartitionContext) -> list:
    """``epoch_qc``: one row per frame, flags consistent with ``bad``."""
    out = _schema_part("epoch_qc", ctx, ("frame_btjd", "flags_unknown_bits", "bad_matches_flags"))
    out += _not_null("cadence", "btjd", "flags", "bad")
    out += [
        _unique("cadence"),
        _gxe().ExpectColumnPairValuesToBeEqual(
            column_A="btjd", column_B="frame_btjd", description="btjd is the frame's btjd"
        ),
        _between("n_stars", 0, ctx.n_stars),
        _between("frac_good", 0, 1),
        _between("pointing_offset", 0, None),
        _between("ensemble_scatter_raw", 0, None),
        _between("ensemble_scatter", 0, None),
        _between("ensemble_chi", 0, None),
        _in_set("flags_unknown_bits", [0], "flags has only EpochFlag bits"),
        _in_set("bad_matches_flags", [True], "bad == (flags & BAD_EPOCH_FLAGS != 0)"),
    ]
    out += _time_span(ctx)
    out += _row_count(ctx.n_cadences, "one row per frame")
    return out


def star_qc_suite(ctx: PartitionContext) -> list:
    """``star_qc``: one row per catalogue star, fractions within 0..1."""
    gxe = _gxe()
    out = _schema_part("star_qc", ctx)
    out += _not_null("star_id", "n_cadences", "n_good")
    out += [
        _unique("star_id"),
        _star_ids(ctx),
        _between("n_good", 0, None),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="n_cadences", column_B="n_good", or_equal=True, description="n_good <= n"
        ),
        _between("completeness", 0, 1),
        _between("robust_scatter_raw", 0, None),
        _between("robust_scatter", 0, None),
        _between("p2p_scatter", 0, None),
        _between("expected_noise", 0, None),
        _between("precision_ratio", 0, None),
        _between("edge_distance", 0, None),
        _between("crowding", 0, None),
        _between("cm_n_refs", 0, None),
        _between("cm_radius", 0, None),
    ]
    out += _row_count(ctx.n_stars, "one row per catalogue star")
    return out


def lightcurves_suite(ctx: PartitionContext) -> list:
    """One ``lightcurves`` chunk (whole stars)."""
    gxe = _gxe()
    out = _schema_part("lightcurves", ctx, ("frame_btjd", "mask_unknown_bits"))
    out += _not_null("star_id", "cadence", "btjd", "mask_bits")
    out += [
        _unique("star_id", "cadence"),
        _star_ids(ctx),
        gxe.ExpectColumnValuesToNotBeNull(
            column="frame_btjd", description="cadence is a frame of the partition"
        ),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="btjd", column_B="frame_btjd", description="btjd is the frame's btjd"
        ),
        _min_at_least("mask_bits", 0),
        _in_set("mask_unknown_bits", [0], "mask_bits has only LcMask bits"),
        _between("flux_err", 0, None, strict_min=True, when=("mask_bits", 0)),
    ]
    out += _time_span(ctx)
    out += _finite("flux", when=("mask_bits", 0))
    out += _finite("flux_err", when=("mask_bits", 0))
    return out


def lightcurves_coverage_suite(ctx: PartitionContext) -> list:
    """Per-star coverage of lightcurves: each star's rows in one chunk, <= one per frame."""
    out = [
        _in_set("in_catalogue", [True], "every star of lightcurves is a catalogue star"),
        _in_set("n_chunks", [1], "a star's rows are in one chunk (no duplicates across)"),
        _unique("star_id"),
        _between("n_rows", 1, ctx.n_cadences, text="at most one row per frame"),
    ]
    return out


def features_suite(ctx: PartitionContext) -> list:
    """``features``: one row per star, every index within its valid range."""
    out = _schema_part("features", ctx)
    out += _not_null("star_id", "n_good", "is_variable")
    out += [_unique("star_id"), _star_ids(ctx), _between("n_good", 0, ctx.n_cadences)]
    for col in ("amplitude", "robust_amplitude", "mad_scatter", "std", "iqr"):
        out.append(_between(col, 0, None))
    out += [
        _between("reduced_chi2", 0, None),
        _between("stetson_k", 0, 1),
        _between("von_neumann_eta", 0, None),
        _between("beyond_2std", 0, 1),
        _between("ls_period", 0, None, strict_min=True),
        _between("ls_period_2", 0, None, strict_min=True),
        _between("ls_power", 0, 1),
        _between("ls_power_2", 0, 1),
        _between("ls_log10_fap", None, 0),
        _between("ls_amplitude", 0, None),
        _between("bls_period", 0, None, strict_min=True),
        _between("bls_duration", 0, None, strict_min=True),
        _between("bls_n_events", 0, None),
        _between("n_flares", 0, None),
    ]
    if ctx.time_span is not None:
        out.append(_between("bls_t0", *ctx.time_span, text="bls_t0 inside the time span"))
    out += _row_count(ctx.n_stars, "one row per catalogue star")
    return out


def candidates_suite(ctx: PartitionContext) -> list:
    """``candidates``: dense ranks 1..n, positive periods, known classes."""
    out = _schema_part("candidates", ctx)
    out += _not_null("rank", "star_id", "score", "var_type", "period_source")
    out += [
        _unique("rank"),
        _unique("star_id"),
        _star_ids(ctx),
        _between("period_days", 0, None, strict_min=True, text="period_days > 0 when set"),
        _in_set("var_type", VAR_TYPES),
        _in_set("period_source", PERIOD_SOURCES),
        _between("n_events", 0, None),
        _between("amplitude", 0, None),
    ]
    out += _finite("score")
    return out


def candidates_dense(ctx: PartitionContext, n_rows: int) -> list:
    """Ranks are dense: 1 .. n (with uniqueness)."""
    return [_between("rank", 1, max(n_rows, 1), text=f"rank dense: 1 .. {n_rows}")]


def ingest_manifest_suite(ctx: PartitionContext) -> list:
    """``ingest_manifest`` (platform table): one row per CCD, known statuses."""
    out = _schema_part("ingest_manifest", ctx)
    out += _not_null("sector", "camera", "ccd", "status", "step")
    out += [
        _unique("sector", "camera", "ccd"),
        _between("sector", 1, None),
        _between("camera", 1, 4),
        _between("ccd", 1, 4),
        _in_set("status", MANIFEST_STATUSES),
        _between("attempts", 0, None),
    ]
    return out


SUITES: dict[str, Callable[[PartitionContext], list]] = {
    "frames": frames_suite,
    "stars": stars_suite,
    "photometry": photometry_suite,
    "photometry_coverage": photometry_coverage_suite,
    "rejected_frames": rejected_frames_suite,
    "epoch_qc": epoch_qc_suite,
    "star_qc": star_qc_suite,
    "lightcurves": lightcurves_suite,
    "lightcurves_coverage": lightcurves_coverage_suite,
    "features": features_suite,
    "candidates": candidates_suite,
    "ingest_manifest": ingest_manifest_suite,
}

#: expectations that depend on the validated data's size (added at validation time)
SIZE_DEPENDENT: dict[str, Callable[[PartitionContext, int], list]] = {
    "stars": stars_dense,
    "candidates": candidates_dense,
}


def build_suite(table: str, ctx: PartitionContext, n_rows: int | None = None) -> list:
    """The expectations of ``table`` for one partition (``n_rows``: rows validated; with 0,
    the column-aggregate ones are left out)."""
    if table not in SUITES:
        raise KeyError(f"no expectation suite for table {table!r}")
    out = list(SUITES[table](ctx))
    if n_rows == 0:
        out = [e for e in out if not (e.meta or {}).get(AGGREGATE)]
    if n_rows is not None and table in SIZE_DEPENDENT:
        out += SIZE_DEPENDENT[table](ctx, n_rows)
    return out


# ----------------------------------------------------------------------------- derived


def _as_float(values) -> np.ndarray:
    if hasattr(values, "to_numpy"):
        return values.to_numpy(dtype="float64", na_value=np.nan)
    return np.asarray(values, dtype="float64")


def _bits_outside(values, allowed: int) -> np.ndarray:
    v = _as_float(values)
    out = np.zeros(len(v), dtype=np.int64)
    ok = np.isfinite(v)
    out[ok] = v[ok].astype(np.int64) & ~np.int64(allowed)
    return out


def _frame_btjd(cadence, ctx: PartitionContext) -> np.ndarray:
    lookup = ctx.frame_btjd or {}
    cad = np.asarray(cadence, dtype="float64")
    out = np.full(len(cad), np.nan)
    if lookup:
        keys = np.fromiter(lookup.keys(), dtype=np.int64, count=len(lookup))
        vals = np.fromiter(lookup.values(), dtype=np.float64, count=len(lookup))
        order = np.argsort(keys)
        keys, vals = keys[order], vals[order]
        ok = np.isfinite(cad)
        c = cad[ok].astype(np.int64)
        i = np.clip(np.searchsorted(keys, c), 0, len(keys) - 1)
        hit = keys[i] == c
        sub = np.full(len(c), np.nan)
        sub[hit] = vals[i[hit]]
        out[ok] = sub
    return out


def derive(table: str, df, ctx: PartitionContext):
    """Add the derived columns of ``table`` to a pandas dataframe (in place; returned)."""
    cols = set(df.columns)
    if table == "frames":
        if "dquality" in cols:
            df["dquality_unknown_bits"] = _bits_outside(df["dquality"], DQUALITY_BITS)
        if "file_name" in cols:
            planned = ctx.planned_files
            df["in_plan"] = (
                np.ones(len(df), bool) if planned is None else df["file_name"].isin(planned)
            ).astype(bool)
    elif table in ("photometry", "lightcurves", "epoch_qc"):
        if "cadence" in cols:
            df["frame_btjd"] = (
                df["btjd"].to_numpy(dtype="float64", na_value=np.nan)
                if ctx.frame_btjd is None and "btjd" in cols
                else _frame_btjd(df["cadence"].to_numpy(dtype="float64", na_value=np.nan), ctx)
            )
        if table == "photometry" and "quality" in cols:
            df["quality_unknown_bits"] = _bits_outside(df["quality"], KNOWN_QUALITY_BITS)
        if table == "lightcurves" and "mask_bits" in cols:
            df["mask_unknown_bits"] = _bits_outside(df["mask_bits"], sum(int(b) for b in LcMask))
        if table == "epoch_qc" and "flags" in cols:
            flags = df["flags"].to_numpy(dtype="float64", na_value=np.nan)
            df["flags_unknown_bits"] = _bits_outside(flags, sum(int(b) for b in EpochFlag))
            if "bad" in cols:
                known = np.nan_to_num(flags).astype(np.int64)
                bad = df["bad"].to_numpy(dtype=bool, na_value=False)
                df["bad_matches_flags"] = ((known & BAD_EPOCH_FLAGS) != 0) == bad
    elif table == "rejected_frames":
        if "file_name" in cols:
            planned, published = ctx.planned_files, ctx.published_files
            names = df["file_name"]
            df["in_plan"] = (
                np.ones(len(df), bool) if planned is None else names.isin(planned)
            ).astype(bool)
            df["is_published"] = (
                np.zeros(len(df), bool) if published is None else names.isin(published)
            ).astype(bool)
    return df
