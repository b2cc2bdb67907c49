"""The work of ingesting one CCD: plan, reference catalog, batched photometry, publication.

Plain functions do the work; the ``@task`` wrappers at the bottom only give them names,
retries and logging for Prefect. Everything a task receives is small and picklable
(strings, numbers, lists of ``FrameRef``), so the same tasks run in threads or on Dask.

Resumability: a run is identified by ``run_key`` (a hash of the partition, the selected
file names, ``cadence_skip``, batch size and the pipeline version). Every finished batch
leaves two Parquet chunks in the run's staging folder; a re-started run with the same
key reuses the staged catalog and skips finished batches, so an interrupted and resumed
run ends with exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE

import tess_ffi
from lakehouse.schemas import DEFAULT_BAD_DQUALITY, FRAMES, PHOTOMETRY, STARS
from lakehouse.store import Lakehouse, Partition
from tasks.background import BackgroundMesh, estimate_background, star_mask
from tasks.catalog import build_catalog, median_stack
from tasks.ffi import Frame, read_frame
from tasks.photometry import build_apertures, measure, pointing_offset
from tasks.sources import FrameRef, LocalSource, open_source
from tess_ffi import progress

PIPELINE_VERSION = f"{tess_ffi.__version__}-phot1"
N_REFERENCE_FRAMES = 7
N_OFFSET_STARS = 300

log = logging.getLogger("tess_ffi.ingest")


# ------------------------------------------------------------------ planning
@dataclass(frozen=True)
class RunPlan:
    """What one ingestion run will do: the frames, their batches and the run key."""

    partition: Partition
    frames: list[FrameRef]
    batches: list[list[FrameRef]]
    run_key: str


def select_frames(refs: list[FrameRef], cadence_skip: int = 1) -> list[FrameRef]:
    """Every ``cadence_skip``-th frame of a time-ordered listing (1 = all)."""
    if cadence_skip < 1:
        raise ValueError("cadence_skip must be >= 1")
    return sorted(refs, key=lambda r: r.file_name)[::cadence_skip]


def plan_run(
    partition: Partition,
    refs: list[FrameRef],
    cadence_skip: int = 1,
    batch_size: int = 20,
    max_frames: int | None = None,
) -> RunPlan:
    """Split the selected frames into batches and derive the deterministic run key."""
    frames = select_frames(refs, cadence_skip)
    if max_frames is not None:
        frames = frames[:max_frames]
    if not frames:
        raise ValueError(
            f"no FFIs for sector {partition.sector} camera {partition.camera} "
            f"ccd {partition.ccd} at the source"
        )
    batches = [frames[i : i + batch_size] for i in range(0, len(frames), batch_size)]
    identity = {
        "partition": partition.label,
        "files": [f.file_name for f in frames],
        "cadence_skip": cadence_skip,
        "batch_size": batch_size,
        "pipeline": PIPELINE_VERSION,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return RunPlan(partition, frames, batches, key)


# ------------------------------------------------------------- catalog stage
def reference_frames(frames: list[FrameRef], n: int = N_REFERENCE_FRAMES) -> list[FrameRef]:
    """Candidates for the reference stack: ``2n`` frames spread evenly over the run."""
    if len(frames) <= 2 * n:
        return list(frames)
    idx = np.unique(np.linspace(0, len(frames) - 1, 2 * n).round().astype(int))
    return [frames[i] for i in idx]


def stack_and_detect(frames: list[Frame], partition: Partition) -> pa.Table:
    """The ``stars`` table from up to N_REFERENCE_FRAMES good frames (bad DQUALITY skipped)."""
    good = [f for f in frames if not (f.meta.dquality & DEFAULT_BAD_DQUALITY)]
    use = (good or frames)[:N_REFERENCE_FRAMES]
    stack = median_stack([f.image for f in use], [f.uncert for f in use])
    return build_catalog(
        stack, use[0].wcs_header, partition.sector, partition.camera, partition.ccd
    )


# ---------------------------------------------------------- photometry stage
@dataclass(frozen=True)
class StarSet:
    """Catalog arrays the per-frame photometry needs (positions in px, radii in px)."""

    star_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    correction: np.ndarray  # aperture correction (total / in-aperture flux)
    offset_stars: np.ndarray  # indices of bright, isolated stars used for the pointing offset

    @classmethod
    def from_table(cls, stars: pa.Table) -> StarSet:
        """Arrays from a ``stars`` table."""
        x = stars.column("x").to_numpy()
        y = stars.column("y").to_numpy()
        radius = stars.column("aperture_radius").to_numpy()
        tmag = stars.column("tmag_est").to_numpy()
        return cls(
            star_id=stars.column("star_id").to_numpy(),
            x=x,
            y=y,
            radius=radius,
            correction=stars.column("aperture_correction").to_numpy(),
            offset_stars=_offset_stars(x, y, tmag),
        )


def _offset_stars(x: np.ndarray, y: np.ndarray, tmag: np.ndarray) -> np.ndarray:
    """Bright (Tmag 8-13), isolated (no neighbour within 6 px) stars, at most N_OFFSET_STARS."""
    from scipy.spatial import cKDTree

    if len(x) < 2:
        return np.arange(len(x))
    tree = cKDTree(np.column_stack([x, y]))
    d, _ = tree.query(np.column_stack([x, y]), k=2)
    ok = (d[:, 1] > 6.0) & (tmag > 8) & (tmag < 13)
    idx = np.flatnonzero(ok)
    return idx[:N_OFFSET_STARS]  # the catalog is sorted by brightness


def photometer_frame(
    frame: Frame, stars: StarSet, mask: np.ndarray
) -> tuple[dict[str, np.ndarray], dict]:
    """Forced photometry of all catalog stars on one frame, following its pointing offset.

    Returns the photometry columns (e-/s, px) and the frame's ``frames`` row.
    """
    mesh: BackgroundMesh = estimate_background(frame.image, mask=mask)
    sel = stars.offset_stars
    dx, dy = pointing_offset(frame.image, mesh, stars.x[sel], stars.y[sel])
    ap = build_apertures(frame.image.shape, stars.x + dx, stars.y + dy, stars.radius)
    m = measure(ap, frame.image, frame.uncert, mesh)
    meta = frame.meta
    quality = m.quality | np.int32(meta.dquality)
    n = len(stars.star_id)
    columns = {
        "star_id": stars.star_id,
        "cadence": np.full(n, meta.cadence, dtype=np.int32),
        "btjd": np.full(n, meta.btjd),
        "flux": m.flux * stars.correction,
        "flux_err": m.flux_err * stars.correction,
        "bkg": m.bkg,
        "x": m.x,
        "y": m.y,
        "quality": quality.astype(np.int32),
    }
    row = {
        "cadence": meta.cadence,
        "btjd": meta.btjd,
        "tstart": meta.tstart,
        "tstop": meta.tstop,
        "dquality": meta.dquality,
        "barycorr": meta.barycorr,
        "file_name": meta.file_name,
        "bkg_median": mesh.median,
        "dx": dx,
        "dy": dy,
        "n_stars_measured": int(np.count_nonzero(quality == 0)),
    }
    return columns, row


def _partition_columns(partition: Partition, n: int) -> dict[str, np.ndarray]:
    return {
        "sector": np.full(n, partition.sector, dtype=np.int16),
        "camera": np.full(n, partition.camera, dtype=np.int8),
        "ccd": np.full(n, partition.ccd, dtype=np.int8),
    }


def photometry_table(partition: Partition, parts: list[dict[str, np.ndarray]]) -> pa.Table:
    """Concatenate per-frame photometry columns into a ``photometry`` table."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(cols["star_id"])
    return (
        pa.table({**_partition_columns(partition, n), **cols})
        .select(PHOTOMETRY.names)
        .cast(PHOTOMETRY)
    )


