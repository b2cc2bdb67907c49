"""Simulated TESS sector: calibrated FFIs in the real SPOC ``*_ffic.fits`` format + ground truth.

`simulate_sector` writes, for one sector/camera/CCD, a contiguous run of calibrated full-frame
images that a reader of real SPOC FFIs accepts unchanged, plus two Parquet truth tables (one
row per star, one row per frame). Everything is deterministic given ``seed``.

What is simulated
-----------------
- **Timing** (sectors 1 and 19): the real file names, start/stop times, BARYCORR and DQUALITY
  of every FFI of the CCD, from the tess-cloud catalogs packaged in ``tess_ffi/data``.
  TSTART/TSTOP [BTJD d] = ``Time(start_utc).tdb.jd - 2457000 + BARYCORR`` (the project's
  convention; the catalog's ``start`` already is the real TSTART as UTC, so simulated times
  are ~BARYCORR = 4-8 min later than the real frames').
  Other sectors get a *synthesised* timeline: 30-min cadences from the sector's start in
  ``pointings.csv``, two orbits separated by a 1-day downlink gap, DQUALITY 0, BARYCORR computed
  by astropy for the CCD centre as seen from the geocentre, and file names of the real pattern
  with SCCONFIG ``100 + sector`` (real sectors >= 27 have 10-min or 200-s FFIs; not modelled).
- **Layout**: (N+30) rows x (N+88) columns float32 e-/s, science pixels rows 0..N-1 and
  columns 44..N+43 (N = ``science_size``, 2048 for a real-size frame); the collateral
  (virtual/buffer/smear) pixels hold zero-mean read noise only.
- **WCS**: the real per-sector TAN-SIP WCS of the CCD (tesswcs data, CRPIX 1045, 1001),
  identical on every frame of a run and for every ``science_size`` (the sub-array keeps the
  full-frame pixel origin). Sectors without tesswcs data use the astrocut example FFI WCS.
- **Stars**: uniform positions in the science area, TESS magnitudes 7-17 from a rising
  luminosity function dN/dm ~ 10**(0.25 m), flux = 15000 * 10**(-0.4 (Tmag - 10)) e-/s,
  rendered with a pixel-integrated Gaussian PSF (sigma 0.7 px) or the real camera-1/CCD-1 PRF
  (``psf="prf"``, one PRF for the whole CCD). Starlight falling outside the science pixels is
  lost (as on the CCD).
- **Sky**: a level of 35-80 e-/s/px with a linear gradient, plus scattered light glowing from
  one corner of the science area that grows near orbit starts/ends and on DQUALITY 2048
  (straylight) frames.
- **Systematics**: per-frame pointing offsets dx, dy (white ~0.02-0.035 px rms plus a slow
  drift; 0.25-px rms excursions on frames with DQUALITY bits 1, 4 or 32) that move every star
  relative to the fixed WCS, and a slow multiplicative throughput/focus drift (~0.1-0.5 %) common
  to all stars, growing from the CCD centre outwards.
- **Noise**: Poisson (normal approximation) on the electrons collected during EXPOSURE
  (NREADOUT x INT_TIME = 720 x 1.98 s = 1425.6 s) plus read noise of each CCD output
  (READNOIA-D per 2-s read, times sqrt(NREADOUT)); the uncertainty HDU is the true 1-sigma
  ``sqrt(variance)`` of the injected noise, in e-/s.
- **Variables** (``n_variables``, default ``max(6, round(0.05 n_stars))``), types in turn:
  EA, EW, ROT, DSCT, TRANSIT, FLARE (see `variability_model`). Hosts are chosen so that most
  amplitudes are 5-40x the star's per-point noise and some are 1.5-5x.

Limits
------
No cosmic rays, saturation/bleed columns, smear, bias/dark residuals, differential velocity
aberration, field rotation, PSF variation across the CCD, exposure smearing of the variability
(the model is evaluated at mid-exposure) or crowding-aware catalog. Detector constants (gains,
read noise, black levels) are those of sector 1 camera 2 CCD 3 for every CCD.
"""

from __future__ import annotations

import bz2
import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from scipy.spatial import cKDTree
from scipy.special import erf

import tess_ffi  # importing it turns astropy's IERS auto-download off before Time is used

__all__ = [
    "EXPOSURE_S",
    "FFIINDEX_BASE",
    "GAUSSIAN_SIGMA_PX",
    "TIMEDEL_D",
    "VAR_TYPES",
    "SimulationResult",
    "ccd_wcs_header",
    "render_stars",
    "sector_timeline",
    "simulate_sector",
    "tmag_to_flux",
    "variability_model",
]

DATA_DIR = Path(tess_ffi.__file__).resolve().parent / "data"

#: FFIINDEX of the first FFI of every sector/camera/CCD; later frames add
#: ``round((TSTART - first TSTART) / TIMEDEL)``, so gaps skip numbers.
FFIINDEX_BASE = 4697
#: 30-min FFI cadence [d]
TIMEDEL_D = 1800.0 / 86400.0
INT_TIME_S = 1.98  # photon accumulation time per 2-s frame [s]
READTIME_S = 0.02
FRAMETIM_S = 2.0
NUM_FRM = 900  # 2-s frames per 30-min FFI
NREADOUT = 720  # frames actually co-added (onboard cosmic-ray mitigation drops 2 in 10)
DEADC = INT_TIME_S / FRAMETIM_S * NREADOUT / NUM_FRM  # 0.792
#: effective exposure of a 30-min FFI [s] (= EXPOSURE keyword x 86400)
EXPOSURE_S = NREADOUT * INT_TIME_S
#: default Gaussian PSF width [px]
GAUSSIAN_SIGMA_PX = 0.7
#: injected variability classes, in the order they are assigned
VAR_TYPES = ("EA", "EW", "ROT", "DSCT", "TRANSIT", "FLARE")

_READ_NOISE = (9.87360000610352, 7.62700080871582, 7.71750020980835, 9.89900016784668)  # e-/read
_COL0 = 44  # first science column (0-based)
_ROW_MARGIN = 30  # buffer + smear + virtual rows above the science rows
_COL_MARGIN = 88  # 44 leading + 44 trailing virtual columns
_TMAG_RANGE = (7.0, 17.0)
_LF_SLOPE = 0.25  # dN/dm ~ 10**(slope * m)
_NPIX_NOISE = 12  # aperture size used for the per-point noise estimate of variable hosts
_JUMP_BITS = 1 | 4 | 32  # attitude tweak, coarse point, desaturation: pointing excursions
_STRAYLIGHT_BIT = 2048
_PRF_FILE = "tess2018243163600-prf-1-1-row1025-col1069.fits"


@dataclass(frozen=True)
class SimulationResult:
    """What `simulate_sector` wrote, and the parameters it was called with."""

    paths: list[Path]  # the FFIs, sorted by time
    truth_path: Path  # Parquet, one row per star
    frames_truth_path: Path  # Parquet, one row per frame
    sector: int
    camera: int
    ccd: int
    n_cadences: int
    n_stars: int
    science_size: int
    cadence_start: int
    n_variables: int
    seed: int
    psf: str
    add_noise: bool


# --------------------------------------------------------------------------------- timeline


def _btjd_from_catalog(start_utc: np.ndarray, barycorr: np.ndarray) -> np.ndarray:
    """BTJD [d] of the catalog's UTC times, as SPOC writes TSTART/TSTOP.

    The tess-cloud ``start``/``stop`` strings equal the real headers' DATE-OBS/DATE-END,
    which are TSTART/TSTOP written as UTC calendar dates with the barycentric correction
    already included, so ``TSTART = Time(start, utc).tdb.jd - 2457000`` (checked against a
    real sector-1 header to 1e-11 d). ``barycorr`` is therefore not added again; it is
    only carried into the BARYCORR keyword.
    """
    del barycorr  # already inside the catalog's times
    jd = Time(list(start_utc), format="isot", scale="utc").tdb.jd
    return np.asarray(jd, dtype=np.float64) - 2457000.0


