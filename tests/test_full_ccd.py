"""A simulated full-size CCD (2136x2078 frames): star detection completeness and positions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.spatial import cKDTree

from flows.ingest import ingest_ccd
from lakehouse.store import Lakehouse
from tasks.simulate import simulate_sector


@pytest.fixture(scope="module")
def full_ccd(tmp_path_factory):
    out = tmp_path_factory.mktemp("ffi-full")
    sim = simulate_sector(out, sector=19, camera=1, ccd=3, n_cadences=8, n_stars=4000, seed=11)
    lake = tmp_path_factory.mktemp("lake-full")
    summary = ingest_ccd(19, 1, 3, source=str(out), lake=str(lake), batch_size=4)
    return sim, Lakehouse(str(lake)), summary


def test_full_frames_are_full_size(full_ccd):
    from astropy.io import fits

    sim, _, _ = full_ccd
    with fits.open(sim.paths[0]) as hdul:
        assert hdul[1].data.shape == (2078, 2136)
        assert hdul[2].data.shape == (2078, 2136)


def test_detects_95_percent_of_stars_brighter_than_tmag_14(full_ccd):
    sim, lake, summary = full_ccd
    truth = pl.read_parquet(sim.truth_path)
    stars = lake.read("stars").to_pandas()
    assert summary["stars"] == len(stars)
    tree = cKDTree(stars[["x", "y"]].to_numpy())
    bright = truth.filter(pl.col("tmag") <= 14)
    assert bright.height > 300
    d, i = tree.query(np.column_stack([bright["x"].to_numpy(), bright["y"].to_numpy()]))
    found = d < 1.0
    assert found.mean() >= 0.95, f"{found.mean():.3f} of {bright.height} stars with Tmag <= 14"
    # positions: detected centroids within ~0.1 px of the truth for well-exposed stars
    assert np.median(d[found]) < 0.1
    # RA/Dec from the WCS agree with the truth's sky positions (TESS pixel = 21 arcsec)
    matched = stars.iloc[i[found]]
    dra = (matched["ra"].to_numpy() - bright["ra"].to_numpy()[found] + 180) % 360 - 180
    ddec = matched["dec"].to_numpy() - bright["dec"].to_numpy()[found]
    sep = np.hypot(dra * np.cos(np.radians(matched["dec"].to_numpy())), ddec) * 3600
    assert np.median(sep) < 5.0