def frames_table(partition: Partition, rows: list[dict]) -> pa.Table:
    """Rows of the ``frames`` table."""
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return (
        pa.table({**_partition_columns(partition, len(rows)), **cols})
        .select(FRAMES.names)
        .cast(FRAMES)
    )


# ------------------------------------------------------------------ staging
def chunk_paths(
    lake: Lakehouse, plan_key: str, partition: Partition, batch: int
) -> tuple[str, str]:
    """Staged photometry and frames chunk paths of one batch."""
    root = lake.staging_dir(partition, plan_key)
    return (
        f"{root}/photometry/batch-{batch:05d}.parquet",
        f"{root}/frames/batch-{batch:05d}.parquet",
    )


def catalog_path(lake: Lakehouse, plan_key: str, partition: Partition) -> str:
    """Staged reference catalog of a run."""
    return f"{lake.staging_dir(partition, plan_key)}/stars.parquet"


def work_dir(partition: Partition, download_dir: str | None) -> Path:
    """Folder for downloaded FFIs of a partition."""
    base = Path(download_dir) if download_dir else Path(tempfile.gettempdir()) / "tess-ffi-frames"
    path = base / partition.label
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fetch(source, ref: FrameRef, dest: Path) -> tuple[Path, bool]:
    """Fetch a frame; returns the local path and whether it is a download we may delete.

    Files of a local source are read in place and never deleted.
    """
    path = Path(source.fetch(ref, dest))
    return path, not isinstance(source, LocalSource)


