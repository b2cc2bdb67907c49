"""The ``tess-ffi`` command line: runs the flows and queries the lakehouse.

Exit codes: 0 success, 1 the work failed (one-line reason on stderr), 2 bad arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

import tess_ffi  # noqa: F401  (process defaults before Prefect loads)
from tess_ffi import cli_analysis, cli_platform, cli_quality, cli_user
from tess_ffi.options import Camera, Ccd, Lake, Sector, Source
from tess_ffi.output import OutputFormat, print_table

app = typer.Typer(
    name="tess-ffi",
    help="TESS Full Frame Images -> light curves of every star on a CCD -> variable stars.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    typer.echo(f"error: {first}", err=True)
    return typer.Exit(code)


def _known_errors() -> tuple[type[BaseException], ...]:
    from lakehouse.sql import QueryRefused
    from lakehouse.store import LakehouseError
    from tasks.ffi import FrameError
    from tasks.sources import SourceError

    return (SourceError, FrameError, LakehouseError, QueryRefused, ValueError, OSError)


@app.command()
def process(
    sector: Sector,
    camera: Camera,
    ccd: Ccd,
    source: Source = "mast",
    lake: Lake = None,
    cadence_skip: Annotated[int, typer.Option(min=1, help="Use every k-th FFI.")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="Parallel batch tasks.")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per task.")] = 20,
    max_frames: Annotated[int | None, typer.Option(min=1, help="Stop after N frames.")] = None,
    keep_files: Annotated[bool, typer.Option(help="Keep downloaded FFIs.")] = False,
    download_dir: Annotated[Path | None, typer.Option(help="Where downloads go.")] = None,
    runner: Annotated[
        str, typer.Option(help="Where batch tasks run: thread (this process) | dask.")
    ] = "thread",
    dask_address: Annotated[
        str | None,
        typer.Option(help="Dask scheduler tcp://HOST:PORT (default: a local cluster)."),
    ] = None,
    crossmatch_tic: Annotated[
        bool, typer.Option(help="Match stars to the TIC through MAST (skipped offline).")
    ] = False,
) -> None:
    """Ingest one sector/camera/CCD: FFIs -> photometry in the lakehouse.

    Example: tess-ffi process --sector 1 --camera 1 --ccd 1 --source ./ffis --lake ./lake
    """
    if runner not in ("thread", "dask"):
        raise fail(f"unknown --runner {runner!r}: use thread or dask", code=2)
    if dask_address and runner != "dask":
        raise fail("--dask-address needs --runner dask", code=2)
    try:
        cli_quality.check_source(source)
        cli_quality.check_lake(lake)
        cli_quality.check_writable_dir("--download-dir", download_dir)
    except cli_quality.BadInput as exc:
        raise fail(str(exc), code=2) from exc
    summary = run_ingest(
        sector,
        camera,
        ccd,
        source,
        lake,
        cadence_skip,
        workers,
        batch_size,
        max_frames,
        keep_files,
        str(download_dir) if download_dir else None,
        runner=runner,
        dask_address=dask_address,
        crossmatch_tic=crossmatch_tic,
    )
    typer.echo(json.dumps(summary, indent=2))


def run_ingest(
    sector: int,
    camera: int,
    ccd: int,
    source: str,
    lake: str | None,
    cadence_skip: int = 1,
    workers: int = 2,
    batch_size: int = 20,
    max_frames: int | None = None,
    keep_files: bool = False,
    download_dir: str | None = None,
    runner: str = "thread",
    dask_address: str | None = None,
    crossmatch_tic: bool = False,
) -> dict:
    """Run the ``ingest-ccd`` flow with a progress bar; errors become one-line exits.

    ``runner`` ``thread``: ``workers`` threads; ``dask``: a LocalCluster of ``workers``
    processes, or the cluster at ``dask_address`` (``tcp://HOST:PORT``).
    """
    from flows.ingest import ingest_ccd
    from tess_ffi.progress import progress_bar
    from tess_ffi.runners import make_task_runner

    flow = ingest_ccd.with_options(task_runner=make_task_runner(runner, workers, dask_address))
    try:
        with progress_bar("ingest", f"s{sector:04d}-{camera}-{ccd} photometry"):
            return flow(
                sector=sector,
                camera=camera,
                ccd=ccd,
                source=source,
                lake=lake,
                cadence_skip=cadence_skip,
                batch_size=batch_size,
                max_frames=max_frames,
                keep_files=keep_files,
                download_dir=download_dir,
                crossmatch_tic=crossmatch_tic,
            )
    except _known_errors() as exc:
        raise fail(str(exc)) from exc


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SELECT over the tables by name.")],
    lake: Lake = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
    limit: Annotated[int, typer.Option(min=0, help="Rows printed as a table (0 = all).")] = 50,
) -> None:
    """Run read-only DuckDB SQL over the lakehouse tables.

    Example: tess-ffi sql "SELECT sector, camera, ccd, count(*) FROM photometry GROUP BY ALL"
    """
    from lakehouse.sql import run_query

    try:
        cli_quality.check_lake(lake)
    except cli_quality.BadInput as exc:
        raise fail(str(exc), code=2) from exc
    try:
        result = run_query(query, lake)
    except _known_errors() as exc:
        raise fail(str(exc), code=2 if exc.__class__.__name__ == "QueryRefused" else 1) from exc
    except Exception as exc:  # duckdb errors: catalog, binder, parser...
        if exc.__class__.__module__.startswith(("duckdb", "_duckdb")):
            raise fail(str(exc), code=1) from exc
        raise
    print_table(result, format, limit)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the *_ffic.fits files.")],
    sector: Sector = 1,
    camera: Camera = 1,
    ccd: Ccd = 1,
    cadences: Annotated[int, typer.Option(min=1, help="Number of FFIs.")] = 200,
    cadence_start: Annotated[int, typer.Option(min=0, help="First real cadence.")] = 0,
    stars: Annotated[int, typer.Option(min=1, help="Number of stars.")] = 2000,
    size: Annotated[
        int, typer.Option(min=64, max=2048, help="Science area N x N px (2048 = full CCD).")
    ] = 2048,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
) -> None:
    """Write a simulated sector of calibrated FFIs in the SPOC format, with a truth table.

    Example: tess-ffi simulate --out ./ffis --sector 1 --cadences 100 --stars 3000
    """
    from tasks.simulate import simulate_sector

    try:
        cli_quality.check_writable_dir("--out", out)
    except cli_quality.BadInput as exc:
        raise fail(str(exc), code=2) from exc
    result = simulate_sector(
        out,
        sector=sector,
        camera=camera,
        ccd=ccd,
        n_cadences=cadences,
        cadence_start=cadence_start,
        n_stars=stars,
        science_size=size,
        seed=seed,
    )
    typer.echo(f"wrote {len(result.paths)} FFIs to {out}; truth table {result.truth_path}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo FFIs and lake go.")] = Path("."),
    cadences: Annotated[int, typer.Option(min=10)] = 300,
    stars: Annotated[int, typer.Option(min=10)] = 1500,
    size: Annotated[int, typer.Option(min=64, max=2048)] = 512,
) -> None:
    """Simulate a small sector, ingest it, analyse it and show what the lakehouse holds."""
    from tasks.simulate import simulate_sector

    ffi_dir = workdir / "demo-ffi"
    lake = str((workdir / "demo-lake").resolve())
    ffi_dir.mkdir(parents=True, exist_ok=True)
    typer.echo(f"1/3 simulating {cadences} FFIs ({size}x{size} science px, {stars} stars) ...")
    sim = simulate_sector(
        ffi_dir, sector=1, camera=1, ccd=1, n_cadences=cadences, n_stars=stars, science_size=size
    )
    typer.echo(f"    {len(sim.paths)} files in {ffi_dir}, truth in {sim.truth_path}")
    typer.echo("2/3 ingesting (flow ingest-ccd) ...")
    summary = run_ingest(1, 1, 1, str(ffi_dir.resolve()), lake, batch_size=25)
    typer.echo(
        f"    {summary['stars']} stars x {summary['frames']} frames = "
        f"{summary['photometry_rows']} photometry rows"
    )
    _run_analysis(lake)
    typer.echo(f"\nlakehouse: {lake}")
    from lakehouse.sql import run_query

    counts = run_query(
        "SELECT 'frames' AS table_name, count(*) AS rows FROM frames UNION ALL "
        "SELECT 'stars', count(*) FROM stars UNION ALL "
        "SELECT 'photometry', count(*) FROM photometry",
        lake,
    )
    print_table(counts, OutputFormat.table)
    top = run_query(
        "SELECT c.rank, c.star_id, c.var_type, c.period_days, f.stetson_j FROM candidates c "
        "JOIN features f USING (star_id) ORDER BY c.rank LIMIT 10",
        lake,
    )
    typer.echo("top candidates:")
    print_table(top, OutputFormat.table)
    typer.echo(f'\ntry: .venv/bin/tess-ffi sql "SELECT * FROM stars LIMIT 5" --lake {lake}')


def _run_analysis(lake: str) -> None:
    from flows.find_variables import find_variables

    typer.echo("3/3 finding variables (flow find-variables) ...")
    find_variables(sector=1, camera=1, ccd=1, lake=lake)


def _register_commands() -> None:
    """Commands of the other areas, each in its own module."""
    cli_analysis.register(app)
    cli_platform.register(app)
    cli_user.register(app)
    cli_quality.register(app)


_register_commands()


def main() -> None:
    """Entry point."""
    app()


if __name__ == "__main__":
    main()
