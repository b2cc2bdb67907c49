"""The Prefect deployments of tess-ffi, served by ``tess-ffi serve``.

- ``ingest-ccd/ingest-ccd``: one sector/camera/CCD -> frames, stars, photometry. Started by a
  person from the UI ("Run" -> custom run: sector, camera, ccd, source, cadence_skip, lake)
  or by the discovery below.
- ``find-variables/find-variables``: the analytics of one CCD (when the flow is installed).
- ``ingest-new-sectors/ingest-new-sectors``: the discovery tick, on a cron schedule (daily
  at 06:00 UTC by default), one tick at a time (deployment concurrency limit 1).

Flow runs execute in processes started by the serving process, with its environment: the
lake's S3 endpoint and keys come from there (``source .tess-ffi.env``), never from
parameters. Entrypoints are module paths, so ``tess-ffi serve`` works from any folder.
"""

from __future__ import annotations

from prefect.types.entrypoint import EntrypointType

DEFAULT_CRON = "0 6 * * *"
TAGS = ["tess-ffi"]


def analysis_flow():
    """The ``find-variables`` flow, or None while it is not installed."""
    try:
        from flows.find_variables import find_variables
    except ImportError:
        return None
    return find_variables


def build_deployments(
    source: str = "mast",
    cron: str | None = DEFAULT_CRON,
    first_sector: int = 1,
    cadence_skip: int = 1,
    cameras: list[int] | None = None,
    ccds: list[int] | None = None,
    max_runs_per_tick: int = 16,
    wait_minutes: float = 0.0,
) -> list:
    """The RunnerDeployments to serve (``cron=None``: the discovery has no schedule)."""
    from flows.ingest import ingest_ccd
    from flows.ingest_new_sectors import ingest_new_sectors

    deployments = [
        ingest_ccd.to_deployment(
            name="ingest-ccd",
            description="Ingest one sector/camera/CCD: FFIs -> frames, stars, photometry.",
            parameters={"source": source, "cadence_skip": cadence_skip},
            tags=TAGS,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    ]
    analysis = analysis_flow()
    if analysis is not None:
        deployments.append(
            analysis.to_deployment(
                name="find-variables",
                description="Find the variable stars of one ingested sector/camera/CCD.",
                tags=TAGS,
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    discovery_params = {
        "source": source,
        "first_sector": first_sector,
        "cadence_skip": cadence_skip,
        "max_runs_per_tick": max_runs_per_tick,
        "wait_minutes": wait_minutes,
    }
    if cameras:
        discovery_params["cameras"] = list(cameras)
    if ccds:
        discovery_params["ccds"] = list(ccds)
    deployments.append(
        ingest_new_sectors.to_deployment(
            name="ingest-new-sectors",
            description=(
                "Scheduled discovery: start ingest-ccd (then find-variables) for every "
                "sector/camera/CCD of the source that the ingest_manifest table has not seen."
            ),
            cron=cron,
            parameters=discovery_params,
            concurrency_limit=1,
            tags=TAGS,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    )
    return deployments


def serve(deployments: list, limit: int | None = None) -> None:
    """Serve the deployments until interrupted (schedules stay active across restarts)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, limit=limit, pause_on_shutdown=False)
