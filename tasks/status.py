"""What the lake holds per sector/camera/CCD (the ``tess-ffi status`` table)."""

from __future__ import annotations

import posixpath

import pyarrow as pa

#: per table: the aggregates of its partition rows (DuckDB SQL over the published views)
_AGGREGATES = {
    "frames": (
        "count(*) AS frames, min(btjd) AS btjd_start, max(btjd) AS btjd_stop, "
        "round(max(btjd) - min(btjd), 3) AS days"
    ),
    "stars": "count(*) AS stars, count(tic_id) AS tic_ids",
    "photometry": "count(*) AS photometry_rows",
    "epoch_qc": "CAST(sum(bad::INT) AS BIGINT) AS bad_cadences",
    "star_qc": "count(*) AS analysed_stars, round(median(completeness), 3) AS completeness",
    "candidates": "count(*) AS candidates",
}
_PART = ("sector", "camera", "ccd")


def lake_status(lake, sector=None, camera=None, ccd=None) -> tuple[pa.Table, dict[str, list]]:
    """Per partition: frames and time span [BTJD d], stars (with TIC ids), photometry rows,
    bad cadences, analysed stars and their median completeness, candidates.

    Returns (table sorted by sector/camera/ccd, {partition label: [unfinished run keys]}).
    Columns of tables that do not exist yet are absent; counts are null where a table has
    no rows of that partition.
    """
    from lakehouse.sql import connect

    tables = [t for t in _AGGREGATES if lake.has_table(t)]
    staging = unfinished_runs(lake)
    if not tables:
        return pa.table({}), staging
    conn = connect(lake)
    where = " AND ".join(
        f"{n} = {int(v)}"
        for n, v in zip(_PART, (sector, camera, ccd), strict=True)
        if v is not None
    )
    where = f" WHERE {where}" if where else ""
    subs = [
        f'(SELECT sector, camera, ccd, {_AGGREGATES[t]} FROM "{t}"{where} GROUP BY ALL) AS {t}'
        for t in tables
    ]
    small = [t for t in tables if t != "photometry"] or tables
    keys = " UNION ".join(f'SELECT sector, camera, ccd FROM "{t}"{where}' for t in small)
    sql = f"SELECT * FROM ({keys}) AS p"
    for sub in subs:
        sql += f" LEFT JOIN {sub} USING (sector, camera, ccd)"
    sql += " ORDER BY sector, camera, ccd"
    return conn.execute(sql).fetch_arrow_table(), staging


def unfinished_runs(lake) -> dict[str, list[str]]:
    """Staged (interrupted, resumable) ingest runs: {partition label: [run keys]}."""
    root = lake.path("_staging")
    out: dict[str, list[str]] = {}
    try:
        labels = lake.fs.ls(root, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in sorted(labels):
        label = posixpath.basename(entry.rstrip("/"))
        try:
            runs = lake.fs.ls(entry, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        keys = sorted(posixpath.basename(r.rstrip("/")) for r in runs)
        if keys:
            out[label] = keys
    return out
