"""Where Ray Train's per-step overhead comes from, on a machine whose cores the step uses entirely.

    scripts/in-loopback-ns .venv/bin/python benchmarks/ray_overhead.py --repeats 2
    # raw results: benchmarks/results/ray_overhead.json

For each model and torch thread count: the plain in-process loop and the Ray Train run (1 worker,
``threads`` CPUs) over the same pairs (``train_vs_trl.run_plain_loop`` / ``run_rmray``, alternating).
While the Ray run trains, every *other* process (Ray's actors, raylet, GCS, agents) is sampled from
/proc: the CPU it uses and how often it wakes up. Then the plain loop runs again beside a synthetic
neighbour of as many processes, each waking every 10 ms (Ray core checks for signals on that period
in every worker process) and burning the same CPU in total. If the neighbour costs the plain loop
what Ray costs, the overhead is the interruptions of torch's threads, not work Ray does per step
(the run's ``data_wait_s`` prices that part).

``--ladder N`` climbs from the plain loop to rmray one layer at a time instead, N alternating rounds
(Qwen2, 2 threads; ``--ladder-model qwen2-2L-64``: a 2-layer, hidden-64 one whose step is mostly
per-step work outside the matmuls): the plain loop in-process; the same loop as the method of a bare Ray actor
(a Ray worker process, 2 CPUs); the same loop as a ``TorchTrainer`` training function with Ray
Train's defaults (its controller, worker actor, process group and helper actors around it); the same
with rmray's settings and the unused one-worker process group closed (``trainer-lean``: Ray Train's
metrics and preemption watcher off -- see ``rmray.ray_env``); rmray's
``train()``. The step where the rate drops is the layer that costs it. ``--rungs`` picks and orders
rungs; the first is the base of ``vs_plain``.

    scripts/in-loopback-ns .venv/bin/python benchmarks/ray_overhead.py --ladder 5 --out benchmarks/results/ray_overhead_ladder.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_vs_trl  # noqa: E402  (same models, pairs and measurement processes)
from results_file import write_results  # noqa: E402

NEIGHBOUR = """
import os, sys, time
processes, busy = int(sys.argv[1]), float(sys.argv[2])  # busy: seconds of work per wake-up
for _ in range(processes - 1):
    if os.fork() == 0:
        break
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < busy:
        pass
    time.sleep(0.01)
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
        ticks[pid] = (int(fields[11]) + int(fields[12]), cmd, _wakeups(pid))
    return ticks


def _wakeups(pid: str) -> int:
    """Context switches of every thread of the process so far (each one a wake-up or a preemption)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
    except (OSError, ValueError):
        pass
    return total


class CpuSampler:
    """Every ``period`` s: cores used by the Ray Train worker and by every other process, and which of
    those wake up often. Windows where the worker is training (using most of its cores) give the
    neighbours' share during training."""

    def __init__(self, threads: int, period: float = 5.0):
        self.threads, self.period, self.others, self.wakers = threads, period, [], []
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
                others = [pid for pid in used if "RayTrainWorker" not in after[pid][1] and pid != me]
                self.others.append(sum(used[pid] for pid in others))
                # processes waking 50+ times a second (Ray's actors wake ~100/s each)
                self.wakers.append(sum((after[pid][2] - before[pid][2]) / self.period >= 50 for pid in others))
            before = after

    def stop(self) -> tuple[float | None, int]:
        self._stop.set()
        self._thread.join()
        if not self.others:
            return None, 0
        return statistics.median(self.others), int(statistics.median(self.wakers))


LADDER = ["plain", "actor", "trainer", "trainer-lean", "rmray"]
EXTRA_RUNGS = ["trainer-no-pg"]  # the trainer rung with only the process group closed


def _opts(bf16: bool, threads: int) -> argparse.Namespace:
    """The options train_vs_trl's runs read, as its command line would give them."""
    return argparse.Namespace(batch_size=8, max_length=512, bf16=bf16, threads=threads, device="cpu", set=[])


