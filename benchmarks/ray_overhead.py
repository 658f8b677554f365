"""Where Ray Train's per-step overhead comes from, on a machine whose cores the step uses entirely.

    scripts/in-loopback-ns .venv/bin/python benchmarks/ray_overhead.py --repeats 2
    # raw results: benchmarks/results/ray_overhead.json

For each model and torch thread count: the plain in-process loop and the Ray Train run (1 worker,
``threads`` CPUs) over the same pairs (``train_vs_trl.run_plain_loop`` / ``run_rmray``, alternating).
While the Ray run trains, the CPU every *other* process uses (Ray's actors, raylet, GCS, agents) is
sampled from /proc; then the plain loop runs again beside a synthetic neighbour that burns that much
CPU in 20 short bursts a second. If the neighbour costs the plain loop what Ray costs, the overhead is
contention for the cores, not work Ray does per step (the run's ``data_wait_s`` prices that part).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_vs_trl  # noqa: E402  (same models, pairs and measurement processes)

NEIGHBOUR = """
import sys, time
busy = float(sys.argv[1]) * 0.05  # seconds of work per 50 ms
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < busy:
        pass
    time.sleep(0.05 - busy)
"""


def _cpu_ticks() -> dict[str, tuple[int, str]]:
    ticks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().replace("\0", " ")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[pid] = (int(fields[11]) + int(fields[12]), cmd)
    return ticks


class CpuSampler:
    """Every ``period`` s: cores used by the Ray Train worker and by every other process. Windows where
    the worker is training (using most of its cores) give the neighbours' share during training."""

    def __init__(self, threads: int, period: float = 5.0):
        self.threads, self.period, self.others = threads, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        before = _cpu_ticks()
        while not self._stop.wait(self.period):
            after = _cpu_ticks()
            used = {pid: (after[pid][0] - before[pid][0]) / hz / self.period for pid in after if pid in before}
            worker = sum(v for pid, v in used.items() if "RayTrainWorker" in after[pid][1])
            if worker >= 0.8 * self.threads:
                me = str(os.getpid())
                self.others.append(sum(v for pid, v in used.items()
                                       if "RayTrainWorker" not in after[pid][1] and pid != me))
            before = after

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return statistics.median(self.others) if self.others else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", default="2,1", help="torch threads (= the Ray worker's CPUs) to test")
    parser.add_argument("--models", default="qwen2-6L-384,minilm-l6")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast (--no-bf16: fp32), as in train_vs_trl.py")
    parser.add_argument("--out", default="benchmarks/results/ray_overhead.json")
    args = parser.parse_args()
    with gzip.open(train_vs_trl.HH, "rt") as f:
        hh_rows = [json.loads(line) for line in f]
    results = {"args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory() as work:
        models = train_vs_trl.build_models(work, hh_rows)
        for name in args.models.split(","):
            rows = train_vs_trl.kept_by_trl(models[name], hh_rows, args.pairs, 512)
            data = os.path.join(work, f"{name}.jsonl")
            with open(data, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            for threads in (int(t) for t in args.threads.split(",")):
                opts = argparse.Namespace(batch_size=8, max_length=512, bf16=args.bf16, threads=threads)
                for rep in range(args.repeats):
                    plain = train_vs_trl.measure("plain", models[name], data, opts)["pairs_per_s"]
                    sampler = CpuSampler(threads)
                    ray_run = train_vs_trl.measure("rmray", models[name], data, opts)
                    others = sampler.stop()
                    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(min(others or 0.0, 0.9))])
                    try:
                        beside = train_vs_trl.measure("plain", models[name], data, opts)["pairs_per_s"]
                    finally:
                        neighbour.kill()
                    run = {"model": name, "threads": threads, "plain": plain, "rmray": ray_run["pairs_per_s"],
                           "plain_beside_neighbour": beside, "others_cores_during_training": others,
                           "data_wait_s": ray_run["data_wait_s"], "train_runtime_s": ray_run["train_runtime_s"]}
                    results["runs"].append(run)
                    print(json.dumps(run), flush=True)
                    time.sleep(2)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
