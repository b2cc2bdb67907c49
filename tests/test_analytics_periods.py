"""Periodograms, false-alarm probabilities and period-doubling logic (tasks/periods, classify)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.timeseries import LombScargle

from tasks import periods as per
from tasks.classify import analyze


def sector_times(n: int = 1000, gap: tuple[float, float] = (1338.5, 1339.6)) -> np.ndarray:
    """30-min cadences from BTJD 1325.3 with a downlink gap, like sector 1."""
    t = 1325.3 + np.arange(n) / 48.0
    return t[(t < gap[0]) | (t > gap[1])]


def test_batched_lomb_scargle_matches_astropy_with_masks():
    rng = np.random.default_rng(3)
    t = sector_times(800)
    periods = np.array([0.31, 1.7, 4.2])
    y = 0.01 * np.sin(2 * np.pi * t[None, :] / periods[:, None]) + rng.normal(0, 0.003, (3, t.size))
    s = np.full_like(y, 0.003)
    good = rng.random(y.shape) > 0.15
    grid = per.frequency_grid(t)
    res = per.lombscargle_batch(t, y, s, good, grid)
    np.testing.assert_allclose(1 / res["freq"], periods, rtol=0.01)
    # the peak power of each row equals astropy's on that row's good points only
    for k in range(3):
        ref = LombScargle(t[good[k]], y[k][good[k]], s[k][good[k]]).power(grid.freq)
        assert res["power"][k] == pytest.approx(float(ref.max()), rel=1e-4)
    # the second peak is outside the main lobe of the first, not a neighbouring bin
    baseline = np.ptp(t)
    assert np.all(np.abs(res["freq2"] - res["freq"]) > 1.5 / baseline - 1e-12)


def test_baluev_fap_matches_astropy():
    rng = np.random.default_rng(4)
    t = np.sort(rng.uniform(0, 27, 500))
    y = 0.3 * np.sin(2 * np.pi * t / 2.2) + rng.normal(0, 1, t.size)
    dy = np.ones_like(t)
    ls = LombScargle(t, y, dy)
    _, power = ls.autopower(maximum_frequency=10.0)
    z = power.max()
    want = ls.false_alarm_probability(z, maximum_frequency=10.0, method="baluev")
    tvar = per.weighted_time_variance(t, dy[None, :], np.ones((1, t.size), bool))
    got = per.baluev_log10_fap(np.array([z]), np.array([t.size]), 10.0, tvar)[0]
    assert got == pytest.approx(np.log10(want), abs=0.01)


def eb_model(t, period, t0, depth1, depth2, duration):
    """Box-shaped eclipses at phases 0 and 0.5 (fractional dip)."""
    ph = ((t - t0) / period) % 1.0
    y = np.zeros_like(t)
    y[np.minimum(ph, 1 - ph) < 0.5 * duration / period] -= depth1
    y[np.abs(ph - 0.5) < 0.5 * duration / period] -= depth2
    return y


@pytest.mark.parametrize(
    ("depth1", "depth2", "want_type"),
    [(0.10, 0.10, "EA"), (0.10, 0.04, "EA"), (0.008, 0.0, "TRANSIT")],
)
def test_eclipse_period_is_the_orbital_period(depth1, depth2, want_type):
    rng = np.random.default_rng(5)
    t = sector_times(1200)
    period = 2.3456
    y = eb_model(t, period, 1326.0, depth1, depth2, 0.15) + rng.normal(0, 0.001, t.size)
    s = np.full_like(t, 0.001)
    res = analyze(t, y[None, :], s[None, :], np.ones((1, t.size), bool), population=False)
    assert res.columns["is_variable"][0]
    assert res.var_type[0] == want_type
    # equal eclipses fold at P/2: the orbital period (not the naive P/2) is reported
    assert res.period[0] == pytest.approx(period, rel=0.01)


def v_model(t, period, t0, depth, duration):
    """V-shaped (triangular) dips of ``depth`` and full width ``duration`` every ``period``."""
    dph = np.abs((t - t0 + 0.5 * period) % period - 0.5 * period)
    return -depth * np.clip(1.0 - dph / (0.5 * duration), 0.0, None)


def test_central_depth_is_the_bottom_of_a_v_shaped_eclipse():
    rng = np.random.default_rng(8)
    t = sector_times(1200)
    y = v_model(t, 0.7, 1325.6, 0.04, 0.12) + rng.normal(0, 0.001, t.size)
    s = np.full_like(t, 0.001)
    depth, err = per.central_depth(t, y, s, 0.7, 1325.6, 0.12)
    # the mean over the inner third of a triangle is 5/6 of its depth; a box over the
    # whole eclipse would give half
    assert depth == pytest.approx(0.04 * 5 / 6, abs=4 * err)
    assert 0 < err < 0.001


def test_equal_v_shaped_eclipses_are_a_binary_at_twice_the_box_period():
    # two alike V-shaped eclipses per orbit, 4 % deep: the box depth is below the 3 % planet
    # limit, the bottom is not, so this is an EA at the orbital period, not a TRANSIT at P/2
    rng = np.random.default_rng(9)
    t = sector_times(1200)
    period = 0.9
    y = v_model(t, period / 2, 1325.5, 0.04, 0.08) + rng.normal(0, 0.001, t.size)
    s = np.full_like(t, 0.001)
    res = analyze(t, y[None, :], s[None, :], np.ones((1, t.size), bool), population=False)
    assert res.columns["is_variable"][0]
    assert res.var_type[0] == "EA"
    assert res.period[0] == pytest.approx(period, rel=0.01)


def test_contact_binary_period_is_doubled_but_not_a_pulsator():
    rng = np.random.default_rng(6)
    t = sector_times(1200)
    s = np.full_like(t, 0.002)
    p_ew = 0.4123
    phi = 2 * np.pi * (t - 1325.0) / p_ew
    ew = -0.05 * (np.cos(2 * phi) + 0.1 * np.cos(phi)) + rng.normal(0, 0.002, t.size)
    p_rot = 3.21
    rot = 0.01 * np.sin(2 * np.pi * t / p_rot) + rng.normal(0, 0.002, t.size)
    y = np.vstack([ew, rot])
    res = analyze(t, y, np.vstack([s, s]), np.ones(y.shape, bool), population=False)
    assert res.var_type[0] == "EW"
    assert res.period[0] == pytest.approx(p_ew, rel=0.01)
    assert res.var_type[1] == "ROT"
    assert res.period[1] == pytest.approx(p_rot, rel=0.01)


def test_pure_noise_is_not_variable():
    rng = np.random.default_rng(7)
    t = sector_times(1000)
    y = rng.normal(0, 0.001, (20, t.size))
    s = np.full_like(y, 0.001)
    res = analyze(t, y, s, np.ones(y.shape, bool), population=False)
    assert not res.columns["is_variable"].any()


@pytest.mark.parametrize("seed", range(1, 6))
def test_spotted_star_with_an_offset_periodogram_peak_is_not_a_flare(seed):
    # red noise in every star makes the whitened periodogram's peak of a 1.88-d rotator ~5 %
    # short; a harmonic baseline at that period drifts by ~1/6 cycle over 3 rotations and its
    # leftover crests looked like a flare (FLARE, no period). At the refined frequency: ROT.
    from tasks.simulate import variability_model

    rng = np.random.default_rng(seed)
    t = sector_times(300)
    n, sig = 300, 2.3e-4
    walk = np.cumsum(rng.normal(0, 1, (n, t.size)), axis=1)
    walk = np.array([np.convolve(w - w.mean(), np.ones(24) / 24, mode="same") for w in walk])
    y = rng.normal(0, sig, (n, t.size)) + 0.7 * sig * walk / walk.std(axis=1, keepdims=True)
    spots = {"period": 1.8789, "t0": 1326.80, "amp": 0.0139, "harm": 0.173, "harm_phase": 5.93}
    spots |= {"env_amp": 0.267, "env_period": 27.15, "env_phase": 3.30}
    y[0] += variability_model("ROT", spots, t) - 1
    res = analyze(t, y, np.full_like(y, sig), np.ones(y.shape, bool), population=True)
    assert abs(res.columns["ls_period"][0] / spots["period"] - 1) > 0.02  # the offset peak
    assert res.var_type[0] == "ROT"
    assert res.period[0] == pytest.approx(spots["period"], rel=0.01)
