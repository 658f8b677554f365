"""What the run identity's full-content fingerprint of local data costs: seconds per GB, before Ray starts.

    python benchmarks/fingerprint_cost.py --mb 512

Writes a JSON-lines file of ``--mb`` megabytes of preference rows, fingerprints it as a run does
(``rmray.train.identity``: SHA-256 over every byte, streamed in 8 MB blocks) a few times, and reports the
median (the first read comes from the page cache too, as a file just written or just read by the previous
run's check is). Results JSON in ``benchmarks/results/fingerprint_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder

from rmray.train.identity import _data_fingerprint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "fingerprint_cost.json"))
    args = parser.parse_args()
    row = json.dumps({"prompt": "Human: how do I keep basil fresh? " * 4, "chosen": "Keep the stems in water. " * 8,
                      "rejected": "Throw it away. " * 8}) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pairs.jsonl")
        with open(path, "w") as f:
            f.write(row * (args.mb * 2**20 // len(row)))
        size = os.path.getsize(path)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _data_fingerprint(path)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    results = {"bytes": size, "seconds": seconds, "seconds_per_gb": seconds / (size / 1e9), "repeats": times}
    write_results(args.results, results)
    print(f"{size / 1e6:.0f} MB fingerprinted in {seconds:.2f} s: {results['seconds_per_gb']:.2f} s per GB")


if __name__ == "__main__":
    main()
