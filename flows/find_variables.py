"""Flow ``find-variables``: one CCD's photometry -> QC, light curves, features, candidates.

Steps (each a thin Prefect task around pure functions in ``tasks/``):

1. ``load``: ``photometry``, ``frames``, ``stars`` of the partition from the lakehouse,
   pivoted to a dense (stars x cadences) matrix (:func:`tasks.qc.pivot_photometry`);
2. ``correct``: epoch QC, spatially local common-mode correction, outlier and mask bits,
   star QC (:func:`tasks.common_mode.correct_ccd`);
3. ``analyze``: features, periodograms, calibrated detection, classes, ranking
   (:func:`tasks.classify.analyze_ccd`);
4. ``publish``: ``epoch_qc``, ``star_qc``, ``lightcurves``, ``features``, ``candidates``,
   each an atomic replace of the partition (``Lakehouse.write_partition``).

Tasks use ``NO_CACHE``: their inputs are large arrays that must not be hashed or
persisted; the flow is cheap to rerun and its writes are idempotent.
"""

from __future__ import annotations

import time

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

import tess_ffi  # noqa: F401  (process defaults before Prefect loads)

INPUT_TABLES = ("photometry", "frames", "stars")


def load_partition(lake, sector: int, camera: int, ccd: int):
    """Read the input tables of one partition and pivot them (pure I/O + numpy)."""
    import polars as pl

    from lakehouse.store import Lakehouse, LakehouseError
    from tasks.qc import pivot_photometry

    lake = lake if isinstance(lake, Lakehouse) else Lakehouse(lake)
    if not lake.has_table("photometry"):
        raise LakehouseError(f"no photometry table in the lake at {lake.uri}: run ingest first")
    frames = (
        pl.from_arrow(lake.read("frames", sector, camera, ccd))
        if lake.has_table("frames")
        else None
    )
    stars = (
        pl.from_arrow(lake.read("stars", sector, camera, ccd)) if lake.has_table("stars") else None
    )
    cols = ["star_id", "cadence", "btjd", "flux", "flux_err", "quality"]
    # per-row background and centroids only feed fallbacks for what frames/stars lack
    # (tasks.qc.epoch_flags_pre, tasks.common_mode.correct_ccd): not read otherwise
    if not _any_finite(frames, "bkg_median"):
        cols.append("bkg")
    if not _any_finite(frames, "dx") or stars is None or stars.height == 0:
        cols += ["x", "y"]
    ph = pl.from_arrow(lake.read("photometry", sector, camera, ccd, columns=cols))
    if ph.height == 0:
        raise LakehouseError(
            f"no photometry for sector {sector} camera {camera} ccd {ccd} in {lake.uri}"
        )
    m = pivot_photometry(ph, stars, frames)
    return m, frames


def _any_finite(frame, column: str) -> bool:
    """True when a Polars DataFrame has ``column`` with at least one finite value."""
    if frame is None or frame.height == 0 or column not in frame.columns:
        return False
    values = frame.get_column(column).cast(float).fill_null(np.nan).to_numpy()
    return bool(np.isfinite(values).any())


@task(name="load-photometry", cache_policy=NO_CACHE)
def load_task(lake_uri: str, sector: int, camera: int, ccd: int):
    """Thin wrapper of :func:`load_partition`."""
    return load_partition(lake_uri, sector, camera, ccd)


@task(name="qc-and-common-mode", cache_policy=NO_CACHE)
def correct_task(m, frames, science_size: int | None):
    """Thin wrapper of :func:`tasks.common_mode.correct_ccd`."""
    from tasks.common_mode import correct_ccd

    return correct_ccd(m, frames, science_size=science_size)


@task(name="features-periods-classes", cache_policy=NO_CACHE)
def analyze_task(corrected):
    """Thin wrapper of :func:`tasks.classify.analyze_ccd`."""
    from tasks.classify import analyze_ccd

    return analyze_ccd(corrected)


def build_tables(corrected, analysis, sector: int, camera: int, ccd: int) -> dict:
    """The five analytics tables of one partition as pyarrow Tables."""
    from tasks.classify import candidates_table, features_table
    from tasks.common_mode import lightcurves_table
    from tasks.qc import epoch_qc_table, star_qc_table

    res, med, blends = analysis
    star_id = corrected.matrix.star_id
    return {
        "epoch_qc": epoch_qc_table(corrected, sector, camera, ccd),
        "star_qc": star_qc_table(corrected, sector, camera, ccd),
        "lightcurves": lightcurves_table(corrected, sector, camera, ccd),
        "features": features_table(res, star_id, med, sector, camera, ccd),
        "candidates": candidates_table(res, star_id, sector, camera, ccd, exclude=blends),
    }


