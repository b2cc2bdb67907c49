"""A small Python API over the lakehouse for notebooks and scripts.

>>> from tess_ffi.api import load_lightcurve
>>> lc = load_lightcurve(11100042, lake="./demo-lake")               # astropy Table
>>> df = load_lightcurve(11100042, lake="./demo-lake", format="polars")
>>> good = lc[lc["mask_bits"] == 0]

Columns: ``cadence`` (FFIINDEX), ``btjd`` (mid-exposure BJD_TDB - 2457000 [d]), ``flux``
(common-mode corrected [e-/s]), ``flux_err`` [e-/s], ``flux_raw`` (photometry flux [e-/s]),
``quality`` (SPOC DQUALITY | pipeline bits, ``lakehouse.schemas.Quality``), ``mask_bits``
(``lakehouse.schemas.LcMask``; 0 = good point). The astropy Table carries units and its
``meta`` holds the star's catalogue row (ra, dec [deg], tmag_est, tic_id, x, y [px], ...)
and, for a candidate, its class and period.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["load_lightcurve", "load_lightcurves", "star_info"]

_UNITS = {
    "btjd": "d",
    "flux": "electron / s",
    "flux_err": "electron / s",
    "flux_raw": "electron / s",
}


def _lake(lake):
    from lakehouse.store import Lakehouse

    return lake if isinstance(lake, Lakehouse) else Lakehouse(lake)


def star_info(star_id: int, lake=None) -> dict:
    """The star's ``stars`` row plus its ``star_qc`` values and ``candidate`` row (or None)."""
    from tasks.export import read_star_info

    return read_star_info(_lake(lake), [int(star_id)])[int(star_id)]


def load_lightcurve(
    star_id: int,
    lake=None,
    *,
    format: Literal["astropy", "polars", "pandas"] = "astropy",
    good_only: bool = False,
):
    """One star's light curve from the lakehouse.

    Args:
        star_id: the tess-ffi ``star_id`` (its sector/camera/CCD are encoded in it).
        lake: lake URI (folder or ``s3://bucket/prefix``) or a ``Lakehouse``; default
            ``TESS_FFI_LAKE`` or ``./lake``.
        format: ``astropy`` (``astropy.table.Table`` with units and metadata), ``polars``
            (``polars.DataFrame``) or ``pandas`` (``pandas.DataFrame``).
        good_only: keep only points with ``mask_bits == 0``.

    Raises ``tasks.export.ExportError`` (a ``ValueError``) when the star has no light curve.
    """
    from tasks.export import read_star_lightcurve

    lk = _lake(lake)
    table = read_star_lightcurve(lk, int(star_id))
    if good_only:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table.column("mask_bits"), 0))
    return _convert(table, format, lambda: star_info(star_id, lk))


def load_lightcurves(
    star_ids,
    lake=None,
    *,
    format: Literal["astropy", "polars", "pandas"] = "polars",
    good_only: bool = False,
):
    """Several stars' light curves in one long table with a ``star_id`` column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tasks.export import read_star_lightcurves

    lk = _lake(lake)
    found = read_star_lightcurves(lk, star_ids)
    parts = []
    for sid, t in sorted(found.items()):
        parts.append(t.add_column(0, "star_id", pa.array([sid] * t.num_rows, pa.int64())))
    if not parts:
        from tasks.export import ExportError

        raise ExportError(f"none of the stars has a light curve in the lake at {lk.uri}")
    table = pa.concat_tables(parts)
    if good_only:
        table = table.filter(pc.equal(table.column("mask_bits"), 0))
    return _convert(table, format, dict)


def _convert(table, format: str, meta):
    if format == "polars":
        import polars as pl

        return pl.from_arrow(table)
    if format == "pandas":
        return table.to_pandas()
    if format != "astropy":
        raise ValueError(f"unknown format {format!r}: use astropy, polars or pandas")
    from astropy.table import Table

    out = Table()
    for name in table.column_names:
        arr = table.column(name).to_numpy(zero_copy_only=False)
        out[name] = arr
        if name in _UNITS:
            out[name].unit = _UNITS[name]
    info = meta()
    out.meta.update({k: v for k, v in info.items() if not isinstance(v, dict)})
    if isinstance(info.get("candidate"), dict):
        cand = info["candidate"]
        out.meta.update(
            var_type=cand.get("var_type"),
            period_days=cand.get("period_days"),
            candidate_rank=cand.get("rank"),
        )
    out.meta["time_format"] = "btjd"
    out.meta["time_scale"] = "tdb"
    return out
