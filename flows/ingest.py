"""Flow ``ingest-ccd``: calibrated FFIs of one sector/camera/CCD -> frames, stars, photometry.

The recipe, top to bottom:

1. list the CCD's FFIs at the source and keep every ``cadence_skip``-th;
2. plan the run: batches of frames and a deterministic run key (resumes an interrupted run);
3. build the reference catalog once, from a median stack of good frames;
4. map one task per batch: fetch -> verify -> background -> forced photometry -> stage
   (a missing or bad file is skipped and recorded in ``rejected_frames``);
5. validate everything staged (Great Expectations, ``expectations/``), then publish the
   four tables, each in one atomic Delta commit; a failed suite publishes nothing.

Only one run per CCD at a time (a lease in ``{lake}/_locks/``, `lakehouse.lease`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.utilities.annotations import unmapped

import tess_ffi  # noqa: F401  (process defaults before Prefect loads)
from expectations.gate import preload_gx
from lakehouse.lease import Lease
from lakehouse.store import Lakehouse, Partition
from tasks.ingestion import (
    cleanup_downloads,
    crossmatch_task,
    list_frames_task,
    photometry_batch_task,
    plan_run,
    publish_task,
    reference_catalog_task,
)
from tess_ffi import progress
from tess_ffi.runners import default_task_runner


# threads (2) unless TESS_FFI_RUNNER/TESS_FFI_DASK_ADDRESS ask for Dask (tess_ffi/runners.py)
@flow(name="ingest-ccd", task_runner=default_task_runner(), log_prints=True)
def ingest_ccd(
    sector: int,
    camera: int,
    ccd: int,
    source: str = "mast",
    lake: str | None = None,
    cadence_skip: int = 1,
    batch_size: int = 20,
    max_frames: int | None = None,
    keep_files: bool = False,
    download_dir: str | None = None,
    crossmatch_tic: bool = False,
) -> dict:
    """Ingest one CCD of one sector into the lakehouse; returns a summary dict.

    Args:
        sector: TESS sector (>= 1).
        camera: Camera 1-4.
        ccd: CCD 1-4.
        source: FFI source: mast | s3 | s3://bucket/prefix | http(s)://mirror | a folder.
        lake: Lakehouse URI (folder or s3://bucket/prefix); default TESS_FFI_LAKE.
        cadence_skip: Use every k-th FFI (1 = all).
        batch_size: Frames per photometry task.
        max_frames: Stop after this many frames (default: all).
        keep_files: Keep the downloaded FFIs.
        download_dir: Where downloads go (default: a temporary folder).
    """
    logger = get_run_logger()
    part = Partition(sector, camera, ccd)
    lake_uri = Lakehouse(lake).uri

    refs = list_frames_task(source, sector, camera, ccd)
    plan = plan_run(part, refs, cadence_skip, batch_size, max_frames)
    logger.info(
        "%s: %d of %d frames in %d batches (run %s)",
        part.label,
        len(plan.frames),
        len(refs),
        len(plan.batches),
        plan.run_key,
    )
    progress.set_total("ingest", len(plan.frames))
    preload_gx()  # import Great Expectations in the background for the publish gate

    # one run per CCD at a time; a stale lease (its run was killed) is taken over
    with Lease(lake_uri, part, plan.run_key) as lease:
        n_stars = reference_catalog_task(source, lake_uri, plan, download_dir, keep_files)
        logger.info("%s: reference catalog of %d stars", part.label, n_stars)
        if crossmatch_tic:
            logger.warning(crossmatch_task(lake_uri, plan))

        futures = photometry_batch_task.map(
            source=unmapped(source),
            lake_uri=unmapped(lake_uri),
            plan_key=unmapped(plan.run_key),
            partition=unmapped(part),
            batch_index=list(range(len(plan.batches))),
            refs=plan.batches,
            download_dir=unmapped(download_dir),
            keep_files=unmapped(keep_files),
        )
        wait(futures)
        measured = sum(f.result() for f in futures)  # .result() re-raises a failed batch

        lease.verify()
        published = publish_task(lake_uri, plan)  # validates first: a failed suite raises
    cleanup_downloads(part, download_dir, keep_files)
    for row in published["rejected"]:
        logger.warning("%s: rejected (%s): %s", part.label, row["stage"], row["reason"])
    return {
        "partition": part.label,
        "lake": lake_uri,
        "frames": len(plan.frames),
        "frames_published": published["rows"]["frames"],
        "frames_rejected": published["rows"]["rejected_frames"],
        "frames_measured_now": measured,
        "stars": n_stars,
        "photometry_rows": published["rows"]["photometry"],
        "run_key": plan.run_key,
        "versions": published["versions"],
        "reports": published["reports"],
    }
