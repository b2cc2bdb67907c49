"""Light curves from external files, and their features (``tess-ffi features PATH``).

A reader-per-format registry in the spirit of lightkurve's ``detect_filetype`` + readers:
each format has a ``detect(path, hdul)`` test and a ``read(path, flux_column)`` that
returns a :class:`LightCurveData` with time in BTJD [d], flux and 1-sigma error, and a
``good`` mask that applies that format's own quality flags. Nothing is dropped silently:
``good`` is False (never removed) for flagged, NaN or non-positive-error points, and
:func:`analyze_file` reports how many points were used.

Formats (first match wins, in this order):

``qlp``       MIT Quick-Look Pipeline HLSP (ORIGIN ``MIT/QLP``): ``SAP_FLUX`` (normalised, not
              detrended, so long periods survive), error ``KSPSAP_FLUX_ERR`` / ``DET_FLUX_ERR``;
              any nonzero ``QUALITY`` is bad (QLP sets bits only on cadences to drop).
``tglc``      TESS-Gaia Light Curve HLSP (ORIGIN ``UCSB/TGLC``): ``aperture_flux`` [e-/s,
              not detrended]; TGLC ships no per-point errors, so the error is the robust
              point-to-point scatter (1.4826 MAD of differences / sqrt 2); bad where
              ``TESS_flags`` has a SPOC default-mask bit or ``TGLC_flags`` is nonzero.
``spoc``      SPOC 2-min / 20-s ``*_lc.fits``, TESS-SPOC FFI HLSP and TESS data-alert HLSP
              (a ``LIGHTCURVE`` table with ``PDCSAP_FLUX``): ``PDCSAP_FLUX`` and its error
              [e-/s] (``SAP_FLUX`` when PDC is all NaN); bad where ``QUALITY`` has a bit of
              the SPOC default mask (``DEFAULT_BAD_DQUALITY``).
``pixels``    SPOC target pixel files and TESScut cutouts (a ``PIXELS`` table), read by
              :func:`tasks.pixelfiles.read_pixel_file`; aperture photometry on the pipeline
              aperture, else a threshold aperture grown from the brightest pixel near the
              centre. TPF flux is already background subtracted; a TESScut cutout is not, so
              the per-cadence median of the pixels away from the aperture is subtracted
              (not possible on a 1x1 cutout: flagged in the output). Bad: SPOC default-mask
              ``QUALITY`` bits, NaN time or NaN pixel in the aperture.
``csv``       text with columns ``time, flux, flux_err`` (case-insensitive; optional
              ``quality``, nonzero = bad); times above 2.4e6 are taken as BJD and shifted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lakehouse.schemas import DEFAULT_BAD_DQUALITY

BJD_OFFSET = 2457000.0


class LightCurveFileError(ValueError):
    """A file that no reader accepts or whose content is unusable (one-line reason)."""


@dataclass
class LightCurveData:
    """One light curve: ``time`` BTJD [d], ``flux``/``flux_err`` (``flux_unit``), ``good``."""

    time: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    good: np.ndarray
    format: str
    target: str = ""
    flux_unit: str = "e-/s"
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reader:
    """A registered format: ``detect(path, hdul_or_None) -> bool`` and ``read(path, col)``."""

    name: str
    detect: Callable
    read: Callable


READERS: list[Reader] = []


def register_reader(name: str, detect: Callable, read: Callable) -> None:
    """Add (or replace) a format in the registry; later registrations are tried first."""
    global READERS
    READERS = [r for r in READERS if r.name != name]
    READERS.insert(0, Reader(name, detect, read))


def _robust_p2p(y: np.ndarray) -> float:
    d = np.diff(y[np.isfinite(y)])
    if d.size < 3:
        return float("nan")
    return float(1.482602218505602 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def _good_mask(time, flux, err) -> np.ndarray:
    return np.isfinite(time) & np.isfinite(flux) & np.isfinite(err) & (err > 0)


def _col(data, names: list[str]):
    lower = {c.lower(): c for c in data.columns.names}
    for n in names:
        if n.lower() in lower:
            return np.asarray(data[lower[n.lower()]], dtype=np.float64)
    return None


# ------------------------------------------------------------------ FITS light curves
def _is_qlp(path: Path, hdul) -> bool:
    return hdul is not None and "mit/qlp" in str(hdul[0].header.get("ORIGIN", "")).lower()


def _read_qlp(path: Path, flux_column: str | None = None) -> LightCurveData:
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        d = hdul[1].data
        time = _col(d, ["TIME"])
        flux = _col(d, [flux_column] if flux_column else ["SAP_FLUX"])
        err = _col(d, ["KSPSAP_FLUX_ERR", "DET_FLUX_ERR", "SAP_FLUX_ERR"])
        q = _col(d, ["QUALITY"])
        target = f"TIC {hdul[0].header.get('TICID', '')}".strip()
    if flux is None or time is None:
        raise LightCurveFileError(f"{path.name}: QLP file without TIME/{flux_column or 'SAP_FLUX'}")
    if err is None:
        err = np.full(flux.shape, _robust_p2p(flux))
    good = _good_mask(time, flux, err)
    if q is not None:
        good &= np.nan_to_num(q) == 0
    return LightCurveData(time, flux, err, good, "qlp", target, "relative")


def _is_tglc(path: Path, hdul) -> bool:
    return hdul is not None and str(hdul[0].header.get("ORIGIN", "")).strip() == "UCSB/TGLC"


def _read_tglc(path: Path, flux_column: str | None = None) -> LightCurveData:
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        d = hdul[1].data
        time = _col(d, ["time"])
        flux = _col(d, [flux_column] if flux_column else ["aperture_flux", "cal_aper_flux"])
        tess_flags = _col(d, ["TESS_flags"])
        tglc_flags = _col(d, ["TGLC_flags"])
        target = str(hdul[0].header.get("OBJECT", path.stem))
    if flux is None or time is None:
        raise LightCurveFileError(f"{path.name}: TGLC file without time/aperture_flux")
    good = np.isfinite(time) & np.isfinite(flux)
    if tess_flags is not None:
        good &= (np.nan_to_num(tess_flags).astype(np.int64) & DEFAULT_BAD_DQUALITY) == 0
    if tglc_flags is not None:
        good &= np.nan_to_num(tglc_flags) == 0
    err = np.full(flux.shape, _robust_p2p(flux[good]))
    unit = "relative" if flux_column and flux_column.lower().startswith("cal_") else "e-/s"
    return LightCurveData(
        time,
        flux,
        err,
        good & (err > 0),
        "tglc",
        target,
        unit,
        {"flux_err": "point-to-point scatter (TGLC has no per-point errors)"},
    )


def _is_spoc(path: Path, hdul) -> bool:
    if hdul is None or len(hdul) < 2 or not hasattr(hdul[1], "columns"):
        return False
    names = {c.upper() for c in hdul[1].columns.names}
    return "PDCSAP_FLUX" in names or ("SAP_FLUX" in names and "TIME" in names)


def _read_spoc(path: Path, flux_column: str | None = None) -> LightCurveData:
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        d = hdul[1].data
        h0 = hdul[0].header
        time = _col(d, ["TIME"])
        column = flux_column or "PDCSAP_FLUX"
        flux = _col(d, [column])
        err = _col(d, [f"{column}_ERR"])
        if flux is None or not np.isfinite(flux).any():
            column = "SAP_FLUX"
            flux, err = _col(d, ["SAP_FLUX"]), _col(d, ["SAP_FLUX_ERR"])
        q = _col(d, ["QUALITY"])
        target = str(h0.get("OBJECT") or f"TIC {h0.get('TICID', '')}")
        meta = {"flux_column": column, "sector": h0.get("SECTOR"), "origin": h0.get("ORIGIN")}
    if flux is None or time is None:
        raise LightCurveFileError(f"{path.name}: no TIME/PDCSAP_FLUX/SAP_FLUX columns")
    if err is None:
        err = np.full(flux.shape, _robust_p2p(flux))
    good = _good_mask(time, flux, err)
    if q is not None:
        good &= (np.nan_to_num(q).astype(np.int64) & DEFAULT_BAD_DQUALITY) == 0
    return LightCurveData(time, flux, err, good, "spoc", target, "e-/s", meta)


# ------------------------------------------------------------------ pixel files
def _is_pixels(path: Path, hdul) -> bool:
    return hdul is not None and "PIXELS" in hdul


def threshold_aperture(image: np.ndarray, nsigma: float = 3.0, max_radius: float = 3.5):
    """Aperture grown from the brightest pixel within 2 px of the centre of ``image``.

    Pixels above ``background + nsigma * noise`` (median and 1.4826 MAD of the image),
    connected to the seed and within ``max_radius`` px of it. A 1-pixel image is its own
    aperture. Returns a boolean mask.
    """
    from scipy import ndimage

    img = np.nan_to_num(np.asarray(image, float), nan=-np.inf)
    ny, nx = img.shape
    if ny * nx <= 2:
        return np.isfinite(image)
    yy, xx = np.mgrid[0:ny, 0:nx]
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    near = np.hypot(yy - cy, xx - cx) <= 2.0
    seed = np.unravel_index(np.argmax(np.where(near, img, -np.inf)), img.shape)
    finite = np.isfinite(image)
    bkg = np.median(image[finite])
    noise = 1.482602218505602 * np.median(np.abs(image[finite] - bkg))
    above = finite & (image > bkg + nsigma * max(noise, 1e-9))
    above &= np.hypot(yy - seed[0], xx - seed[1]) <= max_radius
    above[seed] = True
    lab, _ = ndimage.label(above)
    return lab == lab[seed]


def _read_pixels(path: Path, flux_column: str | None = None) -> LightCurveData:
    try:
        from tasks.pixelfiles import read_pixel_file
    except ImportError as exc:  # pragma: no cover - the colleague's module is part of the repo
        raise LightCurveFileError(f"{path.name}: pixel-file reader unavailable ({exc})") from exc
    from scipy import ndimage

    pix = read_pixel_file(path)
    flux, err = pix.flux, pix.flux_err
    qual_ok = (pix.quality & DEFAULT_BAD_DQUALITY) == 0
    time_ok = np.isfinite(pix.time)
    ref = np.nanmedian(np.where((qual_ok & time_ok)[:, None, None], flux, np.nan), axis=0)
    aperture = pix.aperture
    source = "pipeline"
    if aperture is None or not aperture.any():
        aperture = threshold_aperture(ref)
        source = "threshold"
    meta = {"aperture_pixels": int(aperture.sum()), "aperture": source, "kind": pix.kind}
    bkg = np.zeros(flux.shape[0])
    bkg_err = np.zeros(flux.shape[0])
    subtract = pix.kind == "tesscut" and not np.any(np.nan_to_num(pix.flux_bkg))
    if subtract:
        away = ~ndimage.binary_dilation(aperture, iterations=2)
        if away.sum() >= 3:
            sky = flux[:, away]
            bkg = np.nanmedian(sky, axis=1)
            nb = np.isfinite(sky).sum(axis=1)
            spread = 1.482602218505602 * np.nanmedian(np.abs(sky - bkg[:, None]), axis=1)
            bkg_err = 1.2533 * spread / np.sqrt(np.maximum(nb, 1))
            meta["background"] = f"median of {int(away.sum())} pixels away from the aperture"
        else:
            meta["background"] = "not subtracted (cutout too small)"
    else:
        meta["background"] = "already subtracted in the file"
    n_ap = int(aperture.sum())
    ap_flux = flux[:, aperture]
    ap_err = err[:, aperture]
    pix_ok = np.all(np.isfinite(ap_flux), axis=1) & np.all(np.isfinite(ap_err), axis=1)
    total = np.nansum(ap_flux, axis=1) - n_ap * np.nan_to_num(bkg)
    total_err = np.sqrt(np.nansum(ap_err**2, axis=1) + (n_ap * bkg_err) ** 2)
    good = qual_ok & time_ok & pix_ok & np.isfinite(bkg) & (total_err > 0)
    return LightCurveData(pix.time, total, total_err, good, pix.kind, pix.object_name, "e-/s", meta)


# ------------------------------------------------------------------ CSV
def _is_csv(path: Path, hdul) -> bool:
    name = path.name.lower()
    return hdul is None and name.endswith((".csv", ".csv.gz", ".txt", ".tsv", ".dat"))


def _read_csv(path: Path, flux_column: str | None = None) -> LightCurveData:
    import polars as pl

    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    try:
        df = pl.read_csv(path, separator=sep, infer_schema_length=10000, comment_prefix="#")
    except Exception as exc:
        raise LightCurveFileError(f"{path.name}: not a readable CSV ({exc})") from exc
    cols = {c.strip().lower(): c for c in df.columns}

    def pick(names: list[str]):
        for n in names:
            if n in cols:
                return df.get_column(cols[n]).cast(pl.Float64, strict=False).to_numpy()
        return None

    time = pick(["time", "btjd", "bjd", "t"])
    flux = pick([flux_column.lower()] if flux_column else ["flux", "f"])
    err = pick(["flux_err", "flux_error", "err", "error", "sigma", "e_flux"])
    if time is None or flux is None:
        raise LightCurveFileError(
            f"{path.name}: needs columns time, flux, flux_err (found {', '.join(df.columns)})"
        )
    time = np.where(time > 2.4e6, time - BJD_OFFSET, time)
    meta = {}
    if err is None:
        err = np.full(flux.shape, _robust_p2p(flux))
        meta["flux_err"] = "point-to-point scatter (no flux_err column)"
    good = _good_mask(time, flux, err)
    q = pick(["quality"])
    if q is not None:
        good &= np.nan_to_num(q) == 0
    return LightCurveData(time, flux, err, good, "csv", path.stem, "as given", meta)


register_reader("csv", _is_csv, _read_csv)
register_reader("pixels", _is_pixels, _read_pixels)
register_reader("spoc", _is_spoc, _read_spoc)
register_reader("tglc", _is_tglc, _read_tglc)
register_reader("qlp", _is_qlp, _read_qlp)


def detect_format(path: str | Path) -> str:
    """Name of the first registered reader that accepts the file."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise LightCurveFileError(f"{path}: no such file")
    hdul = None
    try:
        hdul = fits.open(path, memmap=False)
    except OSError:
        hdul = None
    try:
        for reader in READERS:
            if reader.detect(path, hdul):
                return reader.name
    finally:
        if hdul is not None:
            hdul.close()
    raise LightCurveFileError(
        f"{path.name}: unknown format (expected a SPOC/TESS-SPOC/QLP/TGLC light curve, a "
        "target pixel file or TESScut cutout, or a CSV with time, flux, flux_err)"
    )


