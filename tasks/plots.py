"""Pictures of a star (matplotlib, PNG): raw vs corrected light curve, periodogram,
phase-folded light curve with a binned median, and a VSX-style plot.

The figure functions are pure: they take numpy arrays and return a
``matplotlib.figure.Figure`` (no pyplot state, no display needed). Units:

* time ``t``: BTJD = BJD_TDB - 2457000 [d], mid-exposure;
* flux: e-/s, plotted relative to the median of the good points (dimensionless);
* magnitudes: TESS band, ``10 - 2.5 log10(flux / 15000 e-/s)`` (the ``stars.tmag_est``
  zero point), y axis inverted (brighter up) as VSX and AAVSO plots are;
* period [d]; phase: fraction of the period, 0 at the epoch ``t0`` [BTJD d] (a primary
  minimum for eclipsing binaries and transits, a maximum otherwise, as VSX defines them).

:func:`star_plots` writes the four PNGs of one star; :func:`make_candidate_plots` those of
the top-N candidates of a sector/camera/CCD from the lakehouse.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lakehouse.schemas import LcMask
from tasks.export import BJD_REF, flux_to_tmag

#: classes whose epoch (phase 0) is a minimum of light
MINIMUM_EPOCH_TYPES = ("EA", "EW", "TRANSIT")
PLOT_KINDS = ("lightcurve", "periodogram", "phase", "vsx")
_RAW = "0.55"
_GOOD = "#1f5fa8"
_BAD = "#d62728"
_BIN = "#ff7f0e"


@dataclass
class StarSeries:
    """One star's light curve as arrays (see module docstring for units)."""

    star_id: int
    t: np.ndarray  # BTJD [d]
    flux: np.ndarray  # corrected [e-/s]
    flux_err: np.ndarray  # [e-/s]
    flux_raw: np.ndarray  # [e-/s]
    mask_bits: np.ndarray  # LcMask bits, 0 = good
    period: float | None = None  # reported period [d]
    var_type: str | None = None
    event_times: list[float] = field(default_factory=list)  # [BTJD d]
    label: str = ""  # title, e.g. "star 11100042 (TIC 1234) s0001-1-1 T=11.2"

    @classmethod
    def from_table(cls, lc, info: dict | None = None) -> StarSeries:
        """From a ``tasks.export.read_star_lightcurve`` table and ``read_star_info`` dict."""
        info = info or {}

        def col(name):
            return np.asarray(lc.column(name).to_numpy(zero_copy_only=False), dtype=float)

        cand = info.get("candidate") or {}
        period = cand.get("period_days")
        period = float(period) if period is not None and np.isfinite(period) else None
        return cls(
            star_id=int(info.get("star_id", 0)),
            t=col("btjd"),
            flux=col("flux"),
            flux_err=col("flux_err"),
            flux_raw=col("flux_raw"),
            mask_bits=np.asarray(
                lc.column("mask_bits").to_numpy(zero_copy_only=False), dtype=np.int64
            ),
            period=period,
            var_type=cand.get("var_type"),
            event_times=[float(v) for v in (cand.get("event_times") or []) if v is not None],
            label=star_label(info),
        )

    @property
    def good(self) -> np.ndarray:
        """Points with no mask bit but UNCORRECTED (a raw point is still a measurement) and
        finite time and flux."""
        bits = self.mask_bits & ~int(LcMask.UNCORRECTED)
        return (bits == 0) & np.isfinite(self.t) & np.isfinite(self.flux)

    @property
    def corrected(self) -> bool:
        """False when no point had the common mode removed (e.g. before find-variables)."""
        return not bool(np.all(self.mask_bits & int(LcMask.UNCORRECTED)))


def star_label(info: dict) -> str:
    """A one-line title for a star: id, TIC, partition, magnitude, class and period."""
    sid = info.get("star_id")
    parts = [f"star {sid}"]
    if info.get("tic_id") is not None:
        parts.append(f"TIC {int(info['tic_id'])}")
    if info.get("sector") is not None:
        parts.append(f"s{int(info['sector']):04d}-{info['camera']}-{info['ccd']}")
    if info.get("tmag_est") is not None and np.isfinite(info["tmag_est"]):
        parts.append(f"T≈{info['tmag_est']:.2f}")
    cand = info.get("candidate") or {}
    if cand:
        text = f"#{cand.get('rank')} {cand.get('var_type')}"
        if cand.get("period_days") is not None and np.isfinite(cand["period_days"]):
            text += f" P={cand['period_days']:.5g} d"
        parts.append(text)
    return "  ·  ".join(parts)


