"""A self-contained HTML report of one sector/camera/CCD.

One ``.html`` file with everything inside (CSS inline, pictures as ``data:`` PNGs, no
script, no network): a summary, QC over time, the candidate table with thumbnails and,
for the top-N candidates, their light curve, periodogram, phase and VSX-style plots
(:mod:`tasks.plots`), reached from the table through in-page links. It can be mailed,
attached to a VSX submission thread or opened from a USB stick.

:func:`qc_figure` and :func:`render_html` are pure (arrays / dicts in, figure / text
out); :func:`write_report` reads the lakehouse and writes the file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.plots import (
    FIGURES,
    PLOT_KINDS,
    StarSeries,
    load_series,
    new_figure,
    save_png,
    thumbnail_figure,
)

_KIND_TITLES = {
    "lightcurve": "light curve: raw and corrected",
    "periodogram": "Lomb-Scargle periodogram",
    "phase": "phase-folded at the reported period",
    "vsx": "VSX-style (T magnitude, phase 0–2)",
}


_SHORT = {"lightcurve": "lc", "periodogram": "pgram", "phase": "phase", "vsx": "vsx"}


def qc_figure(epoch: dict[str, np.ndarray]):
    """Four panels over BTJD [d] from ``epoch_qc`` columns: fraction of well-measured
    stars, median sky [e-/s/px], pointing offset [px], ensemble scatter before/after the
    common-mode correction (fraction); bad cadences shaded red."""
    t = np.asarray(epoch["btjd"], dtype=float)
    bad = np.asarray(epoch.get("bad", np.zeros(t.size, bool)), dtype=bool)
    fig, axes = new_figure(10, 7.2, 4, 1, sharex=True)
    panels = (
        ("frac_good", "good stars\n[fraction]", None),
        ("bkg_median", "sky [e⁻/s/px]", None),
        ("pointing_offset", "pointing offset\n[px]", None),
        ("ensemble_scatter_raw", "ensemble scatter\n[fraction]", "ensemble_scatter"),
    )
    order = np.argsort(t)
    for ax, (name, label, second) in zip(axes, panels, strict=True):
        y = np.asarray(epoch.get(name, np.full(t.size, np.nan)), dtype=float)
        ax.plot(
            t[order],
            y[order],
            ".-",
            ms=2,
            lw=0.6,
            color="0.45" if second else "#1f5fa8",
            label="raw" if second else None,
        )
        if second:
            y2 = np.asarray(epoch.get(second, np.full(t.size, np.nan)), dtype=float)
            ax.plot(t[order], y2[order], ".-", ms=2, lw=0.6, color="#1f5fa8", label="corrected")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.25)
        for tb in t[bad]:
            ax.axvspan(tb - 0.01, tb + 0.01, color="#d62728", alpha=0.25, lw=0)
    axes[-1].set_xlabel("time [BTJD = BJD − 2457000, d]")
    n_bad = int(bad.sum())
    fig.suptitle(f"QC over time ({t.size} cadences, {n_bad} bad, shaded red)", fontsize=10)
    return fig


@dataclass
class ReportData:
    """Everything the HTML shows (plain Python values; PNGs as bytes)."""

    sector: int
    camera: int
    ccd: int
    lake: str
    summary: list[tuple[str, str]]  # (label, value) rows
    qc_png: bytes | None
    candidates: list[dict]  # candidates rows + star info (tic_id, ra, dec, tmag_est)
    thumbnails: dict[int, bytes] = field(default_factory=dict)
    plots: dict[int, dict[str, bytes]] = field(default_factory=dict)
    created: str = ""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}"
    return str(value)


def _fixed(value, decimals: int) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.{decimals}f}"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#14213d;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#c9d3e6;font-size:13px}
main{max-width:1400px;margin:0 auto;padding:10px 24px 40px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;margin:18px 0;padding:14px 18px}
h2{font-size:18px;margin:4px 0 12px} h3{font-size:15px;margin:10px 0 6px}
table{border-collapse:collapse;width:100%}
th,td{padding:4px 7px;border-bottom:1px solid #eceef2;text-align:right;vertical-align:middle;
white-space:nowrap} th{background:#f0f2f6;position:sticky;top:0}
td.l,th.l{text-align:left} table.summary td{text-align:left}
table.summary td:first-child{color:#556;width:300px}
img{max-width:100%;height:auto} img.thumb{width:160px;max-width:none;display:block}
.wide{overflow-x:auto} .links{font-size:12px}
.plots img{display:block;margin:6px 0 14px;border:1px solid #eceef2}
.type{font-weight:600} nav a{margin-right:14px} .muted{color:#667;font-size:12px}
a{color:#1f5fa8}
"""


