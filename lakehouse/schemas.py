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
        ("aperture_correction", pa.float64()),  # total / in-aperture flux of the PSF (>= 1)
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
        ("flux", pa.float64()),  # background-subtracted aperture flux x aperture_correction [e-/s]
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


# ---------------------------------------------------------------------------------------
# Analytics tables (written by flows/find_variables.py; see docs/architecture.md,
# "Analytics tables").
# ---------------------------------------------------------------------------------------


class EpochFlag(enum.IntFlag):
    """Bits of ``epoch_qc.flags`` (0 = good cadence). ``bad`` = any bit of BAD_EPOCH_FLAGS."""

    DQUALITY = 1  # frame DQUALITY has a bit of DEFAULT_BAD_DQUALITY
    LOW_COMPLETENESS = 2  # fraction of well-measured stars is a low outlier (binomial floor)
    SCATTER = 4  # ensemble scatter of the corrected, error-normalised flux is a high outlier
    POINTING = 8  # pointing offset |(dx, dy) - median| is a high outlier
    SCATTERED_LIGHT = 16  # sky background is a high outlier or DQUALITY bit 2048/4096 is set
    NO_DATA = 32  # no star measured on this cadence


#: epoch flags that make a cadence bad (SCATTERED_LIGHT alone is informational: the
#: spatially local common-mode correction removes additive sky residuals; it makes the
#: cadence bad only together with SCATTER, i.e. when the correction could not cope)
BAD_EPOCH_FLAGS = int(
    EpochFlag.DQUALITY
    | EpochFlag.LOW_COMPLETENESS
    | EpochFlag.SCATTER
    | EpochFlag.POINTING
    | EpochFlag.NO_DATA
)


class LcMask(enum.IntFlag):
    """Bits of ``lightcurves.mask_bits`` (0 = good point, used by features and periods)."""

    QUALITY = 1  # photometry.quality has a bit of BAD_QUALITY_BITS
    EPOCH = 2  # the cadence is bad in epoch_qc (see EpochFlag / BAD_EPOCH_FLAGS)
    OUTLIER = 4  # isolated one-cadence outlier (both neighbours normal), FAP-based threshold
    NO_FLUX = 8  # flux or flux_err missing, NaN/inf, or flux_err <= 0
    UNCORRECTED = 16  # too few reference stars: common mode not removed, flux is raw


#: photometry quality bits that make a point bad: SPOC's default DQUALITY mask plus the
#: pipeline bits EDGE, OUTSIDE, SATURATED, NONFINITE (NEGATIVE is not bad: a faint star's
#: flux may scatter below zero, dropping those points would bias it)
BAD_QUALITY_BITS = int(
    DEFAULT_BAD_DQUALITY | Quality.EDGE | Quality.OUTSIDE | Quality.SATURATED | Quality.NONFINITE
)

#: variability classes of ``candidates.var_type``
VAR_TYPES = ("EA", "EW", "ROT", "DSCT", "TRANSIT", "FLARE", "OTHER")

_PART = [("sector", pa.int16()), ("camera", pa.int8()), ("ccd", pa.int8())]

EPOCH_QC = pa.schema(
    [
        *_PART,
        ("cadence", pa.int32()),  # FFIINDEX
        ("btjd", pa.float64()),  # mid-exposure [BTJD d]
        ("n_stars", pa.int32()),  # stars with a photometry row on this cadence
        ("frac_good", pa.float64()),  # fraction of catalogue stars with a good measurement
        ("bkg_median", pa.float64()),  # median sky per pixel [e-/s]
        ("dx", pa.float64()),  # pointing offset along columns [px]
        ("dy", pa.float64()),  # pointing offset along rows [px]
        ("pointing_offset", pa.float64()),  # |(dx, dy) - sector median| [px]
        ("ensemble_median", pa.float64()),  # median over stars of raw flux/median - 1
        ("ensemble_scatter_raw", pa.float64()),  # robust std over stars of raw flux/median - 1
        ("ensemble_scatter", pa.float64()),  # same after common-mode correction
        ("ensemble_chi", pa.float64()),  # robust std over stars of corrected residual / error
        ("cm_mult", pa.float64()),  # median multiplicative common mode (fraction)
        ("cm_add", pa.float64()),  # median additive common mode [e-/s per pixel]
        ("flags", pa.int32()),  # EpochFlag bits
        ("bad", pa.bool_()),  # flags & BAD_EPOCH_FLAGS != 0
        ("bad_reason", pa.string()),  # comma-separated lower-case EpochFlag names, "" if none
    ]
)

