"""Per-star variability features, batched over all stars of a CCD.

Input is the dense relative light curve ``y = flux / median - 1`` (dimensionless), its
1-sigma error ``s`` and the mask of good points, all (n_stars, n_cadences) on one shared
time grid (BTJD [d]).

Library choice: the variability indices come from ``light-curve`` (Rust, the SNAD
project's feature extractor): its ``Extractor.many`` takes every star at once as one Arrow
``List<Struct<t, m, sigma>>`` array (zero-copy, built from the dense matrix without a
Python loop over stars or rows) and evaluates the features in parallel. It provides
amplitude, inter-percentile ranges (p95-p5 and the IQR), median absolute deviation,
reduced chi2, von Neumann eta, skew, kurtosis, Stetson K and beyond-2-std. It has no
Stetson J, which is therefore implemented here (:func:`stetson_j`), vectorised, following
Stetson (1996, PASP 108, 851), eqs. 1-3, for a single band:

* ``delta_i = sqrt(n / (n - 1)) * (y_i - ybar) / s_i`` with ``ybar`` the weighted mean;
* observations are grouped into pairs of successive points closer than ``max_gap``
  (each point in at most one pair; runs of close points are paired (1,2), (3,4), ...),
  a pair contributing ``P = delta_i * delta_j`` and an unpaired point ``P = delta_i^2 - 1``;
* ``J = sum_k w_k sgn(P_k) sqrt(|P_k|) / sum_k w_k`` with ``w_k = 1``: the mean over
  pairs, so J of pure noise with correct errors is ~0 whatever the number of points.

Reduced chi2 uses the errors as given: ``chi2 / (n - 1)`` about the weighted mean, ~1 for
a constant star whose errors are right.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

#: fewest good points for which features are computed
MIN_POINTS = 10

_LC_FEATURES = (
    ("amplitude", "Amplitude", ()),
    ("robust_amplitude", "InterPercentileRange", (0.05,)),
    ("iqr", "InterPercentileRange", (0.25,)),
    ("mad", "MedianAbsoluteDeviation", ()),
    ("reduced_chi2", "ReducedChi2", ()),
    ("von_neumann_eta", "Eta", ()),
    ("skew", "Skew", ()),
    ("kurtosis", "Kurtosis", ()),
    ("stetson_k", "StetsonK", ()),
    ("std", "StandardDeviation", ()),
    ("beyond_2std", "BeyondNStd", (2.0,)),
)


def _extractor():
    import light_curve.light_curve_ext as lce

    return lce.Extractor(*[getattr(lce, cls)(*args) for _, cls, args in _LC_FEATURES])


def to_arrow_lists(
    t: np.ndarray, y: np.ndarray, s: np.ndarray, good: np.ndarray
) -> tuple[pa.ListArray, np.ndarray]:
    """Pack the good points of every row into one Arrow ``List<Struct<t, m, sigma>>``.

    Returns the list array (one entry per star, possibly empty) and the point counts.
    """
    ii, jj = np.nonzero(good)
    counts = np.bincount(ii, minlength=good.shape[0])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    struct = pa.StructArray.from_arrays(
        [
            pa.array(np.ascontiguousarray(t[jj], dtype=np.float64)),
            pa.array(np.ascontiguousarray(y[ii, jj], dtype=np.float64)),
            pa.array(np.ascontiguousarray(s[ii, jj], dtype=np.float64)),
        ],
        names=["t", "m", "sigma"],
    )
    return pa.ListArray.from_arrays(pa.array(offsets), struct), counts


def variability_indices(
    t: np.ndarray, y: np.ndarray, s: np.ndarray, good: np.ndarray, n_jobs: int = 2
) -> dict[str, np.ndarray]:
    """light-curve indices of every star (NaN where fewer than MIN_POINTS good points).

    ``t`` (T,) [d]; ``y``, ``s`` (n, T) dimensionless. Keys: amplitude, robust_amplitude,
    iqr, mad_scatter (1.4826 MAD), reduced_chi2, von_neumann_eta, skew, kurtosis,
    stetson_k, std, beyond_2std.
    """
    n = y.shape[0]
    usable = good & np.isfinite(y) & np.isfinite(s) & (s > 0)
    enough = usable.sum(axis=1) >= MIN_POINTS
    usable &= enough[:, None]
    out = {name: np.full(n, np.nan) for name, _, _ in _LC_FEATURES}
    if enough.any():
        rows = np.flatnonzero(enough)
        arr, _ = to_arrow_lists(t, y[rows], s[rows], usable[rows])
        ext = _extractor()
        vals = np.asarray(
            ext.many(
                arr,
                arrow_fields={"t": "t", "m": "m", "sigma": "sigma"},
                fill_value=np.nan,
                sorted=True,
                check=False,
                n_jobs=n_jobs,
            ),
            dtype=float,
        )
        for k, (name, _, _) in enumerate(_LC_FEATURES):
            out[name][rows] = vals[:, k]
    out["mad_scatter"] = out.pop("mad") * 1.482602218505602
    return out


def weighted_mean(y: np.ndarray, s: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Inverse-variance weighted mean per row (same units as ``y``)."""
    w = np.where(good, 1.0 / np.where(good, s, 1.0) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * np.where(good, y, 0.0)).sum(axis=1) / w.sum(axis=1)