def render_html(d: ReportData) -> str:
    """The report as one HTML document (every value escaped, pictures inline)."""
    e = html.escape
    part = f"sector {d.sector} · camera {d.camera} · CCD {d.ccd}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>tess-ffi report: {e(part)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>tess-ffi report — {e(part)}</h1>",
        f"<p>lake {e(d.lake)} · generated {e(d.created)}</p></header><main>",
        '<nav><a href="#summary">Summary</a><a href="#qc">QC over time</a>'
        '<a href="#candidates">Candidates</a><a href="#plots">Plots</a></nav>',
        '<section id="summary"><h2>Summary</h2><table class="summary">',
    ]
    for label, value in d.summary:
        out.append(f"<tr><td>{e(label)}</td><td>{e(value)}</td></tr>")
    out.append("</table></section>")
    out.append('<section id="qc"><h2>QC over time</h2>')
    if d.qc_png:
        out.append(f'<img src="{_data_uri(d.qc_png)}" alt="QC over time" width="1000">')
    else:
        out.append("<p>No epoch QC (run <code>tess-ffi find-variables</code>).</p>")
    out.append("</section>")
    out.append(f'<section id="candidates"><h2>Candidates ({len(d.candidates)})</h2>')
    if d.candidates:
        out.append(
            '<div class="wide"><table><tr><th>rank</th><th class=l>picture</th>'
            "<th>star_id</th><th>TIC</th>"
            "<th>RA [°]</th><th>Dec [°]</th><th>T [mag]</th><th class=l>type</th>"
            "<th>period [d]</th><th>amplitude</th><th>score [σ]</th><th class=l>detection</th>"
            "<th>events</th></tr>"
        )
        for c in d.candidates:
            sid = int(c["star_id"])
            thumb = d.thumbnails.get(sid)
            pic = (
                f'<a href="#star-{sid}"><img class="thumb" src="{_data_uri(thumb)}" '
                f'alt="star {sid}" width="160" height="80"></a>'
                if thumb
                else ""
            )
            links = (
                '<br><span class="links">'
                + " · ".join(
                    f'<a href="#star-{sid}-{k}">{_SHORT.get(k, k)}</a>' for k in d.plots[sid]
                )
                + "</span>"
                if sid in d.plots
                else ""
            )
            out.append(
                f"<tr><td>{c['rank']}</td><td class=l>{pic}</td><td>{sid}{links}</td>"
                f"<td>{_fmt(c.get('tic_id'))}</td><td>{_fixed(c.get('ra'), 5)}</td>"
                f"<td>{_fixed(c.get('dec'), 5)}</td><td>{_fixed(c.get('tmag_est'), 2)}</td>"
                f"<td class='l type'>{e(str(c.get('var_type')))}</td>"
                f"<td>{_fmt(c.get('period_days'), 6)}</td><td>{_fmt(c.get('amplitude'), 3)}</td>"
                f"<td>{_fmt(c.get('score'), 3)}</td><td class=l>{e(str(c.get('detection') or ''))}"
                f"</td><td>{_fmt(c.get('n_events'))}</td></tr>"
            )
        out.append("</table></div>")
        out.append(
            '<p class="muted">Click a picture or a link (lc: light curve, pgram: '
            "periodogram, phase, vsx) for the full plots of the top candidates. "
            "Amplitude: semi-amplitude or eclipse/transit depth as a fraction "
            "of the flux; score: the highest calibrated detection significance; T: TESS "
            "magnitude estimated from the reference flux.</p>"
        )
    else:
        out.append("<p>No candidates.</p>")
    out.append("</section>")
    out.append(f'<section id="plots" class="plots"><h2>Plots of the top {len(d.plots)}</h2>')
    for c in d.candidates:
        sid = int(c["star_id"])
        if sid not in d.plots:
            continue
        out.append(
            f'<div id="star-{sid}"><h3>#{c["rank"]} star {sid} — {e(str(c.get("var_type")))}'
            f' <a class="muted" href="#candidates">↑ table</a></h3>'
        )
        for kind, png in d.plots[sid].items():
            out.append(
                f'<img id="star-{sid}-{kind}" src="{_data_uri(png)}" '
                f'alt="star {sid} {e(_KIND_TITLES.get(kind, kind))}" '
                f'title="{e(_KIND_TITLES.get(kind, kind))}">'
            )
        out.append("</div>")
    out.append("</section>")
    out.append(
        '<p class="muted">Time: BTJD = BJD_TDB − 2457000 [d]. Flux: e⁻/s. Made by tess-ffi; '
        "the tables and their units are in docs/architecture.md.</p></main></body></html>"
    )
    return "\n".join(out)


