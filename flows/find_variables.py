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
    cols = ["star_id", "cadence", "btjd", "flux", "flux_err", "bkg", "x", "y", "quality"]
    ph = pl.from_arrow(lake.read("photometry", sector, camera, ccd, columns=cols))
    if ph.height == 0:
        raise LakehouseError(
            f"no photometry for sector {sector} camera {camera} ccd {ccd} in {lake.uri}"
        )
    frames = (
        pl.from_arrow(lake.read("frames", sector, camera, ccd))
        if lake.has_table("frames")
        else None
    )
    stars = (
        pl.from_arrow(lake.read("stars", sector, camera, ccd)) if lake.has_table("stars") else None
    )
    m = pivot_photometry(ph, stars, frames)
    return m, frames


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
    from lakehouse.store import Lakehouse

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
    counts = publish_task(lake_uri, tables, sector, camera, ccd)
    timings["publish"] = round(time.perf_counter() - t0, 2)
    summary = summarize(corrected, analysis, counts, timings)
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
