"""Serving benchmark: HTTP throughput at N concurrent clients vs an offline batched loop, latency
percentiles, and group scoring (1 prompt x 16 responses) vs 16 independent sequences.

Run inside the loopback namespace (Ray binds loopback only there):
    scripts/in-loopback-ns .venv/bin/python benchmarks/serve_bench.py --texts 512 --clients 32
Results: benchmarks/results/serve_bench.json and stdout; summarized in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import threading
import time

import torch
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder

HH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hh-rlhf-harmless-dev.jsonl.gz")


def load_items(n: int) -> tuple[list[tuple[str, str]], list[dict]]:
    from rmray.core.formats import split_implicit_prompt

    with gzip.open(HH, "rt") as f:
        rows = [json.loads(line) for line in f]
    items = []
    for row in rows:
        try:
            prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"])
        except Exception:  # noqa: BLE001 - rows without a shared prompt are skipped here
            continue
        if chosen.strip() and rejected.strip():
            items += [(prompt, chosen), (prompt, rejected)]
    return items[:n], rows


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def offline(scorer, items, batch_size: int) -> float:
    start = time.perf_counter()
    ids = [scorer.encode(p, r) for p, r in items]
    scorer.score_ids(ids, batch_size=batch_size)
    return len(items) / (time.perf_counter() - start)


def http_load(url: str, items, clients: int, per_request: int) -> dict:
    import requests

    chunks = [items[i:i + per_request] for i in range(0, len(items), per_request)]
    lock, latencies, statuses = threading.Lock(), [], []
    cursor = iter(range(len(chunks)))

    def worker():
        session = requests.Session()
        while True:
            with lock:
                k = next(cursor, None)
            if k is None:
                return
            body = {"items": [{"prompt": p, "response": r} for p, r in chunks[k]]}
            t = time.perf_counter()
            response = session.post(url + "/score", json=body, timeout=300)
            with lock:
                latencies.append(time.perf_counter() - t)
                statuses.append(response.status_code)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"texts_per_s": len(items) / wall, "p50_ms": 1000 * percentile(latencies, 0.5),
            "p99_ms": 1000 * percentile(latencies, 0.99), "non_200": sum(s != 200 for s in statuses),
            "requests": len(latencies)}


def latency_beside_big_requests(url: str, items, big: int, big_bytes: int) -> dict:
    """p50/p99 of a one-text /score sent every 0.1 s while ``big`` requests of ~``big_bytes`` each are in
    flight (long real texts, tokenized then truncated by the ingress): does one big body stall the rest?"""
    import requests

    long_prompt = "".join(p for p, _ in items)
    long_prompt = (long_prompt * (1 + 200_000 // max(1, len(long_prompt))))[:199_000]
    n = max(1, big_bytes // (len(long_prompt) + 200))
    body = {"items": [{"prompt": long_prompt, "response": r} for _, r in items[:n]]}
    size = len(json.dumps(body))
    done, latencies, big_s = threading.Event(), [], []

    def send_big():
        t = time.perf_counter()
        status = requests.post(url + "/score", json=body, timeout=600).status_code
        big_s.append((time.perf_counter() - t, status))

    threads = [threading.Thread(target=send_big) for _ in range(big)]
    for t in threads:
        t.start()
    def wait_big():
        for t in threads:
            t.join()
        done.set()

    waiter = threading.Thread(target=wait_big)
    waiter.start()
    tiny = {"prompt": items[0][0], "response": items[0][1]}
    with requests.Session() as session:
        while not done.is_set():
            t = time.perf_counter()
            assert session.post(url + "/score", json=tiny, timeout=600).status_code == 200
            latencies.append(time.perf_counter() - t)
            time.sleep(0.1)
    waiter.join()
    return {"big_requests": big, "big_request_bytes": size, "big_request_s": [round(s, 2) for s, _ in big_s],
            "big_request_status": [c for _, c in big_s], "tiny_requests": len(latencies),
            "tiny_p50_ms": 1000 * percentile(latencies, 0.5), "tiny_p99_ms": 1000 * percentile(latencies, 0.99),
            "tiny_max_ms": 1000 * max(latencies), "tiny_ms_sorted": sorted(round(1000 * x) for x in latencies)}


def groups_of(items, rows, group_size: int, n_groups: int):
    """n_groups prompts, each with group_size responses (its own two answers plus others')."""
    pool = [r for _, r in items]
    groups = []
    for g in range(n_groups):
        prompt = items[2 * g][0]
        responses = [items[2 * g][1], items[2 * g + 1][1]] + pool[(g * 37) % len(pool):][:group_size - 2]
        responses = (responses + pool)[:group_size]
        groups.append((prompt, responses))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=2, help="per scorer replica")
    parser.add_argument("--big-requests", type=int, default=2, help="big bodies in flight for the latency check")
    parser.add_argument("--big-bytes", type=int, default=7_900_000, help="size of each big body")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "serve_bench.json"))
    args = parser.parse_args()

    from rmray.core.scoring import Scorer
    from rmray.ray_env import init_ray
    from rmray.testing import as_rmray_model, build_tiny_causal_rm

    items, rows = load_items(args.texts)
    work = tempfile.mkdtemp(prefix="rmray-serve-bench-")
    texts = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    base = build_tiny_causal_rm(os.path.join(work, "base"), texts, arch="qwen2", num_layers=6, hidden=384, heads=6,
                                vocab_size=8000)
    model_dir = as_rmray_model(base, os.path.join(work, "rm"), max_length=args.max_length)
    torch.set_num_threads(2)
    scorer = Scorer.load(model_dir)
    offline(scorer, items[:64], 32)  # warm-up
    ceiling = [offline(scorer, items, 32) for _ in range(3)]
    tokens = sum(len(scorer.encode(p, r)) for p, r in items)

    groups = groups_of(items, rows, 16, args.groups)
    group_ids = [[scorer.encode(p, r) for r in rs] for p, rs in groups]
    ways = {  # per group, as an RL loop calls it; tokenization excluded, every way warmed up first
        "group": lambda g: scorer.score_id_groups([g]),
        "independent": lambda g: scorer.score_ids(g),
        "padded_batch": lambda g: scorer.score_ids(g, pad_slack=None, max_batch_tokens=10**9),
    }
    times = {name: [] for name in ways}
    for name, way in ways.items():
        way(group_ids[0])
    for _ in range(3):  # alternate the ways, median of 3
        for name, way in ways.items():
            start = time.perf_counter()
            for g in group_ids:
                way(g)
            times[name].append(time.perf_counter() - start)
    group_s, independent_s, padded_s = (statistics.median(times[k]) for k in ("group", "independent", "padded_batch"))

    init_ray("local", num_cpus=2, include_dashboard=False)
    from rmray.serve.run import start as serve_start
    from rmray.serve.settings import ServeSettings

    settings = ServeSettings(model_dirs=[model_dir], port=8011, num_cpus=1.0 / args.replicas,
                             torch_threads=args.torch_threads, replicas=args.replicas, ingress_num_cpus=0.5,
                             max_batch_size=64, batch_wait_timeout_s=0.01)
    serve_start(settings)
    url = "http://127.0.0.1:8011"
    http_load(url, items[:64], 8, 1)  # warm-up
    runs = [http_load(url, items, args.clients, args.per_request) for _ in range(3)]
    best = max(runs, key=lambda r: r["texts_per_s"])

    import requests

    def http_group(prompt, responses):
        requests.post(url + "/score_group", json={"prompt": prompt, "responses": responses}, timeout=300)

    def http_items(prompt, responses):
        requests.post(url + "/score", json={"items": [{"prompt": prompt, "response": r} for r in responses]},
                      timeout=300)

    http_times = {"group": [], "items": []}
    http_group(*groups[0])
    http_items(*groups[0])
    for _ in range(3):
        for name, call in (("group", http_group), ("items", http_items)):
            start = time.perf_counter()
            for prompt, responses in groups:
                call(prompt, responses)
            http_times[name].append(time.perf_counter() - start)
    http_group_s, http_independent_s = statistics.median(http_times["group"]), statistics.median(http_times["items"])
    beside_big = latency_beside_big_requests(url, items, args.big_requests, args.big_bytes)
    from ray import serve

    serve.shutdown()

    result = {
        "model": "qwen2-6L-384 (random init, 8k BPE)", "texts": len(items), "tokens": tokens,
        "max_length": args.max_length, "clients": args.clients, "items_per_request": args.per_request,
        "offline_texts_per_s_runs": ceiling, "offline_texts_per_s": statistics.median(ceiling),
        "serve_runs": runs, "serve_texts_per_s_median": statistics.median(r["texts_per_s"] for r in runs),
        "serve_vs_offline": statistics.median(r["texts_per_s"] for r in runs) / statistics.median(ceiling),
        "p50_ms": best["p50_ms"], "p99_ms": best["p99_ms"], "p99_over_p50": best["p99_ms"] / best["p50_ms"],
        "group_1x16_offline_speedup": independent_s / group_s,
        "group_1x16_vs_padded_batch_offline_speedup": padded_s / group_s,
        "replicas": args.replicas, "replica_torch_threads": args.torch_threads,
        "group_1x16_http_speedup": http_independent_s / http_group_s,
        "groups": len(groups), "torch_threads": torch.get_num_threads(),
        "beside_big_requests": beside_big,
    }
    write_results(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
