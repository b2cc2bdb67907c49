"""Unit tests of the variability features (tasks/features.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.features import compute_features, reduced_chi2, stetson_j


def stetson_j_literal(t, y, s, max_gap):
    """Stetson (1996) J written out with loops, as in the paper (single band, w = 1)."""
    n = len(y)
    w = 1.0 / s**2
    mean = np.sum(w * y) / np.sum(w)
    delta = [math.sqrt(n / (n - 1)) * (y[i] - mean) / s[i] for i in range(n)]
    terms = []
    i = 0
    while i < n:
        if i + 1 < n and t[i + 1] - t[i] <= max_gap:
            p = delta[i] * delta[i + 1]
            i += 2
        else:
            p = delta[i] ** 2 - 1.0
            i += 1
        terms.append(math.copysign(math.sqrt(abs(p)), p))
    return sum(terms) / len(terms)


def test_stetson_j_equals_the_formula_on_a_small_example():
    t = np.array([0.0, 0.02, 0.04, 0.06, 1.0, 1.02, 1.04, 3.0, 3.02])
    y = np.array([0.1, 0.3, -0.2, -0.1, 0.5, 0.4, 0.0, -0.3, -0.4])
    s = np.array([0.1, 0.2, 0.1, 0.15, 0.1, 0.1, 0.2, 0.1, 0.1])
    got = stetson_j(t, y[None, :], s[None, :], np.ones((1, 9), bool), max_gap=0.03)[0]
    want = stetson_j_literal(t, y, s, 0.03)
    assert got == pytest.approx(want, rel=1e-12)
    # two independent rows in one call give the same as separately
    both = stetson_j(
        t, np.vstack([y, -y[::-1]]), np.vstack([s, s[::-1]]), np.ones((2, 9), bool), 0.03
    )
    assert both[0] == pytest.approx(want)
    assert both[1] == pytest.approx(stetson_j_literal(t, -y[::-1], s[::-1], 0.03))


@pytest.mark.parametrize("n_points", [100, 2000])
def test_stetson_j_is_zero_for_noise_whatever_the_number_of_points(n_points):
    rng = np.random.default_rng(n_points)
    n_stars = 400
    t = np.arange(n_points) / 48.0
    s = rng.uniform(0.5, 2.0, (n_stars, n_points))
    y = rng.normal(0.0, 1.0, (n_stars, n_points)) * s
    j = stetson_j(t, y, s, np.ones_like(y, bool))
    # the mean over pairs: ~0 with a spread ~ 0.8 / sqrt(n_pairs), never growing with n
    assert abs(np.mean(j)) < 0.03
    assert np.std(j) < 2.0 / math.sqrt(n_points / 2)
    # correlated variability gives J >> 0
    y_var = y + 5 * s.mean() * np.sin(2 * np.pi * t / 3.0)[None, :]
    assert np.mean(stetson_j(t, y_var, s, np.ones_like(y, bool))) > 1.0


def test_reduced_chi2_is_one_with_correct_errors():
    rng = np.random.default_rng(1)
    s = rng.uniform(0.001, 0.01, (300, 1000))
    y = rng.normal(0.0, 1.0, s.shape) * s
    good = rng.random(s.shape) > 0.1  # gaps do not matter
    chi = reduced_chi2(y, s, good)
    assert np.mean(chi) == pytest.approx(1.0, abs=0.01)
    # errors 5x too large -> chi2 25x too small (the replaced design's mistake)
    assert np.mean(reduced_chi2(y, 5 * s, good)) == pytest.approx(0.04, rel=0.05)
    # light-curve's ReducedChi2 agrees with the direct formula
    t = np.arange(1000) / 48.0
    feats = compute_features(t, y[:20], s[:20], good[:20])
    np.testing.assert_allclose(feats["reduced_chi2"], chi[:20], rtol=1e-6)


def test_light_curve_indices_of_a_sinusoid():
    t = np.arange(2000) / 48.0
    amp = 0.05
    y = amp * np.sin(2 * np.pi * t / 1.7)[None, :]
    s = np.full_like(y, 1e-4)
    f = compute_features(t, y, s, np.ones_like(y, bool))
    assert f["amplitude"][0] == pytest.approx(amp, rel=0.01)  # (max - min) / 2
    # p95 - p5 of a sine: 2 A sin(0.45 pi)
    assert f["robust_amplitude"][0] == pytest.approx(2 * amp * math.sin(0.45 * math.pi), rel=0.02)
    assert f["von_neumann_eta"][0] < 0.1  # smooth: successive points alike
    assert f["n_good"][0] == 2000
    # too few points -> NaN, not an error
    few = compute_features(t, y, s, np.zeros_like(y, bool))
    assert np.isnan(few["stetson_j"][0]) and np.isnan(few["reduced_chi2"][0])
