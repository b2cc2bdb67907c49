"""User commands of ``tess-ffi``: ``download``, ``status``, ``catalog``, ``export``, ``plot``,
``report``.

``register(app)`` adds them to the main typer app (called by ``tess_ffi/cli.py``). Exit
codes as for the rest of the CLI: 0 success, 1 the work failed (one line ``error: ...`` on
stderr), 2 bad arguments (unknown star, bad option values). Long steps show a progress bar
on a terminal.
"""

from __future__ import annotations

import shutil
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

import tess_ffi  # noqa: F401  (process defaults before Prefect/astropy load)
from tess_ffi.options import Camera, Ccd, Sector, Source
from tess_ffi.output import OutputFormat, print_table

OptSector = Annotated[int | None, typer.Option("--sector", "-s", min=1, help="Only this sector.")]
OptCamera = Annotated[
    int | None, typer.Option("--camera", "-c", min=1, max=4, help="Only this camera.")
]
OptCcd = Annotated[int | None, typer.Option("--ccd", "-d", min=1, max=4, help="Only this CCD.")]
Lake = Annotated[
    str | None,
    typer.Option(
        "--lake",
        "-l",
        help="Lakehouse URI: folder or s3://bucket/prefix [env TESS_FFI_LAKE, ./lake].",
    ),
]


class ExportFormat(StrEnum):
    """What ``tess-ffi export`` writes."""

    ml = "ml"
    lightkurve = "lightkurve"


class PlotKind(StrEnum):
    """Plots of ``tess-ffi plot``."""

    lightcurve = "lightcurve"
    periodogram = "periodogram"
    phase = "phase"
    vsx = "vsx"


def _fail(message: str, code: int = 1) -> typer.Exit:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    typer.echo(f"error: {first}", err=True)
    return typer.Exit(code)


def _lake(lake: str | None):
    from lakehouse.store import Lakehouse

    return Lakehouse(lake)


def _work_errors() -> tuple[type[BaseException], ...]:
    from lakehouse.store import LakehouseError
    from tasks.ffi import FrameError
    from tasks.sources import SourceError

    return (LakehouseError, SourceError, FrameError, OSError)


def _bar(description: str, total: int | None):
    from tess_ffi.progress import progress_bar

    return progress_bar("user", description, total)


def _advance(n: int = 1) -> None:
    from tess_ffi.progress import advance

    advance("user", n)


# --------------------------------------------------------------------------- download


def download(
    sector: Sector,
    camera: Camera,
    ccd: Ccd,
    source: Source = "mast",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder the FFIs go to.")] = Path("ffi"),
    cadence_skip: Annotated[int, typer.Option(min=1, help="Keep every k-th FFI.")] = 1,
    max_frames: Annotated[int | None, typer.Option(min=1, help="Stop after N FFIs.")] = None,
    list_only: Annotated[
        bool, typer.Option("--list", help="Only list what the source has; fetch nothing.")
    ] = False,
) -> None:
    """Download the FFIs of one sector/camera/CCD into a folder and keep them.

    Each file is verified before it gets its final name. Files already there are
    checked, not fetched again: rerun the same command to resume a download.
    Ingest the folder later with: tess-ffi process ... --source FOLDER

    Examples:

      tess-ffi download -s 1 -c 1 -d 1 --source mast --out ./ffi --cadence-skip 4

      tess-ffi download -s 1 -c 1 -d 1 --source s3 --list

      tess-ffi process -s 1 -c 1 -d 1 --source ./ffi
    """
    from tasks.sources import LocalSource, open_source

    try:
        src = open_source(source)
    except _work_errors() as exc:
        raise _fail(str(exc), 2) from exc
    try:
        with src:
            refs = sorted(src.list_frames(sector, camera, ccd), key=lambda r: r.file_name)
            refs = refs[::cadence_skip]
            if max_frames:
                refs = refs[:max_frames]
            if not refs:
                raise _fail(
                    f"{src.describe()} has no FFIs of sector {sector} camera {camera} ccd {ccd}"
                )
            if list_only:
                for r in refs:
                    typer.echo(r.file_name)
                typer.echo(f"{len(refs)} FFIs at {src.describe()}", err=True)
                return
            out.mkdir(parents=True, exist_ok=True)
            fetched = present = 0
            size = 0
            with _bar(f"download s{sector:04d}-{camera}-{ccd}", len(refs)):
                for r in refs:
                    final = out / r.file_name
                    existed = final.exists()
                    if isinstance(src, LocalSource):
                        path = _copy_local(src, r, out)
                    else:
                        path = src.fetch(r, out)
                    present += existed
                    fetched += not existed
                    size += path.stat().st_size
                    _advance()
    except typer.Exit:
        raise
    except _work_errors() as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"{len(refs)} FFIs in {out} ({fetched} fetched, {present} already there, "
        f"{size / 1e6:.1f} MB)"
    )