STAR_QC = pa.schema(
    [
        *_PART,
        ("star_id", pa.int64()),
        ("n_cadences", pa.int32()),  # cadences of the partition
        ("n_good", pa.int32()),  # points with lightcurves.mask_bits == 0
        ("completeness", pa.float64()),  # n_good / n_cadences
        ("median_flux", pa.float64()),  # median good raw flux [e-/s]
        ("robust_scatter_raw", pa.float64()),  # 1.4826 MAD of raw flux/median - 1
        ("robust_scatter", pa.float64()),  # 1.4826 MAD of corrected flux/median - 1
        ("p2p_scatter", pa.float64()),  # 1.4826 MAD of successive differences / sqrt 2
        ("expected_noise", pa.float64()),  # median flux_err / median flux
        ("precision_ratio", pa.float64()),  # robust_scatter / expected_noise (1 = ideal)
        ("median_snr", pa.float64()),  # median flux / flux_err
        ("edge_distance", pa.float64()),  # distance to the nearest science-area edge [px]
        ("crowding", pa.float64()),  # neighbours' flux inside the aperture / own flux in it
        ("is_reference", pa.bool_()),  # used as a common-mode reference star
        ("cm_n_refs", pa.int32()),  # reference stars used for this star's common mode
        ("cm_radius", pa.float64()),  # distance to the farthest of them [px]
        ("cm_gain", pa.float64()),  # fraction of the local model applied (0..1, Wiener gain)
    ]
)

LIGHTCURVES = pa.schema(
    [
        *_PART,
        ("star_id", pa.int64()),
        ("cadence", pa.int32()),
        ("btjd", pa.float64()),  # mid-exposure [BTJD d]
        ("flux", pa.float64()),  # after common-mode correction [e-/s]
        ("flux_err", pa.float64()),  # 1-sigma, photometry error + correction error [e-/s]
        ("flux_raw", pa.float64()),  # photometry.flux [e-/s]
        ("cm_mult", pa.float64()),  # multiplicative common mode m: flux = (raw - add)/(1 + m)
        ("cm_add", pa.float64()),  # additive common mode in the aperture [e-/s]
        ("mask_bits", pa.int32()),  # LcMask bits; 0 = good
    ]
)

FEATURES = pa.schema(
    [
        *_PART,
        ("star_id", pa.int64()),
        ("n_good", pa.int32()),  # points used (mask_bits == 0)
        ("median_flux", pa.float64()),  # [e-/s]
        # variability indices on y = flux/median - 1 (dimensionless), from light-curve
        ("amplitude", pa.float64()),  # (max - min) / 2 of y
        ("robust_amplitude", pa.float64()),  # p95 - p5 of y
        ("mad_scatter", pa.float64()),  # 1.4826 * median |y - median y|
        ("std", pa.float64()),  # standard deviation of y
        ("reduced_chi2", pa.float64()),  # chi2 / (n - 1) about the weighted mean, errors as given
        ("stetson_j", pa.float64()),  # Stetson (1996) J, successive pairs, divided by sum(w)
        ("stetson_k", pa.float64()),  # Stetson K
        ("von_neumann_eta", pa.float64()),  # sum (y_i+1 - y_i)^2 / ((n-1) var y); ~2 for noise
        ("iqr", pa.float64()),  # p75 - p25 of y
        ("skew", pa.float64()),
        ("kurtosis", pa.float64()),  # excess kurtosis
        ("beyond_2std", pa.float64()),  # fraction of points more than 2 std from the mean
        # Lomb-Scargle (nifty-ls, batched; floating mean, errors as weights)
        ("ls_period", pa.float64()),  # best period [d]
        ("ls_power", pa.float64()),  # standard-normalised power 0..1
        ("ls_log10_fap", pa.float64()),  # log10 false-alarm probability (Baluev 2008)
        ("ls_amplitude", pa.float64()),  # semi-amplitude of the best sinusoid (fraction)
        ("ls_period_2", pa.float64()),  # best period outside the main peak's lobe [d]
        ("ls_power_2", pa.float64()),
        # box search (astropy BoxLeastSquares on the stars with a significant dip)
        ("bls_period", pa.float64()),  # [d]
        ("bls_t0", pa.float64()),  # mid-time of a box [BTJD d]
        ("bls_duration", pa.float64()),  # [d]
        ("bls_depth", pa.float64()),  # fraction
        ("bls_snr", pa.float64()),  # depth / depth uncertainty (errors scaled by noise ratio)
        ("bls_n_events", pa.int32()),  # boxes with data
        ("bls_depth_odd", pa.float64()),  # fraction
        ("bls_depth_even", pa.float64()),  # fraction
        ("bls_secondary_depth", pa.float64()),  # deepest other box at the same period, fraction
        # events and detection significances (Gaussian-equivalent sigma, calibrated on the CCD)
        ("dip_sigma", pa.float64()),  # deepest box-filtered dip (single event statistic)
        ("flare_sigma", pa.float64()),  # strongest positive short excursion
        ("n_flares", pa.int32()),  # separate flare events above threshold
        ("sig_ls", pa.float64()),
        ("sig_bls", pa.float64()),
        ("sig_chi2", pa.float64()),
        ("sig_flare", pa.float64()),
        ("is_variable", pa.bool_()),  # any significance above its threshold
    ]
)

