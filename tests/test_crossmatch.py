"""TIC cross-match: the matching rule, and a clear skip when MAST is unreachable."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakehouse.schemas import STARS
from tasks.crossmatch import crossmatch_tic, match_tic
from tests.mast_server import closed_port_url


def test_match_takes_nearest_source_within_a_pixel_and_similar_magnitude():
    ra = np.array([10.0, 10.1, 10.2])
    dec = np.array([-30.0, -30.0, -30.0])
    tmag = np.array([10.0, 12.0, 14.0])
    tic = {
        "ID": np.array([111, 222, 333, 444]),
        "ra": np.array([10.0 + 3 / 3600, 10.1 + 60 / 3600, 10.2, 10.2 + 5 / 3600]),
        "dec": np.array([-30.0, -30.0, -30.0, -30.0]),
        "Tmag": np.array([10.2, 12.0, 9.0, 14.3]),
    }
    ids = match_tic(ra, dec, tmag, tic)
    # star 0 -> 111 (3"); star 1: nearest is 60" away -> none; star 2: 333 is at 0" but 5 mag
    # brighter, so no match by the nearest-source rule
    assert ids.tolist() == [111, -1, -1]


def test_offline_crossmatch_is_skipped_with_a_message(monkeypatch):
    monkeypatch.setenv("TESS_FFI_MAST_URL", closed_port_url())
    n = 3
    stars = pa.table(
        {name: pa.nulls(n, STARS.field(name).type) for name in STARS.names}, schema=STARS
    )
    out, message = crossmatch_tic(stars)
    assert out.equals(stars)
    assert message.startswith("TIC cross-match skipped: cannot reach MAST")
