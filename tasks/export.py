"""Exports for other tools: ML data sets (Parquet, CSV, NPZ) and lightkurve-readable FITS.

Two halves:

* readers of the lakehouse (``read_*``): one star's light curve, the star metadata, the
  selection of stars for an export. They read only the rows needed (partition and
  ``star_id`` filters are pushed down to the Parquet files).
* pure writers on Arrow tables / numpy arrays: :func:`timeseries_arrays` (the dense,
  untruncated star x cadence matrices of an NPZ), :func:`lightcurve_hdulist` (one SPOC-like
  FITS light curve that ``lightkurve.read`` opens as a ``TessLightCurve``).

Units everywhere: time ``btjd`` = BJD_TDB - 2457000 [d] at mid-exposure; ``flux``,
``flux_err``, ``flux_raw`` [e-/s]; ``mask_bits`` = ``lakehouse.schemas.LcMask`` bits (0 =
good point); ``quality`` = ``photometry.quality`` (SPOC DQUALITY | pipeline bits).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.schemas import BAD_QUALITY_BITS, LcMask

#: columns of a star's light curve as returned by :func:`read_star_lightcurve`
LC_COLUMNS = (
    "cadence",  # FFIINDEX
    "btjd",  # mid-exposure [BTJD d]
    "flux",  # common-mode corrected [e-/s]
    "flux_err",  # 1 sigma [e-/s]
    "flux_raw",  # photometry.flux [e-/s]
    "quality",  # photometry.quality: SPOC DQUALITY | pipeline bits
    "mask_bits",  # LcMask bits, 0 = good
)
#: TESS zero point of ``stars.tmag_est`` (mirrors ``tasks.catalog.TMAG10_FLUX``) [e-/s]
TMAG10_FLUX = 15000.0
#: BTJD = BJD_TDB - BJD_REF [d]
BJD_REF = 2457000.0


class ExportError(ValueError):
    """Nothing to export, or an unknown star (one-line message)."""


# --------------------------------------------------------------------------- ids


def partition_of(star_id: int) -> tuple[int, int, int]:
    """(sector, camera, ccd) encoded in a ``star_id`` (sector*1e7 + camera*1e6 + ccd*1e5 + rank)."""
    star_id = int(star_id)
    if star_id < 10**7:
        raise ExportError(f"{star_id} is not a tess-ffi star_id (sector*10^7 + ...)")
    return star_id // 10**7, (star_id // 10**6) % 10, (star_id // 10**5) % 10


def flux_to_tmag(flux) -> np.ndarray:
    """TESS magnitude of a flux [e-/s]: ``10 - 2.5 log10(flux / 15000)``; NaN for flux <= 0."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 10.0 - 2.5 * np.log10(flux / TMAG10_FLUX), np.nan)


# --------------------------------------------------------------------------- lake readers


def _part_expr(sector: int | None, camera: int | None, ccd: int | None):
    import pyarrow.dataset as ds

    expr = None
    for name, value in (("sector", sector), ("camera", camera), ("ccd", ccd)):
        if value is not None:
            term = ds.field(name) == int(value)
            expr = term if expr is None else expr & term
    return expr


def _and(a, b):
    return b if a is None else (a if b is None else a & b)


