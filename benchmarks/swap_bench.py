"""Swapping the served model under load: latency and throughput in steady state vs during the swap.

N clients send one-text ``/score`` requests without pause to a 2-replica server; after a steady-state
window, ``POST /admin/models`` swaps in another model of the same shape (other weights). Reported: p50/p99
latency and answers/s in the steady window and during the swap, the longest wait of a request sent during
the swap against the steady p99, answers per second through the swap (a gap shows as zeros), failures.

Run inside the loopback namespace:
    scripts/in-loopback-ns .venv/bin/python benchmarks/swap_bench.py --clients 16
Results: benchmarks/results/swap_bench.json; summarized in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

from results_file import write_results
from serve_bench import load_items, percentile

ADMIN = "bench-admin"


def _post(url: str, body: dict, token: str | None = None, timeout: float = 600) -> tuple[int, dict]:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.post(url, json=body, headers=headers, timeout=timeout)
    return answer.status_code, answer.json()


def load(url: str, items, clients: int, stop: threading.Event) -> list[dict]:
    """Clients sending one text per request until ``stop``; every answer with its send and receive times."""
    answers, lock = [], threading.Lock()

    def client(k: int) -> None:
        n = k
        while not stop.is_set():
            prompt, response = items[n % len(items)]
            sent = time.perf_counter()
            status, body = _post(url + "/score", {"prompt": prompt, "response": response})
            with lock:
                answers.append({"sent": sent, "done": time.perf_counter(), "status": status,
                                "version": body.get("model_version")})
            n += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join()
    return answers


def window(answers: list[dict], start: float, end: float) -> dict:
    inside = [a for a in answers if start <= a["sent"] < end]
    waits = [a["done"] - a["sent"] for a in inside]
    return {"requests": len(inside), "answers_per_s": len(inside) / (end - start),
            "p50_s": percentile(waits, 0.5), "p99_s": percentile(waits, 0.99), "max_s": max(waits),
            "failed": sum(a["status"] != 200 for a in inside)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steady-s", type=float, default=20.0, help="steady-state window before the swap")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "swap_bench.json"))
    args = parser.parse_args()

    from rmray.ray_env import init_ray
    from rmray.serve.run import start as serve_start
    from rmray.serve.settings import ServeSettings
    from rmray.testing import as_rmray_model, build_tiny_causal_rm

    items, rows = load_items(args.texts)
    work = tempfile.mkdtemp(prefix="rmray-swap-bench-")
    texts = [r["chosen"] for r in rows[:400]]
    models = [as_rmray_model(build_tiny_causal_rm(os.path.join(work, f"base{k}"), texts, arch="qwen2", num_layers=6,
                                                  hidden=384, heads=6, vocab_size=8000, seed=k), os.path.join(work, f"rm{k}"),
                             max_length=512) for k in range(2)]
    init_ray("local", num_cpus=2, include_dashboard=False)
    serve_start(ServeSettings(model_dirs=[models[0]], port=8012, replicas=2, num_cpus=0.25, ingress_num_cpus=0.25,
                              admin_token=ADMIN))
    url, stop = "http://127.0.0.1:8012", threading.Event()
    answers: list[dict] = []
    loader = threading.Thread(target=lambda: answers.extend(load(url, items, args.clients, stop)))
    loader.start()
    time.sleep(5)  # warm-up, not measured
    steady_from = time.perf_counter()
    time.sleep(args.steady_s)
    swap_from = time.perf_counter()
    status, swapped = _post(url + "/admin/models", {"models": [models[1]]}, token=ADMIN)
    swap_to = time.perf_counter()
    time.sleep(5)
    stop.set()
    loader.join()
    from ray import serve

    serve.shutdown()
    steady, during = window(answers, steady_from, swap_from), window(answers, swap_from, swap_to)
    per_second = [sum(swap_from + s <= a["done"] < swap_from + s + 1 for a in answers)
                  for s in range(int(swap_to - swap_from) + 1)]
    result = {
        "model": "qwen2-6L-384 (random init, 8k BPE), 2 scorer replicas x 0.25 CPU", "clients": args.clients,
        "swap_status": status, "swap_s": swap_to - swap_from, "model_versions": [swapped.get("previous_model_version"),
                                                                                 swapped.get("model_version")],
        "steady": steady, "during_swap": during, "longest_wait_over_steady_p99": during["max_s"] / steady["p99_s"],
        "answers_per_second_during_swap": per_second,
        "old_version_after_swap_returned": sum(a["sent"] > swap_to and a["version"] != swapped.get("model_version")
                                               for a in answers),
        "failed": sum(a["status"] != 200 for a in answers),
    }
    write_results(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