def run_in_ray(kind: str, model_dir: str, data: str, threads: int, bf16: bool) -> float:
    """The plain loop inside Ray, in this (fresh) process: as a bare actor's method ("actor") or as a
    TorchTrainer training function ("trainer"). The plain and rmray rungs are train_vs_trl's own runs."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from rmray.ray_env import init_ray

    opts = _opts(bf16, threads)
    with open(data) as f:
        rows = [json.loads(line) for line in f]
    if kind in ("trainer", "trainer-no-pg"):  # Ray Train's defaults, not rmray's (ray_env.QUIET_ENV)
        os.environ.update(RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="1", RAY_TRAIN_METRICS_ENABLED="1")
    init_ray("local", num_cpus=threads + 1, include_dashboard=False)  # as train_vs_trl's rmray runs
    here = os.path.dirname(os.path.abspath(__file__))

    def plain_loop() -> float:  # runs in a Ray worker process: this file's directory is not on its path
        import torch

        sys.path.insert(0, here)
        import train_vs_trl as bench

        torch.set_num_threads(threads)
        return bench.run_plain_loop(model_dir, rows, opts)

    if kind == "actor":
        actor = ray.remote(num_cpus=threads)(type("PlainLoop", (), {"run": lambda self: plain_loop()}))
        return ray.get(actor.remote().run.remote())
    with tempfile.TemporaryDirectory() as storage:
        result_file = os.path.join(storage, "pairs_per_s.json")

        def train_fn() -> None:
            import torch.distributed

            if kind != "trainer" and torch.distributed.is_initialized():  # one worker never uses its group
                torch.distributed.destroy_process_group()
            with open(result_file, "w") as f:  # read back by the driver, not a results file
                json.dump(plain_loop(), f)

        TorchTrainer(train_fn, scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
                     run_config=ray.train.RunConfig(storage_path=storage)).fit()
        with open(result_file) as f:
            return json.load(f)


def measure_rung(kind: str, model_dir: str, data: str, opts) -> float:
    if kind in ("plain", "rmray"):
        return train_vs_trl.measure(kind, model_dir, data, opts)["pairs_per_s"]
    cmd = [sys.executable, __file__, "--in-ray", kind, model_dir, data, str(opts.threads), str(opts.bf16)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"rung {kind!r} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    time.sleep(3)  # let this run's processes exit before the next starts, as train_vs_trl.measure does
    return json.loads(out.stdout.strip().splitlines()[-1])


def ladder(args) -> None:
    rungs = args.rungs.split(",")
    unknown = [r for r in rungs if r not in LADDER + EXTRA_RUNGS]
    if unknown:  # an unknown name would otherwise run as a TorchTrainer rung
        sys.exit(f"--rungs: unknown {', '.join(unknown)}; choose from {', '.join(LADDER + EXTRA_RUNGS)}")
    with gzip.open(train_vs_trl.HH, "rt") as f:
        hh_rows = [json.loads(line) for line in f]
    results = {"args": vars(args), "rungs": rungs, "rounds": []}
    opts = _opts(args.bf16, 2)
    with tempfile.TemporaryDirectory() as work:
        model_dir = train_vs_trl.build_models(work, hh_rows, [args.ladder_model])[args.ladder_model]
        rows = train_vs_trl.kept_by_trl(model_dir, hh_rows, args.pairs, 512)
        data = os.path.join(work, "pairs.jsonl")
        with open(data, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        for rnd in range(args.ladder):
            got = {kind: measure_rung(kind, model_dir, data, opts) for kind in rungs}
            results["rounds"].append(got)
            print(json.dumps({"round": rnd, **got}), flush=True)
    medians = {k: statistics.median(r[k] for r in results["rounds"]) for k in rungs}
    results["medians"] = medians
    results["vs_plain"] = {k: medians[k] / medians[rungs[0]] - 1 for k in rungs}
    # the same round's plain loop as the base: drifts of the machine between rounds cancel
    results["vs_plain_per_round"] = {k: statistics.median(r[k] / r[rungs[0]] - 1 for r in results["rounds"]) for k in rungs}
    results["vs_previous_rung"] = {b: statistics.median(r[b] / r[a] - 1 for r in results["rounds"])
                                   for a, b in zip(rungs, rungs[1:])}
    print(json.dumps({k: results[k] for k in ("medians", "vs_plain", "vs_plain_per_round", "vs_previous_rung")}, indent=2))
    write_results(args.out, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", default="2,1", help="torch threads (= the Ray worker's CPUs) to test")
    parser.add_argument("--models", default="qwen2-6L-384,minilm-l6")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast (--no-bf16: fp32), as in train_vs_trl.py")
    parser.add_argument("--out", default="benchmarks/results/ray_overhead.json")
    parser.add_argument("--ladder", type=int, metavar="ROUNDS", help="plain -> Ray actor -> TorchTrainer -> rmray (above)")
    parser.add_argument("--rungs", default=",".join(LADDER), help=f"which rungs, in order (also: {', '.join(EXTRA_RUNGS)})")
    parser.add_argument("--ladder-model", default="qwen2-6L-384", choices=["qwen2-6L-384", "qwen2-2L-64"],
                        help="qwen2-2L-64: a step of a few ms of compute, so what Ray adds per step shows (use --pairs 2000)")
    parser.add_argument("--in-ray", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_ray:
        kind, model_dir, data, threads, bf16 = args.in_ray
        print(json.dumps(run_in_ray(kind, model_dir, data, int(threads), bf16 == "True")))
        return
    if args.ladder:
        ladder(args)
        return
    with gzip.open(train_vs_trl.HH, "rt") as f:
        hh_rows = [json.loads(line) for line in f]
    results = {"args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory() as work:
        models = train_vs_trl.build_models(work, hh_rows, args.models.split(","))
        for name in args.models.split(","):
            rows = train_vs_trl.kept_by_trl(models[name], hh_rows, args.pairs, 512)
            data = os.path.join(work, f"{name}.jsonl")
            with open(data, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            for threads in (int(t) for t in args.threads.split(",")):
                opts = _opts(args.bf16, threads)
                for rep in range(args.repeats):
                    plain = train_vs_trl.measure("plain", models[name], data, opts)["pairs_per_s"]
                    sampler = CpuSampler(threads)
                    ray_run = train_vs_trl.measure("rmray", models[name], data, opts)
                    others, wakers = sampler.stop()
                    processes = max(wakers, 1)
                    busy = min(others or 0.0, 0.9) / processes * 0.01  # the same CPU in total, 100 wake-ups/s each
                    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(processes), str(busy)],
                                                 start_new_session=True)
                    try:
                        beside = train_vs_trl.measure("plain", models[name], data, opts)["pairs_per_s"]
                    finally:
                        os.killpg(neighbour.pid, signal.SIGKILL)
                        neighbour.wait()
                    run = {"model": name, "threads": threads, "plain": plain, "rmray": ray_run["pairs_per_s"],
                           "plain_beside_neighbour": beside, "others_cores_during_training": others,
                           "other_processes_waking_50_per_s": wakers,
                           "data_wait_s": ray_run["data_wait_s"], "train_runtime_s": ray_run["train_runtime_s"]}
                    results["runs"].append(run)
                    print(json.dumps(run), flush=True)
                    time.sleep(2)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
