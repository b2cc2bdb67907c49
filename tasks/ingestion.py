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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE

import tess_ffi
from lakehouse.schemas import DEFAULT_BAD_DQUALITY, FRAMES, PHOTOMETRY, REJECTED_FRAMES, STARS
from lakehouse.store import Lakehouse, Partition
from tasks.background import BackgroundEstimator, BackgroundMesh, star_mask
from tasks.catalog import build_catalog, median_stack
from tasks.ffi import Frame, FrameError, read_frame, read_frame_meta
from tasks.photometry import ShiftedApertures, pointing_offset
from tasks.sources import FrameRef, LocalSource, NotFoundError, open_source
from tess_ffi import progress

PIPELINE_VERSION = f"{tess_ffi.__version__}-phot1"
N_REFERENCE_FRAMES = 7
N_OFFSET_STARS = 300
#: radius of the pointing-offset apertures [px]
OFFSET_RADIUS = 2.0
#: per-frame sky mesh: every BACKGROUND_ROW_STEP-th row (all columns) of each 32x32 box
BACKGROUND_ROW_STEP = 4

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
    # per-frame geometry prepared once per star set (apertures, background samples)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def apertures(self, shape: tuple[int, int]) -> ShiftedApertures:
        """The stars' apertures, to be placed at each frame's pointing offset."""
        key = ("apertures", tuple(shape))
        if key not in self._cache:
            self._cache[key] = ShiftedApertures(shape, self.x, self.y, self.radius)
        return self._cache[key]

    def offset_apertures(self, shape: tuple[int, int]) -> ShiftedApertures:
        """Apertures (OFFSET_RADIUS) of the pointing-offset stars."""
        key = ("offset", tuple(shape))
        if key not in self._cache:
            sel = self.offset_stars
            self._cache[key] = ShiftedApertures(shape, self.x[sel], self.y[sel], OFFSET_RADIUS)
        return self._cache[key]

    def background(self, shape: tuple[int, int], mask: np.ndarray | None) -> BackgroundEstimator:
        """Background estimator for frames of ``shape`` with ``mask`` (True = ignore)."""
        key = ("background", tuple(shape), id(mask))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not mask:  # keep the mask alive so its id stays unique
            est = BackgroundEstimator(shape, mask, row_step=BACKGROUND_ROW_STEP)
            hit = self._cache[key] = (mask, est)
        return hit[1]


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

    Returns the photometry columns (e-/s, px) and the frame's ``frames`` row. The sky
    mesh samples every BACKGROUND_ROW_STEP-th row of each box outside ``mask`` (errors
    from the uncertainty image); the apertures are exactly `build_apertures` at the
    catalog positions plus the offset, placed by `ShiftedApertures` (geometry prepared
    once per star set).
    """
    shape = frame.image.shape
    mesh: BackgroundMesh = stars.background(shape, mask).estimate(frame.image, frame.uncert)
    sel = stars.offset_stars
    dx, dy = pointing_offset(
        frame.image,
        mesh,
        stars.x[sel],
        stars.y[sel],
        radius=OFFSET_RADIUS,
        apertures=stars.offset_apertures(shape),
    )
    m = stars.apertures(shape).measure(frame.image, frame.uncert, mesh, dx, dy)
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
    if not parts:
        return PHOTOMETRY.empty_table()
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(cols["star_id"])
    return (
        pa.table({**_partition_columns(partition, n), **cols})
        .select(PHOTOMETRY.names)
        .cast(PHOTOMETRY)
    )


def frames_table(partition: Partition, rows: list[dict]) -> pa.Table:
    """Rows of the ``frames`` table."""
    if not rows:
        return FRAMES.empty_table()
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


def rejected_path(lake: Lakehouse, plan_key: str, partition: Partition, batch: int) -> str:
    """Staged ``rejected_frames`` rows of one batch (written before its other chunks)."""
    return f"{lake.staging_dir(partition, plan_key)}/rejected/batch-{batch:05d}.parquet"


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


# ------------------------------------------------------------------ rejects
#: data faults: the frame is skipped and recorded in ``rejected_frames``; anything else
#: (network down after retries, lake unreachable, disk full) fails the run loudly and the
#: next run with the same arguments resumes from the staged batches
DATA_FAULTS = (FrameError, NotFoundError)


def reject_row(ref: FrameRef, exc: BaseException, run_key: str, local: Path | None = None) -> dict:
    """A ``rejected_frames`` row for a frame skipped because of ``exc`` (a data fault)."""
    stage = "fetch" if isinstance(exc, NotFoundError) else "verify"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not reason.startswith(ref.file_name):
        reason = f"{ref.file_name}: {reason}"
    cadence = None
    candidate = local if local is not None else Path(ref.location)
    if stage == "verify" and candidate.is_file():
        try:  # best effort: the header may still name the cadence
            cadence = read_frame_meta(candidate, file_name=ref.file_name).cadence
        except (FrameError, OSError, ValueError):
            cadence = None
    return {
        "file_name": ref.file_name,
        "cadence": cadence,
        "reason": reason,
        "stage": stage,
        "run_key": run_key,
    }


def rejected_table(partition: Partition, rows: list[dict]) -> pa.Table:
    """Rows of the ``rejected_frames`` table (sorted by file name)."""
    if not rows:
        return REJECTED_FRAMES.empty_table()
    rows = sorted(rows, key=lambda r: r["file_name"])
    cols = {k: [r[k] for r in rows] for k in ("file_name", "cadence", "reason", "stage", "run_key")}
    return (
        pa.table({**_partition_columns(partition, len(rows)), **cols})
        .select(REJECTED_FRAMES.names)
        .cast(REJECTED_FRAMES)
    )


def resolve_duplicates(
    frames_chunks: list[pa.Table], run_key: str
) -> tuple[list[np.ndarray], list[dict]]:
    """Frames with the same cadence (FFIINDEX): keep the first file by name, reject the others.

    Returns, per staged batch, a boolean mask of its frames rows to keep (the photometry of
    a dropped frame is filtered out while streaming) and the ``rejected_frames`` rows.
    """
    keep = [np.ones(t.num_rows, dtype=bool) for t in frames_chunks]
    seen: list[tuple[str, int, int, int]] = []  # (file_name, cadence, batch, position)
    for b, t in enumerate(frames_chunks):
        names = t.column("file_name").to_pylist()
        cads = t.column("cadence").to_pylist()
        seen += [(n, int(c), b, i) for i, (n, c) in enumerate(zip(names, cads, strict=True))]
    kept: dict[int, str] = {}
    rejects = []
    for name, cad, b, i in sorted(seen):
        if cad not in kept:
            kept[cad] = name
            continue
        keep[b][i] = False
        rejects.append(
            {
                "file_name": name,
                "cadence": cad,
                "reason": f"{name}: duplicate cadence {cad}: same FFIINDEX as {kept[cad]}, "
                "which is kept (first by name)",
                "stage": "duplicate",
                "run_key": run_key,
            }
        )
    return keep, rejects


def _kept_photometry(phot: pa.Table, frames: pa.Table, keep: np.ndarray) -> pa.Table:
    """A staged photometry chunk without the rows of dropped frames (and the helper column).

    Each staged row carries ``_frame``, the position of its frame in the batch's frames
    chunk; chunks staged without it hold ``len(phot) / len(frames)`` rows per frame in order.
    """
    if keep.all():
        return phot.drop_columns(["_frame"]) if "_frame" in phot.column_names else phot
    if "_frame" in phot.column_names:
        pos = phot.column("_frame").to_numpy()
        phot = phot.drop_columns(["_frame"])
    else:
        per = phot.num_rows // max(frames.num_rows, 1)
        pos = np.arange(phot.num_rows) // max(per, 1)
    return phot.filter(pa.array(keep[pos]))


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
    frames = []
    p = plan.partition
    candidates = reference_frames(plan.frames)
    rest = [r for r in plan.frames if r not in candidates]
    cadences: set[int] = set()
    n_good = 0
    for ref in candidates + rest:
        if n_good >= N_REFERENCE_FRAMES or (ref in rest and frames):
            break  # enough good frames (the other frames are only a fallback)
        local, downloaded = None, False
        try:
            local, downloaded = _fetch(src, ref, dest)
            frame = read_frame(local, p.sector, p.camera, p.ccd, file_name=ref.file_name)
        except DATA_FAULTS as exc:  # the batch that owns the frame records the rejection
            log.warning("reference catalog: skipping %s", exc)
            continue
        finally:  # the arrays are in memory: one download on disk at a time
            if local is not None and downloaded and not keep_files:
                local.unlink(missing_ok=True)
        if frame.meta.cadence in cadences:
            continue  # a duplicate cadence (see resolve_duplicates)
        cadences.add(frame.meta.cadence)
        frames.append(frame)
        n_good += not (frame.meta.dquality & DEFAULT_BAD_DQUALITY)
    if not frames:
        raise FrameError(
            f"{p.label}: no readable frame for the reference catalog among "
            f"{len(plan.frames)} selected"
        )
    stars = stack_and_detect(frames, p)
    lake.write_chunk(path, stars)
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
    parts, rows, rejects = [], [], []
    mask = None
    for ref in refs:
        local = None
        downloaded = False
        try:
            local, downloaded = _fetch(src, ref, dest)
            frame = read_frame(
                local, partition.sector, partition.camera, partition.ccd, file_name=ref.file_name
            )
        except DATA_FAULTS as exc:  # a bad or missing file: a recorded skip, never a drop
            rejects.append(reject_row(ref, exc, plan_key, local))
            log.warning("skipping %s", rejects[-1]["reason"])
            if local is not None and downloaded and not keep_files:
                local.unlink(missing_ok=True)
            progress.advance("ingest")
            continue
        if mask is None:
            mask = star_mask(frame.image.shape, stars.x, stars.y, stars.radius + 1.5)
        cols, row = photometer_frame(frame, stars, mask)
        parts.append(cols)
        rows.append(row)
        if downloaded and not keep_files:
            local.unlink(missing_ok=True)
        progress.advance("ingest")
    phot = photometry_table(partition, parts)
    # position of each row's frame in this batch (lets publish drop a duplicate frame)
    sizes = [len(c["star_id"]) for c in parts]
    phot = phot.append_column(
        "_frame", pa.array(np.repeat(np.arange(len(parts), dtype=np.int32), sizes), pa.int32())
    )
    lake.write_chunk(
        rejected_path(lake, plan_key, partition, batch_index), rejected_table(partition, rejects)
    )
    lake.write_chunk(phot_path, phot)
    lake.write_chunk(frames_path, frames_table(partition, rows))  # written last: the done marker
    return len(refs)


@task(name="publish", cache_policy=NONE)
def publish_task(lake_uri: str, plan: RunPlan) -> dict:
    """Validate the staged run, then publish it: one atomic Delta commit per table.

    Duplicate cadences are resolved first (`resolve_duplicates`). Every table is validated
    (``expectations.gate``: frames, stars, rejected_frames whole, photometry chunk by chunk
    plus its per-frame coverage) *before* anything is written; when a suite fails nothing is
    written, the staging is kept and `expectations.gate.ValidationFailed` (one line, with
    the report path) fails the run. Returns the new versions and the published row counts.
    """
    from expectations.gate import Gate, PartitionContext, new_run_id, raise_if_failed

    lake = Lakehouse(lake_uri)
    p = plan.partition
    n_batches = len(plan.batches)
    phot = [chunk_paths(lake, plan.run_key, p, i)[0] for i in range(n_batches)]
    frames = [chunk_paths(lake, plan.run_key, p, i)[1] for i in range(n_batches)]
    missing = [f for f in phot + frames if not lake.exists(f)]
    if missing:
        raise RuntimeError(f"cannot publish {p.label}: {len(missing)} staged chunks missing")
    stars = lake.read_chunk(catalog_path(lake, plan.run_key, p)).cast(STARS)
    frames_chunks = [lake.read_chunk(f).cast(FRAMES) for f in frames]
    rejected_rows: list[dict] = []
    for i in range(n_batches):
        path = rejected_path(lake, plan.run_key, p, i)
        if lake.exists(path):  # chunks staged before rejected_frames existed have none
            rejected_rows += lake.read_chunk(path).to_pylist()
    keep, duplicates = resolve_duplicates(frames_chunks, plan.run_key)
    rejected = rejected_table(p, rejected_rows + duplicates)
    frames_all = pa.concat_tables(
        [t.filter(pa.array(k)) for t, k in zip(frames_chunks, keep, strict=True)]
    ).cast(FRAMES)

    def photometry_chunks():
        for i in range(n_batches):
            chunk = _kept_photometry(lake.read_chunk(phot[i]), frames_chunks[i], keep[i])
            yield f"batch-{i:05d}", chunk.select(PHOTOMETRY.names).cast(PHOTOMETRY)

    ctx = PartitionContext.from_tables(
        p.sector,
        p.camera,
        p.ccd,
        frames=frames_all,
        stars=stars,
        planned_files=[f.file_name for f in plan.frames],
        rejected=rejected,
    )
    gate = Gate(lake, run_id=new_run_id(plan.run_key))
    reports = [
        gate.validate("frames", frames_all, ctx),
        gate.validate("stars", stars, ctx),
        gate.validate("rejected_frames", rejected, ctx),
        *gate.validate_chunks("photometry", photometry_chunks(), ctx),
    ]
    raise_if_failed(reports)  # nothing written: the previous version stays, staging is kept
    n_phot = sum(r.n_rows for r in reports if r.table == "photometry")
    versions = {
        "photometry": lake.write_partition(
            "photometry",
            (b for _, t in photometry_chunks() for b in t.to_batches()),
            p.sector,
            p.camera,
            p.ccd,
        ),
        "stars": lake.write_partition("stars", stars, p.sector, p.camera, p.ccd),
        "frames": lake.write_partition("frames", frames_all, p.sector, p.camera, p.ccd),
        "rejected_frames": lake.write_partition(
            "rejected_frames", rejected, p.sector, p.camera, p.ccd
        ),
    }
    lake.remove(lake.staging_dir(p, plan.run_key))
    return {
        "versions": versions,
        "rows": {
            "photometry": n_phot,
            "stars": stars.num_rows,
            "frames": frames_all.num_rows,
            "rejected_frames": rejected.num_rows,
        },
        "rejected": rejected.select(["file_name", "stage", "reason"]).to_pylist(),
        "reports": str(Path(reports[0].json_path).parent),
    }


def cleanup_downloads(partition: Partition, download_dir: str | None, keep_files: bool) -> None:
    """Remove the partition's download folder when files are not kept."""
    if keep_files:
        return
    path = work_dir(partition, download_dir)
    if path.exists():
        shutil.rmtree(path)
