"""Reference star catalog of one CCD: median stack, source detection, ids and sky positions.

Built once per ingestion from several good frames spread over the sector. The median
stack beats down noise and removes cosmic rays and moving objects; sources are found
with photutils' DAOStarFinder on the background-subtracted stack (FWHM 1.65 px, i.e. the
TESS PSF core of sigma ~0.7 px), a 5-sigma threshold from the stack's uncertainty. Stars
are ranked by reference aperture flux, which makes ``star_id`` deterministic:
``star_id = sector*10**7 + camera*10**6 + ccd*10**5 + rank`` (rank 0 = brightest).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
from astropy.io.fits import Header
from astropy.wcs import WCS, FITSFixedWarning
from scipy.ndimage import binary_dilation, map_coordinates

from lakehouse.schemas import STARS, star_id_base
from tasks.background import estimate_background, star_mask
from tasks.ffi import science_bounds
from tasks.photometry import build_apertures, measure

#: TESS zero point used for ``tmag_est``: a Tmag = 10 star gives ~15,000 e-/s
TMAG10_FLUX = 15000.0
MAX_STARS = 100_000


def aperture_radius(tmag: np.ndarray) -> np.ndarray:
    """Circular aperture radius [px] by TESS magnitude: 3.5 (<8), 2.5 (<10), 2.0 (<12), 1.5."""
    tmag = np.asarray(tmag, dtype=float)
    return np.select([tmag < 8, tmag < 10, tmag < 12], [3.5, 2.5, 2.0], default=1.5)


def tmag_from_flux(flux: np.ndarray) -> np.ndarray:
    """Approximate TESS magnitude of a flux [e-/s] (NaN for flux <= 0)."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flux > 0, 10.0 - 2.5 * np.log10(flux / TMAG10_FLUX), np.nan)


@dataclass(frozen=True)
class ReferenceStack:
    """Median of several calibrated frames [e-/s] and its 1-sigma uncertainty [e-/s]."""

    image: np.ndarray
    uncert: np.ndarray
    n_frames: int


def median_stack(images: list[np.ndarray], uncerts: list[np.ndarray]) -> ReferenceStack:
    """Pixel-wise median of frames; its error is 1.2533 * median(sigma) / sqrt(n)."""
    if not images:
        raise ValueError("no frames to stack")
    cube = np.stack(images).astype(np.float32)
    image = np.nanmedian(cube, axis=0)
    del cube
    unc = np.nanmedian(np.stack(uncerts).astype(np.float32), axis=0)
    n = len(images)
    scale = 1.0 if n == 1 else 1.2533 / np.sqrt(n)
    return ReferenceStack(image=image, uncert=unc * scale, n_frames=n)


def detect_stars(stack: ReferenceStack, nsigma: float = 5.0, fwhm: float = 1.65) -> dict:
    """Detect point sources on a reference stack.

    Returns columns ``x``, ``y`` (0-based full-array column/row [px]) and ``peak_snr``
    (peak height above the local sky over the local pixel uncertainty). Only sources with
    centres on science pixels are kept.
    """
    import photutils
    from photutils.detection import DAOStarFinder

    photutils.future_column_names = True

    img = stack.image
    r0, r1, c0, c1 = science_bounds(img.shape)
    # two passes: a first mesh, then a mesh with bright pixels masked
    mesh = estimate_background(img)
    sky = _full_resolution(mesh, img.shape)
    sigma = np.where(np.isfinite(stack.uncert) & (stack.uncert > 0), stack.uncert, np.inf)
    bright = (img - sky) > 3 * sigma
    mesh = estimate_background(img, mask=binary_dilation(bright, iterations=2))
    sky = _full_resolution(mesh, img.shape)

    data = np.zeros(img.shape, dtype=np.float64)
    data[r0:r1, c0:c1] = (img - sky)[r0:r1, c0:c1]
    data[~np.isfinite(data)] = 0.0
    noise = float(np.nanmedian(stack.uncert[r0:r1, c0:c1]))
    finder = DAOStarFinder(
        threshold=nsigma * noise, fwhm=fwhm, exclude_border=False, sharpness_range=(0.1, 1.5)
    )
    found = finder(data)
    if found is None or len(found) == 0:
        return {"x": np.zeros(0), "y": np.zeros(0), "peak_snr": np.zeros(0)}
    x = np.asarray(found["x_centroid"], dtype=float)
    y = np.asarray(found["y_centroid"], dtype=float)
    keep = (x >= c0 - 0.5) & (x < c1 - 0.5) & (y >= r0 - 0.5) & (y < r1 - 0.5)
    x, y = x[keep], y[keep]
    ri = np.clip(np.rint(y).astype(int), 0, img.shape[0] - 1)
    ci = np.clip(np.rint(x).astype(int), 0, img.shape[1] - 1)
    peak_snr = data[ri, ci] / sigma[ri, ci]
    return {"x": x, "y": y, "peak_snr": peak_snr}