def read_light_curve(
    path: str | Path, format: str | None = None, flux_column: str | None = None
) -> LightCurveData:
    """Read any supported file (format auto-detected unless given), sorted by time."""
    path = Path(path)
    name = format or detect_format(path)
    reader = next((r for r in READERS if r.name == name), None)
    if reader is None:
        known = ", ".join(r.name for r in READERS)
        raise LightCurveFileError(f"unknown format {name!r} (known: {known})")
    lc = reader.read(path, flux_column)
    order = np.argsort(np.where(np.isfinite(lc.time), lc.time, np.inf), kind="stable")
    lc.time, lc.flux, lc.flux_err, lc.good = (
        np.asarray(a)[order] for a in (lc.time, lc.flux, lc.flux_err, lc.good)
    )
    return lc


def _clean(value):
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def analyze_light_curve(lc: LightCurveData) -> dict:
    """Features, period and class of one light curve, as a JSON-ready dict.

    Flux is normalised by its median over good points; ``amplitude`` is a fraction
    (semi-amplitude, eclipse/transit depth or flare peak); periods and times in days/BTJD.
    """
    from tasks.classify import analyze

    good = lc.good & np.isfinite(lc.time)
    if good.sum() < 20:
        raise LightCurveFileError(f"only {int(good.sum())} good points: too few to analyse")
    t = np.where(np.isfinite(lc.time), lc.time, np.nanmedian(lc.time[good]))
    med = float(np.median(lc.flux[good]))
    if not med > 0:
        raise LightCurveFileError("median flux <= 0: cannot normalise")
    y = (lc.flux / med - 1.0)[None, :]
    s = (lc.flux_err / med)[None, :]
    res = analyze(t, y, s, good[None, :], median_flux=np.array([med]), population=False)
    cols = {k: v[0] for k, v in res.columns.items()}
    is_var = bool(cols["is_variable"])
    var_type = res.var_type[0] if is_var else "CONSTANT"
    amplitude = res.amplitude[0] if is_var else 0.5 * cols["robust_amplitude"]
    events = res.event_times[0]
    out = {
        "format": lc.format,
        "target": lc.target,
        "n_points": int(lc.time.size),
        "n_good": int(good.sum()),
        "time_start": float(np.min(t[good])),
        "time_stop": float(np.max(t[good])),
        "median_flux": med,
        "flux_unit": lc.flux_unit,
        "period_days": res.period[0] if is_var else None,
        "var_type": var_type,
        "amplitude": amplitude,
        "score": res.score[0],
        "is_variable": is_var,
        "period_source": res.period_source[0] if is_var else "none",
        "detection": res.detection[0],
        "n_events": len(events),
        "events": events,
    }
    if var_type in ("TRANSIT", "EA"):
        out["transit_times"] = events
    if var_type == "FLARE":
        out["flare_times"] = events
    for k, v in cols.items():
        if k not in out and k != "is_variable":
            out[k] = v
    out["meta"] = lc.meta
    return {k: _clean(v) for k, v in out.items()}


def analyze_file(
    path: str | Path, format: str | None = None, flux_column: str | None = None
) -> dict:
    """Read ``path`` (any supported format) and return :func:`analyze_light_curve`'s dict."""
    lc = read_light_curve(path, format=format, flux_column=flux_column)
    out = analyze_light_curve(lc)
    return {"file": str(path), **out}