def _real_catalog(sector: int, camera: int, ccd: int) -> pd.DataFrame | None:
    path = DATA_DIR / f"tess-s{sector:04d}-spoc-ffi-catalog.parquet"
    if not path.exists():
        return None
    cat = pq.read_table(path).to_pandas()
    cat = cat[(cat["camera"] == camera) & (cat["ccd"] == ccd)].sort_values("start")
    if cat.empty:
        raise ValueError(f"sector {sector} catalog has no frames for camera {camera} ccd {ccd}")
    return pd.DataFrame(
        {
            "file_name": [p.rsplit("/", 1)[-1] for p in cat["path"]],
            "start_utc": cat["start"].to_numpy(str),
            "stop_utc": cat["stop"].to_numpy(str),
            "dquality": cat["quality"].to_numpy(np.int64),
            "barycorr": cat["barycorr"].to_numpy(np.float64),
        }
    )


@lru_cache(maxsize=1)
def _pointings() -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    with open(DATA_DIR / "pointings.csv", encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            out[int(row["Sector"])] = {
                k: float(row[k]) for k in ("RA", "Dec", "Roll", "Start", "End")
            }
    return out


def _synthetic_catalog(sector: int, camera: int, ccd: int) -> pd.DataFrame:
    """Plausible 30-min timeline for a sector without a packaged catalog (see module doc)."""
    from astropy.coordinates import EarthLocation, SkyCoord

    point = _pointings().get(sector)
    if point is None:
        raise ValueError(f"no timeline for sector {sector}: not in pointings.csv")
    lead, tail, gap = 0.8, 0.3, 1.0  # [d] before the first FFI, after the last, downlink gap
    n_orbit = int(((point["End"] - point["Start"]) - lead - tail - gap) / 2.0 / TIMEDEL_D)
    k = np.arange(n_orbit)
    t_first = point["Start"] + lead
    start_jd = np.concatenate(
        [t_first + k * TIMEDEL_D, t_first + (n_orbit * TIMEDEL_D + gap) + k * TIMEDEL_D]
    )
    w = WCS(ccd_wcs_header(sector, camera, ccd))
    ra, dec = w.all_pix2world([[_COL0 + 1023.5, 1023.5]], 0)[0]
    t_utc = Time(start_jd, format="jd", scale="utc")
    geocentre = EarthLocation.from_geocentric(0.0, 0.0, 0.0, unit="m")
    ltt = t_utc.light_travel_time(
        SkyCoord(ra, dec, unit="deg"), kind="barycentric", location=geocentre
    )
    barycorr = np.asarray(ltt.to_value("day"), dtype=np.float64)
    scconfig = 100 + sector
    names = [
        f"tess{s}-s{sector:04d}-{camera}-{ccd}-{scconfig:04d}-s_ffic.fits"
        for s in t_utc.strftime("%Y%j%H%M%S")
    ]
    # catalog convention: start/stop strings are the DATE-OBS/DATE-END (UTC + barycorr)
    start = Time(start_jd + barycorr, format="jd", scale="utc")
    stop = Time(start_jd + barycorr + TIMEDEL_D, format="jd", scale="utc")
    start.precision = stop.precision = 0
    return pd.DataFrame(
        {
            "file_name": names,
            "start_utc": np.asarray(start.isot, dtype=str),
            "stop_utc": np.asarray(stop.isot, dtype=str),
            "dquality": np.zeros(len(names), np.int64),
            "barycorr": barycorr,
        }
    )


@lru_cache(maxsize=16)
def _timeline_cached(sector: int, camera: int, ccd: int) -> pd.DataFrame:
    cat = _real_catalog(sector, camera, ccd)
    synthetic = cat is None
    if cat is None:
        cat = _synthetic_catalog(sector, camera, ccd)
    cat = cat.reset_index(drop=True)
    tstart = _btjd_from_catalog(cat["start_utc"].to_numpy(), cat["barycorr"].to_numpy())
    tstop = _btjd_from_catalog(cat["stop_utc"].to_numpy(), cat["barycorr"].to_numpy())
    cadence = FFIINDEX_BASE + np.rint((tstart - tstart[0]) / TIMEDEL_D).astype(np.int64)
    if np.any(np.diff(cadence) <= 0):
        raise ValueError(f"sector {sector}: FFIINDEX would not be strictly increasing")
    orbit = np.concatenate([[0], np.cumsum(np.diff(tstart) > 0.5)])
    orbit_start = np.array([tstart[orbit == o].min() for o in orbit])
    orbit_end = np.array([tstop[orbit == o].max() for o in orbit])
    cat["tstart"] = tstart
    cat["tstop"] = tstop
    cat["btjd"] = 0.5 * (tstart + tstop)
    cat["cadence"] = cadence
    cat["orbit"] = orbit
    cat["orbit_start"] = orbit_start
    cat["orbit_end"] = orbit_end
    cat["synthetic"] = synthetic
    return cat


def sector_timeline(sector: int, camera: int, ccd: int) -> pd.DataFrame:
    """Every FFI of a sector/camera/CCD, sorted by time (real for sectors 1 and 19).

    Columns: ``file_name``; ``start_utc``/``stop_utc`` (catalog ISO strings, used as
    DATE-OBS/DATE-END); ``tstart``, ``tstop``, ``btjd`` (mid-exposure) in BTJD [d] =
    ``Time(utc).tdb.jd - 2457000 + barycorr``; ``dquality``; ``barycorr`` [d];
    ``cadence`` (FFIINDEX = `FFIINDEX_BASE` + round((tstart - first tstart) / TIMEDEL));
    ``orbit`` (0, 1, ...), ``orbit_start``/``orbit_end`` [BTJD d]; ``synthetic`` (bool).
    Other sectors get the synthesised timeline described in the module docstring.
    """
    return _timeline_cached(int(sector), int(camera), int(ccd)).copy()


# -------------------------------------------------------------------------------------- WCS


@lru_cache(maxsize=1)
def _tesswcs_data() -> dict[str, Any]:
    with bz2.open(DATA_DIR / "TESS_wcs_data.json.bz2", "rt") as f:
        return json.load(f)


def _sip_cards(name: str, coeffs: np.ndarray, min_order: int) -> list[tuple[str, float, str]]:
    cards = []
    for p in range(coeffs.shape[0]):
        for q in range(coeffs.shape[1]):
            if min_order <= p + q and coeffs[p, q] != 0.0:
                cards.append((f"{name}_{p}_{q}", float(coeffs[p, q]), "distortion coefficient"))
    return cards


def ccd_wcs_header(sector: int, camera: int, ccd: int) -> fits.Header:
    """TAN-SIP WCS header (CD matrix form, 1-based CRPIX 1045, 1001) of a sector's CCD.

    Uses the real per-sector solution from the tesswcs data (``TESS_wcs_data.json.bz2``);
    for sectors it does not cover, the astrocut example FFI WCS. Angles in degrees. Also
    carries RA_NOM/DEC_NOM/ROLL_NOM (spacecraft pointing) and the PHYSICAL alternate WCS.
    """
    data = _tesswcs_data()
    h = fits.Header()
    entry = data.get(str(sector), {}).get(str(camera), {}).get(str(ccd))
    if entry is not None:
        cd = np.asarray(entry["cd"], dtype=np.float64)
        crval, crpix = entry["crval0"], entry["crpix0"]
        sip = {
            k: np.asarray(entry[f"sip_{k.lower()}"], dtype=np.float64) for k in "A B AP BP".split()
        }
        point = {k: data[str(sector)][k] for k in ("ra", "dec", "roll")}
    else:
        ex = fits.Header.fromstring((DATA_DIR / "astrocut_ex_ffi_wcs.txt").read_text())
        pc = np.array([[ex["PC1_1"], ex["PC1_2"]], [ex["PC2_1"], ex["PC2_2"]]])
        cd = pc * np.array([[ex["CDELT1"]], [ex["CDELT2"]]])
        crval, crpix = (ex["CRVAL1"], ex["CRVAL2"]), (ex["CRPIX1"], ex["CRPIX2"])
        sip = {}
        for k in ("A", "B", "AP", "BP"):
            order = int(ex[f"{k}_ORDER"])
            arr = np.zeros((order + 1, order + 1))
            for p in range(order + 1):
                for q in range(order + 1 - p):
                    arr[p, q] = ex.get(f"{k}_{p}_{q}", 0.0)
            sip[k] = arr
        pt = _pointings().get(sector, {"RA": 0.0, "Dec": 0.0, "Roll": 0.0})
        point = {"ra": pt["RA"], "dec": pt["Dec"], "roll": pt["Roll"]}
    h["RADESYS"] = ("ICRS", "reference frame of celestial coordinates")
    h["EQUINOX"] = (2000.0, "equinox of celestial coordinate system")
    h["WCSAXES"] = (2, "number of WCS axes")
    h["CTYPE1"] = ("RA---TAN-SIP", "Gnomonic projection + SIP distortions")
    h["CTYPE2"] = ("DEC--TAN-SIP", "Gnomonic projection + SIP distortions")
    h["CRVAL1"] = (float(crval[0]), "RA at CRPIX1, CRPIX2")
    h["CRVAL2"] = (float(crval[1]), "DEC at CRPIX1, CRPIX2")
    h["CRPIX1"] = (float(crpix[0]), "X reference pixel")
    h["CRPIX2"] = (float(crpix[1]), "Y reference pixel")
    for i in range(2):
        for j in range(2):
            h[f"CD{i + 1}_{j + 1}"] = (float(cd[i, j]), "Transformation matrix")
    for k, min_order in (("A", 2), ("B", 2), ("AP", 1), ("BP", 1)):
        order = sip[k].shape[0] - 1
        h[f"{k}_ORDER"] = (order, f"{'Inv p' if k in ('AP', 'BP') else 'P'}olynomial order")
        for key, val, comment in _sip_cards(k, sip[k], min_order):
            h[key] = (val, ("inv " if k in ("AP", "BP") else "") + comment)
    for key, val, comment in (
        ("WCSNAMEP", "PHYSICAL", "name of world coordinate system alternate P"),
        ("WCSAXESP", 2, "number of WCS physical axes"),
        ("CTYPE1P", "RAWX", "physical WCS axis 1 type CCD col"),
        ("CUNIT1P", "PIXEL", "physical WCS axis 1 unit"),
        ("CRPIX1P", 1, "reference CCD column"),
        ("CRVAL1P", 1, "value at reference CCD column"),
        ("CDELT1P", 1.0, "physical WCS axis 1 step"),
        ("CTYPE2P", "RAWY", "physical WCS axis 2 type CCD row"),
        ("CUNIT2P", "PIXEL", "physical WCS axis 2 units"),
        ("CRPIX2P", 1, "reference CCD row"),
        ("CRVAL2P", 1, "value at reference CCD row"),
        ("CDELT2P", 1.0, "physical WCS axis 2 step"),
    ):
        h[key] = (val, comment)
    roll = float(point["roll"])
    h["RA_NOM"] = (float(point["ra"]), "[deg] RA of camera boresight")
    h["DEC_NOM"] = (float(point["dec"]), "[deg] DEC of camera boresight")
    h["ROLL_NOM"] = (roll - 360.0 if roll > 180.0 else roll, "[deg] roll angle of camera")
    return h


# ------------------------------------------------------------------------------------ stars


def tmag_to_flux(tmag: np.ndarray | float) -> np.ndarray:
    """TESS magnitude -> flux [e-/s]: ``15000 * 10**(-0.4 (Tmag - 10))``."""
    return 15000.0 * 10.0 ** (-0.4 * (np.asarray(tmag, dtype=np.float64) - 10.0))


@lru_cache(maxsize=1)
def _prf_grid() -> np.ndarray:
    with fits.open(DATA_DIR / _PRF_FILE, memmap=False) as hdul:
        grid = np.asarray(hdul[0].data, dtype=np.float64)
    return grid * (81.0 / grid.sum())  # each of the 9x9 sub-pixel samplings sums to ~1


def _gaussian_stamps(fx: np.ndarray, fy: np.ndarray, half: int, sigma: float) -> np.ndarray:
    """(n, 2h+1, 2h+1) pixel-integrated Gaussian; fx, fy = star - nearest pixel centre."""
    edges = np.arange(-half - 0.5, half + 1.0)  # pixel edges relative to the nearest pixel
    s = 1.0 / (math.sqrt(2.0) * sigma)
    px = np.diff(erf((edges[None, :] - fx[:, None]) * s), axis=1)
    py = np.diff(erf((edges[None, :] - fy[:, None]) * s), axis=1)
    px /= px.sum(axis=1, keepdims=True)  # exact total flux inside the stamp
    py /= py.sum(axis=1, keepdims=True)
    return py[:, :, None] * px[:, None, :]


def _prf_stamps(fx: np.ndarray, fy: np.ndarray, half: int) -> np.ndarray:
    """(n, 2h+1, 2h+1) stamps bilinearly interpolated in the 9x supersampled PRF."""
    grid = _prf_grid()
    size = grid.shape[0]
    centre = (size - 1) / 2.0
    k = np.arange(-half, half + 1, dtype=np.float64)

    def axis(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.clip(centre + 9.0 * (k[None, :] - f[:, None]), 0.0, size - 1.0)
        i0 = np.minimum(np.floor(s).astype(np.int64), size - 2)
        return i0, s - i0

    x0, wx = axis(fx)
    y0, wy = axis(fy)
    y0, wy = y0[:, :, None], wy[:, :, None]
    x0, wx = x0[:, None, :], wx[:, None, :]
    stamps = (1 - wy) * ((1 - wx) * grid[y0, x0] + wx * grid[y0, x0 + 1]) + wy * (
        (1 - wx) * grid[y0 + 1, x0] + wx * grid[y0 + 1, x0 + 1]
    )
    stamps /= stamps.sum(axis=(1, 2), keepdims=True)
    return stamps


def render_stars(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    science_size: int,
    psf: str = "gaussian",
    sigma: float = GAUSSIAN_SIGMA_PX,
) -> np.ndarray:
    """Noiseless star image of the science area, float64 (N, N) in the unit of ``flux``.

    ``x``, ``y``: 0-based full-array column/row of each star (science column 44 is array
    column 0 of the result); ``flux``: total flux (e.g. e-/s). Each star is a pixel-integrated
    Gaussian (``sigma`` px) or the supersampled TESS PRF, normalised to ``flux`` in its stamp;
    light outside the science area is dropped. Vectorised (stamps + ``np.bincount``).
    """
    n = int(science_size)
    x = np.asarray(x, dtype=np.float64) - _COL0
    y = np.asarray(y, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    if psf == "gaussian":
        half = max(2, math.ceil(6.0 * sigma))
    elif psf == "prf":
        half = (_prf_grid().shape[0] // 9) // 2
    else:
        raise ValueError(f"psf must be 'gaussian' or 'prf', not {psf!r}")
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    keep = (ix > -half - 1) & (ix < n + half + 1) & (iy > -half - 1) & (iy < n + half + 1)
    ix, iy, x, y, flux = ix[keep], iy[keep], x[keep], y[keep], flux[keep]
    fx, fy = x - ix, y - iy
    if psf == "gaussian":
        stamps = _gaussian_stamps(fx, fy, half, sigma)
    else:
        stamps = _prf_stamps(fx, fy, half)
    stamps *= flux[:, None, None]
    k = np.arange(-half, half + 1)
    cols = ix[:, None, None] + k[None, None, :]
    rows = iy[:, None, None] + k[None, :, None]
    inside = (cols >= 0) & (cols < n) & (rows >= 0) & (rows < n)
    idx = (rows * n + cols)[inside]
    image = np.bincount(idx, weights=stamps[inside], minlength=n * n)
    return image.reshape(n, n)


# ------------------------------------------------------------------------------ variability


def _trapezoid(dt: np.ndarray, depth: float, duration: float, ingress: float) -> np.ndarray:
    """Dip of ``depth`` lasting ``duration`` [d] with linear ingress/egress of ``ingress`` [d]."""
    ingress = max(ingress, 1e-6)
    return depth * np.clip((0.5 * duration - np.abs(dt)) / ingress, 0.0, 1.0)


def _wrap(t: np.ndarray, t0: float, period: float) -> np.ndarray:
    """Time from the nearest epoch ``t0 + k * period``, in [-P/2, P/2)."""
    return (t - t0 + 0.5 * period) % period - 0.5 * period


def variability_model(var_type: str, params: Mapping[str, Any], btjd: np.ndarray) -> np.ndarray:
    """Multiplicative flux model (1 = reference flux) of an injected variable at ``btjd`` [d].

    ``params`` is the ``var_params`` JSON of the truth table (times BTJD [d], periods [d],
    amplitudes fractional):

    - EA: ``period, t0`` (primary minimum), ``depth1, depth2``, eclipse ``duration`` and
      ``ingress`` [d]; trapezoid eclipses at phases 0 and 0.5.
    - EW: ``period, t0, amp, delta``: ``1 - amp/2 cos(4 pi phi) - delta amp/2 cos(2 pi phi)``.
    - ROT: ``period, t0, amp, harm, harm_phase, env_amp, env_period, env_phase``: a two-harmonic
      quasi-sinusoid whose amplitude evolves slowly (envelope period ``env_period``).
    - DSCT: ``periods, amps`` (semi-amplitudes), ``phases``, ``t0``: sum of sinusoids.
    - TRANSIT: ``period, t0`` (mid-transit), ``depth, duration, ingress``: trapezoid dips.
    - FLARE: lists ``peaks, amps, t_rise, t_decay``: quadratic rise over ``t_rise``, then
      exponential decay with e-folding ``t_decay`` (``1 + sum``).

    EW, ROT and DSCT average to 1; for EA, TRANSIT and FLARE 1 is the quiescent level.
    """
    t = np.asarray(btjd, dtype=np.float64)
    p = params
    if var_type == "EA":
        dt1 = _wrap(t, p["t0"], p["period"])
        dt2 = _wrap(t, p["t0"] + 0.5 * p["period"], p["period"])
        return (
            1.0
            - _trapezoid(dt1, p["depth1"], p["duration"], p["ingress"])
            - _trapezoid(dt2, p["depth2"], p["duration"], p["ingress"])
        )
    if var_type == "EW":
        phi = 2.0 * np.pi * (t - p["t0"]) / p["period"]
        return 1.0 - 0.5 * p["amp"] * (np.cos(2.0 * phi) + p["delta"] * np.cos(phi))
    if var_type == "ROT":
        phi = 2.0 * np.pi * (t - p["t0"]) / p["period"]
        env = 1.0 + p["env_amp"] * np.sin(2.0 * np.pi * t / p["env_period"] + p["env_phase"])
        wave = (np.sin(phi) + p["harm"] * np.sin(2.0 * phi + p["harm_phase"])) / (1.0 + p["harm"])
        return 1.0 + 0.5 * p["amp"] * env / (1.0 + p["env_amp"]) * wave
    if var_type == "DSCT":
        out = np.ones_like(t)
        for period, amp, phase in zip(p["periods"], p["amps"], p["phases"], strict=True):
            out += amp * np.sin(2.0 * np.pi * (t - p["t0"]) / period + phase)
        return out
    if var_type == "TRANSIT":
        dt = _wrap(t, p["t0"], p["period"])
        return 1.0 - _trapezoid(dt, p["depth"], p["duration"], p["ingress"])
    if var_type == "FLARE":
        out = np.ones_like(t)
        for tp, amp, tr, td in zip(p["peaks"], p["amps"], p["t_rise"], p["t_decay"], strict=True):
            dt = t - tp
            rise = (dt > -tr) & (dt < 0)
            out[rise] += amp * ((dt[rise] + tr) / tr) ** 2
            decay = dt >= 0
            out[decay] += amp * np.exp(-dt[decay] / td)
        return out
    raise ValueError(f"unknown var_type {var_type!r}; expected one of {VAR_TYPES}")


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _n_covered(centres: np.ndarray, t: np.ndarray, half_width: float) -> int:
    """How many event centres have at least one frame mid-time within ``half_width``."""
    if centres.size == 0:
        return 0
    return int(np.sum(np.min(np.abs(t[None, :] - centres[:, None]), axis=1) < half_width))


def _epochs(t0: float, period: float, t_lo: float, t_hi: float) -> np.ndarray:
    k = np.arange(math.floor((t_lo - t0) / period), math.ceil((t_hi - t0) / period) + 1)
    c = t0 + k * period
    return c[(c >= t_lo) & (c <= t_hi)]


def _draw_params(
    rng: np.random.Generator, var_type: str, t: np.ndarray, timedel: float
) -> tuple[dict[str, Any], float, float, float]:
    """Parameters of one variable; returns (params, nominal amplitude, period, t0)."""
    t_lo, t_hi = float(t.min()), float(t.max())
    span = max(t_hi - t_lo, timedel)
    if var_type == "EA":
        # two primary eclipses inside the run, so that the period is fixed by the data
        # (as TRANSIT); on a full sector this keeps the whole 0.5-10 d range
        p_max = min(10.0, 0.45 * span)
        period = _loguniform(rng, min(0.5, 0.8 * p_max), p_max)
        depth1 = _loguniform(rng, 0.03, 0.5)
        depth2 = depth1 if rng.random() < 0.25 else depth1 * rng.uniform(0.05, 1.0)
        duration = float(np.clip(period * rng.uniform(0.03, 0.08), 0.06, 0.6))
        ingress = duration * rng.uniform(0.3, 0.5)
        for _ in range(200):  # at least two sampled primary eclipses inside the run
            t0 = t_lo + rng.uniform(0.0, min(period, span))
            eclipses = _epochs(t0, period, t_lo, t_hi)
            if _n_covered(eclipses, t, 0.5 * duration - 0.3 * ingress) >= 2:
                break
        params = dict(
            period=period, t0=t0, depth1=depth1, depth2=depth2, duration=duration, ingress=ingress
        )
        return params, depth1, period, t0
    if var_type == "EW":
        period = rng.uniform(0.25, 1.0)
        amp = _loguniform(rng, 0.03, 0.4)
        t0 = t_lo + rng.uniform(0.0, period)
        params = dict(period=period, t0=t0, amp=amp, delta=rng.uniform(0.0, 0.15))
        return params, amp, period, t0
    if var_type == "ROT":
        # at least two rotations inside the run: one cycle of a spotted star whose amplitude
        # evolves does not fix its period to 1 % (same rule as TRANSIT's two events)
        p_max = min(12.0, 0.5 * span)
        period = _loguniform(rng, min(0.5, 0.5 * p_max), p_max)
        amp = _loguniform(rng, 0.003, 0.08)
        t0 = t_lo + rng.uniform(0.0, period)
        params = dict(
            period=period,
            t0=t0,
            amp=amp,
            harm=rng.uniform(0.0, 0.5),
            harm_phase=rng.uniform(0.0, 2 * np.pi),
            env_amp=rng.uniform(0.1, 0.4),
            env_period=rng.uniform(8.0, 40.0),
            env_phase=rng.uniform(0.0, 2 * np.pi),
        )
        return params, amp, period, t0
    if var_type == "DSCT":
        p_min = max(0.02, 2.4 * timedel)  # keep above Nyquist (0.0417 d at 30 min)
        period = _loguniform(rng, p_min, 0.2)
        amp = _loguniform(rng, 0.002, 0.05)
        periods, amps = [period], [0.5 * amp]
        if rng.random() < 0.5 and 0.773 * period >= p_min:  # first overtone
            periods.append(0.773 * period)
            amps.append(0.5 * amp * rng.uniform(0.2, 0.7))
        t0 = t_lo + rng.uniform(0.0, period)
        phases = [float(v) for v in rng.uniform(0.0, 2 * np.pi, len(periods))]
        params = dict(periods=periods, amps=amps, phases=phases, t0=t0)
        return params, amp, period, t0
    if var_type == "TRANSIT":
        depth = _loguniform(rng, 0.003, 0.02)
        p_max = min(8.0, 0.45 * span)  # two transits fit in the run
        p_min = 1.0 if p_max >= 1.0 else 0.8 * p_max  # runs < 2.2 d: shorter periods
        for _ in range(200):  # at least 2 sampled transits inside the run
            period = rng.uniform(p_min, p_max)
            duration = min(rng.uniform(0.06, 0.2), 0.08 * period)
            ingress = duration * rng.uniform(0.08, 0.25)
            t0 = t_lo + rng.uniform(0.0, period)
            if _n_covered(_epochs(t0, period, t_lo, t_hi), t, 0.5 * duration - ingress) >= 2:
                break
        params = dict(period=period, t0=t0, depth=depth, duration=duration, ingress=ingress)
        return params, depth, period, t0
    if var_type == "FLARE":
        amp = _loguniform(rng, 0.01, 0.5)
        n_extra = min(int(rng.poisson(rng.uniform(0.1, 0.5) * span)), 20)
        n = 2 + n_extra
        peaks = rng.uniform(t_lo, t_hi, n)
        amps = np.concatenate([[amp], amp * rng.uniform(0.1, 1.0, n - 1)])
        params = dict(
            peaks=[float(v) for v in peaks],
            amps=[float(v) for v in amps],
            t_rise=[float(v) for v in rng.uniform(0.003, 0.01, n)],
            t_decay=[float(v) for v in rng.uniform(0.02, 0.12, n)],
        )
        return params, amp, math.nan, float(peaks[0])
    raise ValueError(f"unknown var_type {var_type!r}")


def _fine_ptp(var_type: str, params: dict[str, Any], t_lo: float, t_hi: float) -> float:
    """Peak-to-peak of the model on a fine grid (incl. event centres) over [t_lo, t_hi],
    extended to at least one full period after ``t_lo`` for periodic types."""
    period = params.get("period", max(params.get("periods", [0.0])))
    t_hi = max(t_hi, t_lo + period)
    step = 0.001
    if var_type == "DSCT":
        step = min(step, min(params["periods"]) / 50.0)
    grid = [np.arange(t_lo, t_hi + step, step)]
    if var_type in ("EA", "TRANSIT"):
        grid.append(_epochs(params["t0"], params["period"], t_lo, t_hi))
    if var_type == "EA":
        grid.append(_epochs(params["t0"] + 0.5 * params["period"], params["period"], t_lo, t_hi))
    if var_type == "FLARE":
        grid.append(np.asarray(params["peaks"]))
    m = variability_model(var_type, params, np.concatenate(grid))
    return float(np.ptp(m))


def _noise_frac(flux: np.ndarray, sky: float) -> np.ndarray:
    """Per-point fractional noise of a star's ~12-pixel aperture flux in one 30-min FFI."""
    rn2 = float(np.mean(np.square(_READ_NOISE))) * NREADOUT
    e = flux * EXPOSURE_S
    return np.sqrt(e + _NPIX_NOISE * (sky * EXPOSURE_S + rn2)) / e


def _draw_variables(
    rng: np.random.Generator,
    n_var: int,
    noise_frac: np.ndarray,
    flux: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    science_size: int,
    t: np.ndarray,
) -> dict[int, tuple[str, dict[str, Any], float, float]]:
    """Assign variables to stars: {star index: (type, params, period, t0)}.

    The most demanding variables (smallest amplitude / target S/N) choose first among the
    free stars quiet enough, preferring stars >= 5 px inside the science area and not blended
    with a neighbour of more than half their flux within 3 px.
    """
    drafts = []
    for i in range(n_var):
        var_type = VAR_TYPES[i % len(VAR_TYPES)]
        params, amp, period, t0 = _draw_params(rng, var_type, t, TIMEDEL_D)
        k = rng.uniform(5.0, 40.0) if rng.random() < 0.85 else rng.uniform(1.5, 5.0)
        drafts.append((amp / k, var_type, params, period, t0))
    used = np.zeros(noise_frac.size, dtype=bool)
    margin = 5.0
    interior = (
        (x >= _COL0 + margin)
        & (x <= _COL0 + science_size - 1 - margin)
        & (y >= margin)
        & (y <= science_size - 1 - margin)
    )
    # blended: a neighbour within 3 px has more than half the star's flux
    blended = np.zeros(noise_frac.size, dtype=bool)
    if noise_frac.size > 1:
        pairs = cKDTree(np.column_stack([x, y])).query_pairs(3.0, output_type="ndarray")
        i, j = pairs[:, 0], pairs[:, 1]
        blended[i[flux[j] > 0.5 * flux[i]]] = True
        blended[j[flux[i] > 0.5 * flux[j]]] = True
    out: dict[int, tuple[str, dict[str, Any], float, float]] = {}
    for max_noise, var_type, params, period, t0 in sorted(drafts, key=lambda d: d[0]):
        ok = ~used & (noise_frac <= max_noise)
        cand = np.array([], dtype=np.int64)
        for pref in (ok & interior & ~blended, ok & ~blended, ok):
            cand = np.flatnonzero(pref)
            if cand.size:
                break
        if cand.size == 0:  # nobody is quiet enough: take the quietest free star
            free = np.flatnonzero(~used)
            cand = free[[int(np.argmin(noise_frac[free]))]]
        star = int(rng.choice(cand))
        used[star] = True
        out[star] = (var_type, params, period, t0)
    return out


# ------------------------------------------------------------------------- scene & headers


@dataclass
class _Scene:
    sky_map: np.ndarray  # (N, N) float32 base sky [e-/s/px]
    glow_map: np.ndarray  # (N, N) float32 scattered-light pattern, 1 at the glow corner
    sky0: float
    glow_amp: float  # [e-/s/px] at the corner, at an orbit boundary
    glow_tau: float  # [d]
    stray_boost: float  # extra glow factor on DQUALITY 2048 frames
    jitter_white: float  # [px] rms
    drift: np.ndarray  # (2, 3, 3): axis, component, (amplitude px, period d, phase)
    cm_settle: float  # common-mode amplitude right after an orbit start (fraction)
    cm_tau: float  # [d]
    cm_slope: float  # linear common-mode drift over an orbit (fraction)
    rn_col: np.ndarray  # (cols,) read noise per column, per read [e-]


def _column_read_noise(science_size: int) -> np.ndarray:
    n = science_size
    ncols = n + _COL_MARGIN
    out = np.empty(ncols, dtype=np.float64)
    edges = np.rint(np.linspace(0, n, 5)).astype(int)
    for k in range(4):
        out[k * 11 : (k + 1) * 11] = _READ_NOISE[k]  # leading virtual columns
        out[_COL0 + edges[k] : _COL0 + edges[k + 1]] = _READ_NOISE[k]
        out[_COL0 + n + k * 11 : _COL0 + n + (k + 1) * 11] = _READ_NOISE[k]  # trailing
    return out


def _draw_scene(rng: np.random.Generator, science_size: int, ccd: int) -> _Scene:
    n = science_size
    u = (np.arange(n, dtype=np.float64) + 0.5) / n  # 0..1 across the science area
    sky0 = rng.uniform(35.0, 80.0)
    gx, gy = rng.uniform(-0.08, 0.08, 2)
    sky_map = sky0 * (1.0 + gx * (2 * u[None, :] - 1) + gy * (2 * u[:, None] - 1))
    corner_x, corner_y = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)][(ccd - 1) % 4]
    dist = np.hypot(u[None, :] - corner_x, u[:, None] - corner_y)
    glow_map = np.exp(-dist / rng.uniform(0.3, 0.6))
    drift = np.empty((2, 3, 3))
    drift[:, :, 0] = rng.uniform(0.003, 0.012, (2, 3))
    drift[:, :, 1] = rng.uniform(0.5, 5.0, (2, 3))
    drift[:, :, 2] = rng.uniform(0.0, 2 * np.pi, (2, 3))
    return _Scene(
        sky_map=sky_map.astype(np.float32),
        glow_map=glow_map.astype(np.float32),
        sky0=float(sky0),
        glow_amp=float(sky0 * rng.uniform(0.5, 1.5)),
        glow_tau=float(rng.uniform(0.6, 1.2)),
        stray_boost=float(rng.uniform(1.5, 3.0)),
        jitter_white=float(rng.uniform(0.02, 0.035)),
        drift=drift,
        cm_settle=float(rng.uniform(0.002, 0.005)),
        cm_tau=float(rng.uniform(0.5, 2.0)),
        cm_slope=float(rng.uniform(-0.002, 0.002)),
        rn_col=_column_read_noise(n),
    )


@lru_cache(maxsize=1)
def _eleanor_header() -> fits.Header:
    text = (DATA_DIR / "eleanor_postcard_header_s0001-2-3_from_tessipack.txt").read_text()
    return fits.Header.fromstring(text, sep="\n")


_COPIED_KEYS = (
    "TIMEREF TASSIGN TIMESYS BJDREFI BJDREFF TIMEUNIT TELAPSE LIVETIME TSTART TSTOP DATE-OBS "
    "DATE-END DEADC TIMEPIXR TIERRELA INT_TIME READTIME FRAMETIM NUM_FRM TIMEDEL BACKAPP "
    "DEADAPP VIGNAPP GAINA GAINB GAINC GAIND READNOIA READNOIB READNOIC READNOID NREADOUT "
    "FXDOFF MEANBLCA MEANBLCB MEANBLCC MEANBLCD"
).split()


def _layout_cards(science_size: int) -> list[tuple[str, Any, str]]:
    """Collateral/science layout keywords (1-based, inclusive), scaled to the science size."""
    n = science_size
    edges = np.rint(np.linspace(0, n, 5)).astype(int)
    cards: list[tuple[str, Any, str]] = []
    for k, out in enumerate("ABCD"):
        cards += [
            (f"LVCS{out}", 1 + 11 * k, f"serial register col start, output {out}"),
            (f"LVCE{out}", 11 + 11 * k, f"serial register col end (inclusive), output {out}"),
            (f"TVCS{out}", _COL0 + n + 1 + 11 * k, f"trailing virtual column start, output {out}"),
            (f"TVCE{out}", _COL0 + n + 11 + 11 * k, f"trailing virtual column end, output {out}"),
            (f"SCCS{out}", _COL0 + 1 + int(edges[k]), f"science col start, output {out}"),
            (f"SCCE{out}", _COL0 + int(edges[k + 1]), f"science col end (inclusive), output {out}"),
            (f"SCICOLH{out}", k % 2 == 0, "T science cols are read increasing order else d"),
        ]
    cards += [
        ("SCIROWS", 1, "science rows start"),
        ("SCIROWE", n, "science rows end (inclusive)"),
        ("VROWS", n + 21, "virtual row start"),
        ("VROWE", n + 30, "virtual row end (inclusive)"),
        ("SMROWS", n + 11, "smear rows start"),
        ("SMROWE", n + 20, "smear rows end (inclusive)"),
        ("BFROWS", n + 1, "buffer rows start"),
        ("BFROWE", n + 10, "buffer rows end (inclusive)"),
    ]
    return cards


def _iso_z(utc: str) -> str:
    t = Time(utc, format="isot", scale="utc")
    t.precision = 3
    return f"{t.isot}Z"


def _headers(
    frame: pd.Series,
    sector: int,
    camera: int,
    ccd: int,
    science_size: int,
    wcs_header: fits.Header,
    scconfig: int,
) -> tuple[list[tuple[str, Any, str]], fits.Header, fits.Header]:
    """Primary cards and the image / uncertainty headers of one frame."""
    tstart, tstop = float(frame["tstart"]), float(frame["tstop"])
    date_obs, date_end = _iso_z(frame["start_utc"]), _iso_z(frame["stop_utc"])
    primary = [
        ("NEXTEND", 2, "number of standard extensions"),
        ("EXTNAME", "PRIMARY", "name of extension"),
        ("EXTVER", 1, "extension version number (not format version)"),
        ("SIMDATA", True, "file is based on simulated data"),
        ("ORIGIN", "NASA/Ames", "institution responsible for creating this file"),
        ("DATE", date_end[:10], "file creation date."),
        ("TSTART", tstart, "observation start time in BTJD"),
        ("TSTOP", tstop, "observation stop time in BTJD"),
        ("DATE-OBS", date_obs, "TSTART as UTC calendar date"),
        ("DATE-END", date_end, "TSTOP as UTC calendar date"),
        (
            "CREATOR",
            "tess-ffi tasks.simulate",
            "pipeline job and program used to produce this file",
        ),
        ("PROCVER", f"tess-ffi-{tess_ffi.__version__}", "SW version"),
        ("FILEVER", "1.0", "file format version"),
        ("TIMVERSN", "OGIP/93-003", "OGIP memo number for file format"),
        ("TELESCOP", "TESS", "telescope"),
        ("INSTRUME", "TESS Photometer", "detector type"),
        ("DATA_REL", sector, "data release version number (simulated)"),
        ("SECTOR", sector, "Observing sector"),
        ("CAMERA", camera, "Camera number"),
        ("CCD", ccd, "CCD chip number"),
        ("PXTABLE", 129, "pixel table id"),
        ("SCCONFIG", scconfig, "spacecraft configuration ID"),
        ("FFIINDEX", int(frame["cadence"]), "number of FFI cadence interval of first cadence"),
        ("RADESYS", "ICRS", "reference frame of celestial coordinates"),
        ("EQUINOX", 2000.0, "equinox of celestial coordinate system"),
        ("RA_NOM", wcs_header["RA_NOM"], "[deg] RA of camera boresight"),
        ("DEC_NOM", wcs_header["DEC_NOM"], "[deg] DEC of camera boresight"),
        ("ROLL_NOM", wcs_header["ROLL_NOM"], "[deg] roll angle of camera"),
        ("CRMITEN", True, "spacecraft cosmic ray mitigation enabled"),
        ("CRBLKSZ", 10, "[exposures] s/c cosmic ray mitigation block siz"),
        ("CRSPOC", False, "SPOC cosmic ray cleaning enabled"),
        ("TICVER", 7 if sector < 14 else 8, "TICVER"),
    ]
    el = _eleanor_header()
    h = fits.Header()
    h["INHERIT"] = (True, "inherit the primary header")
    h["EXTNAME"] = (f"CAMERA.CCD {camera}.{ccd} cal", "name of extension")
    h["EXTVER"] = (1, "extension version number (not format version)")
    h["SIMDATA"] = (True, "file is based on simulated data")
    h["TELESCOP"] = ("TESS", "telescope")
    h["INSTRUME"] = ("TESS Photometer", "detector type")
    h["CAMERA"] = (camera, "Camera number")
    h["CCD"] = (ccd, "CCD chip number")
    h["EXPOSURE"] = (EXPOSURE_S / 86400.0, "[d] time on source")
    per_frame = {
        "TELAPSE": tstop - tstart,
        "LIVETIME": (tstop - tstart) * DEADC,
        "TSTART": tstart,
        "TSTOP": tstop,
        "DATE-OBS": date_obs,
        "DATE-END": date_end,
        "DEADC": DEADC,
        "INT_TIME": INT_TIME_S,
        "READTIME": READTIME_S,
        "FRAMETIM": FRAMETIM_S,
        "NUM_FRM": NUM_FRM,
        "NREADOUT": NREADOUT,
        "TIMEDEL": TIMEDEL_D,
    }
    for key in _COPIED_KEYS:
        h[key] = (per_frame.get(key, el[key]), el.comments[key])
        if key == "TIERRELA":
            h["BTC_PIX1"] = (float(_COL0 + science_size // 2), el.comments["BTC_PIX1"])
            h["BTC_PIX2"] = (float(science_size // 2), el.comments["BTC_PIX2"])
            h["BARYCORR"] = (float(frame["barycorr"]), el.comments["BARYCORR"])
    h[f"TMOFST{camera}{ccd}"] = (1.54, f"(s) readout delay for camera {camera} and ccd {ccd}")
    for key, val, comment in _layout_cards(science_size):
        h[key] = (val, comment)
    h.extend(wcs_header.cards)
    h["DQUALITY"] = (int(frame["dquality"]), "data quality flags")
    h["IMAGTYPE"] = ("cal", "FFI image type: raw, cal, uncert")
    h["BUNIT"] = ("electrons/s", "physical units of image data")
    _trim_comments(h)
    hu = h.copy()
    hu["EXTNAME"] = f"CAMERA.CCD {camera}.{ccd} uncert"
    hu["IMAGTYPE"] = "uncert"
    return primary, h, hu


def _trim_comments(header: fits.Header) -> fits.Header:
    """Shorten comments in place so that every card fits in 80 characters (no warnings)."""
    for card in header.cards:
        if card.keyword in ("COMMENT", "HISTORY", "") or not card.comment:
            continue
        used = len(str(fits.Card(card.keyword, card.value)).rstrip())
        room = max(0, 80 - used - 3)
        if len(card.comment) > room:
            header.comments[card.keyword] = card.comment[:room]
    return header


def _write_ffi(
    path: Path,
    primary_cards: list[tuple[str, Any, str]],
    h1: fits.Header,
    h2: fits.Header,
    image: np.ndarray,
    uncert: np.ndarray,
) -> None:
    """Write the three HDUs to ``path + '.part'`` then rename (never a half file)."""
    hdu0 = fits.PrimaryHDU()
    for key, val, comment in primary_cards:
        hdu0.header[key] = (val, comment)
    _trim_comments(hdu0.header)
    hdul = fits.HDUList(
        [hdu0, fits.ImageHDU(data=image, header=h1), fits.ImageHDU(data=uncert, header=h2)]
    )
    tmp = path.with_name(path.name + ".part")
    try:
        hdul.writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------------- the driver


def _common_mode(scene: _Scene, t: float, orbit_start: float, orbit_end: float) -> float:
    """Fractional throughput/focus change at time ``t`` (at the CCD centre scale 1)."""
    mid = 0.5 * (orbit_start + orbit_end)
    length = max(orbit_end - orbit_start, 1e-3)
    settle = -scene.cm_settle * math.exp(-(t - orbit_start) / scene.cm_tau)
    return settle + scene.cm_slope * (t - mid) / length


def _scattered_light(
    scene: _Scene, t: float, orbit_start: float, orbit_end: float, dq: int
) -> float:
    """Scattered-light level at the glow corner [e-/s/px]."""
    level = scene.glow_amp * (
        math.exp(-(t - orbit_start) / scene.glow_tau) + math.exp(-(orbit_end - t) / scene.glow_tau)
    )
    if dq & _STRAYLIGHT_BIT:
        level += scene.glow_amp * scene.stray_boost
    return level


def _pointing(scene: _Scene, t: float, dq: int, rng: np.random.Generator) -> tuple[float, float]:
    """Pointing offset (dx, dy) [px] of a frame: slow drift + white jitter + excursions."""
    white = rng.normal(0.0, scene.jitter_white, 2)
    jump = rng.normal(0.0, 0.25, 2)
    d = scene.drift
    slow = np.sum(d[:, :, 0] * np.sin(2 * np.pi * t / d[:, :, 1] + d[:, :, 2]), axis=1)
    off = slow + white + (jump if dq & _JUMP_BITS else 0.0)
    return float(off[0]), float(off[1])


def simulate_sector(
    out_dir: Path,
    sector: int = 1,
    camera: int = 1,
    ccd: int = 1,
    n_cadences: int = 200,
    n_stars: int = 2000,
    science_size: int = 2048,
    cadence_start: int = 0,
    n_variables: int | None = None,
    seed: int = 42,
    psf: str = "gaussian",
    add_noise: bool = True,
) -> SimulationResult:
    """Write ``n_cadences`` simulated calibrated FFIs of one sector/camera/CCD and the truth.

    Frames are the sector's FFIs ``cadence_start .. cadence_start + n_cadences - 1`` in time
    order (real names, times, BARYCORR and DQUALITY for sectors 1 and 19; see
    `sector_timeline`), each ``(science_size + 30) x (science_size + 88)`` float32 pixels in
    e-/s, with ``n_stars`` stars (``n_variables`` of them variable; default
    ``max(6, round(0.05 * n_stars))``). ``psf`` is ``"gaussian"`` (sigma 0.7 px) or ``"prf"``
    (the real TESS PRF). ``add_noise=False`` writes the noiseless model (the uncertainty HDU
    is the same as with noise), which with the same ``seed`` is the exact expectation of the
    noisy frames.

    Files written into ``out_dir``: the FFIs, ``truth_stars.parquet`` (one row per star:
    ``sim_id`` (0 = brightest), ``x``, ``y`` (0-based full-array column/row at zero pointing
    offset [px]), ``ra``, ``dec`` [deg], ``tmag``, ``flux`` [e-/s] (reference flux; the mean
    for EW/ROT/DSCT, quiescent level for EA/TRANSIT/FLARE), ``var_type`` (null if constant),
    ``period_days`` (orbital/rotation/main pulsation period [d]), ``amplitude`` (fractional
    peak-to-peak of the model over the run, or over one full period if the run is shorter),
    ``amplitude_sampled`` (peak-to-peak at the frame times), ``t0_btjd`` (primary minimum,
    mid-transit, phase zero or largest flare peak), ``noise_frac`` (estimated per-point
    fractional noise of a ~12-pixel aperture), ``cm_scale`` (the star's flux is multiplied
    by ``1 + common_mode(t) * cm_scale``), ``var_params`` (JSON for `variability_model`)) and
    ``truth_frames.parquet`` (one row per frame: ``file_name``, ``cadence`` (FFIINDEX),
    ``tstart``, ``tstop``, ``btjd`` [BTJD d], ``dquality``, ``barycorr`` [d], ``dx``, ``dy`` [px],
    ``bkg_median`` (median noiseless sky over science pixels [e-/s]), ``scattered_light``
    (glow-corner level [e-/s]), ``common_mode`` (fractional throughput change at the centre)).
    Deterministic given the arguments; each frame's noise and jitter depend only on
    (seed, sector, camera, ccd, FFIINDEX).
    """
    for name, val, lo, hi in (("camera", camera, 1, 4), ("ccd", ccd, 1, 4)):
        if not lo <= int(val) <= hi:
            raise ValueError(f"{name} must be {lo}..{hi}, not {val}")
    if psf not in ("gaussian", "prf"):
        raise ValueError(f"psf must be 'gaussian' or 'prf', not {psf!r}")
    if science_size < 16:
        raise ValueError(f"science_size must be >= 16, not {science_size}")
    if n_stars < 0 or n_cadences < 1 or cadence_start < 0:
        raise ValueError("need n_stars >= 0, n_cadences >= 1 and cadence_start >= 0")
    sector, camera, ccd, n = int(sector), int(camera), int(ccd), int(science_size)
    n_var = max(6, round(0.05 * n_stars)) if n_variables is None else int(n_variables)
    n_var = max(0, min(n_var, n_stars))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    timeline = sector_timeline(sector, camera, ccd)
    if cadence_start + n_cadences > len(timeline):
        raise ValueError(
            f"sector {sector} camera {camera} ccd {ccd} has {len(timeline)} FFIs; cannot take "
            f"{n_cadences} from index {cadence_start}"
        )
    run = timeline.iloc[cadence_start : cadence_start + n_cadences].reset_index(drop=True)
    scconfig = int(run["file_name"].iloc[0].split("-")[4])
    wcs_header = ccd_wcs_header(sector, camera, ccd)
    wcs = WCS(wcs_header)

    rng = np.random.default_rng([seed, sector, camera, ccd])
    # --- stars (sorted brightest first, so sim_id = rank by true flux)
    x = rng.uniform(_COL0 - 0.5, _COL0 + n - 0.5, n_stars)
    y = rng.uniform(-0.5, n - 0.5, n_stars)
    lo, hi = (10.0 ** (_LF_SLOPE * m) for m in _TMAG_RANGE)
    tmag = np.log10(lo + rng.random(n_stars) * (hi - lo)) / _LF_SLOPE
    order = np.argsort(tmag, kind="stable")
    x, y, tmag = x[order], y[order], tmag[order]
    flux = tmag_to_flux(tmag)
    scene = _draw_scene(rng, n, ccd)
    noise_frac = _noise_frac(flux, scene.sky0)
    btjd = run["btjd"].to_numpy()
    variables = _draw_variables(rng, n_var, noise_frac, flux, x, y, n, btjd)

    var_idx = np.array(sorted(variables), dtype=np.int64)
    var_curves = np.ones((var_idx.size, n_cadences))
    for j, i in enumerate(var_idx):
        var_type, params, _, _ = variables[int(i)]
        var_curves[j] = variability_model(var_type, params, btjd)
    # radial scale of the common-mode systematic (0.6 at the CCD centre .. 1.4 at a corner)
    r2 = ((x - (_COL0 + 1023.5)) ** 2 + (y - 1023.5) ** 2) / (1023.5**2 * 2)
    cm_scale = 0.6 + 0.8 * r2

    rows, cols = n + _ROW_MARGIN, n + _COL_MARGIN
    rn2_col = (scene.rn_col**2 * NREADOUT).astype(np.float32)  # [e-^2] per column
    inv_t = np.float32(1.0 / EXPOSURE_S)
    paths: list[Path] = []
    frame_rows: list[dict[str, Any]] = []
    for f in range(n_cadences):
        fr = run.iloc[f]
        t, dq, cad = float(fr["btjd"]), int(fr["dquality"]), int(fr["cadence"])
        o0, o1 = float(fr["orbit_start"]), float(fr["orbit_end"])
        frng = np.random.default_rng([seed, sector, camera, ccd, cad])
        dx, dy = _pointing(scene, t, dq, frng)
        cm = _common_mode(scene, t, o0, o1)
        scat = _scattered_light(scene, t, o0, o1, dq)
        fl = flux * (1.0 + cm * cm_scale)
        fl[var_idx] *= var_curves[:, f]
        image = np.zeros((rows, cols), dtype=np.float32)
        sci = image[:n, _COL0 : _COL0 + n]
        sci[...] = scene.sky_map + np.float32(scat) * scene.glow_map
        step = max(1, n // 256)
        bkg_median = float(np.median(sci[::step, ::step]))
        sci += render_stars(x + dx, y + dy, fl, n, psf=psf).astype(np.float32)
        # variance [(e-/s)^2]: Poisson on the collected electrons + read noise of each read
        sigma = image * np.float32(EXPOSURE_S)
        sigma += rn2_col[None, :]
        np.sqrt(sigma, out=sigma)
        sigma *= inv_t
        if add_noise:
            image += sigma * frng.standard_normal((rows, cols), dtype=np.float32)
        path = out_dir / str(fr["file_name"])
        primary, h1, h2 = _headers(fr, sector, camera, ccd, n, wcs_header, scconfig)
        _write_ffi(path, primary, h1, h2, image, sigma)
        paths.append(path)
        frame_rows.append(
            {
                "sector": sector,
                "camera": camera,
                "ccd": ccd,
                "cadence": cad,
                "file_name": path.name,
                "tstart": float(fr["tstart"]),
                "tstop": float(fr["tstop"]),
                "btjd": t,
                "dquality": dq,
                "barycorr": float(fr["barycorr"]),
                "dx": dx,
                "dy": dy,
                "bkg_median": bkg_median,
                "scattered_light": scat,
                "common_mode": cm,
            }
        )

    frames_truth_path = out_dir / "truth_frames.parquet"
    frames_schema = pa.schema(
        [
            ("sector", pa.int16()),
            ("camera", pa.int8()),
            ("ccd", pa.int8()),
            ("cadence", pa.int32()),
            ("file_name", pa.string()),
            ("tstart", pa.float64()),
            ("tstop", pa.float64()),
            ("btjd", pa.float64()),
            ("dquality", pa.int32()),
            ("barycorr", pa.float64()),
            ("dx", pa.float64()),
            ("dy", pa.float64()),
            ("bkg_median", pa.float64()),
            ("scattered_light", pa.float64()),
            ("common_mode", pa.float64()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(frame_rows, schema=frames_schema), frames_truth_path)

    ra, dec = wcs.all_pix2world(x, y, 0) if n_stars else (np.array([]), np.array([]))
    t_lo, t_hi = float(run["tstart"].iloc[0]), float(run["tstop"].iloc[-1])
    cols_out: dict[str, list[Any]] = {
        k: []
        for k in (
            "var_type",
            "period_days",
            "amplitude",
            "amplitude_sampled",
            "t0_btjd",
            "var_params",
        )
    }
    for i in range(n_stars):
        if i in variables:
            var_type, params, period, t0 = variables[i]
            j = int(np.searchsorted(var_idx, i))
            cols_out["var_type"].append(var_type)
            cols_out["period_days"].append(None if math.isnan(period) else float(period))
            cols_out["amplitude"].append(_fine_ptp(var_type, params, t_lo, t_hi))
            cols_out["amplitude_sampled"].append(float(np.ptp(var_curves[j])))
            cols_out["t0_btjd"].append(float(t0))
            cols_out["var_params"].append(json.dumps(params, sort_keys=True))
        else:
            for v in cols_out.values():
                v.append(None)
    truth = pa.table(
        {
            "sector": pa.array(np.full(n_stars, sector), pa.int16()),
            "camera": pa.array(np.full(n_stars, camera), pa.int8()),
            "ccd": pa.array(np.full(n_stars, ccd), pa.int8()),
            "sim_id": pa.array(np.arange(n_stars), pa.int64()),
            "x": pa.array(x, pa.float64()),
            "y": pa.array(y, pa.float64()),
            "ra": pa.array(np.asarray(ra, dtype=np.float64), pa.float64()),
            "dec": pa.array(np.asarray(dec, dtype=np.float64), pa.float64()),
            "tmag": pa.array(tmag, pa.float64()),
            "flux": pa.array(flux, pa.float64()),
            "var_type": pa.array(cols_out["var_type"], pa.string()),
            "period_days": pa.array(cols_out["period_days"], pa.float64()),
            "amplitude": pa.array(cols_out["amplitude"], pa.float64()),
            "amplitude_sampled": pa.array(cols_out["amplitude_sampled"], pa.float64()),
            "t0_btjd": pa.array(cols_out["t0_btjd"], pa.float64()),
            "noise_frac": pa.array(noise_frac, pa.float64()),
            "cm_scale": pa.array(cm_scale, pa.float64()),
            "var_params": pa.array(cols_out["var_params"], pa.string()),
        }
    )
    truth_path = out_dir / "truth_stars.parquet"
    pq.write_table(truth, truth_path)

    return SimulationResult(
        paths=paths,
        truth_path=truth_path,
        frames_truth_path=frames_truth_path,
        sector=sector,
        camera=camera,
        ccd=ccd,
        n_cadences=int(n_cadences),
        n_stars=int(n_stars),
        science_size=n,
        cadence_start=int(cadence_start),
        n_variables=n_var,
        seed=int(seed),
        psf=psf,
        add_noise=bool(add_noise),
    )


def expected_flux(truth: pl.DataFrame, frames: pl.DataFrame) -> np.ndarray:
    """Noiseless total flux [e-/s] of every truth star at every simulated frame.

    ``truth`` is the ``truth_stars.parquet`` table and ``frames`` the ``truth_frames.parquet``
    table (any row order; columns are used by name). Returns an array (n_stars, n_frames) in
    the row orders given: ``flux * (1 + common_mode * cm_scale) * variability``, exactly what
    was rendered before the PSF spread it over pixels.
    """
    flux = truth["flux"].to_numpy()
    scale = truth["cm_scale"].to_numpy()
    btjd = frames["btjd"].to_numpy()
    cm = frames["common_mode"].to_numpy()
    model = flux[:, None] * (1.0 + cm[None, :] * scale[:, None])
    for i, (vtype, params) in enumerate(
        zip(truth["var_type"].to_list(), truth["var_params"].to_list(), strict=True)
    ):
        if vtype:
            model[i] *= variability_model(vtype, json.loads(params), btjd)
    return model
