"""Training from 2k, 20k and 200k preference pairs: time to first step, driver memory, object store, pairs/s.

    scripts/in-loopback-ns .venv/bin/python benchmarks/data_scale.py --sizes 2000,20000,200000 \\
        --path stream --out benchmarks/results/data_scale_stream.json
    scripts/in-loopback-ns .venv/bin/python benchmarks/data_scale.py --sizes 2000,20000,200000 \\
        --path whole --out benchmarks/results/data_scale_whole.json

The pairs are the hh-rlhf file's rows, repeated with a numbered first line in each prompt so that no two
pairs are alike (nothing is deduplicated or cached), written as 8 JSON-lines files of uneven sizes. A
tiny Qwen2 (2 layers, hidden 64) trains ``max_steps=20`` on 2 workers of 0.5 CPU with batch 8, so the
data path, not the model, is what grows with the size. Each size runs in its own driver process with
its own local 2-CPU Ray: the driver's peak RSS and the object store's peak are that run's alone.

Reported per size: time to first step (the run's ``startup_s.first_step``), the driver's peak RSS, the
object store's peak use (sampled every second), and steady pairs/s (the median of the logged per-step
rate, the first step left out). The goals compare 200k with 2k: first step <= 1.3x, driver RSS <= +200 MB.
``--path stream`` trains from the stream (the default); ``--path whole`` reads and tokenizes every
row first (``stream_data=false``), the baseline.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder

from rmray.config import DataConfig, TrainConfig  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HH = os.path.join(HERE, "..", "..", "shared", "data", "hh-rlhf-harmless-dev.jsonl.gz")
FILES = 8


def write_pairs(hh_path: str, n: int, folder: str) -> list[str]:
    """``n`` distinct pairs over ``FILES`` files whose sizes differ (file k holds a share ~ k + 1)."""
    with gzip.open(hh_path, "rt") as f:
        rows = [json.loads(line) for line in f]
    weights = [k + 1 for k in range(FILES)]
    counts = [n * w // sum(weights) for w in weights]
    counts[-1] += n - sum(counts)
    os.makedirs(folder, exist_ok=True)
    paths, i = [], 0
    for k, count in enumerate(counts):
        path = os.path.join(folder, f"part-{k}.jsonl")
        with open(path, "w") as out:
            for _ in range(count):
                row = rows[i % len(rows)]
                tag = f"\n\nHuman: (pair {i})"  # the prompt differs from every other pair's
                out.write(json.dumps({"chosen": tag + row["chosen"], "rejected": tag + row["rejected"]}) + "\n")
                i += 1
        paths.append(path)
    return paths


class StorePeak:
    """The object store's peak use, sampled every ``every_s`` seconds while the run lasts."""

    def __init__(self, every_s: float = 1.0):
        self.peak_mib, self.every_s, self._stop = 0.0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        from ray._private.internal_api import memory_summary

        while not self._stop.wait(self.every_s):
            try:
                match = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
            except Exception:  # the cluster is going down
                return
            if match:
                self.peak_mib = max(self.peak_mib, float(match.group(1)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


def run_one(size: int, model: str, data_dir: str, out_dir: str, path: str, store_mb: int) -> dict:
    """One training run in this process (the driver being measured)."""
    from rmray.ray_env import init_ray
    from rmray.train.metrics_log import read_metrics
    from rmray.train.run import train

    init_ray("local", num_cpus=2, include_dashboard=False)
    cfg = TrainConfig(model_name_or_path=model, train_data=data_dir, output_dir=out_dir, max_length=256,
                      per_device_train_batch_size=8, num_workers=2, cpus_per_worker=0.5, max_steps=20,
                      logging_steps=1, eval_split_ratio=0, save_steps=None, report_to=[], stream_data=path == "stream",
                      data_object_store_mb=store_mb or None)
    started = time.time()
    with StorePeak() as store:
        summary = train(cfg).summary
    steps = [r["pairs_per_s"] for r in read_metrics(out_dir) if "pairs_per_s" in r and "event" not in r]
    return {"pairs": size, "wall_s": time.time() - started, "first_step_s": summary["startup_s"]["first_step"],
            "data_ready_s": summary["startup_s"]["data_ready"], "startup_s": summary["startup_s"],
            "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "object_store_peak_mib": store.peak_mib, "steady_pairs_per_s": statistics.median(steps[1:]),
            "steps": summary["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000,200000", help="pairs per run, comma-separated")
    parser.add_argument("--hh", default=HH, help="the hh-rlhf JSON-lines file (gzip) the pairs are made from")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--path", choices=["stream", "whole"], default="stream",
                        help="stream: train while rows are read and tokenized; whole: read and tokenize every row first")
    parser.add_argument("--object-store-mb", type=int, default=DataConfig.data_object_store_mb,
                        help="data_object_store_mb: the stream's read-ahead budget (0: Ray Data's default)")
    parser.add_argument("--child", nargs=6, metavar=("SIZE", "MODEL", "DATA", "OUT", "PATH", "MB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, model, data, out, path, store_mb = args.child
        print("RESULT " + json.dumps(run_one(int(size), model, data, out, path, int(store_mb))), flush=True)
        return

    from rmray.testing import build_tiny_causal_rm

    work = tempfile.mkdtemp(prefix="rmray-data-scale-")
    with gzip.open(args.hh, "rt") as f:
        texts = [json.loads(line)["chosen"] for line in f]
    model = build_tiny_causal_rm(os.path.join(work, "model"), texts, arch="qwen2", vocab_size=8000)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        data = os.path.join(work, f"pairs-{size}")
        write_pairs(args.hh, size, data)
        child = subprocess.run([sys.executable, __file__, "--child", str(size), model, data, os.path.join(work, f"out-{size}"), args.path,
                                str(args.object_store_mb or 0)],
                               capture_output=True, text=True)
        line = next((x for x in child.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"the {size}-pair run failed:\n{child.stdout[-2000:]}\n{child.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
        print(json.dumps(results[-1]), flush=True)
    report = {"path": args.path, "data_object_store_mb": args.object_store_mb, "runs": results}
    if len(results) > 1:
        small, big = results[0], results[-1]
        report["first_step_ratio"] = big["first_step_s"] / small["first_step_s"]
        report["driver_rss_delta_mb"] = big["driver_peak_rss_mb"] - small["driver_peak_rss_mb"]
    print(json.dumps(report, indent=2))
    if args.out:
        write_results(args.out, report)


if __name__ == "__main__":
    main()