def _copy_local(src, ref, out: Path) -> Path:
    """Copy a verified local FFI into ``out`` (``.part`` then rename); reuse a good copy."""
    from tasks.ffi import FrameError, verify_frame

    path = src.fetch(ref, out)  # verifies the original
    final = out / ref.file_name
    if final.resolve() == Path(path).resolve():
        return final
    if final.exists():
        try:
            verify_frame(final, ref.sector, ref.camera, ref.ccd)
            return final
        except FrameError:
            final.unlink()
    part = out / (ref.file_name + ".part")
    try:
        shutil.copyfile(path, part)
        part.replace(final)
    finally:
        part.unlink(missing_ok=True)
    return final


# --------------------------------------------------------------------------- status


def status(
    lake: Lake = None,
    sector: OptSector = None,
    camera: OptCamera = None,
    ccd: OptCcd = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="table, csv or json.")] = (
        OutputFormat.table
    ),
    services: Annotated[
        bool,
        typer.Option(
            "--services", help="Show the platform services (tess-ffi up) instead of the lake."
        ),
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="With --services: the platform's state folder."),
    ] = None,
) -> None:
    """What the lake holds per sector/camera/CCD, with counts and time spans.

    Frames and their BTJD span (days), stars and TIC ids, photometry rows, bad
    cadences, analysed stars, candidates; unfinished (resumable) ingest runs.

    Examples:

      tess-ffi status --lake ./lake

      tess-ffi status -s 1 --format json

      tess-ffi status --services     (the Prefect server and S3 store of `tess-ffi up`)
    """
    if services or state_dir is not None:
        from tess_ffi import cli_platform, platform

        cli_platform.status(state_dir=state_dir or Path(platform.DEFAULT_STATE_DIR))
        return
    from tasks.export import ExportError
    from tasks.status import lake_status

    try:
        lk = _lake(lake)
        result, staging = lake_status(lk, sector, camera, ccd)
    except (*_work_errors(), ExportError) as exc:
        raise _fail(str(exc)) from exc
    if fmt is OutputFormat.table:
        typer.echo(f"lake {lk.uri}")
    if result.num_rows == 0:
        if fmt is OutputFormat.table:
            typer.echo("no data yet: run `tess-ffi process` (or `tess-ffi demo`)")
        else:
            print_table(result, fmt)
    else:
        print_table(result, fmt)
    if staging and fmt is OutputFormat.table:
        for label, runs in staging.items():
            typer.echo(
                f"unfinished ingest of {label}: {', '.join(runs)} (run the same "
                "`tess-ffi process` command again to resume)"
            )


# --------------------------------------------------------------------------- catalog


