"""Analysis commands of ``tess-ffi``: ``find-variables``, ``features``, ``lightcurves``.

``register(app)`` adds them to the main typer app (called by ``tess_ffi/cli.py``). Exit
codes as for the rest of the CLI: 0 success, 1 the work failed, 2 bad arguments or input
(one-line reason on stderr).
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

import tess_ffi  # noqa: F401  (process defaults before Prefect/astropy load)


class Format(StrEnum):
    """Output formats of ``tess-ffi lightcurves``."""

    table = "table"
    csv = "csv"
    json = "json"


def _fail(message: str, code: int) -> typer.Exit:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    typer.echo(f"error: {first}", err=True)
    return typer.Exit(code)


def _json_default(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print_arrow(table, fmt: Format, limit: int | None = None) -> None:
    """Print a pyarrow Table as an aligned table, CSV or JSON lines."""
    rows = table.to_pylist()
    if fmt is Format.json:
        for row in rows:
            typer.echo(json.dumps(_clean(row), default=_json_default))
        return
    names = table.column_names
    if fmt is Format.csv:
        typer.echo(",".join(names))
        for row in rows:
            typer.echo(",".join("" if row[n] is None else str(row[n]) for n in names))
        return
    shown = (
        rows if limit is None or len(rows) <= limit else rows[: limit // 2] + rows[-limit // 2 :]
    )
    cells = [[_fmt(r[n]) for n in names] for r in shown]
    widths = [max([len(n)] + [len(c[k]) for c in cells]) for k, n in enumerate(names)]
    typer.echo("  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)))
    for k, c in enumerate(cells):
        if limit is not None and len(rows) > limit and k == limit // 2:
            typer.echo(f"... ({len(rows) - limit} rows not shown; use --format csv for all)")
        typer.echo("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value[:4]) + (", ...]" if len(value) > 4 else "]")
    return str(value)


def register(app: typer.Typer) -> None:
    """Add ``find-variables``, ``features`` and ``lightcurves`` to ``app``."""

    @app.command("find-variables")
    def find_variables_cmd(
        sector: Annotated[int, typer.Option("--sector", "-s", min=1, help="TESS sector (>= 1).")],
        camera: Annotated[int, typer.Option("--camera", "-c", min=1, max=4, help="Camera 1-4.")],
        ccd: Annotated[int, typer.Option("--ccd", "-d", min=1, max=4, help="CCD 1-4.")],
        lake: Annotated[
            str | None,
            typer.Option("--lake", "-l", help="Lakehouse URI [env TESS_FFI_LAKE, ./lake]."),
        ] = None,
        science_size: Annotated[
            int | None,
            typer.Option(
                min=16, max=2048, help="Science area N (N x N px); default: from the stars."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
        plots: Annotated[
            int, typer.Option(min=0, help="PNG plots of the top N candidates (0 = none).")
        ] = 0,
        plots_dir: Annotated[Path, typer.Option(help="Where --plots writes its PNGs.")] = Path(
            "plots"
        ),
    ) -> None:
        """Find variable stars on one CCD: QC, common-mode correction, features, candidates.

        Example: tess-ffi find-variables -s 1 -c 1 -d 1 --lake ./lake --plots 10
        """
        from flows.find_variables import find_variables
        from lakehouse.store import LakehouseError

        try:
            summary = find_variables(
                sector=sector, camera=camera, ccd=ccd, lake=lake, science_size=science_size
            )
        except (LakehouseError, ValueError, OSError) as exc:
            raise _fail(str(exc), 1) from exc
        if as_json:
            typer.echo(json.dumps(_clean(summary), default=_json_default))
            return
        typer.echo(
            f"s{sector:04d}-{camera}-{ccd}: {summary['stars']} stars x {summary['cadences']} "
            f"cadences ({summary['bad_cadences']} bad), {summary['reference_stars']} "
            "reference stars"
        )
        typer.echo(
            f"precision ratio (robust scatter / expected noise, quiet stars): "
            f"raw {summary['precision_ratio_raw']:.3f} -> corrected "
            f"{summary['precision_ratio']:.3f}"
        )
        types = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_type"].items()))
        typer.echo(f"{summary['candidates']} candidates: {types or 'none'}")
        typer.echo(f"tables: {summary['rows']}")
        if plots:
            from tasks.plots import make_candidate_plots

            made = make_candidate_plots(lake, sector, camera, ccd, plots, plots_dir)
            typer.echo(f"plots of {len(made)} top candidates in {plots_dir}")

    @app.command("features")
    def features_cmd(
        path: Annotated[
            Path,
            typer.Argument(
                exists=True,
                dir_okay=False,
                readable=True,
                help="SPOC/TESS-SPOC/QLP/TGLC light curve, TPF or TESScut file, or CSV "
                "(time, flux, flux_err).",
            ),
        ],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        fmt: Annotated[
            str | None,
            typer.Option("--format", help="Force a reader: spoc, qlp, tglc, pixels, csv."),
        ] = None,
        flux_column: Annotated[
            str | None, typer.Option(help="Flux column to use instead of the format's default.")
        ] = None,
    ) -> None:
        """Features, period and class of one external light-curve or pixel file."""
        from tasks.lightcurve_files import LightCurveFileError, analyze_file

        try:
            result = analyze_file(path, format=fmt, flux_column=flux_column)
        except LightCurveFileError as exc:
            raise _fail(str(exc), 2) from exc
        except (OSError, ValueError, KeyError) as exc:
            raise _fail(f"{path.name}: {exc}", 2) from exc
        if as_json:
            typer.echo(json.dumps(_clean(result), default=_json_default))
            return
        main = (
            "format",
            "target",
            "n_good",
            "var_type",
            "period_days",
            "amplitude",
            "score",
            "detection",
            "n_events",
        )
        for key in main:
            typer.echo(f"{key:>14}: {_fmt(result.get(key))}")
        if result.get("events"):
            typer.echo(f"{'events':>14}: {', '.join(f'{v:.4f}' for v in result['events'][:20])}")
        typer.echo("(--json for all features)")

    @app.command("lightcurves")
    def lightcurves_cmd(
        lake: Annotated[
            str | None,
            typer.Option("--lake", "-l", help="Lakehouse URI [env TESS_FFI_LAKE, ./lake]."),
        ] = None,
        stats: Annotated[bool, typer.Option("--stats", help="Per-CCD summary.")] = False,
        star: Annotated[
            int | None, typer.Option("--star", min=0, help="Print this star's light curve.")
        ] = None,
        sector: Annotated[int | None, typer.Option("--sector", "-s", min=1)] = None,
        camera: Annotated[int | None, typer.Option("--camera", "-c", min=1, max=4)] = None,
        ccd: Annotated[int | None, typer.Option("--ccd", "-d", min=1, max=4)] = None,
        good_only: Annotated[
            bool, typer.Option("--good-only", help="Only points with mask_bits = 0.")
        ] = False,
        fmt: Annotated[Format, typer.Option("--format", help="table, csv or json.")] = (
            Format.table
        ),
        plot: Annotated[
            Path | None, typer.Option(help="With --star: save a PNG plot of the light curve.")
        ] = None,
    ) -> None:
        """Corrected light curves in the lakehouse: --stats per CCD or --star ID."""
        if stats == (star is not None):
            raise _fail("give exactly one of --stats or --star ID", 2)
        from lakehouse.sql import connect
        from lakehouse.store import Lakehouse, LakehouseError

        try:
            lk = Lakehouse(lake)
            if not lk.has_table("lightcurves"):
                raise _fail(f"no lightcurves table in {lk.uri}: run find-variables first", 1)
            conn = connect(lk)
        except LakehouseError as exc:
            raise _fail(str(exc), 1) from exc
        where = []
        for name, value in (("sector", sector), ("camera", camera), ("ccd", ccd)):
            if value is not None:
                where.append(f"{name} = {int(value)}")
        if stats:
            table = conn.execute(_stats_sql(where, lk)).fetch_arrow_table()
            if table.num_rows == 0:
                raise _fail("no light curves match", 2)
            _print_arrow(table, fmt)
            return
        where.append(f"star_id = {int(star)}")
        if good_only:
            where.append("mask_bits = 0")
        sql = (
            "SELECT cadence, btjd, flux, flux_err, flux_raw, cm_mult, cm_add, mask_bits "
            f"FROM lightcurves WHERE {' AND '.join(where)} ORDER BY btjd"
        )
        table = conn.execute(sql).fetch_arrow_table()
        if table.num_rows == 0:
            raise _fail(f"star {star} has no light curve in {lk.uri}", 2)
        if fmt is Format.table:
            info = _star_info(conn, int(star), lk)
            if info:
                typer.echo(info)
        _print_arrow(table, fmt, limit=40 if fmt is Format.table else None)
        if plot is not None:
            _plot(table, int(star), plot)
            typer.echo(f"plot written to {plot}", err=True)


def _stats_sql(where: list[str], lake) -> str:
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    extra_join = ""
    extra_cols = ""
    if lake.has_table("star_qc"):
        extra_join += (
            " LEFT JOIN (SELECT sector, camera, ccd, median(precision_ratio) AS precision_ratio,"
            " sum(is_reference::INT) AS reference_stars FROM star_qc GROUP BY ALL) q"
            " USING (sector, camera, ccd)"
        )
        extra_cols += ", q.precision_ratio, q.reference_stars"
    if lake.has_table("candidates"):
        extra_join += (
            " LEFT JOIN (SELECT sector, camera, ccd, count(*) AS candidates FROM candidates"
            " GROUP BY ALL) k USING (sector, camera, ccd)"
        )
        extra_cols += ", coalesce(k.candidates, 0) AS candidates"
    return (
        "SELECT l.*" + extra_cols + " FROM (SELECT sector, camera, ccd, "
        "count(DISTINCT star_id) AS stars, count(DISTINCT cadence) AS cadences, "
        "count(*) AS points, round(avg((mask_bits = 0)::INT), 4) AS frac_good, "
        "sum(((mask_bits & 1) <> 0)::INT) AS quality, sum(((mask_bits & 2) <> 0)::INT) AS epoch, "
        "sum(((mask_bits & 4) <> 0)::INT) AS outlier, sum(((mask_bits & 8) <> 0)::INT) AS no_flux, "
        "sum(((mask_bits & 16) <> 0)::INT) AS uncorrected, min(btjd) AS btjd_start, "
        f"max(btjd) AS btjd_stop FROM lightcurves {cond} GROUP BY ALL) l"
        + extra_join
        + " ORDER BY sector, camera, ccd"
    )


def _star_info(conn, star: int, lake) -> str:
    parts = [f"star {star}"]
    if lake.has_table("candidates"):
        row = conn.execute(
            "SELECT rank, var_type, period_days, amplitude FROM candidates WHERE star_id = ?",
            [star],
        ).fetchone()
        if row:
            parts.append(
                f"candidate rank {row[0]}: {row[1]}, period {_fmt(row[2])} d, "
                f"amplitude {_fmt(row[3])}"
            )
        else:
            parts.append("not a candidate")
    if lake.has_table("star_qc"):
        row = conn.execute(
            "SELECT completeness, precision_ratio, crowding FROM star_qc WHERE star_id = ?",
            [star],
        ).fetchone()
        if row:
            parts.append(
                f"completeness {_fmt(row[0])}, precision ratio {_fmt(row[1])}, "
                f"crowding {_fmt(row[2])}"
            )
    return "; ".join(parts)


def _plot(table, star: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t = np.asarray(table.column("btjd").to_numpy(zero_copy_only=False), float)
    f = np.asarray(table.column("flux").to_numpy(zero_copy_only=False), float)
    raw = np.asarray(table.column("flux_raw").to_numpy(zero_copy_only=False), float)
    bits = np.asarray(table.column("mask_bits").to_numpy(zero_copy_only=False))
    good = bits == 0
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t[good], raw[good], ".", ms=2, color="0.7", label="raw")
    ax.plot(t[good], f[good], ".", ms=2, color="C0", label="corrected")
    ax.plot(t[~good], f[~good], "x", ms=3, color="C3", label="masked")
    ax.set_xlabel("BTJD [d]")
    ax.set_ylabel("flux [e-/s]")
    ax.set_title(f"star {star}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