def _full_resolution(mesh, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear full-resolution sky image [e-/s per pixel] from a background mesh."""
    rows = (np.arange(shape[0]) - mesh.row0) / mesh.box - 0.5
    cols = (np.arange(shape[1]) - mesh.col0) / mesh.box - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return map_coordinates(mesh.level, [rr.ravel(), cc.ravel()], order=1, mode="nearest").reshape(
        shape
    )


#: radius [px] that holds the whole PSF, for the curve of growth
TOTAL_RADIUS = 5.0


def aperture_corrections(
    image: np.ndarray,
    uncert: np.ndarray,
    mesh,
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray,
    tmag: np.ndarray,
) -> np.ndarray:
    """Aperture correction per star: flux within TOTAL_RADIUS / flux within its radius (>= 1).

    Measured on the reference stack for each distinct radius, as the median ratio over
    bright (Tmag 7.5-14), isolated (no other star within 8 px) stars; 1.0 when fewer than
    3 such stars exist. Multiplying an aperture flux by it estimates the star's total flux.
    """
    from scipy.spatial import cKDTree

    correction = np.ones(len(x))
    if len(x) < 2:
        return correction
    d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    calib = (d[:, 1] > 8.0) & (tmag > 7.5) & (tmag < 14)
    if calib.sum() < 3:
        return correction
    big = measure(
        build_apertures(image.shape, x[calib], y[calib], TOTAL_RADIUS), image, uncert, mesh
    )
    for r in np.unique(radius):
        small = measure(build_apertures(image.shape, x[calib], y[calib], r), image, uncert, mesh)
        ok = (small.quality == 0) & (big.quality == 0) & (small.flux > 0)
        if ok.sum() >= 3:
            correction[radius == r] = max(1.0, float(np.median(big.flux[ok] / small.flux[ok])))
    return correction


def build_catalog(
    stack: ReferenceStack,
    wcs_header: Header,
    sector: int,
    camera: int,
    ccd: int,
    nsigma: float = 5.0,
) -> pa.Table:
    """The ``stars`` table of one CCD from its reference stack (schema ``lakehouse.schemas.STARS``).

    Reference fluxes are forced aperture photometry on the stack [e-/s] with the
    magnitude-dependent radius of :func:`aperture_radius`; RA/Dec come from the frame's
    WCS (0-based pixel origin).
    """
    found = detect_stars(stack, nsigma=nsigma)
    x, y, snr = found["x"], found["y"], found["peak_snr"]
    img, unc = stack.image, stack.uncert
    mask = star_mask(img.shape, x, y, np.full(len(x), 3.0))
    mesh = estimate_background(img, mask=mask)
    # first pass at r = 2 px for a magnitude, then the magnitude's radius
    first = measure(build_apertures(img.shape, x, y, 2.0), img, unc, mesh)
    radius = aperture_radius(tmag_from_flux(first.flux))
    ref = measure(build_apertures(img.shape, x, y, radius), img, unc, mesh)
    correction = aperture_corrections(img, unc, mesh, x, y, radius, tmag_from_flux(first.flux))
    ref = replace(ref, flux=ref.flux * correction, flux_err=ref.flux_err * correction)
    # DAOStarFinder thresholds the kernel-convolved image; keep only sources that are also
    # significant in their own pixels and aperture, which removes noise peaks
    with np.errstate(invalid="ignore", divide="ignore"):
        flux_snr = ref.flux / ref.flux_err
    good = np.isfinite(ref.flux) & (flux_snr >= nsigma) & (snr >= nsigma)
    order = np.argsort(-np.where(good, ref.flux, -np.inf), kind="stable")
    order = order[good[order]][:MAX_STARS]
    x, y, snr, radius = x[order], y[order], snr[order], radius[order]
    correction = correction[order]
    flux, flux_err = ref.flux[order], ref.flux_err[order]
    if len(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)  # 'datfix' notes on DATE-OBS
            ra, dec = WCS(wcs_header).all_pix2world(x, y, 0)
    else:
        ra = dec = np.zeros(0)
    n = len(x)
    base = star_id_base(sector, camera, ccd)
    return pa.table(
        {
            "sector": np.full(n, sector, dtype=np.int16),
            "camera": np.full(n, camera, dtype=np.int8),
            "ccd": np.full(n, ccd, dtype=np.int8),
            "star_id": base + np.arange(n, dtype=np.int64),
            "x": x,
            "y": y,
            "ra": np.asarray(ra, dtype=float),
            "dec": np.asarray(dec, dtype=float),
            "ref_flux": flux,
            "ref_flux_err": flux_err,
            "tmag_est": tmag_from_flux(flux),
            "aperture_radius": radius,
            "aperture_correction": correction,
            "peak_snr": snr,
            "tic_id": pa.nulls(n, pa.int64()),
        },
        schema=STARS,
    )