# -------------------------------------------------------------- the tasks
@task(name="list-frames", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def list_frames_task(source: str, sector: int, camera: int, ccd: int) -> list[FrameRef]:
    """List the calibrated FFIs of one CCD at a source."""
    return open_source(source).list_frames(sector, camera, ccd)


@task(name="reference-catalog", cache_policy=NONE)
def reference_catalog_task(
    source: str, lake_uri: str, plan: RunPlan, download_dir: str | None, keep_files: bool
) -> int:
    """Build (or reuse the staged) reference catalog of a run; returns the number of stars."""
    lake = Lakehouse(lake_uri)
    path = catalog_path(lake, plan.run_key, plan.partition)
    if lake.exists(path):
        return lake.read_chunk(path).num_rows
    src = open_source(source)
    dest = work_dir(plan.partition, download_dir)
    frames, fetched = [], []
    p = plan.partition
    for ref in reference_frames(plan.frames):
        local, downloaded = _fetch(src, ref, dest)
        if downloaded and not keep_files:
            fetched.append(local)
        frames.append(read_frame(local, p.sector, p.camera, p.ccd, file_name=ref.file_name))
    stars = stack_and_detect(frames, p)
    lake.write_chunk(path, stars)
    for f in fetched:
        f.unlink(missing_ok=True)
    return stars.num_rows


@task(name="tic-crossmatch", cache_policy=NONE)
def crossmatch_task(lake_uri: str, plan: RunPlan) -> str:
    """Fill the staged catalog's ``tic_id`` from the TIC when MAST is reachable."""
    from tasks.crossmatch import crossmatch_tic

    lake = Lakehouse(lake_uri)
    path = catalog_path(lake, plan.run_key, plan.partition)
    stars, message = crossmatch_tic(lake.read_chunk(path))
    lake.write_chunk(path, stars.cast(STARS))
    return message


@task(name="photometry-batch", cache_policy=NONE)
def photometry_batch_task(
    source: str,
    lake_uri: str,
    plan_key: str,
    partition: Partition,
    batch_index: int,
    refs: list[FrameRef],
    download_dir: str | None,
    keep_files: bool,
) -> int:
    """Fetch, verify and measure one batch of frames; stage its chunks. Returns frames done."""
    lake = Lakehouse(lake_uri)
    phot_path, frames_path = chunk_paths(lake, plan_key, partition, batch_index)
    if lake.exists(frames_path) and lake.exists(phot_path):
        progress.advance("ingest", len(refs))
        return 0  # finished by an earlier, interrupted run
    stars = StarSet.from_table(lake.read_chunk(catalog_path(lake, plan_key, partition)))
    src = open_source(source)
    dest = work_dir(partition, download_dir)
    parts, rows = [], []
    mask = None
    for ref in refs:
        local, downloaded = _fetch(src, ref, dest)
        frame = read_frame(
            local, partition.sector, partition.camera, partition.ccd, file_name=ref.file_name
        )
        if mask is None:
            mask = star_mask(frame.image.shape, stars.x, stars.y, stars.radius + 1.5)
        cols, row = photometer_frame(frame, stars, mask)
        parts.append(cols)
        rows.append(row)
        if downloaded and not keep_files:
            local.unlink(missing_ok=True)
        progress.advance("ingest")
    lake.write_chunk(phot_path, photometry_table(partition, parts))
    lake.write_chunk(frames_path, frames_table(partition, rows))  # written last: the done marker
    return len(refs)


@task(name="publish", cache_policy=NONE)
def publish_task(lake_uri: str, plan: RunPlan) -> dict:
    """Publish the staged run: one atomic Delta commit per table, then drop the staging."""
    lake = Lakehouse(lake_uri)
    p = plan.partition
    n_batches = len(plan.batches)
    phot = [chunk_paths(lake, plan.run_key, p, i)[0] for i in range(n_batches)]
    frames = [chunk_paths(lake, plan.run_key, p, i)[1] for i in range(n_batches)]
    missing = [f for f in phot + frames if not lake.exists(f)]
    if missing:
        raise RuntimeError(f"cannot publish {p.label}: {len(missing)} staged chunks missing")
    stars = lake.read_chunk(catalog_path(lake, plan.run_key, p))
    versions = {
        "photometry": lake.write_partition(
            "photometry", lake.iter_chunks(phot), p.sector, p.camera, p.ccd
        ),
        "stars": lake.write_partition("stars", stars.cast(STARS), p.sector, p.camera, p.ccd),
        "frames": lake.write_partition(
            "frames", lake.iter_chunks(frames), p.sector, p.camera, p.ccd
        ),
    }
    lake.remove(lake.staging_dir(p, plan.run_key))
    return versions


def cleanup_downloads(partition: Partition, download_dir: str | None, keep_files: bool) -> None:
    """Remove the partition's download folder when files are not kept."""
    if keep_files:
        return
    path = work_dir(partition, download_dir)
    if path.exists():
        shutil.rmtree(path)