# --------------------------------------------------------------------------- numerics


def relative(flux: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Flux divided by the median of its good finite points (NaN when there is none)."""
    flux = np.asarray(flux, dtype=float)
    ok = good & np.isfinite(flux)
    med = np.median(flux[ok]) if ok.any() else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        return flux / med


def phase_fold(t: np.ndarray, period: float, t0: float) -> np.ndarray:
    """Phase in [0, 1) of times ``t`` [d] for ``period`` [d] and epoch ``t0`` [d]."""
    return np.mod((np.asarray(t, dtype=float) - t0) / period, 1.0)


def binned_median(
    phase: np.ndarray, y: np.ndarray, n_bins: int = 50, lo: float = 0.0, hi: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``y`` in ``n_bins`` equal bins of ``phase`` over [lo, hi): (centres, medians).

    Empty bins give NaN.
    """
    phase = np.asarray(phase, dtype=float)
    y = np.asarray(y, dtype=float)
    edges = np.linspace(lo, hi, n_bins + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    med = np.full(n_bins, np.nan)
    ok = np.isfinite(phase) & np.isfinite(y)
    idx = np.clip(np.digitize(phase[ok], edges) - 1, 0, n_bins - 1)
    yy = y[ok]
    for k in np.unique(idx):
        med[k] = np.median(yy[idx == k])
    return centres, med


def choose_epoch(
    t: np.ndarray,
    y: np.ndarray,
    period: float,
    var_type: str | None = None,
    event_times: list[float] | None = None,
    n_bins: int = 50,
) -> float:
    """Epoch ``t0`` [BTJD d] for phase 0: a primary minimum for EA/EW/TRANSIT, else a maximum.

    From a measured event time when there is one (moved by half a period when the other
    half is deeper), else from the extreme of the binned median; the first such time at
    or after the start of the data. ``y``: relative flux of good points at times ``t``.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    if t.size == 0:
        return float("nan")
    minimum = (var_type or "") in MINIMUM_EPOCH_TYPES
    if event_times:
        t0 = float(event_times[0])
        ph = phase_fold(t, period, t0)
        near0 = (ph < 0.05) | (ph > 0.95)
        near_half = np.abs(ph - 0.5) < 0.05
        if near0.any() and near_half.any() and np.median(y[near_half]) < np.median(y[near0]):
            t0 += period / 2
    elif minimum:  # eclipses are narrow: the deepest bin of the binned median
        centres, med = binned_median(phase_fold(t, period, t[0]), y, n_bins)
        if not np.isfinite(med).any():
            return float(t[0])
        t0 = float(t[0] + centres[int(np.nanargmin(med))] * period)
    else:  # smooth pulsations/spots: the maximum of a 3-harmonic Fourier fit
        t0 = float(t[0] + _harmonic_peak(phase_fold(t, period, t[0]), y) * period)
    return float(t0 + np.ceil((t.min() - t0) / period) * period)


def _harmonic_peak(phase: np.ndarray, y: np.ndarray, n_harmonics: int = 3) -> float:
    """Phase [0, 1) of the maximum of a least-squares Fourier series fitted to y(phase)."""
    k = np.arange(1, n_harmonics + 1)
    arg = 2 * np.pi * np.outer(phase, k)
    design = np.hstack([np.ones((phase.size, 1)), np.cos(arg), np.sin(arg)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    grid = np.linspace(0.0, 1.0, 1000, endpoint=False)
    g = 2 * np.pi * np.outer(grid, k)
    model = np.hstack([np.ones((grid.size, 1)), np.cos(g), np.sin(g)]) @ coef
    return float(grid[int(np.argmax(model))])


def lomb_scargle(
    t: np.ndarray,
    y: np.ndarray,
    dy: np.ndarray | None = None,
    min_period: float | None = None,
    max_period: float | None = None,
    samples_per_peak: int = 10,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lomb-Scargle periodogram (astropy, floating mean, standard normalisation).

    Args: times ``t`` [d], values ``y`` (relative flux), errors ``dy``; periods from
    ``min_period`` (default twice the median cadence) to ``max_period`` (default the
    baseline) [d].
    Returns (period [d] ascending, power 0..1, power of the 1 % false-alarm level).
    """
    from astropy.timeseries import LombScargle

    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y)
    if dy is not None:
        dy = np.asarray(dy, dtype=float)
        ok &= np.isfinite(dy) & (dy > 0)
    t, y = t[ok], y[ok]
    dy = dy[ok] if dy is not None else None
    if t.size < 5:
        return np.array([]), np.array([]), float("nan")
    baseline = float(t.max() - t.min())
    dt = float(np.median(np.diff(np.sort(t)))) if t.size > 1 else 1.0
    min_period = min_period or 2.0 * dt
    max_period = max_period or baseline
    ls = LombScargle(t, y, dy)
    fmin, fmax = 1.0 / max_period, 1.0 / min_period
    n = int(min(200_000, max(200, (fmax - fmin) * baseline * samples_per_peak)))
    freq = np.linspace(fmin, fmax, n)
    power = ls.power(freq)
    try:
        level = float(ls.false_alarm_level(0.01, minimum_frequency=fmin, maximum_frequency=fmax))
    except (ValueError, ZeroDivisionError, FloatingPointError):
        level = float("nan")
    return 1.0 / freq[::-1], power[::-1], level


# --------------------------------------------------------------------------- figures


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, **kw)
    return fig, axes


