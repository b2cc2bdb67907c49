"""Platform commands of ``tess-ffi``: ``up``, ``down``, ``status`` and ``serve``.

``up``/``down`` start and stop the local Prefect server and SeaweedFS S3 store
(`tess_ffi.platform`); ``serve`` serves the deployments of ``deployments/platform.py``.
No command prints a credential.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tess_ffi import platform

StateDir = Annotated[
    Path,
    typer.Option("--state-dir", help="Folder of the platform's data, logs and pids."),
]
EnvFile = Annotated[
    Path, typer.Option("--env-file", help="Where to write the `export` lines to source.")
]


def up(
    state_dir: StateDir = Path(platform.DEFAULT_STATE_DIR),
    env_file: EnvFile = Path(platform.DEFAULT_ENV_FILE),
    prefect_port: Annotated[int, typer.Option(help="Prefect API + UI port.")] = (
        platform.DEFAULT_PREFECT_PORT
    ),
    s3_port: Annotated[int, typer.Option(help="S3 endpoint port.")] = platform.DEFAULT_S3_PORT,
    bucket: Annotated[str, typer.Option(help="Lakehouse bucket.")] = platform.DEFAULT_BUCKET,
    prefix: Annotated[str, typer.Option(help="Lakehouse prefix in the bucket.")] = (
        platform.DEFAULT_PREFIX
    ),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each service.")] = 120.0,
) -> None:
    """Start a Prefect server (UI) and a SeaweedFS S3 store on 127.0.0.1; write the env file.

    Example: tess-ffi up && source .tess-ffi.env
    """
    cfg = platform.PlatformConfig(
        state_dir=state_dir,
        env_file=env_file,
        prefect_port=prefect_port,
        s3_port=s3_port,
        bucket=bucket,
        prefix=prefix,
    )
    try:
        st = platform.up(cfg, timeout=timeout)
    except platform.PlatformError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"Prefect UI   {st.prefect_ui}   (pid {st.prefect_pid})")
    typer.echo(f"S3 endpoint  {st.s3_endpoint}   (SeaweedFS, pid {st.seaweedfs_pid})")
    typer.echo(f"lakehouse    {st.lake}")
    typer.echo(f"environment  source {_shown(st.env_file)}")


def down(
    state_dir: StateDir = Path(platform.DEFAULT_STATE_DIR),
    timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 30.0,
) -> None:
    """Stop the Prefect server and SeaweedFS started by `up` (data are kept)."""
    cfg = platform.saved_config(state_dir)
    stopped = platform.down(cfg, timeout=timeout)
    typer.echo("stopped " + (", ".join(stopped) if stopped else "nothing (not running)"))


def status(
    state_dir: StateDir = Path(platform.DEFAULT_STATE_DIR),
) -> None:
    """Show whether the platform's services run and where."""
    cfg = platform.saved_config(state_dir)
    st = platform.status(cfg)
    for name, pid, where in (
        ("prefect", st.prefect_pid, st.prefect_ui),
        ("seaweedfs", st.seaweedfs_pid, st.s3_endpoint),
    ):
        typer.echo(f"{name:10s} {'running' if pid else 'stopped':8s} {where}")
    typer.echo(f"lakehouse  {st.lake}")
    if not (st.prefect_pid and st.seaweedfs_pid):
        raise typer.Exit(1)


def serve(
    source: Annotated[
        str,
        typer.Option(
            help="Default FFI source of the deployments (mast | s3 | s3://... | http(s)://... | "
            "folder) [env TESS_FFI_SOURCE, mast]."
        ),
    ] = "",
    cron: Annotated[
        str, typer.Option(help="Schedule of ingest-new-sectors (cron, UTC); '' for none.")
    ] = "0 6 * * *",
    first_sector: Annotated[
        int, typer.Option(min=1, help="The discovery ignores sectors below this one.")
    ] = 1,
    cadence_skip: Annotated[int, typer.Option(min=1, help="Default: use every k-th FFI.")] = 1,
    max_runs_per_tick: Annotated[int, typer.Option(min=1, help="Ingest runs per tick.")] = 16,
    wait_minutes: Annotated[
        float, typer.Option(min=0, help="How long a tick follows the runs it started.")
    ] = 0.0,
    limit: Annotated[int, typer.Option(min=1, help="Flow runs executed at once.")] = 2,
    runner: Annotated[
        str, typer.Option(help="Task runner of ingest-ccd runs: thread | dask.")
    ] = "thread",
    dask_address: Annotated[
        str | None,
        typer.Option(help="Dask scheduler tcp://HOST:PORT (default: a LocalCluster per run)."),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Threads or LocalCluster workers per ingest run.")
    ] = 2,
    log_level: Annotated[
        str, typer.Option(help="Level of the flow-run logs sent to the UI.")
    ] = "INFO",
) -> None:
    """Serve the deployments (ingest-ccd, find-variables, ingest-new-sectors) until Ctrl-C.

    Needs PREFECT_API_URL (and, for an S3 lake, the AWS_* variables): source .tess-ffi.env.
    Example: tess-ffi serve --source mast --first-sector 90
    """
    from tess_ffi import runners

    if runner not in runners.RUNNERS:
        typer.echo(f"error: unknown --runner {runner!r}: use thread or dask", err=True)
        raise typer.Exit(2)
    if dask_address and runner != "dask":
        typer.echo("error: --dask-address needs --runner dask", err=True)
        raise typer.Exit(2)
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo(
            "error: PREFECT_API_URL is not set: make up, then source .tess-ffi.env", err=True
        )
        raise typer.Exit(2)
    # flow runs start in child processes that import the flows: they read these
    os.environ["PREFECT_LOGGING_LEVEL"] = log_level.upper()  # what the UI shows of each run
    os.environ[runners.ENV_RUNNER] = runner
    os.environ[runners.ENV_WORKERS] = str(workers)
    if dask_address:
        os.environ[runners.ENV_DASK_ADDRESS] = dask_address
    else:
        os.environ.pop(runners.ENV_DASK_ADDRESS, None)
    from deployments.platform import build_deployments
    from deployments.platform import serve as serve_deployments

    source = source or os.environ.get("TESS_FFI_SOURCE") or "mast"
    deployments = build_deployments(
        source=source,
        cron=cron or None,
        first_sector=first_sector,
        cadence_skip=cadence_skip,
        max_runs_per_tick=max_runs_per_tick,
        wait_minutes=wait_minutes,
    )
    names = ", ".join(d.name for d in deployments)
    typer.echo(f"serving {names} (source {source}, {runner} runner) on the Prefect server")
    serve_deployments(deployments, limit=limit)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def register(app: typer.Typer) -> None:
    """Add the platform commands to the ``tess-ffi`` app."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(serve)