def stetson_j(
    t: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    good: np.ndarray,
    max_gap: float | None = None,
) -> np.ndarray:
    """Stetson (1996) J per row, normalised by the number of pairs (see module docstring).

    ``t`` (T,) [d]; ``y``, ``s`` (n, T); ``max_gap`` [d] the longest separation of a pair
    (default 1.5 x the median cadence spacing). Vectorised over all points of all rows.
    """
    from tasks.qc import for_row_blocks

    n, t_len = y.shape
    if max_gap is None:
        dt = np.diff(t[np.isfinite(t)])
        max_gap = 1.5 * float(np.median(dt)) if dt.size else np.inf
    out = np.full(n, np.nan)

    def block(sl):  # rows are independent: blocks of rows on several threads
        out[sl] = _stetson_j_rows(t, y[sl], s[sl], good[sl], max_gap)

    for_row_blocks(block, n, t_len)
    return out


def _stetson_j_rows(
    t: np.ndarray, y: np.ndarray, s: np.ndarray, good: np.ndarray, max_gap: float
) -> np.ndarray:
    """:func:`stetson_j` of a block of rows (``max_gap`` [d] given)."""
    n, _ = y.shape
    usable = good & np.isfinite(y) & np.isfinite(s) & (s > 0)
    counts = usable.sum(axis=1)
    mean = weighted_mean(y, s, usable)
    ii, jj = np.nonzero(usable)
    nn = counts[ii].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.sqrt(nn / (nn - 1.0)) * (y[ii, jj] - mean[ii]) / s[ii, jj]
    tt = t[jj]
    # runs of successive points of one row closer than max_gap
    close = np.zeros(ii.size, dtype=bool)
    close[1:] = (ii[1:] == ii[:-1]) & ((tt[1:] - tt[:-1]) <= max_gap)
    run_start = np.flatnonzero(~close)
    run_id = np.cumsum(~close) - 1
    pos = np.arange(ii.size) - run_start[run_id]
    run_len = np.diff(np.concatenate([run_start, [ii.size]]))[run_id]
    first_of_pair = (pos % 2 == 0) & (pos + 1 < run_len)
    single = (pos % 2 == 0) & (pos + 1 >= run_len)
    a = np.flatnonzero(first_of_pair)
    p_pair = delta[a] * delta[a + 1]
    p_single = delta[single] ** 2 - 1.0
    term = np.concatenate(
        [np.sign(p_pair) * np.sqrt(np.abs(p_pair)), np.sign(p_single) * np.sqrt(np.abs(p_single))]
    )
    row = np.concatenate([ii[a], ii[single]])
    num = np.bincount(row, weights=term, minlength=n)
    den = np.bincount(row, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[counts < 2] = np.nan
    return out


def reduced_chi2(y: np.ndarray, s: np.ndarray, good: np.ndarray) -> np.ndarray:
    """chi2 about the weighted mean / (n - 1), per row (dimensionless)."""
    mean = weighted_mean(y, s, good)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(good, (y - mean[:, None]) / s, 0.0)
        return (z**2).sum(axis=1) / (good.sum(axis=1) - 1.0)


def compute_features(
    t: np.ndarray, y: np.ndarray, s: np.ndarray, good: np.ndarray, n_jobs: int = 2
) -> dict[str, np.ndarray]:
    """All non-periodic features of every star: light-curve indices + Stetson J + n_good."""
    out = variability_indices(t, y, s, good, n_jobs=n_jobs)
    out["stetson_j"] = stetson_j(t, y, s, good)
    out["n_good"] = good.sum(axis=1).astype(np.int32)
    few = out["n_good"] < MIN_POINTS
    out["stetson_j"][few] = np.nan
    return out