def lightcurve_figure(s: StarSeries):
    """Two panels over BTJD [d]: raw photometry and the common-mode corrected light curve,
    each divided by its median; masked points as red crosses, events as ticks."""
    good = s.good
    raw = relative(s.flux_raw, good)
    cor = relative(s.flux, good)
    fig, (a1, a2) = new_figure(10, 5.2, 2, 1, sharex=True)
    second = "corrected (common mode removed)" if s.corrected else "not corrected (raw)"
    for ax, y, name in ((a1, raw, "raw photometry"), (a2, cor, second)):
        ax.plot(s.t[good], y[good], ".", ms=3, color=_RAW if ax is a1 else _GOOD, label=name)
        bad = ~good & np.isfinite(y) & np.isfinite(s.t)
        if bad.any():
            ax.plot(s.t[bad], y[bad], "x", ms=4, color=_BAD, label=f"masked ({bad.sum()})")
        ax.set_ylabel("flux / median")
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
        ax.grid(alpha=0.25)
        _robust_ylim(ax, y[good])
    for ev in s.event_times:
        a2.axvline(ev, color=_BIN, lw=0.8, alpha=0.6, ymin=0.92)
    a2.set_xlabel("time [BTJD = BJD − 2457000, d]")
    fig.suptitle(s.label or f"star {s.star_id}", fontsize=10)
    return fig


def periodogram_figure(s: StarSeries):
    """Lomb-Scargle power vs period [d] (log axis) of the corrected good points, with the
    reported period, the highest peak and the 1 % false-alarm level marked."""
    good = s.good
    y = relative(s.flux, good)
    err = s.flux_err / np.nanmedian(s.flux[good]) if good.any() else None
    max_period = None
    if s.period and good.any():
        max_period = max(float(np.ptp(s.t[good])), 1.1 * s.period)
    period, power, fap1 = lomb_scargle(
        s.t[good], y[good], None if err is None else err[good], max_period=max_period
    )
    fig, ax = new_figure(9, 3.6)
    if period.size:
        ax.plot(period, power, lw=0.8, color=_GOOD)
        k = int(np.argmax(power))
        ax.plot(period[k], power[k], "v", color=_BIN, ms=8, label=f"highest peak {period[k]:.5g} d")
        if np.isfinite(fap1):
            ax.axhline(fap1, color="0.4", ls=":", lw=1, label="1 % false-alarm level")
        ax.set_xscale("log")
        ax.set_xlim(period[0], period[-1])
        ax.set_ylim(0, max(1.05 * float(power.max()), 0.05))
    if s.period:
        ax.axvline(s.period, color=_BAD, ls="--", lw=1.2, label=f"reported period {s.period:.5g} d")
    ax.set_xlabel("period [d]")
    ax.set_ylabel("Lomb-Scargle power")
    ax.grid(alpha=0.25, which="both")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    ax.set_title(s.label or f"star {s.star_id}", fontsize=10)
    return fig


