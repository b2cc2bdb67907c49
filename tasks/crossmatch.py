"""Optional TIC cross-match of the reference catalog through astroquery's MAST Catalogs.

Only when asked (``--crossmatch-tic``) and only when MAST answers: a quick reachability check
comes first, and offline the cross-match is skipped with a clear message (the ``tic_id``
column stays null). Stars are matched to the nearest TIC source within 21 arcsec (one TESS
pixel) whose Tmag is within 1.5 mag of the star's estimated magnitude.
"""

from __future__ import annotations

import os
import socket
import urllib.parse

import numpy as np
import pyarrow as pa

MATCH_RADIUS_ARCSEC = 21.0
MAX_DMAG = 1.5
TILE_RADIUS_DEG = 0.5


def mast_host() -> tuple[str, int]:
    """Host and port of MAST's API (``TESS_FFI_MAST_URL`` overrides, as for the FFI source)."""
    url = os.environ.get("TESS_FFI_MAST_URL") or "https://mast.stsci.edu"
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "mast.stsci.edu", port


def mast_reachable(timeout_s: float = 3.0) -> tuple[bool, str]:
    """Whether a TCP connection to MAST opens within ``timeout_s`` seconds, and why not."""
    host, port = mast_host()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, ""
    except OSError as exc:
        return False, f"cannot reach MAST at {host}:{port}: {exc} (offline?)"


def match_tic(
    ra: np.ndarray, dec: np.ndarray, tmag: np.ndarray, tic: dict[str, np.ndarray]
) -> np.ndarray:
    """TIC id per star (-1 = no match) from TIC columns ``ID``, ``ra``, ``dec``, ``Tmag``.

    Positions in degrees; a match is the nearest TIC source within MATCH_RADIUS_ARCSEC whose
    Tmag differs by less than MAX_DMAG.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    out = np.full(len(ra), -1, dtype=np.int64)
    if len(ra) == 0 or len(tic["ID"]) == 0:
        return out
    stars = SkyCoord(ra * u.deg, dec * u.deg)
    cat = SkyCoord(np.asarray(tic["ra"]) * u.deg, np.asarray(tic["dec"]) * u.deg)
    idx, sep, _ = stars.match_to_catalog_sky(cat)
    dmag = np.abs(np.asarray(tic["Tmag"], dtype=float)[idx] - tmag)
    ok = (sep.arcsec < MATCH_RADIUS_ARCSEC) & (dmag < MAX_DMAG)
    out[ok] = np.asarray(tic["ID"], dtype=np.int64)[idx[ok]]
    return out


def crossmatch_tic(stars: pa.Table) -> tuple[pa.Table, str]:
    """Fill ``tic_id`` of a ``stars`` table from the TIC; returns (table, message).

    Offline, the table comes back unchanged with a message saying why the match was skipped.
    """
    ok, why = mast_reachable()
    if not ok:
        return stars, f"TIC cross-match skipped: {why}"
    from astroquery.mast import Catalogs

    ra = stars.column("ra").to_numpy()
    dec = stars.column("dec").to_numpy()
    tmag = stars.column("tmag_est").to_numpy()
    faintest = float(np.nanmax(tmag)) + MAX_DMAG if len(tmag) else 16.0
    chunks: dict[str, list] = {"ID": [], "ra": [], "dec": [], "Tmag": []}
    for cra, cdec in _tiles(ra, dec):
        res = Catalogs.query_criteria(
            catalog="Tic",
            coordinates=f"{cra} {cdec}",
            radius=TILE_RADIUS_DEG * 1.5,
            Tmag=[-5, faintest],
        )
        for key in chunks:
            chunks[key].append(np.asarray(res[key]))
    tic = {k: np.concatenate(v) if v else np.zeros(0) for k, v in chunks.items()}
    ids = match_tic(ra, dec, tmag, tic)
    column = pa.array(np.where(ids >= 0, ids, 0), pa.int64(), mask=ids < 0)
    idx = stars.schema.get_field_index("tic_id")
    n_matched = int((ids >= 0).sum())
    return stars.set_column(idx, "tic_id", column), f"TIC cross-match: {n_matched} of {len(ids)}"


def _tiles(ra: np.ndarray, dec: np.ndarray) -> list[tuple[float, float]]:
    """Centres of sky tiles (TILE_RADIUS_DEG) that cover the stars."""
    step = TILE_RADIUS_DEG * 2
    cosd = np.cos(np.radians(np.clip(dec, -89, 89)))
    keys = set(
        zip(np.floor(dec / step).astype(int), np.floor(ra * cosd / step).astype(int), strict=True)
    )
    tiles = []
    for kd, kr in sorted(keys):
        cdec = (kd + 0.5) * step
        cra = ((kr + 0.5) * step / max(np.cos(np.radians(cdec)), 1e-3)) % 360
        tiles.append((float(cra), float(cdec)))
    return tiles
