"""The table contract: names, columns, units and quality bits of every lakehouse table.

Every table is partitioned by ``sector``/``camera``/``ccd``. Columns and units are the
single source of truth for writers, readers, expectations and ``docs/architecture.md``.
"""

from __future__ import annotations

import enum

import pyarrow as pa

PARTITION_COLUMNS = ("sector", "camera", "ccd")


class Quality(enum.IntFlag):
    """Quality bits of a photometry row (0 = good).

    Bits 1-32768 are the frame's DQUALITY, as in the TESS Science Data Products
    Description Document (SDPDD, Table 28). Bits from 2**20 up are set by this pipeline.
    """

    ATTITUDE_TWEAK = 1
    SAFE_MODE = 2
    COARSE_POINT = 4
    EARTH_POINT = 8
    ARGABRIGHTENING = 16
    DESAT = 32
    APERTURE_COSMIC = 64
    MANUAL_EXCLUDE = 128
    DISCONTINUITY = 256
    IMPULSIVE_OUTLIER = 512
    COLLATERAL_COSMIC = 1024
    STRAYLIGHT = 2048
    SCATTERED_LIGHT = 4096
    PLANET_SEARCH_EXCLUDE = 8192
    BAD_CALIBRATION_EXCLUDE = 16384
    INSUFFICIENT_TARGETS = 32768
    # --- pipeline bits (this project) ---
    EDGE = 1 << 20  # aperture reaches outside the science pixels (rows 0-2047, cols 44-2091)
    OUTSIDE = 1 << 21  # star centre outside the science pixels at this cadence
    NEGATIVE = 1 << 22  # background-subtracted aperture flux <= 0
    SATURATED = 1 << 23  # an aperture pixel is above SATURATION_E_PER_S
    NONFINITE = 1 << 24  # an aperture pixel or its uncertainty is NaN/inf (flux is then NaN)


#: DQUALITY bits after which SPOC itself excludes a cadence from light curves (its default
#: bitmask: AttitudeTweak, SafeMode, CoarsePoint, EarthPoint, Desat, ManualExclude,
#: ImpulsiveOutlier, Argabrightening, BadCalibrationExclude).
DEFAULT_BAD_DQUALITY = 1 | 2 | 4 | 8 | 16 | 32 | 128 | 512 | 16384
#: every bit this pipeline may write into ``photometry.quality``
KNOWN_QUALITY_BITS = sum(int(q) for q in Quality)
PIPELINE_BITS = int(
    Quality.EDGE | Quality.OUTSIDE | Quality.NEGATIVE | Quality.SATURATED | Quality.NONFINITE
)
#: a calibrated FFI pixel above this is treated as saturated [e-/s]. TESS full well is
#: ~2e5 e- per 2-s exposure; bleed columns appear above ~1e5 e-/s in calibrated FFIs.
SATURATION_E_PER_S = 1.0e5

FRAMES = pa.schema(
    [
        ("sector", pa.int16()),
        ("camera", pa.int8()),
        ("ccd", pa.int8()),
        ("cadence", pa.int32()),  # index of the frame in the sector's full FFI list (0-based)
        ("btjd", pa.float64()),  # mid-exposure, BJD - 2457000 [d] (TDB)
        ("tstart", pa.float64()),  # start of exposure, BTJD [d]
        ("tstop", pa.float64()),  # end of exposure, BTJD [d]
        ("dquality", pa.int32()),  # SPOC DQUALITY bits of the frame
        ("barycorr", pa.float64()),  # barycentric correction applied at the CCD centre [d]
        (
            "file_name",
            pa.string(),
        ),  # SPOC file name, e.g. tess2018206192942-s0001-1-1-0120-s_ffic.fits
        ("bkg_median", pa.float64()),  # median sky background per pixel [e-/s]
        ("dx", pa.float64()),  # pointing offset along columns vs the reference catalog [px]
        ("dy", pa.float64()),  # pointing offset along rows vs the reference catalog [px]
        ("n_stars_measured", pa.int32()),  # stars with quality == 0 on this frame
    ]
)

STARS = pa.schema(
    [
        ("sector", pa.int16()),
        ("camera", pa.int8()),
        ("ccd", pa.int8()),
        ("star_id", pa.int64()),  # sector*10**7 + camera*10**6 + ccd*10**5 + rank by ref flux
        ("x", pa.float64()),  # reference column, 0-based, full 2136x2078 FFI array [px]
        ("y", pa.float64()),  # reference row, 0-based [px]
        ("ra", pa.float64()),  # ICRS right ascension from the FFI WCS [deg]
        ("dec", pa.float64()),  # ICRS declination [deg]
        ("ref_flux", pa.float64()),  # aperture flux on the reference stack [e-/s]
        ("ref_flux_err", pa.float64()),  # its uncertainty [e-/s]
        ("tmag_est", pa.float64()),  # -2.5 log10(ref_flux / 15000) + 10 [TESS mag, approx.]
        ("aperture_radius", pa.float64()),  # circular aperture radius [px]
        ("peak_snr", pa.float64()),  # detection significance on the reference stack
        ("tic_id", pa.int64()),  # TIC cross-match when online, else null
    ]
)

PHOTOMETRY = pa.schema(
    [
        ("sector", pa.int16()),
        ("camera", pa.int8()),
        ("ccd", pa.int8()),
        ("star_id", pa.int64()),
        ("cadence", pa.int32()),
        ("btjd", pa.float64()),  # mid-exposure [BTJD d]
        ("flux", pa.float64()),  # background-subtracted aperture flux [e-/s]
        ("flux_err", pa.float64()),  # 1-sigma, from the uncertainty HDU + background error [e-/s]
        ("bkg", pa.float64()),  # background inside the aperture (total) [e-/s]
        ("x", pa.float64()),  # flux-weighted centroid column, full-array 0-based [px]
        ("y", pa.float64()),  # flux-weighted centroid row [px]
        ("quality", pa.int32()),  # frame DQUALITY | pipeline bits (Quality); 0 = good
    ]
)

TABLES: dict[str, pa.Schema] = {"frames": FRAMES, "stars": STARS, "photometry": PHOTOMETRY}


def star_id_base(sector: int, camera: int, ccd: int) -> int:
    """First ``star_id`` of a sector/camera/CCD (ids are base + rank by reference flux)."""
    return sector * 10**7 + camera * 10**6 + ccd * 10**5
