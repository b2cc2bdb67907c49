"""Measure what one CCD costs on Dask: CPU per frame and memory per worker (README numbers).

Simulates ``--frames`` full-size calibrated FFIs (2078x2136 px, ``--stars`` stars) once,
ingests them with ``--runner dask`` on a LocalCluster of ``--workers`` single-threaded
processes, samples every worker's RSS and CPU time while it runs, and prints JSON: wall
time, worker CPU seconds per frame, peak RSS per worker and of the flow process, and the
extrapolation to the FFIs of one CCD of a sector at each TESS cadence.

    .venv/bin/python scripts/dask_ccd_cost.py --frames 24 --stars 8000 --workers 2

The numbers include the reference-catalog step (once per CCD, 7-14 frames, in the flow
process) and the publication; they exclude downloads (a local folder is the source).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

#: FFIs per CCD of one sector: 30-min (sectors 1-26), 10-min (27-55), 200-s (56+)
FFIS_PER_SECTOR = {"30 min (S1-26)": 1300, "10 min (S27-55)": 3900, "200 s (S56+)": 11700}


class Sampler(threading.Thread):
    """Peak RSS and last CPU times of this process's descendants (the Dask processes)."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.period = period
        self.stop = threading.Event()
        self.peak_rss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.self_peak = 0

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            self.self_peak = max(self.self_peak, self.me.memory_info().rss)
            for p in self.me.children(recursive=True):
                try:
                    with p.oneshot():
                        rss = p.memory_info().rss
                        t = p.cpu_times()
                        cmd = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                self.peak_rss[p.pid] = max(self.peak_rss.get(p.pid, 0), rss)
                self.cpu[p.pid] = t.user + t.system
                self.names[p.pid] = cmd
            time.sleep(self.period)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--stars", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import psutil

    import tess_ffi  # noqa: F401
    from tasks.simulate import simulate_sector
    from tess_ffi.cli import run_ingest

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tess-ffi-dask-cost-"))
    ffi = work / "ffi"
    if not any(ffi.glob("*_ffic.fits")):
        t0 = time.perf_counter()
        simulate_sector(
            ffi, sector=19, camera=1, ccd=3, n_cadences=args.frames, n_stars=args.stars, seed=3
        )
        print(f"simulated {args.frames} full frames in {time.perf_counter() - t0:.0f} s")
    lake = work / f"lake-{time.time_ns()}"
    sampler = Sampler()
    sampler.start()
    cpu0 = psutil.Process().cpu_times()
    t0 = time.perf_counter()
    summary = run_ingest(
        19,
        1,
        3,
        str(ffi),
        str(lake),
        workers=args.workers,
        batch_size=args.batch_size,
        runner="dask",
    )
    wall = time.perf_counter() - t0
    cpu1 = psutil.Process().cpu_times()
    sampler.stop.set()
    sampler.join()
    workers = [pid for pid, cmd in sampler.names.items() if "spawn" in cmd or "dask" in cmd]
    worker_cpu = sum(sampler.cpu[p] for p in workers)
    flow_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    n = summary["frames"]
    per_frame = worker_cpu / n
    result = {
        "frames": n,
        "stars": summary["stars"],
        "workers": args.workers,
        "wall_s": round(wall, 1),
        "worker_cpu_s": round(worker_cpu, 1),
        "flow_process_cpu_s": round(flow_cpu, 1),
        "worker_cpu_s_per_frame": round(per_frame, 2),
        "peak_rss_per_worker_mib": sorted(round(sampler.peak_rss[p] / 2**20) for p in workers),
        "peak_rss_flow_process_mib": round(sampler.self_peak / 2**20),
        "cpu_hours_per_ccd": {
            k: round(v * per_frame / 3600, 2) for k, v in FFIS_PER_SECTOR.items()
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":  # Dask spawns workers that import this module
    main()
