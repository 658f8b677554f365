"""Where the time before the first optimizer step goes, on the path a user takes.

Each run is ``rmray.train.run.train`` in its own process on a fresh local Ray (dashboard on, as
``rmray train`` starts it), 256 hh-rlhf pairs, eval split 5 %, 5 steps; it prints the summary's
``startup_s`` (seconds since ``train()`` was called when Ray was up, the data tokenized and split,
the worker entered the training function, the model was loaded, the first batch arrived, the first
step was done). The default worker shape is the shipped configs' (2 workers x 0.5 CPU), which leaves
the tokenizer a CPU so the workers start while the data is prepared; ``--workers 1 --cpus-per-worker 2``
takes every CPU of a 2-core machine, so the two run one after the other.

    scripts/in-loopback-ns .venv/bin/python benchmarks/startup.py --runs 3
    scripts/in-loopback-ns .venv/bin/python benchmarks/startup.py --runs 3 --workers 1 --cpus-per-worker 2

``--against DIR`` alternates each run with one of another checkout's rmray (``git worktree add DIR REV``),
the before/after of a start-up change side by side on the same machine state.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_vs_trl  # noqa: E402  (the same model and pairs as the throughput benchmark)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run(model_dir: str, data: str, workers: str, cpus: str) -> dict:
    from rmray.config import load_config
    from rmray.train.run import train

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [f"model_name_or_path={model_dir}", f"train_data={data}", f"output_dir={out}",
                                 "per_device_train_batch_size=8", "max_length=512", "logging_steps=10000",
                                 f"num_workers={workers}", f"cpus_per_worker={cpus}", "eval_split_ratio=0.05",
                                 "report_to=[]", "max_steps=5"])
        summary = train(cfg).summary
    return {"startup_s": summary["startup_s"], "train_pairs_per_s": summary["train_pairs_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--cpus-per-worker", default="0.5")
    parser.add_argument("--against", help="another checkout's root: alternate runs with its rmray (before/after)")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(*args.one)))
        return
    with gzip.open(train_vs_trl.HH, "rt") as f:
        rows = [json.loads(line) for line in f]
    with tempfile.TemporaryDirectory() as work:
        model = train_vs_trl.build_models(work, rows[:300], ["qwen2-6L-384"])["qwen2-6L-384"]
        data = os.path.join(work, "pairs.jsonl")
        with open(data, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in train_vs_trl.kept_by_trl(model, rows, 256, 512))
        trees = [ROOT] + ([os.path.abspath(args.against)] if args.against else [])
        for _ in range(args.runs):
            for tree in trees:
                env = os.environ | {"PYTHONPATH": tree}  # that checkout's rmray, in the driver and in Ray's workers
                out = subprocess.run([sys.executable, __file__, "--one", model, data, args.workers, args.cpus_per_worker],
                                     capture_output=True, text=True, check=True, env=env, cwd=tree).stdout
                result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
                print("RESULT " + json.dumps({"tree": tree, **result}), flush=True)


if __name__ == "__main__":
    main()
