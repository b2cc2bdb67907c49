"""Flow ``ingest-new-sectors``: the scheduled discovery of new sectors (cron, daily by default).

One tick, top to bottom:

1. read the ``ingest_manifest`` table (one row per sector/camera/CCD seen so far);
2. reconcile the runs earlier ticks started: a completed ``ingest-ccd`` gets its
   ``find-variables`` run, a completed ``find-variables`` makes the CCD ``done``, a failed,
   crashed or cancelled run makes it ``failed``;
3. list the sectors available at the source; every CCD of a sector the manifest has not seen
   is added as ``queued``;
4. start ``ingest-ccd`` (through ``run_deployment``, as the UI does) for the failed CCDs with
   attempts left and the queued ones, at most ``max_runs_per_tick``;
5. optionally wait up to ``wait_minutes`` for the started runs (chaining ``find-variables``
   as soon as an ingest completes; a failure waits for the next tick to be retried);
6. write the manifest: the whole table in one Delta commit, after reconciling, after
   starting runs and at the end, each time only if something changed.

Idempotent: a tick that finds nothing new starts nothing. Every run is started with an
idempotency key (step, lake, CCD, attempt), so even a tick that died between starting runs
and writing the manifest cannot start a CCD twice: the next tick gets the same flow runs
back. Credentials never appear in parameters: child runs get the lake URI, and the serving
process's environment provides the keys.
"""

from __future__ import annotations

import hashlib
import time
import uuid

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

import tess_ffi  # noqa: F401  (process defaults before Prefect loads)
from lakehouse.manifest import ManifestRow, read_manifest, utcnow, write_manifest
from lakehouse.store import Lakehouse

INGEST_DEPLOYMENT = "ingest-ccd/ingest-ccd"
ANALYSIS_DEPLOYMENT = "find-variables/find-variables"
INGEST = "ingest-ccd"
ANALYSIS = "find-variables"
POLL_SECONDS = 2.0


@task(name="discover-sectors", cache_policy=NONE, retries=2, retry_delay_seconds=10)
def discover_task(
    source: str,
    first_sector: int,
    last_sector: int | None,
    known_sectors: list[int],
    cameras: list[int] | None,
    ccds: list[int] | None,
) -> dict[int, list[tuple[int, int]]]:
    """The CCDs of every available sector in range that is not in ``known_sectors``."""
    from tasks.sources import open_source

    with open_source(source) as src:
        sectors = [
            s
            for s in src.available_sectors()
            if s >= first_sector and (last_sector is None or s <= last_sector)
        ]
        new = {}
        for s in sectors:
            if s in known_sectors:
                continue
            pairs = [
                (cam, ccd)
                for cam, ccd in src.available_ccds(s)
                if (not cameras or cam in cameras) and (not ccds or ccd in ccds)
            ]
            if pairs:
                new[s] = pairs
        return new


def _redact(spec: str) -> str:
    """A source spec without user:password@ (the manifest and logs never hold credentials)."""
    if "://" in spec and "@" in spec.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = spec.split("://", 1)
        host = rest.split("/", 1)
        return f"{scheme}://{host[0].rsplit('@', 1)[1]}" + (f"/{host[1]}" if len(host) > 1 else "")
    return spec


class _Tick:
    """The state and Prefect client of one tick."""

    def __init__(self, client, lake_uri: str, source: str, cadence_skip: int, logger) -> None:
        self.client = client
        self.lake_uri = lake_uri
        self.source = source
        self.cadence_skip = cadence_skip
        self.log = logger
        self.analysis: str | None = None
        self.events: dict[str, list[str]] = {
            "ingest_started": [],
            "analysis_started": [],
            "completed": [],
            "failed": [],
        }

    def start(self, row: ManifestRow, step: str, deployment: str, attempt: int) -> None:
        """Start ``step`` for a CCD through its deployment (idempotent per attempt)."""
        from prefect.deployments import run_deployment

        params = {"sector": row.sector, "camera": row.camera, "ccd": row.ccd}
        if step == INGEST:
            params.update(source=self.source, cadence_skip=self.cadence_skip)
        params["lake"] = self.lake_uri
        lake_id = hashlib.sha256(self.lake_uri.encode()).hexdigest()[:12]
        flow_run = run_deployment(
            name=deployment,
            parameters=params,
            timeout=0,
            idempotency_key=f"tess-ffi:{step}:{lake_id}:{row.label}:attempt-{attempt}",
            flow_run_name=f"{row.label} {step} #{attempt}",
            tags=["tess-ffi", "ingest-new-sectors"],
        )
        now = utcnow()
        row.status = "ingesting" if step == INGEST else "analysing"
        row.step = step
        row.attempts = attempt
        row.flow_run_id = str(flow_run.id)
        if step == INGEST:
            row.ingest_flow_run_id = str(flow_run.id)
            row.source = _redact(self.source)
        else:
            row.analysis_flow_run_id = str(flow_run.id)
        row.started_at, row.finished_at, row.updated_at = now, None, now
        row.message = ""
        self.events["ingest_started" if step == INGEST else "analysis_started"].append(row.label)
        self.log.info(
            "%s: started %s (attempt %d), flow run %s", row.label, step, attempt, flow_run.id
        )

    def advance(self, row: ManifestRow) -> None:
        """Follow an in-flight row's flow run: chain analysis, mark done or failed."""
        from prefect.exceptions import ObjectNotFound

        if row.status not in ("ingesting", "analysing") or not row.flow_run_id:
            return
        try:
            flow_run = self.client.read_flow_run(uuid.UUID(row.flow_run_id))
        except ObjectNotFound:
            self._fail(row, "flow run no longer exists on the Prefect server", None)
            return
        state = flow_run.state
        if state is None or not state.is_final():
            return
        if state.is_completed():
            row.finished_at = flow_run.end_time or utcnow()
            row.updated_at = utcnow()
            if row.step == INGEST and self.analysis:
                self.start(row, ANALYSIS, self.analysis, 1)
                return
            row.status, row.message = "done", ""
            self.events["completed"].append(row.label)
            self.log.info("%s: done", row.label)
            return
        message = (state.message or "").strip().splitlines()
        self._fail(
            row, f"{state.type.value}: {message[0] if message else state.name}", flow_run.end_time
        )

    def _fail(self, row: ManifestRow, message: str, when) -> None:
        row.status = "failed"
        row.message = message[:500]
        row.finished_at = when or utcnow()
        row.updated_at = utcnow()
        self.events["failed"].append(row.label)
        self.log.warning(
            "%s: %s failed (attempt %d): %s", row.label, row.step, row.attempts, message
        )


