"""How often torch's compute threads are preempted: plain loop vs Ray Train, Ray's processes normal vs batch.

    scripts/in-loopback-ns .venv/bin/python benchmarks/preemptions.py --rounds 2

Each run is ``train_vs_trl.py --one`` (Qwen2 6L-384, 256 hh pairs, bf16, 2 threads). While it trains,
the training process's threads are read from ``/proc/<pid>/task/*/status`` for a few seconds; the two
busiest are torch's, and their ``nonvoluntary_ctxt_switches`` per second are the preemptions (see
rmray/ray_env.py for why they matter). ``RMRAY_RAY_BATCH_SCHED=0`` runs Ray's processes on the normal
policy. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

from train_vs_trl import HH, build_models, kept_by_trl

RUNS = {"plain": ("plain", "1"), "ray_normal": ("rmray", "0"), "ray_batch": ("rmray", "1")}


def thread_stats(pid: int) -> dict[str, tuple[int, int]]:
    """tid -> (CPU ticks, nonvoluntary context switches)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                nonvol = next(int(line.split()[1]) for line in f if line.startswith("nonvoluntary_ctxt"))
        except (OSError, StopIteration):
            continue
        out[tid] = (int(fields[11]) + int(fields[12]), nonvol)
    return out


def training_pid(proc: subprocess.Popen, kind: str, timeout: float = 90.0) -> int | None:
    """The process whose threads train, once they are busy (> 1.5 cores over a second)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        pid = proc.pid if kind == "plain" else next(iter(subprocess.run(
            ["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True).stdout.split()), None)
        if pid:
            before = thread_stats(int(pid))
            time.sleep(1.0)
            after = thread_stats(int(pid))
            ticks = sum(after[t][0] - before[t][0] for t in after if t in before)
            if ticks / os.sysconf("SC_CLK_TCK") > 1.5:
                return int(pid)
        else:
            time.sleep(0.5)
    return None


def measure(kind: str, batch: str, model_dir: str, data: str, seconds: float) -> dict:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_vs_trl.py")
    env = dict(os.environ, RMRAY_RAY_BATCH_SCHED=batch)
    proc = subprocess.Popen([sys.executable, script, "--one", kind, "--model-dir", model_dir, "--data", data,
                             "--bf16", "--threads", "2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    pid = training_pid(proc, kind)
    busiest = []
    if pid is not None:
        before = thread_stats(pid)
        time.sleep(seconds)
        after = thread_stats(pid)
        rows = sorted(((after[t][0] - before[t][0], (after[t][1] - before[t][1]) / seconds) for t in after if t in before),
                      reverse=True)
        busiest = [round(rate) for _, rate in rows[:2]]
    out = proc.communicate()[0]
    time.sleep(3)
    return {"pairs_per_s": json.loads(out.strip().splitlines()[-1])["pairs_per_s"], "compute_thread_preemptions_per_s": busiest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--hh", default=HH)
    parser.add_argument("--out", default="benchmarks/results/preemptions.json")
    args = parser.parse_args()
    with gzip.open(args.hh, "rt") as f:
        hh_rows = [json.loads(line) for line in f]
    results = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as work:
        model_dir = build_models(work, hh_rows, ["qwen2-6L-384"])["qwen2-6L-384"]
        data = os.path.join(work, "pairs.jsonl")
        with open(data, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept_by_trl(model_dir, hh_rows, 256, 512))
        for rnd in range(args.rounds):  # alternate, so drifts in machine load hit every side
            for name, (kind, batch) in RUNS.items():
                results[name].append(measure(kind, batch, model_dir, data, args.seconds))
                print(rnd, name, results[name][-1], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