def phase_figure(s: StarSeries, n_bins: int = 50):
    """Corrected relative flux folded at the reported period, phase −0.5..0.5 around the
    epoch, coloured by time, with the binned median (``n_bins`` bins per cycle)."""
    fig, ax = new_figure(8, 4.2)
    good = s.good
    y = relative(s.flux, good)
    if not s.period or not good.any():
        ax.text(0.5, 0.5, "no period reported", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    t0 = choose_epoch(s.t[good], y[good], s.period, s.var_type, s.event_times, n_bins)
    ph = phase_fold(s.t[good], s.period, t0)
    ph = np.where(ph >= 0.5, ph - 1.0, ph)
    sc = ax.scatter(ph, y[good], c=s.t[good], s=6, cmap="viridis", lw=0)
    centres, med = binned_median(ph, y[good], n_bins, -0.5, 0.5)
    ax.plot(centres, med, "-", color=_BIN, lw=2, label=f"binned median ({n_bins} bins)")
    cb = fig.colorbar(sc, ax=ax, pad=0.01)
    cb.set_label("time [BTJD, d]")
    ax.set_xlim(-0.5, 0.5)
    _robust_ylim(ax, y[good])
    ax.set_xlabel(f"phase (P = {s.period:.6g} d, epoch BTJD {t0:.4f})")
    ax.set_ylabel("corrected flux / median")
    ax.grid(alpha=0.25)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(s.label or f"star {s.star_id}", fontsize=10)
    return fig


def vsx_figure(s: StarSeries):
    """VSX-style plot: TESS magnitude (inverted, brighter up) against BTJD [d] and, when a
    period is known, against phase 0–2 (each point drawn twice) with the epoch in BJD."""
    good = s.good
    mag = flux_to_tmag(s.flux)
    ok = good & np.isfinite(mag)
    has_phase = bool(s.period) and ok.any()
    fig, axes = new_figure(12 if has_phase else 9, 4.2, 1, 2 if has_phase else 1)
    ax_t = axes[0] if has_phase else axes
    ax_t.plot(s.t[ok], mag[ok], ".", ms=3, color="k")
    ax_t.set_xlabel("time [BTJD = BJD − 2457000, d]")
    ax_t.set_ylabel("TESS magnitude (T)")
    _robust_ylim(ax_t, mag[ok], invert=True)
    ax_t.grid(alpha=0.25)
    if has_phase:
        ax_p = axes[1]
        y = relative(s.flux, good)
        t0 = choose_epoch(s.t[good], y[good], s.period, s.var_type, s.event_times)
        ph = phase_fold(s.t[ok], s.period, t0)
        ax_p.plot(
            np.concatenate([ph, ph + 1.0]), np.concatenate([mag[ok], mag[ok]]), ".", ms=3, color="k"
        )
        ax_p.set_xlim(0, 2)
        ax_p.set_xlabel("phase")
        ax_p.set_ylabel("TESS magnitude (T)")
        _robust_ylim(ax_p, mag[ok], invert=True)
        ax_p.grid(alpha=0.25)
        ax_p.set_title(f"P = {s.period:.6f} d   epoch = BJD {t0 + BJD_REF:.4f} (TDB)", fontsize=9)
    fig.suptitle(s.label or f"star {s.star_id}", fontsize=10)
    return fig


def thumbnail_figure(s: StarSeries):
    """A small picture for tables: the phase-folded curve (or the light curve without a
    period), no labels; relative flux."""
    fig, ax = new_figure(2.6, 1.3)
    good = s.good
    y = relative(s.flux, good)
    if s.period and good.any():
        t0 = choose_epoch(s.t[good], y[good], s.period, s.var_type, s.event_times)
        ph = phase_fold(s.t[good], s.period, t0)
        ph = np.where(ph >= 0.5, ph - 1.0, ph)
        ax.plot(ph, y[good], ".", ms=1.5, color=_GOOD)
        c, m = binned_median(ph, y[good], 40, -0.5, 0.5)
        ax.plot(c, m, "-", color=_BIN, lw=1.2)
        ax.set_xlim(-0.5, 0.5)
    else:
        ax.plot(s.t[good], y[good], ".", ms=1.5, color=_GOOD)
    _robust_ylim(ax, y[good])
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _robust_ylim(ax, y: np.ndarray, invert: bool = False) -> None:
    """Y range of the (good) points plus a margin; ``invert`` puts the smallest value on top."""
    y = np.asarray(y, dtype=float)
    y = y[np.isfinite(y)]
    if y.size == 0:
        return
    lo, hi = float(y.min()), float(y.max())
    pad = 0.08 * (hi - lo) if hi > lo else (abs(hi) * 1e-3 or 1e-3)
    lo, hi = lo - pad, hi + pad
    ax.set_ylim((hi, lo) if invert else (lo, hi))


FIGURES = {
    "lightcurve": lightcurve_figure,
    "periodogram": periodogram_figure,
    "phase": phase_figure,
    "vsx": vsx_figure,
}


def save_png(fig, path: Path | None = None, dpi: int = 100) -> bytes:
    """Render a figure to PNG; write it to ``path`` when given (atomically); return bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def plot_file_name(star_id: int, kind: str) -> str:
    """E.g. ``star-11100042-phase.png``."""
    return f"star-{int(star_id)}-{kind}.png"


def star_plots(
    s: StarSeries, out_dir: Path, kinds: tuple[str, ...] = PLOT_KINDS, dpi: int = 100
) -> dict[str, Path]:
    """Write the star's PNGs (``star-{id}-{kind}.png``) to ``out_dir``; kind -> path.

    ``phase`` is skipped when the star has no reported period.
    """
    out: dict[str, Path] = {}
    for kind in kinds:
        if kind == "phase" and not s.period:
            continue
        path = Path(out_dir) / plot_file_name(s.star_id, kind)
        save_png(FIGURES[kind](s), path, dpi)
        out[kind] = path
    return out


def load_series(lake, star_ids) -> dict[int, StarSeries]:
    """StarSeries of stars from the lakehouse (light curve + catalogue + candidate row)."""
    from tasks.export import read_star_info, read_star_lightcurves

    lcs = read_star_lightcurves(lake, star_ids)
    info = read_star_info(lake, list(lcs))
    return {sid: StarSeries.from_table(lc, info[sid]) for sid, lc in lcs.items()}


def top_candidates(lake, sector: int, camera: int, ccd: int, top_n: int):
    """The best ``top_n`` rows of ``candidates`` of a partition, by rank (pyarrow Table)."""
    from tasks.export import ExportError, read_rows

    if not lake.has_table("candidates"):
        raise ExportError(f"no candidates table in the lake at {lake.uri}: run find-variables")
    cand = read_rows(lake, "candidates", sector, camera, ccd).sort_by("rank")
    return cand.slice(0, max(0, int(top_n)))


def make_candidate_plots(
    lake,
    sector: int,
    camera: int,
    ccd: int,
    top_n: int,
    out_dir: str | Path,
    kinds: tuple[str, ...] = PLOT_KINDS,
    progress=None,
) -> dict[int, dict[str, Path]]:
    """PNG plots of the top ``top_n`` candidates of one sector/camera/CCD.

    ``lake``: a ``Lakehouse`` or a lake URI. Writes ``out_dir/star-{id}-{kind}.png`` for
    each kind of :data:`PLOT_KINDS` (no ``phase`` without a period) and returns
    ``{star_id: {kind: path}}`` in rank order. ``progress(1)`` is called per star.
    """
    from lakehouse.store import Lakehouse

    lake = lake if isinstance(lake, Lakehouse) else Lakehouse(lake)
    cand = top_candidates(lake, sector, camera, ccd, top_n)
    ids = [int(v) for v in cand.column("star_id").to_pylist()]
    series = load_series(lake, ids)
    out: dict[int, dict[str, Path]] = {}
    for sid in ids:
        if sid in series:
            out[sid] = star_plots(series[sid], Path(out_dir), kinds)
        if progress:
            progress(1)
    return out