def _snapshot(rows: dict) -> dict:
    return {k: (r.status, r.step, r.flow_run_id, r.attempts) for k, r in rows.items()}


def _deployment_exists(client, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return True


@flow(name="ingest-new-sectors", log_prints=True)
def ingest_new_sectors(
    source: str = "mast",
    lake: str | None = None,
    first_sector: int = 1,
    last_sector: int | None = None,
    cameras: list[int] | None = None,
    ccds: list[int] | None = None,
    cadence_skip: int = 1,
    max_runs_per_tick: int = 16,
    max_attempts: int = 3,
    analyse: bool = True,
    wait_minutes: float = 0.0,
    ingest_deployment: str = INGEST_DEPLOYMENT,
    analysis_deployment: str = ANALYSIS_DEPLOYMENT,
) -> dict:
    """One tick of the discovery: start ingest-ccd (then find-variables) for new CCDs.

    Args:
        source: FFI source: mast | s3 | s3://bucket/prefix | http(s)://mirror | a folder.
        lake: Lakehouse URI (folder or s3://bucket/prefix); default TESS_FFI_LAKE.
        first_sector: Ignore sectors below this one (set it to the current sector so that
            a first tick against MAST does not queue the whole archive).
        last_sector: Ignore sectors above this one (default: none).
        cameras: Cameras to ingest (default: 1-4).
        ccds: CCDs to ingest (default: 1-4).
        cadence_skip: Use every k-th FFI (passed to ingest-ccd).
        max_runs_per_tick: At most this many ingest-ccd runs started per tick.
        max_attempts: Runs per step and CCD before giving up.
        analyse: Start find-variables after a successful ingest (when deployed).
        wait_minutes: Keep polling the started runs this long (0: leave them to the next tick).
        ingest_deployment: Deployment started for each CCD.
        analysis_deployment: Deployment started after a completed ingest.
    """
    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    lk = Lakehouse(lake)
    rows = read_manifest(lk)
    written = _snapshot(rows)

    def flush() -> None:
        nonlocal written
        if _snapshot(rows) != written:
            write_manifest(lk, rows)
            written = _snapshot(rows)

    with get_client(sync_client=True) as client:
        tick = _Tick(client, lk.uri, source, cadence_skip, logger)
        if analyse and _deployment_exists(client, analysis_deployment):
            tick.analysis = analysis_deployment
        elif analyse:
            logger.warning("no %s deployment: CCDs are done after ingestion", analysis_deployment)

        # 2. reconcile the runs of earlier ticks
        for row in rows.values():
            tick.advance(row)
        flush()  # kept even if the source cannot be listed below

        # 3. discover new sectors
        known = sorted({k[0] for k in rows})
        new = discover_task(source, first_sector, last_sector, known, cameras, ccds)
        for sector, pairs in sorted(new.items()):
            logger.info("new sector %d: %d CCDs", sector, len(pairs))
            for cam, ccd in pairs:
                rows[(sector, cam, ccd)] = ManifestRow(
                    sector, cam, ccd, status="queued", step=INGEST, source=_redact(source)
                )

        # 4. retry failures (attempts left), then start queued CCDs, up to the cap
        budget = max_runs_per_tick
        for row in sorted(rows.values(), key=lambda r: (r.status != "failed", r.key)):
            if budget <= 0:
                break
            if row.status == "failed" and row.step == ANALYSIS and not tick.analysis:
                row.status, row.updated_at = "done", utcnow()  # analysis no longer deployed
                row.message = f"{analysis_deployment} not deployed: analysis skipped"
            elif row.status == "failed" and row.attempts < max_attempts:
                deployment = ingest_deployment if row.step == INGEST else analysis_deployment
                tick.start(row, row.step, deployment, row.attempts + 1)
                if row.step == INGEST:
                    budget -= 1
            elif row.status == "queued":
                tick.start(row, INGEST, ingest_deployment, 1)
                budget -= 1
        flush()  # the runs just started are in the manifest before any waiting

        # 5. follow the runs for a while (no retries within a tick)
        deadline = time.monotonic() + max(0.0, wait_minutes) * 60.0
        while time.monotonic() < deadline:
            in_flight = [r for r in rows.values() if r.status in ("ingesting", "analysing")]
            if not in_flight:
                break
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            for row in in_flight:
                tick.advance(row)

    # 6. the manifest, one commit (when anything changed)
    flush()
    counts: dict[str, int] = {}
    for r in rows.values():
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = {
        "lake": lk.uri,
        "new_sectors": sorted(new),
        **tick.events,
        "manifest": dict(sorted(counts.items())),
    }
    logger.info("tick: %s", summary)
    return summary