def catalog(
    lake: Lake = None,
    sector: OptSector = None,
    camera: OptCamera = None,
    ccd: OptCcd = None,
    with_tic: Annotated[bool, typer.Option("--with-tic", help="Only stars with a TIC id.")] = (
        False
    ),
    max_tmag: Annotated[
        float | None, typer.Option(help="Only stars brighter than this T magnitude.")
    ] = None,
    candidates_only: Annotated[
        bool, typer.Option("--candidates", help="Only variable-star candidates.")
    ] = False,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="table, csv or json.")] = (
        OutputFormat.table
    ),
    limit: Annotated[int, typer.Option(min=0, help="Rows printed as a table (0 = all).")] = 50,
) -> None:
    """The stars in the lake, with TIC ids when cross-matched.

    Columns: star_id, tic_id, partition, ra/dec (deg, ICRS), tmag (TESS mag),
    x/y (px), completeness and, for candidates, var_type, period_days, rank.

    Examples:

      tess-ffi catalog -s 1 -c 1 -d 1 --max-tmag 10

      tess-ffi catalog --candidates --format csv > candidates.csv

      tess-ffi catalog --with-tic --format json
    """
    from lakehouse.sql import connect

    try:
        lk = _lake(lake)
        if not lk.has_table("stars"):
            raise _fail(f"no stars table in the lake at {lk.uri}: run `tess-ffi process` first")
        conn = connect(lk)
    except typer.Exit:
        raise
    except _work_errors() as exc:
        raise _fail(str(exc)) from exc
    tables = set(lk.tables())
    cols = [
        "s.star_id",
        "s.tic_id",
        "s.sector",
        "s.camera",
        "s.ccd",
        "round(s.ra, 6) AS ra",
        "round(s.dec, 6) AS dec",
        "round(s.tmag_est, 3) AS tmag",
        "round(s.x, 2) AS x",
        "round(s.y, 2) AS y",
    ]
    joins = ""
    if "star_qc" in tables:
        cols.append("round(q.completeness, 3) AS completeness")
        joins += " LEFT JOIN star_qc q USING (sector, camera, ccd, star_id)"
    if "candidates" in tables:
        cols += ["k.var_type", "k.period_days", "k.rank AS candidate_rank"]
        joins += " LEFT JOIN candidates k USING (sector, camera, ccd, star_id)"
    where = []
    for name, value in (("sector", sector), ("camera", camera), ("ccd", ccd)):
        if value is not None:
            where.append(f"s.{name} = {int(value)}")
    if with_tic:
        where.append("s.tic_id IS NOT NULL")
    if max_tmag is not None:
        where.append(f"s.tmag_est <= {float(max_tmag)!r}")
    if candidates_only:
        if "candidates" not in tables:
            raise _fail("no candidates table: run `tess-ffi find-variables` first")
        where.append("k.rank IS NOT NULL")
    order = "k.rank, s.star_id" if candidates_only else "s.sector, s.camera, s.ccd, s.star_id"
    sql = (
        f"SELECT {', '.join(cols)} FROM stars s{joins}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {order}"
    )
    result = conn.execute(sql).fetch_arrow_table()
    if result.num_rows == 0:
        raise _fail("no star matches", 1)
    print_table(result, fmt, limit if fmt is OutputFormat.table else 0)


# --------------------------------------------------------------------------- export


def export(
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the data set (a folder).")],
    lake: Lake = None,
    sector: OptSector = None,
    camera: OptCamera = None,
    ccd: OptCcd = None,
    min_completeness: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Keep stars with at least this fraction of good points."
        ),
    ] = 0.0,
    min_snr: Annotated[
        float, typer.Option(min=0.0, help="Keep stars with median flux / flux_err >= this.")
    ] = 0.0,
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="ml: features.parquet/.csv + timeseries_*.npz; lightkurve: one FITS per star.",
        ),
    ] = ExportFormat.ml,
    star: Annotated[
        list[int] | None,
        typer.Option("--star", help="With --format lightkurve: only these stars (repeatable)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder of the data set.")] = Path(
        "exports"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing data set.")] = False,
) -> None:
    """Export a data set for ML and other tools into OUT/NAME.

    --format ml: features.parquet + features.csv (features, QC, candidate labels),
    timeseries_sSSSS-C-D.npz per CCD: btjd (d), cadence, flux, flux_err, flux_raw
    (e-/s), mask_bits, good; full length, never truncated (NaN = no point);
    manifest.json describes every array.
    --format lightkurve: one FITS light curve per star that lightkurve.read opens
    (TIME in BTJD, FLUX, FLUX_ERR, QUALITY).

    Examples:

      tess-ffi export --name s1-bright --min-completeness 0.9 --min-snr 50

      tess-ffi export --name s1-lk --format lightkurve -s 1 -c 1 -d 1

      python -c "import polars as pl; print(pl.read_parquet('exports/s1-bright/features.parquet'))"
    """
    from tasks.export import ExportError, export_lightkurve, export_ml

    if not name or Path(name).name != name or name in (".", ".."):
        raise _fail(f"--name {name!r} must be a plain folder name", 2)
    if star and fmt is not ExportFormat.lightkurve:
        raise _fail("--star works with --format lightkurve", 2)
    target = out / name
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise _fail(f"{target} exists: pick another --name or add --overwrite", 2)
        shutil.rmtree(target)
    try:
        lk = _lake(lake)
        if fmt is ExportFormat.ml:
            from tasks.export import partitions

            n_parts = len(partitions(lk, sector, camera, ccd))
            with _bar(f"export {name}", n_parts or None):
                result = export_ml(
                    lk, target, sector, camera, ccd, min_completeness, min_snr, _advance
                )
        else:
            from tess_ffi.progress import set_total

            with _bar(f"export {name} (FITS)", None):
                result = export_lightkurve(
                    lk,
                    target,
                    sector,
                    camera,
                    ccd,
                    min_completeness,
                    min_snr,
                    star,
                    _advance,
                    on_total=lambda n: set_total("user", n),
                )
    except ExportError as exc:
        raise _fail(str(exc), 2 if star else 1) from exc
    except _work_errors() as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{result.stars} stars -> {target} ({len(result.files)} files)")