def _summary_rows(lake, sector: int, camera: int, ccd: int, cand) -> list[tuple[str, str]]:
    from tasks.export import read_rows

    rows: list[tuple[str, str]] = []
    if lake.has_table("frames"):
        fr = read_rows(lake, "frames", sector, camera, ccd, columns=["btjd", "cadence"])
        if fr.num_rows:
            t = fr.column("btjd").to_numpy(zero_copy_only=False)
            rows.append(("frames (FFIs ingested)", f"{fr.num_rows}"))
            rows.append(
                (
                    "time span",
                    f"BTJD {np.nanmin(t):.4f} – {np.nanmax(t):.4f} "
                    f"({np.nanmax(t) - np.nanmin(t):.2f} d)",
                )
            )
    if lake.has_table("stars"):
        st = read_rows(
            lake, "stars", sector, camera, ccd, columns=["star_id", "tmag_est", "tic_id"]
        )
        tm = st.column("tmag_est").to_numpy(zero_copy_only=False).astype(float)
        n_tic = st.num_rows - st.column("tic_id").null_count
        rows.append(
            (
                "stars",
                f"{st.num_rows} (T {np.nanmin(tm):.1f} – {np.nanmax(tm):.1f}), "
                f"{n_tic} with a TIC id"
                if st.num_rows
                else "0",
            )
        )
    if lake.has_table("epoch_qc"):
        ep = read_rows(lake, "epoch_qc", sector, camera, ccd, columns=["bad", "bad_reason"])
        bad = ep.column("bad").to_numpy(zero_copy_only=False).astype(bool)
        why_bad: dict[str, int] = {}
        why_kept: dict[str, int] = {}
        for is_bad, r in zip(bad, ep.column("bad_reason").to_pylist(), strict=True):
            target = why_bad if is_bad else why_kept
            for name in filter(None, (r or "").split(",")):
                target[name] = target.get(name, 0) + 1
        text = f"{int(bad.sum())} of {bad.size}"
        if why_bad:
            text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(why_bad.items())) + ")"
        rows.append(("bad cadences", text))
        if why_kept:
            kept = ", ".join(f"{k} {v}" for k, v in sorted(why_kept.items()))
            rows.append(("flagged but kept cadences", kept))
    if lake.has_table("star_qc"):
        qc = read_rows(
            lake,
            "star_qc",
            sector,
            camera,
            ccd,
            columns=["precision_ratio", "completeness", "is_reference"],
        )
        pr = qc.column("precision_ratio").to_numpy(zero_copy_only=False).astype(float)
        comp = qc.column("completeness").to_numpy(zero_copy_only=False).astype(float)
        ref = qc.column("is_reference").to_numpy(zero_copy_only=False).astype(bool)
        rows.append(("reference stars (common mode)", f"{int(ref.sum())}"))
        rows.append(
            ("median completeness", _fmt(float(np.nanmedian(comp)) if comp.size else None, 3))
        )
        rows.append(
            (
                "median precision ratio (scatter / expected noise)",
                _fmt(float(np.nanmedian(pr)) if pr.size else None, 3),
            )
        )
    if cand is not None:
        types: dict[str, int] = {}
        for v in cand.column("var_type").to_pylist():
            types[str(v)] = types.get(str(v), 0) + 1
        rows.append(
            (
                "candidates",
                f"{cand.num_rows}"
                + (
                    " (" + ", ".join(f"{k} {v}" for k, v in sorted(types.items())) + ")"
                    if types
                    else ""
                ),
            )
        )
    return rows


