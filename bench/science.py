"""``make bench`` (science part): recovery of injected variables on a simulated full-size CCD.

Simulates one CCD of sector 1 (its real cadence timeline, DQUALITY and BARYCORR) with
``tasks.simulate.simulate_sector`` -- by default 2048x2048 science pixels, 2000 stars,
80 injected variables (EA, EW, ROT, DSCT, TRANSIT, FLARE in turn), 300 cadences -- then runs
``flows.ingest.ingest_ccd`` and ``flows.find_variables.find_variables`` on it and compares
the lakehouse tables with the simulator's truth. Catalog stars are matched to truth stars by
reference position (nearest within 1 px).

Reported (``bench/results_science.json`` and a printed table):

- per variable type: injected, matched to a catalog star, with amplitude >= 5x per-point noise
  (truth ``amplitude`` = fractional peak-to-peak over the run / truth ``noise_frac`` =
  estimated fractional per-point noise), and how many of those are candidates with the right
  period: ``|P_meas / P_true - 1| < 1 %`` (P/2 or 2P is wrong; ``period_days`` is the orbital
  period for EA/EW on both sides). FLARE has no period: recovered = a candidate of any type.
  The type assigned by find-variables is reported (confusion) but not required.
- constant stars flagged: matched constant truth stars whose catalog star is a candidate /
  matched constant truth stars.
- precision ratio: median over matched constant stars of ``star_qc.precision_ratio`` =
  ``robust_scatter`` (1.4826 MAD of the common-mode-corrected flux/median - 1) /
  ``expected_noise`` (median flux_err / median flux).

Goals (issue's done criterion): >= 95 % recovered among variables >= 5x noise, <= 1 % of
constant stars flagged, precision ratio <= 1.2.

``--quick`` runs a tiny version (what ``tests/test_bench_science.py`` uses); ``--out`` sets
the JSON path. The simulated FFIs go to a temporary folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tess_ffi  # noqa: F401  (process defaults before Prefect loads)

FULL = {
    "science_size": 2048,
    "n_stars": 2000,
    "n_cadences": 300,
    "n_variables": 80,
    "batch_size": 20,
}
QUICK = {
    "science_size": 256,
    "n_stars": 400,
    "n_cadences": 120,
    "n_variables": 24,
    "batch_size": 20,
}
SECTOR, CAMERA, CCD = 1, 1, 1
SEED = 42
MATCH_RADIUS_PX = 1.0
PERIOD_TOL = 0.01
SNR_MIN = 5.0
GOALS = {"recovered_fraction_min": 0.95, "constant_flagged_max": 0.01, "precision_ratio_max": 1.2}
TYPES = ("EA", "EW", "ROT", "DSCT", "TRANSIT", "FLARE")
OUT = Path(__file__).resolve().parent / "results_science.json"


def _frac(num: int, den: int) -> float | None:
    return float(num) / den if den else None


def evaluate(truth, stars, candidates, star_qc) -> dict:
    """Compare the lakehouse tables (pandas) with the truth table; returns the results dict."""
    from scipy.spatial import cKDTree

    truth = truth.reset_index(drop=True).copy()
    vt = truth["var_type"].fillna("").astype(str)
    truth["vt"] = vt
    # nearest catalog star within MATCH_RADIUS_PX of each truth star
    tree = cKDTree(np.column_stack([stars["x"].to_numpy(), stars["y"].to_numpy()]))
    dist, idx = tree.query(np.column_stack([truth["x"].to_numpy(), truth["y"].to_numpy()]))
    ok = np.isfinite(dist) & (dist <= MATCH_RADIUS_PX) & (idx < len(stars))
    sid = np.full(len(truth), -1, dtype=np.int64)
    sid[ok] = stars["star_id"].to_numpy()[idx[ok]]
    truth["star_id"] = sid
    truth["matched"] = ok

    cand = candidates.set_index("star_id")
    is_cand = truth["star_id"].isin(cand.index) & truth["matched"]
    truth["is_candidate"] = is_cand
    p_meas = np.full(len(truth), np.nan)
    t_meas = np.array([""] * len(truth), dtype=object)
    for i in np.flatnonzero(is_cand.to_numpy()):
        row = cand.loc[truth.at[i, "star_id"]]
        if hasattr(row, "ndim") and row.ndim > 1:  # several rows for one star: best rank
            row = row.sort_values("rank").iloc[0]
        p = row["period_days"]
        p_meas[i] = np.nan if p is None else float(p)
        t_meas[i] = "" if row["var_type"] is None else str(row["var_type"])
    truth["p_meas"] = p_meas
    truth["type_meas"] = t_meas

    snr = truth["amplitude"].to_numpy(float) / truth["noise_frac"].to_numpy(float)
    truth["amp_over_noise"] = snr
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(p_meas / truth["period_days"].to_numpy(float) - 1.0)
    right_period = np.where(vt == "FLARE", is_cand, is_cand & (rel < PERIOD_TOL))
    truth["recovered"] = right_period

    per_type = {}
    tot = {"n_injected": 0, "n_matched": 0, "n_bright": 0, "n_bright_recovered": 0}
    for t in TYPES:
        sel = (vt == t).to_numpy()
        m = sel & truth["matched"].to_numpy()
        bright = m & (snr >= SNR_MIN)
        rec = bright & right_period
        faint = m & (snr < SNR_MIN)
        types_found = truth.loc[m & is_cand.to_numpy(), "type_meas"].value_counts().to_dict()
        per_type[t] = {
            "n_injected": int(sel.sum()),
            "n_matched": int(m.sum()),
            "n_bright": int(bright.sum()),
            "n_bright_recovered": int(rec.sum()),
            "recovered_fraction": _frac(int(rec.sum()), int(bright.sum())),
            "n_bright_candidates": int((bright & is_cand.to_numpy()).sum()),
            "n_faint": int(faint.sum()),
            "n_faint_recovered": int((faint & right_period).sum()),
            "n_matched_recovered": int((m & right_period).sum()),
            "found_as": {str(k): int(v) for k, v in types_found.items()},
        }
        for k in tot:
            tot[k] += per_type[t][k]
    tot["recovered_fraction"] = _frac(tot["n_bright_recovered"], tot["n_bright"])

    const = (vt == "").to_numpy() & truth["matched"].to_numpy()
    n_const = int(const.sum())
    n_flagged = int((const & is_cand.to_numpy()).sum())
    qc = star_qc.set_index("star_id")
    const_ids = truth.loc[const, "star_id"].to_numpy()
    const_ids = const_ids[np.isin(const_ids, qc.index.to_numpy())]
    ratios = qc.loc[const_ids, "precision_ratio"].to_numpy(float)
    ratios = ratios[np.isfinite(ratios)]
    precision = float(np.median(ratios)) if ratios.size else None

    misses = truth.loc[
        (truth["vt"] != "") & truth["matched"] & (snr >= SNR_MIN) & ~truth["recovered"],
        ["sim_id", "vt", "period_days", "amplitude", "noise_frac", "p_meas", "type_meas"],
    ]
    misses = misses.assign(amp_over_noise=snr[misses.index])
    return {
        "per_type": per_type,
        "variables": tot,
        "constant": {
            "n_truth": int((vt == "").sum()),
            "n_matched": n_const,
            "n_flagged": n_flagged,
            "flagged_fraction": _frac(n_flagged, n_const),
            "n_precision": int(ratios.size),
            "precision_ratio_median": precision,
            "precision_ratio_p90": float(np.percentile(ratios, 90)) if ratios.size else None,
        },
        "n_truth_stars": len(truth),
        "n_catalog_stars": len(stars),
        "n_truth_matched": int(truth["matched"].sum()),
        "n_candidates": len(candidates),
        "missed_bright_variables": json.loads(misses.to_json(orient="records")),
        "headline": {
            "recovered_fraction": tot["recovered_fraction"],
            "constant_flagged_fraction": _frac(n_flagged, n_const),
            "precision_ratio": precision,
        },
    }


def run(cfg: dict, workdir: Path) -> dict:
    """Simulate, ingest, find variables and evaluate in ``workdir``."""
    return _run(cfg, workdir)


def _run(cfg: dict, workdir: Path) -> dict:
    import pandas as pd

    from flows.find_variables import find_variables
    from flows.ingest import ingest_ccd
    from lakehouse.store import Lakehouse
    from tasks.simulate import simulate_sector

    ffi_dir, lake = workdir / "ffi", workdir / "lake"
    timings = {}
    t = time.perf_counter()
    sim = simulate_sector(
        ffi_dir,
        sector=SECTOR,
        camera=CAMERA,
        ccd=CCD,
        n_cadences=cfg["n_cadences"],
        n_stars=cfg["n_stars"],
        science_size=cfg["science_size"],
        n_variables=cfg["n_variables"],
        seed=SEED,
    )
    timings["simulate_s"] = time.perf_counter() - t
    truth = pd.read_parquet(sim.truth_path)
    frames_truth = pd.read_parquet(sim.frames_truth_path)
    print(f"simulated {len(frames_truth)} frames in {timings['simulate_s']:.0f} s", flush=True)

    t = time.perf_counter()
    ingest_ccd(
        SECTOR, CAMERA, CCD, source=str(ffi_dir), lake=str(lake), batch_size=cfg["batch_size"]
    )
    timings["ingest_s"] = time.perf_counter() - t
    print(f"ingested in {timings['ingest_s']:.0f} s", flush=True)
    shutil.rmtree(ffi_dir, ignore_errors=True)  # free the disk before the analysis

    t = time.perf_counter()
    find_variables(SECTOR, CAMERA, CCD, lake=str(lake), science_size=cfg["science_size"])
    timings["find_variables_s"] = time.perf_counter() - t
    print(f"find-variables in {timings['find_variables_s']:.0f} s", flush=True)

    lh = Lakehouse(str(lake))

    def read(name: str) -> pd.DataFrame:
        return lh.read(name, SECTOR, CAMERA, CCD).to_pandas()

    result = evaluate(truth, read("stars"), read("candidates"), read("star_qc"))
    result["timings"] = timings
    result["n_cadences_simulated"] = len(frames_truth)
    result["btjd_span"] = [float(frames_truth["btjd"].min()), float(frames_truth["btjd"].max())]
    return result


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def report(res: dict) -> str:
    lines = [
        f"{'type':8s} {'injected':>8s} {'matched':>8s} {'>=5x':>6s} {'right P':>8s} "
        f"{'fraction':>8s} {'<5x rec':>8s}  found as",
    ]
    for t, r in res["per_type"].items():
        lines.append(
            f"{t:8s} {r['n_injected']:8d} {r['n_matched']:8d} {r['n_bright']:6d} "
            f"{r['n_bright_recovered']:8d} {_fmt(r['recovered_fraction']):>8s} "
            f"{r['n_faint_recovered']:4d}/{r['n_faint']:<3d}  {r['found_as']}"
        )
    v = res["variables"]
    lines.append(
        f"{'all':8s} {v['n_injected']:8d} {v['n_matched']:8d} {v['n_bright']:6d} "
        f"{v['n_bright_recovered']:8d} {_fmt(v['recovered_fraction']):>8s}"
    )
    h, g, c = res["headline"], res["goals"], res["constant"]
    lines += [
        "",
        f"recovered with right period (>= 5x noise): {_fmt(h['recovered_fraction'])}"
        f"  goal >= {g['recovered_fraction_min']}  "
        f"{'PASS' if res['pass']['recovered'] else 'FAIL'}",
        f"constant stars flagged: {c['n_flagged']}/{c['n_matched']} = "
        f"{_fmt(h['constant_flagged_fraction'])}  goal <= {g['constant_flagged_max']}  "
        f"{'PASS' if res['pass']['constant_flagged'] else 'FAIL'}",
        f"precision ratio (median robust_scatter/expected_noise, {c['n_precision']} constant "
        f"stars): {_fmt(h['precision_ratio'])}  goal <= {g['precision_ratio_max']}  "
        f"{'PASS' if res['pass']['precision'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny inputs (tests)")
    ap.add_argument("--out", default=str(OUT), help="results JSON path")
    ap.add_argument("--tmp", default=None, help="parent folder of the temporary work folder")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)

    workdir = Path(tempfile.mkdtemp(prefix="tess-ffi-science-", dir=args.tmp))
    try:
        need = cfg["n_cadences"] * ((cfg["science_size"] + 30) * (cfg["science_size"] + 88) * 8)
        free = shutil.disk_usage(workdir).free
        if free < 1.2 * need:
            print(f"not enough disk in {workdir}: need ~{need / 1e9:.1f} GB", file=sys.stderr)
            return 1
        t = time.perf_counter()
        res = run(cfg, workdir)
        res["timings"]["total_s"] = time.perf_counter() - t
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    h = res["headline"]
    res["goals"] = GOALS
    res["pass"] = {
        "recovered": h["recovered_fraction"] is not None
        and h["recovered_fraction"] >= GOALS["recovered_fraction_min"],
        "constant_flagged": h["constant_flagged_fraction"] is not None
        and h["constant_flagged_fraction"] <= GOALS["constant_flagged_max"],
        "precision": h["precision_ratio"] is not None
        and h["precision_ratio"] <= GOALS["precision_ratio_max"],
    }
    res["config"] = {
        **cfg,
        "quick": args.quick,
        "sector": SECTOR,
        "camera": CAMERA,
        "ccd": CCD,
        "seed": SEED,
        "match_radius_px": MATCH_RADIUS_PX,
        "period_tolerance": PERIOD_TOL,
        "amp_over_noise_min": SNR_MIN,
    }
    res["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    Path(args.out).write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(report(res))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