# --------------------------------------------------------------------------- plot


def plot(
    star: Annotated[
        list[int] | None, typer.Option("--star", help="Plot this star (repeatable).")
    ] = None,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Plot the top N candidates of --sector/--camera/--ccd."),
    ] = None,
    sector: OptSector = None,
    camera: OptCamera = None,
    ccd: OptCcd = None,
    kind: Annotated[
        list[PlotKind] | None, typer.Option("--kind", "-k", help="Only these plots (repeatable).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG files.")] = Path(
        "plots"
    ),
    lake: Lake = None,
) -> None:
    """PNG plots of a star or of the top candidates of a CCD.

    lightcurve: raw vs corrected; periodogram: Lomb-Scargle; phase: folded at the
    reported period with a binned median; vsx: BTJD and phase 0-2 against the
    inverted T magnitude, as VSX submissions show them.

    Examples:

      tess-ffi plot --star 11100042 --out plots

      tess-ffi plot --top 10 -s 1 -c 1 -d 1 --kind vsx --kind phase
    """
    from tasks.export import ExportError, partition_of
    from tasks.plots import PLOT_KINDS, load_series, make_candidate_plots, star_plots

    if bool(star) == (top is not None):
        raise _fail("give --star ID (one or more) or --top N with --sector/--camera/--ccd", 2)
    kinds = tuple(k.value for k in kind) if kind else PLOT_KINDS
    try:
        lk = _lake(lake)
        if top is not None:
            if None in (sector, camera, ccd):
                raise _fail("--top needs --sector, --camera and --ccd", 2)
            with _bar(f"plots of the top {top}", top):
                written = make_candidate_plots(lk, sector, camera, ccd, top, out, kinds, _advance)
            if not written:
                raise _fail(f"no candidates in s{sector:04d}-{camera}-{ccd}", 1)
        else:
            try:
                for s in star:
                    partition_of(s)
            except ExportError as exc:
                raise _fail(str(exc), 2) from exc
            if not (lk.has_table("lightcurves") or lk.has_table("photometry")):
                raise _fail(f"no light curves in the lake at {lk.uri}: run `tess-ffi process`")
            series = load_series(lk, star)
            missing = [s for s in star if s not in series]
            if missing:
                raise _fail(f"star {missing[0]} has no light curve in the lake at {lk.uri}", 2)
            written = {}
            with _bar("plots", len(star)):
                for s in star:
                    written[s] = star_plots(series[s], out, kinds)
                    _advance()
    except typer.Exit:
        raise
    except ExportError as exc:
        raise _fail(str(exc)) from exc
    except _work_errors() as exc:
        raise _fail(str(exc)) from exc
    for paths in written.values():
        for p in paths.values():
            typer.echo(str(p))


# --------------------------------------------------------------------------- report


def report(
    sector: Sector,
    camera: Camera,
    ccd: Ccd,
    lake: Lake = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file [report-sSSSS-C-D.html].")
    ] = None,
    top: Annotated[
        int, typer.Option("--top", min=0, help="Candidates with thumbnails and full plots.")
    ] = 20,
) -> None:
    """Write a self-contained HTML report of one sector/camera/CCD.

    Summary, QC over time, candidate table with thumbnails and links to each
    candidate's plots. One file with the pictures inside: open it in a browser,
    mail it, attach it.

    Example: tess-ffi report -s 1 -c 1 -d 1 --out report.html && xdg-open report.html
    """
    from tasks.export import ExportError
    from tasks.report import write_report

    out = out or Path(f"report-s{sector:04d}-{camera}-{ccd}.html")
    try:
        with _bar(f"report s{sector:04d}-{camera}-{ccd}", top or None):
            path = write_report(_lake(lake), sector, camera, ccd, out, top, _advance)
    except ExportError as exc:
        raise _fail(str(exc)) from exc
    except _work_errors() as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"report written to {path}")


def register(app: typer.Typer) -> None:
    """Add ``download``, ``status``, ``catalog``, ``export``, ``plot``, ``report`` to ``app``.

    ``status`` replaces the platform's ``status`` and keeps it as ``status --services``
    (``--state-dir DIR`` works as before).
    """
    app.registered_commands[:] = [
        c for c in app.registered_commands if (c.name or c.callback.__name__) != "status"
    ]
    for func in (download, status, catalog, export, plot, report):
        app.command()(func)