def write_report(
    lake,
    sector: int,
    camera: int,
    ccd: int,
    out_path: str | Path,
    top_n: int = 20,
    progress=None,
    dpi: int = 80,
) -> Path:
    """Write the HTML report of one sector/camera/CCD to ``out_path``; returns the path.

    ``top_n`` candidates get thumbnails and full plots (all candidates are listed).
    ``progress(1)`` is called after each of them. Raises ``tasks.export.ExportError``
    when the lake holds nothing for the partition.
    """
    from lakehouse.store import Lakehouse
    from tasks.export import ExportError, read_rows, read_star_info

    lake = lake if isinstance(lake, Lakehouse) else Lakehouse(lake)
    if (
        not lake.has_table("frames")
        or not read_rows(lake, "frames", sector, camera, ccd, columns=["cadence"]).num_rows
    ):
        raise ExportError(
            f"nothing ingested for sector {sector} camera {camera} ccd {ccd} in {lake.uri}"
        )
    cand = None
    if lake.has_table("candidates"):
        cand = read_rows(lake, "candidates", sector, camera, ccd).sort_by("rank")
    qc_png = None
    if lake.has_table("epoch_qc"):
        ep = read_rows(lake, "epoch_qc", sector, camera, ccd)
        if ep.num_rows:
            cols = {
                n: ep.column(n).to_numpy(zero_copy_only=False)
                for n in ep.column_names
                if n not in ("bad_reason",)
            }
            qc_png = save_png(qc_figure(cols), dpi=dpi)
    rows = cand.to_pylist() if cand is not None else []
    info = read_star_info(lake, [r["star_id"] for r in rows]) if rows else {}
    for r in rows:
        i = info.get(int(r["star_id"]), {})
        r.update({k: i.get(k) for k in ("tic_id", "ra", "dec", "tmag_est")})
    top_ids = [int(r["star_id"]) for r in rows[: max(0, int(top_n))]]
    series: dict[int, StarSeries] = load_series(lake, top_ids) if top_ids else {}
    thumbs: dict[int, bytes] = {}
    plots: dict[int, dict[str, bytes]] = {}
    for sid in top_ids:
        s = series.get(sid)
        if s is not None:
            thumbs[sid] = save_png(thumbnail_figure(s), dpi=dpi)
            plots[sid] = {
                kind: save_png(FIGURES[kind](s), dpi=dpi)
                for kind in PLOT_KINDS
                if not (kind == "phase" and not s.period)
            }
        if progress:
            progress(1)
    data = ReportData(
        sector=sector,
        camera=camera,
        ccd=ccd,
        lake=lake.uri,
        summary=_summary_rows(lake, sector, camera, ccd, cand),
        qc_png=qc_png,
        candidates=rows,
        thumbnails=thumbs,
        plots=plots,
        created=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    tmp.write_text(render_html(data), encoding="utf-8")
    tmp.replace(out_path)
    return out_path