@task(name="publish-analytics", cache_policy=NO_CACHE)
def publish_task(lake_uri: str, tables: dict, sector: int, camera: int, ccd: int) -> dict:
    """Write every table's partition (one atomic Delta commit each); returns row counts.

    Every table is validated first (``expectations.gate``); a failed suite raises
    ``ValidationFailed`` (one line, with the report path) and nothing is written.
    """
    from expectations.gate import validate_tables
    from lakehouse.store import Lakehouse

    lake = Lakehouse(lake_uri)
    validate_tables(lake, tables, (sector, camera, ccd))
    counts = {}
    for name, table in tables.items():
        lake.write_partition(name, table, sector, camera, ccd)
        counts[name] = table.num_rows
    return counts


def summarize(corrected, analysis, counts: dict, timings: dict) -> dict:
    """Summary numbers of a run (precision before/after correction, candidates by type)."""
    res, _, blends = analysis
    st = corrected.star
    quiet = ~np.asarray(res.columns["is_variable"], bool) & (st["n_good"] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw_ratio = st["robust_scatter_raw"] / st["expected_noise"]
    cand = np.asarray(res.columns["is_variable"], bool) & ~blends
    types, n = np.unique(res.var_type[cand].astype(str), return_counts=True)
    return {
        "stars": int(corrected.matrix.shape[0]),
        "cadences": int(corrected.matrix.shape[1]),
        "bad_cadences": int(np.sum(_bad(corrected.epoch["flags"]))),
        "reference_stars": int(np.sum(st["is_reference"])),
        "precision_ratio_raw": _median(raw_ratio[quiet]),
        "precision_ratio": _median(st["precision_ratio"][quiet]),
        "candidates": int(cand.sum()),
        "blends_dropped": int(np.sum(blends)),
        "by_type": {str(k): int(v) for k, v in zip(types, n, strict=True)},
        "rows": counts,
        "seconds": timings,
    }


def release_matrices(corrected) -> None:
    """Drop the (stars x cadences) arrays of a corrected CCD and of its light-curve matrix.

    Prefect keeps every task's result until the flow ends; once the tables are built these
    arrays (~0.6 GB per 10^7 photometry rows) are not needed, and dropping them before the
    publish step lowers the flow's peak memory. Per-star and per-cadence results stay.
    """
    m = corrected.matrix
    for name in ("flux", "flux_err", "mult", "add", "mask_bits"):
        setattr(corrected, name, None)
    for name in ("flux", "flux_err", "quality", "present", "bkg", "cx", "cy"):
        setattr(m, name, None)


def _bad(flags):
    from tasks.qc import epoch_bad

    return epoch_bad(flags)


def _median(a) -> float:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


@flow(name="find-variables", log_prints=True)
def find_variables(
    sector: int,
    camera: int,
    ccd: int,
    lake: str | None = None,
    science_size: int | None = None,
) -> dict:
    """Analyse one CCD of one sector; writes the analytics tables, returns a summary dict."""
    from expectations.gate import preload_gx
    from lakehouse.store import Lakehouse

    preload_gx()  # import Great Expectations in the background for the publish gate
    logger = get_run_logger()
    lake_uri = Lakehouse(lake).uri
    timings = {}
    t0 = time.perf_counter()
    m, frames = load_task(lake_uri, sector, camera, ccd)
    timings["load"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    corrected = correct_task(m, frames, science_size)
    timings["correct"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    analysis = analyze_task(corrected)
    timings["analyze"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    tables = build_tables(corrected, analysis, sector, camera, ccd)
    summary = summarize(corrected, analysis, {}, timings)
    release_matrices(corrected)  # the tables hold what is published from here on
    counts = publish_task(lake_uri, tables, sector, camera, ccd)
    timings["publish"] = round(time.perf_counter() - t0, 2)
    summary.update(rows=counts, seconds=timings)
    logger.info(
        "s%04d-%d-%d: %d stars x %d cadences, %d candidates %s",
        sector,
        camera,
        ccd,
        summary["stars"],
        summary["cadences"],
        summary["candidates"],
        summary["by_type"],
    )
    return summary
