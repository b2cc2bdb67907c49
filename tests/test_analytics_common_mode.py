"""Common-mode correction: scatter reduction on constant stars, amplitude kept on variables."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.common_mode import (
    correct_common_mode,
    injection_amplitude_ratio,
    pointing_regressors,
    robust_scatter,
    time_windows,
)


def synthetic_ccd(seed: int = 0, n: int = 1500, t_len: int = 500, size: float = 512.0):
    """A CCD with a spatially varying multiplicative drift and an additive scattered-light glow.

    Multiplicative: throughput drift growing outwards from the centre plus a focus term
    changing sign across the CCD. Additive: a corner glow [e-/s/px] with orbit-start ramps,
    falling off across the CCD, times each aperture's area. 5 % of the stars carry sinusoids
    of 10x their per-point noise.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(44, 44 + size, n)
    y = rng.uniform(0, size, n)
    flux = 10 ** rng.uniform(2.0, 4.5, n)
    radius = np.clip(1.5 + 0.5 * np.log10(flux / 100), 1.5, 3.0)
    area = np.pi * radius**2
    t = 1325.3 + np.arange(t_len) / 48.0
    texp = 1425.6
    sig = np.sqrt(flux * texp + area * 40 * texp) / texp
    sig = np.repeat(sig[:, None], t_len, axis=1)
    xn, yn = (x - 44) / size, y / size
    r2 = (xn - 0.5) ** 2 + (yn - 0.5) ** 2
    drift = np.cumsum(rng.normal(0, 1, t_len))
    drift = 3e-3 * (drift - drift.mean()) / drift.std()
    focus = 2e-3 * np.sin(2 * np.pi * (t - t[0]) / 6.0)
    mult = (0.6 + 3 * r2)[:, None] * drift[None, :] + (xn - 0.5)[:, None] * focus[None, :]
    glow_t = 8.0 * np.exp(-(t - t[0]) / 1.2) + 3.0 * np.exp(-(t[-1] - t) / 0.8)
    glow_xy = np.exp(-((xn) ** 2 + (yn) ** 2) / 0.5)
    add = area[:, None] * glow_xy[:, None] * glow_t[None, :]  # e-/s in the aperture
    is_var = rng.random(n) < 0.05
    period = 10 ** rng.uniform(-0.5, 0.9, n)
    template = np.sin(2 * np.pi * t[None, :] / period[:, None] + rng.uniform(0, 6.3, n)[:, None])
    amp = np.where(is_var, 10 * sig[:, 0] / flux, 0.0)
    true = flux[:, None] * (1 + amp[:, None] * template)
    raw = true * (1 + mult) + add + rng.normal(0, 1, (n, t_len)) * sig
    return dict(
        x=x,
        y=y,
        flux=flux,
        area=area,
        t=t,
        sig=sig,
        raw=raw,
        true=true,
        is_var=is_var,
        template=template,
    )


@pytest.fixture(scope="module")
def ccd():
    return synthetic_ccd()


def precision_ratio(values: np.ndarray, sig: np.ndarray, flux: np.ndarray) -> np.ndarray:
    good = np.ones(values.shape, bool)
    med = np.median(values, axis=1)
    return robust_scatter(values / med[:, None] - 1, good) / (np.median(sig, axis=1) / flux)


def test_common_mode_reduces_scatter_and_keeps_amplitudes(ccd):
    good = np.ones(ccd["raw"].shape, bool)
    window = time_windows(ccd["t"], 9)
    res = correct_common_mode(
        ccd["raw"], ccd["sig"], good, ccd["x"], ccd["y"], ccd["area"], window=window
    )
    const = ~ccd["is_var"]
    before = precision_ratio(ccd["raw"], ccd["sig"], ccd["flux"])
    after = precision_ratio(res.flux, ccd["sig"], ccd["flux"])
    assert np.median(before[const]) > 3.0  # the systematics dominate the raw light curves
    assert np.median(after[const]) < 1.2  # ... and are gone after the correction
    assert np.percentile(after[const], 90) < 1.6
    # faint stars carry the additive glow (relative effect ~ 1/flux): corrected too
    faint = const & (ccd["flux"] < np.percentile(ccd["flux"], 25))
    assert np.median(after[faint]) < 1.2
    # injected sinusoids keep their amplitude within 10 %
    var = ccd["is_var"]
    med = np.median(res.flux, axis=1)
    ratio = injection_amplitude_ratio(
        ccd["true"] / ccd["flux"][:, None], res.flux / med[:, None], ccd["template"], good
    )
    assert np.all(np.abs(ratio[var] - 1) < 0.10)
    # variables are not used as references; the correction is local (K neighbours)
    assert res.is_reference[var].mean() < 0.5
    assert np.nanmax(res.radius) < 0.5 * 512


def test_one_global_median_does_not_do_it(ccd):
    """The spatial structure matters: a single CCD-wide median leaves most of it."""
    rel = ccd["raw"] / np.median(ccd["raw"], axis=1, keepdims=True) - 1
    glob = rel - np.median(rel[~ccd["is_var"]], axis=0, keepdims=True)
    ratio = robust_scatter(glob, np.ones(rel.shape, bool)) / (
        np.median(ccd["sig"], axis=1) / ccd["flux"]
    )
    assert np.median(ratio[~ccd["is_var"]]) > 1.5


def test_pointing_decorrelation_removes_a_star_specific_jitter_response():
    from tasks.common_mode import decorrelate_pointing

    rng = np.random.default_rng(9)
    n, t_len = 400, 600
    t = np.arange(t_len) / 48.0
    dx = 0.03 * rng.normal(size=t_len) + 0.05 * np.sin(t / 3)
    dy = 0.03 * rng.normal(size=t_len)
    coef = rng.normal(0, 0.05, (n, 2))  # each star's own linear response [1/px]
    noise = 5e-4
    rel = coef[:, :1] * dx + coef[:, 1:] * dy + rng.normal(0, noise, (n, t_len))
    var = np.zeros(n, bool)
    var[:20] = True
    rel[var] += 0.01 * np.sin(2 * np.pi * t / 2.5)  # slow variables: must survive
    model, _ = decorrelate_pointing(rel, np.ones(rel.shape, bool), pointing_regressors(dx, dy))
    out = rel - model
    good = np.ones(rel.shape, bool)
    assert np.median(robust_scatter(rel[~var], good[~var])) > 2 * noise
    assert np.median(robust_scatter(out[~var], good[~var])) < 1.15 * noise
    tpl = np.broadcast_to(np.sin(2 * np.pi * t / 2.5), rel.shape)
    ratio = injection_amplitude_ratio(rel[var], out[var], tpl[var], good[var])
    assert np.all(np.abs(ratio - 1) < 0.05)