def read_rows(
    lake,
    table: str,
    sector: int | None = None,
    camera: int | None = None,
    ccd: int | None = None,
    star_ids: Iterable[int] | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Rows of a published table, filtered by partition and ``star_id`` (pushed down)."""
    import pyarrow.dataset as ds

    expr = _part_expr(sector, camera, ccd)
    if star_ids is not None:
        ids = pa.array(sorted({int(s) for s in star_ids}), pa.int64())
        expr = _and(expr, ds.field("star_id").isin(ids))
    dataset = lake.delta(table).to_pyarrow_dataset()
    return dataset.to_table(columns=columns, filter=expr)


def read_star_lightcurves(lake, star_ids: Iterable[int]) -> dict[int, pa.Table]:
    """Light curves (:data:`LC_COLUMNS`, sorted by time) of stars, keyed by ``star_id``.

    From ``lightcurves`` joined with ``photometry.quality`` when the analysis ran; else from
    ``photometry`` alone (``flux`` = ``flux_raw``, ``mask_bits`` from the quality bits and
    missing fluxes). Stars without rows are absent from the result.
    """
    ids = sorted({int(s) for s in star_ids})
    by_part: dict[tuple[int, int, int], list[int]] = {}
    for s in ids:
        by_part.setdefault(partition_of(s), []).append(s)
    out: dict[int, pa.Table] = {}
    has_lc = lake.has_table("lightcurves")
    has_ph = lake.has_table("photometry")
    for (sector, camera, ccd), part_ids in by_part.items():
        ph = (
            read_rows(
                lake,
                "photometry",
                sector,
                camera,
                ccd,
                part_ids,
                ["star_id", "cadence", "btjd", "flux", "flux_err", "quality"],
            )
            if has_ph
            else None
        )
        if has_lc:
            lc = read_rows(
                lake,
                "lightcurves",
                sector,
                camera,
                ccd,
                part_ids,
                ["star_id", "cadence", "btjd", "flux", "flux_err", "flux_raw", "mask_bits"],
            )
            if ph is not None and ph.num_rows:
                q = ph.select(["star_id", "cadence", "quality"])
                lc = lc.join(q, ["star_id", "cadence"], join_type="left outer")
            else:
                lc = lc.append_column("quality", pa.nulls(lc.num_rows, pa.int32()))
        elif ph is not None:
            lc = _lightcurve_from_photometry(ph)
        else:
            continue
        lc = lc.sort_by([("star_id", "ascending"), ("btjd", "ascending")])
        sid = lc.column("star_id").to_numpy()
        for s in part_ids:
            idx = np.flatnonzero(sid == s)
            if idx.size:
                out[s] = _conform(lc.take(pa.array(idx)).select(list(LC_COLUMNS)))
    return out


def _conform(t: pa.Table) -> pa.Table:
    types = {
        "cadence": pa.int32(),
        "btjd": pa.float64(),
        "flux": pa.float64(),
        "flux_err": pa.float64(),
        "flux_raw": pa.float64(),
        "quality": pa.int32(),
        "mask_bits": pa.int32(),
    }
    return t.cast(pa.schema([(n, types[n]) for n in t.column_names]))


def _lightcurve_from_photometry(ph: pa.Table) -> pa.Table:
    """Light-curve columns from ``photometry`` rows (no common-mode correction)."""
    flux = ph.column("flux").to_numpy(zero_copy_only=False).astype(float)
    err = ph.column("flux_err").to_numpy(zero_copy_only=False).astype(float)
    quality = ph.column("quality").to_numpy(zero_copy_only=False).astype(np.int64)
    bits = np.where(quality & BAD_QUALITY_BITS, int(LcMask.QUALITY), 0)
    no_flux = ~np.isfinite(flux) | ~np.isfinite(err) | ~(err > 0)
    bits = bits | np.where(no_flux, int(LcMask.NO_FLUX), 0)
    bits = bits | int(LcMask.UNCORRECTED)
    return pa.table(
        {
            "star_id": ph.column("star_id"),
            "cadence": ph.column("cadence"),
            "btjd": ph.column("btjd"),
            "flux": ph.column("flux"),
            "flux_err": ph.column("flux_err"),
            "flux_raw": ph.column("flux"),
            "quality": ph.column("quality"),
            "mask_bits": pa.array(bits.astype(np.int32)),
        }
    )


def read_star_lightcurve(lake, star_id: int) -> pa.Table:
    """One star's light curve (:data:`LC_COLUMNS`); raises ExportError when it has none."""
    found = read_star_lightcurves(lake, [star_id]).get(int(star_id))
    if found is None or found.num_rows == 0:
        raise ExportError(f"star {star_id} has no light curve in the lake at {lake.uri}")
    return found


def read_star_info(lake, star_ids: Iterable[int]) -> dict[int, dict]:
    """Per star: its ``stars`` row plus ``star_qc``, ``candidates`` and ``features`` columns.

    Keys that a table does not provide are absent; ``candidate`` is the candidates row
    (or None). Units as in ``lakehouse/schemas.py``.
    """
    ids = sorted({int(s) for s in star_ids})
    info: dict[int, dict] = {s: {"star_id": s, "candidate": None} for s in ids}
    parts: dict[tuple[int, int, int], list[int]] = {}
    for s in ids:
        parts.setdefault(partition_of(s), []).append(s)
    for (sector, camera, ccd), part_ids in parts.items():
        for s in part_ids:
            info[s].update(sector=sector, camera=camera, ccd=ccd)
        for table in ("stars", "star_qc", "features", "candidates"):
            if not lake.has_table(table):
                continue
            rows = read_rows(lake, table, sector, camera, ccd, part_ids).to_pylist()
            for row in rows:
                s = int(row["star_id"])
                if table == "candidates":
                    info[s]["candidate"] = row
                elif table == "features":
                    info[s]["features"] = row
                else:
                    info[s].update(
                        {k: v for k, v in row.items() if k not in info[s] or table == "stars"}
                    )
    return info


def partitions(lake, sector=None, camera=None, ccd=None, table: str = "star_qc") -> list[tuple]:
    """Sorted (sector, camera, ccd) partitions present in ``table`` matching the filters."""
    if not lake.has_table(table):
        return []
    t = (
        lake.delta(table)
        .to_pyarrow_dataset()
        .to_table(columns=["sector", "camera", "ccd"], filter=_part_expr(sector, camera, ccd))
    )
    if t.num_rows == 0:
        return []
    uniq = t.group_by(["sector", "camera", "ccd"]).aggregate([])
    return sorted(
        zip(*(uniq.column(c).to_pylist() for c in ("sector", "camera", "ccd")), strict=True)
    )


def select_stars(
    lake,
    sector: int,
    camera: int,
    ccd: int,
    min_completeness: float = 0.0,
    min_snr: float = 0.0,
) -> np.ndarray:
    """``star_id``s of a partition with ``star_qc.completeness >= min_completeness``
    (fraction 0-1) and ``star_qc.median_snr >= min_snr`` (median flux / flux_err), sorted."""
    qc = read_rows(
        lake, "star_qc", sector, camera, ccd, columns=["star_id", "completeness", "median_snr"]
    )
    comp = qc.column("completeness").to_numpy(zero_copy_only=False).astype(float)
    snr = qc.column("median_snr").to_numpy(zero_copy_only=False).astype(float)
    ok = np.nan_to_num(comp, nan=-1.0) >= min_completeness
    if min_snr > 0:
        ok &= np.nan_to_num(snr, nan=-np.inf) >= min_snr
    return np.sort(qc.column("star_id").to_numpy()[ok])


# --------------------------------------------------------------------------- pure writers


def timeseries_arrays(lc: pa.Table, star_ids: np.ndarray, cadences: np.ndarray, btjd: np.ndarray):
    """Dense (n_stars x n_cadences) arrays of a partition's light curves, never truncated.

    Args:
        lc: rows with ``star_id, cadence, flux, flux_err, flux_raw, mask_bits`` [e-/s].
        star_ids: the stars (rows of the result), any order.
        cadences: every cadence of the partition (columns), sorted; ``btjd`` [d] their times.

    Returns a dict: ``star_id`` (n,), ``cadence`` (m,), ``btjd`` (m,) [BTJD d], ``flux``,
    ``flux_err``, ``flux_raw`` (n, m) float64 [e-/s] with NaN where a star has no row,
    ``mask_bits`` (n, m) int32 (``LcMask.NO_FLUX`` where no row) and ``good`` (n, m) bool
    (``mask_bits == 0``).
    """
    star_ids = np.asarray(star_ids, dtype=np.int64)
    cadences = np.asarray(cadences, dtype=np.int32)
    n, m = star_ids.size, cadences.size
    out = {
        "star_id": star_ids,
        "cadence": cadences,
        "btjd": np.asarray(btjd, dtype=np.float64),
    }
    for name in ("flux", "flux_err", "flux_raw"):
        out[name] = np.full((n, m), np.nan)
    out["mask_bits"] = np.full((n, m), int(LcMask.NO_FLUX), dtype=np.int32)
    if lc.num_rows and n and m:
        order = np.argsort(star_ids)
        sid = lc.column("star_id").to_numpy()
        cad = lc.column("cadence").to_numpy()
        pos = np.searchsorted(star_ids[order], sid)
        pos = np.clip(pos, 0, n - 1)
        row_ok = star_ids[order][pos] == sid
        col = np.clip(np.searchsorted(cadences, cad), 0, m - 1)
        col_ok = cadences[col] == cad
        ok = row_ok & col_ok
        rows, cols = order[pos[ok]], col[ok]
        for name in ("flux", "flux_err", "flux_raw"):
            vals = lc.column(name).to_numpy(zero_copy_only=False).astype(float)
            out[name][rows, cols] = vals[ok]
        bits = lc.column("mask_bits").to_numpy(zero_copy_only=False).astype(np.int32)
        out["mask_bits"][rows, cols] = bits[ok]
    out["good"] = out["mask_bits"] == 0
    return out


def features_with_labels(features: pa.Table, candidates: pa.Table | None, star_qc: pa.Table):
    """Features joined with ``star_qc`` columns and the candidate labels (null if none).

    Label columns: ``is_candidate`` (bool), ``candidate_rank``, ``var_type``,
    ``period_days`` [d], ``candidate_amplitude`` (fraction), ``candidate_score`` [sigma].
    """
    qc_cols = ["star_id", "completeness", "median_snr", "precision_ratio", "crowding"]
    out = features.join(star_qc.select(qc_cols), "star_id", join_type="left outer")
    if candidates is not None and candidates.num_rows:
        lab = candidates.select(
            ["star_id", "rank", "var_type", "period_days", "amplitude", "score"]
        ).rename_columns(
            [
                "star_id",
                "candidate_rank",
                "var_type",
                "period_days",
                "candidate_amplitude",
                "candidate_score",
            ]
        )
        out = out.join(lab, "star_id", join_type="left outer")
    else:
        n = out.num_rows
        out = (
            out.append_column("candidate_rank", pa.nulls(n, pa.int32()))
            .append_column("var_type", pa.nulls(n, pa.string()))
            .append_column("period_days", pa.nulls(n, pa.float64()))
            .append_column("candidate_amplitude", pa.nulls(n, pa.float64()))
            .append_column("candidate_score", pa.nulls(n, pa.float64()))
        )
    out = out.append_column("is_candidate", pc.is_valid(out.column("candidate_rank")))
    return out.sort_by(
        [
            ("sector", "ascending"),
            ("camera", "ascending"),
            ("ccd", "ascending"),
            ("star_id", "ascending"),
        ]
    )


def lightcurve_hdulist(lc: pa.Table, meta: dict):
    """A SPOC-like FITS light curve of one star that ``lightkurve.read`` opens.

    Args:
        lc: :data:`LC_COLUMNS` rows (``btjd`` [BTJD d], fluxes [e-/s]), sorted by time.
        meta: the star's row (``star_id``, ``sector``, ``camera``, ``ccd``, ``ra``, ``dec``
            [deg], ``tmag_est`` [mag], ``tic_id``, ``x``, ``y`` [px], ``aperture_radius``).

    Primary header: TELESCOP/INSTRUME/CREATOR ("...LightCurve...", so lightkurve detects a
    ``TessLightCurve``), OBJECT, TICID, SECTOR, CAMERA, CCD, RA_OBJ, DEC_OBJ, TESSMAG.
    Extension ``LIGHTCURVE``: TIME [BTJD d] (BJDREFI 2457000, TIMESYS TDB), FLUX, FLUX_ERR
    (corrected) [e-/s], QUALITY (``photometry.quality``), CADENCENO, SAP_FLUX (raw) [e-/s],
    MASK_BITS (``LcMask``, 0 = good). lightkurve's default quality mask drops SPOC's bad
    cadences; ``lc[lc["mask_bits"] == 0]`` keeps only what this pipeline calls good.
    """
    from astropy.io import fits

    def col(name, dtype, fill):
        a = lc.column(name).to_numpy(zero_copy_only=False)
        a = np.asarray(a, dtype=float)
        return np.where(np.isfinite(a), a, fill).astype(dtype) if dtype != "f8" else a

    t = np.asarray(lc.column("btjd").to_numpy(zero_copy_only=False), dtype=np.float64)
    quality = col("quality", np.int32, 0)
    star_id = int(meta["star_id"])
    tic = meta.get("tic_id")
    obj = f"TIC {int(tic)}" if tic is not None else f"tess-ffi {star_id}"
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")

    primary = fits.PrimaryHDU()
    h = primary.header
    for key, value, comment in (
        ("ORIGIN", "tess-ffi", "who made this file"),
        ("DATE", now, "file creation date (UTC)"),
        ("CREATOR", "tess-ffi LightCurveExporter", "pipeline module"),
        ("TELESCOP", "TESS", "telescope"),
        ("INSTRUME", "TESS Photometer", "detector type"),
        ("OBJECT", obj, "target name"),
        ("TICID", int(tic) if tic is not None else None, "TIC id (when matched)"),
        ("STAR_ID", star_id, "tess-ffi star_id"),
        ("SECTOR", int(meta["sector"]), "observing sector"),
        ("CAMERA", int(meta["camera"]), "camera number"),
        ("CCD", int(meta["ccd"]), "CCD chip number"),
        ("RA_OBJ", _num(meta.get("ra")), "[deg] right ascension (ICRS)"),
        ("DEC_OBJ", _num(meta.get("dec")), "[deg] declination (ICRS)"),
        ("EQUINOX", 2000.0, "equinox of celestial coordinate system"),
        ("TESSMAG", _num(meta.get("tmag_est")), "[mag] TESS mag from the flux"),
        ("FFI_X", _num(meta.get("x")), "[px] FFI column, 0-based"),
        ("FFI_Y", _num(meta.get("y")), "[px] FFI row, 0-based"),
        ("APRADIUS", _num(meta.get("aperture_radius")), "[px] aperture radius"),
    ):
        h[key] = (value, comment)

    cols = [
        fits.Column("TIME", "D", unit="BJD - 2457000, days", array=t, disp="D14.7"),
        fits.Column("CADENCENO", "J", array=col("cadence", np.int32, -1)),
        fits.Column("FLUX", "D", unit="e-/s", array=col("flux", "f8", np.nan)),
        fits.Column("FLUX_ERR", "D", unit="e-/s", array=col("flux_err", "f8", np.nan)),
        fits.Column("SAP_FLUX", "D", unit="e-/s", array=col("flux_raw", "f8", np.nan)),
        fits.Column("QUALITY", "J", array=quality),
        fits.Column("MASK_BITS", "J", array=col("mask_bits", np.int32, int(LcMask.NO_FLUX))),
    ]
    ext = fits.BinTableHDU.from_columns(cols, name="LIGHTCURVE")
    e = ext.header
    e["COMMENT"] = "SAP_FLUX: raw aperture photometry; FLUX: common-mode corrected"
    e["COMMENT"] = "MASK_BITS (0 = good): 1 quality 2 epoch 4 outlier 8 no_flux 16 uncorr."
    finite = t[np.isfinite(t)]
    tstart = float(finite.min()) if finite.size else 0.0
    tstop = float(finite.max()) if finite.size else 0.0
    for key, value, comment in (
        ("TIMEREF", "SOLARSYSTEM", "barycentric times"),
        ("TASSIGN", "SPACECRAFT", "where time is assigned"),
        ("TIMESYS", "TDB", "Barycentric Dynamical Time"),
        ("BJDREFI", 2457000, "integer part of BTJD reference"),
        ("BJDREFF", 0.0, "fraction of BTJD reference"),
        ("TIMEUNIT", "d", "unit of TIME, TSTART, TSTOP"),
        ("TSTART", tstart, "first mid-exposure [BTJD]"),
        ("TSTOP", tstop, "last mid-exposure [BTJD]"),
        ("TELAPSE", tstop - tstart, "[d] TSTOP - TSTART"),
        ("OBJECT", obj, "target name"),
        ("TICID", h["TICID"], "TIC id (when matched)"),
        ("FLUXTYPE", "corrected aperture flux", "FLUX: common mode removed"),
    ):
        e[key] = (value, comment)
    return fits.HDUList([primary, ext])


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def lightkurve_file_name(meta: dict) -> str:
    """File name of a star's FITS light curve, e.g. ``tess-ffi-s0001-1-1-11100042_lc.fits``."""
    return (
        f"tess-ffi-s{int(meta['sector']):04d}-{int(meta['camera'])}-{int(meta['ccd'])}-"
        f"{int(meta['star_id'])}_lc.fits"
    )


# --------------------------------------------------------------------------- export runs


@dataclass
class ExportResult:
    """What an export wrote."""

    out_dir: Path
    stars: int
    files: list[Path]


def export_ml(
    lake,
    out_dir: Path,
    sector: int | None = None,
    camera: int | None = None,
    ccd: int | None = None,
    min_completeness: float = 0.0,
    min_snr: float = 0.0,
    progress=None,
) -> ExportResult:
    """Features (Parquet + CSV) and full-length time series (one NPZ per partition).

    ``out_dir/features.parquet``, ``out_dir/features.csv``: one row per selected star,
    every ``features`` column plus ``star_qc`` completeness/median_snr/precision_ratio/
    crowding and the candidate labels (:func:`features_with_labels`).
    ``out_dir/timeseries_sSSSS-C-D.npz``: :func:`timeseries_arrays` over *every* cadence of
    the partition (masked ones included, NaN where a star has no row).
    ``out_dir/manifest.json``: selection, counts, columns and units.
    ``progress(n)`` is called after each partition step.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    for table in ("features", "star_qc", "lightcurves"):
        if not lake.has_table(table):
            raise ExportError(f"no {table} table in the lake at {lake.uri}: run find-variables")
    parts = partitions(lake, sector, camera, ccd)
    if not parts:
        raise ExportError("no analysed sector/camera/CCD matches: run find-variables first")
    out_dir.mkdir(parents=True, exist_ok=True)
    feats, files, per_part = [], [], []
    for s, c, d in parts:
        ids = select_stars(lake, s, c, d, min_completeness, min_snr)
        if ids.size == 0:
            per_part.append({"partition": f"s{s:04d}-{c}-{d}", "stars": 0})
            if progress:
                progress(1)
            continue
        f = read_rows(lake, "features", s, c, d, ids)
        qc = read_rows(lake, "star_qc", s, c, d, ids)
        cand = read_rows(lake, "candidates", s, c, d, ids) if lake.has_table("candidates") else None
        feats.append(features_with_labels(f, cand, qc))
        lc = read_rows(
            lake,
            "lightcurves",
            s,
            c,
            d,
            ids,
            ["star_id", "cadence", "btjd", "flux", "flux_err", "flux_raw", "mask_bits"],
        )
        cadences, btjd = partition_cadences(lake, s, c, d, lc)
        arrays = timeseries_arrays(lc, ids, cadences, btjd)
        path = out_dir / f"timeseries_s{s:04d}-{c}-{d}.npz"
        np.savez_compressed(path, **arrays)
        files.append(path)
        per_part.append(
            {
                "partition": f"s{s:04d}-{c}-{d}",
                "stars": int(ids.size),
                "cadences": len(cadences),
            }
        )
        if progress:
            progress(1)
    if not feats:
        raise ExportError(
            f"no star passes --min-completeness {min_completeness} and --min-snr {min_snr}"
        )
    table = pa.concat_tables(feats, promote_options="permissive")
    pq.write_table(table, out_dir / "features.parquet", compression="zstd")
    csv_table = table.select(
        [n for n in table.column_names if not pa.types.is_list(table.schema.field(n).type)]
    )
    pacsv.write_csv(csv_table, out_dir / "features.csv")
    files = [out_dir / "features.parquet", out_dir / "features.csv", *files]
    manifest = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "lake": lake.uri,
        "selection": {"min_completeness": min_completeness, "min_snr": min_snr},
        "partitions": per_part,
        "stars": table.num_rows,
        "features_columns": table.column_names,
        "npz_arrays": {
            "star_id": "(n_stars,) int64",
            "cadence": "(n_cadences,) int32 FFIINDEX, every cadence of the partition",
            "btjd": "(n_cadences,) float64 mid-exposure BJD_TDB - 2457000 [d]",
            "flux": "(n_stars, n_cadences) float64 common-mode corrected [e-/s], NaN = no data",
            "flux_err": "(n_stars, n_cadences) float64 1 sigma [e-/s]",
            "flux_raw": "(n_stars, n_cadences) float64 photometry flux [e-/s]",
            "mask_bits": "(n_stars, n_cadences) int32 LcMask bits: 1 quality, 2 epoch, "
            "4 outlier, 8 no_flux, 16 uncorrected; 0 = good",
            "good": "(n_stars, n_cadences) bool, mask_bits == 0",
        },
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    files.append(out_dir / "manifest.json")
    return ExportResult(out_dir, table.num_rows, files)


def partition_cadences(lake, sector, camera, ccd, lc: pa.Table | None = None):
    """Every cadence of a partition and its time: (cadence int32 [sorted], btjd [d]).

    From ``epoch_qc`` (all cadences of the analysis), else ``frames``, else ``lc``.
    """
    for table in ("epoch_qc", "frames"):
        if lake.has_table(table):
            t = read_rows(lake, table, sector, camera, ccd, columns=["cadence", "btjd"])
            if t.num_rows:
                break
    else:
        t = (
            lc.select(["cadence", "btjd"])
            if lc is not None
            else pa.table({"cadence": [], "btjd": []})
        )
    t = t.group_by("cadence").aggregate([("btjd", "min")]).sort_by("cadence")
    return (
        t.column("cadence").to_numpy().astype(np.int32),
        t.column("btjd_min").to_numpy(zero_copy_only=False).astype(float),
    )


def export_lightkurve(
    lake,
    out_dir: Path,
    sector: int | None = None,
    camera: int | None = None,
    ccd: int | None = None,
    min_completeness: float = 0.0,
    min_snr: float = 0.0,
    star_ids: Iterable[int] | None = None,
    progress=None,
    batch: int = 200,
    on_total=None,
) -> ExportResult:
    """One FITS light curve per selected star (:func:`lightcurve_hdulist`) in ``out_dir``.

    Stars: ``star_ids`` when given, else those of the matching analysed partitions passing
    the completeness/SNR cuts. ``on_total(n_stars)`` is called once the selection is known,
    ``progress(n)`` after each written batch of ``n`` stars.
    """
    if star_ids is not None:
        ids = sorted({int(s) for s in star_ids})
    else:
        if not lake.has_table("star_qc"):
            raise ExportError(f"no star_qc table in the lake at {lake.uri}: run find-variables")
        ids = []
        for s, c, d in partitions(lake, sector, camera, ccd):
            ids.extend(int(v) for v in select_stars(lake, s, c, d, min_completeness, min_snr))
    if not ids:
        raise ExportError("no star to export (check the partition and the cuts)")
    if on_total:
        on_total(len(ids))
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for k in range(0, len(ids), batch):
        chunk = ids[k : k + batch]
        lcs = read_star_lightcurves(lake, chunk)
        info = read_star_info(lake, chunk)
        for s in chunk:
            lc = lcs.get(s)
            if lc is None:
                continue
            meta = info[s]
            path = out_dir / lightkurve_file_name(meta)
            tmp = path.with_suffix(".fits.part")
            lightcurve_hdulist(lc, meta).writeto(tmp, overwrite=True)
            tmp.replace(path)
            files.append(path)
        if progress:
            progress(len(chunk))
    if not files:
        raise ExportError("none of the selected stars has a light curve")
    return ExportResult(out_dir, len(files), files)