CANDIDATES = pa.schema(
    [
        *_PART,
        ("rank", pa.int32()),  # 1 = best
        ("star_id", pa.int64()),
        ("score", pa.float64()),  # highest calibrated significance [sigma]
        ("period_days", pa.float64()),  # physical period (orbital for EA/EW) [d]; null if none
        ("var_type", pa.string()),  # one of VAR_TYPES
        ("amplitude", pa.float64()),  # semi-amplitude (or eclipse/transit depth), fraction
        ("period_source", pa.string()),  # ls, 2*ls, bls, 2*bls, events or none
        ("detection", pa.string()),  # statistics above threshold, e.g. "ls,chi2"
        ("n_events", pa.int32()),  # transits/eclipses/flares seen
        ("event_times", pa.list_(pa.float64())),  # their mid-times [BTJD d]
    ]
)

TABLES.update(
    {
        "epoch_qc": EPOCH_QC,
        "star_qc": STAR_QC,
        "lightcurves": LIGHTCURVES,
        "features": FEATURES,
        "candidates": CANDIDATES,
    }
)


# ---------------------------------------------------------------------------------------
# Platform table (written by flows/ingest_new_sectors.py; see docs/architecture.md,
# "Platform table"). One row per sector/camera/CCD the scheduled discovery has seen; not
# partitioned (a few thousand rows at most), rewritten whole (one commit per write).
# ---------------------------------------------------------------------------------------

#: ``ingest_manifest.status`` values
MANIFEST_STATUSES = ("queued", "ingesting", "analysing", "done", "failed")

INGEST_MANIFEST = pa.schema(
    [
        *_PART,
        ("status", pa.string()),  # one of MANIFEST_STATUSES
        ("step", pa.string()),  # deployment of the last run started: ingest-ccd | find-variables
        ("attempts", pa.int32()),  # runs started for that step (1 = first try)
        ("flow_run_id", pa.string()),  # Prefect flow run of the last run started
        ("ingest_flow_run_id", pa.string()),  # last ingest-ccd run
        ("analysis_flow_run_id", pa.string()),  # last find-variables run (null if none)
        ("source", pa.string()),  # FFI source spec of the runs (no credentials)
        ("first_seen", pa.timestamp("us", tz="UTC")),  # tick that discovered the CCD
        ("started_at", pa.timestamp("us", tz="UTC")),  # when the last run was started
        ("finished_at", pa.timestamp("us", tz="UTC")),  # when it was seen terminal (else null)
        ("updated_at", pa.timestamp("us", tz="UTC")),  # last change of this row
        ("message", pa.string()),  # last failure (state message, one line) or ""
    ]
)

TABLES["ingest_manifest"] = INGEST_MANIFEST


# ---------------------------------------------------------------------------------------
# Rejected frames (written by the ingest-ccd flow with the other ingest tables; see
# docs/architecture.md, "rejected_frames"). One row per selected FFI that was skipped
# instead of measured, so no frame is ever dropped silently.
# ---------------------------------------------------------------------------------------

#: ``rejected_frames.stage`` values: where the frame was rejected
REJECT_STAGES = (
    "fetch",  # the source does not have the file (HTTP 404, no such key)
    "verify",  # the file is not a complete, readable FFI of this CCD (tasks.ffi.FrameError)
    "duplicate",  # same FFIINDEX as a file earlier by name, which is kept
)

REJECTED_FRAMES = pa.schema(
    [
        *_PART,
        ("file_name", pa.string()),  # SPOC file name of the skipped FFI
        ("cadence", pa.int32()),  # its FFIINDEX when its header could be read, else null
        ("reason", pa.string()),  # one-line reason, starts with the file name
        ("stage", pa.string()),  # one of REJECT_STAGES
        ("run_key", pa.string()),  # the ingest run that rejected it
    ]
)

TABLES["rejected_frames"] = REJECTED_FRAMES
