"""Swapping the served models under load (``POST /admin/models``), the version behind every reward, and
the reward telemetry on the node's metrics port.

Expected rewards come from plain transformers on ``prompt + response + EOS``; expected telemetry from the
rewards and lengths the test itself received and computed, with scipy's Spearman."""

import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from rmray.core.spec import ScoringSpec
from rmray.serve.client import RewardClient
from rmray.testing import plain_transformers_scores

from .conftest import PROMPT, RESPONSES, TOKEN, post

ADMIN = "admin-secret-456"
ITEMS = [(PROMPT, RESPONSES[0]), (PROMPT, RESPONSES[1]), (PROMPT, RESPONSES[2]), ("Q: 2+2?\nA:", " 4"),
         ("Q: name a colour.\nA:", " Blue, like the sky on a clear summer afternoon by the sea.")]


@pytest.fixture(scope="module")
def swap_app(served, rm_minilm, tmp_path_factory):
    """App ``swap`` at ``/swap``: 2 scorer replicas of model A (a Qwen2 with saved eval stats), an admin
    token, an API token; B is MiniLM (another architecture, no stats)."""
    from ray import serve

    from rmray.serve.app import build_app
    from rmray.serve.settings import ServeSettings
    from rmray.serve.versions import forget

    folder = tmp_path_factory.mktemp("swap")
    a = str(shutil.copytree(served["raw_qwen"], folder / "a"))
    spec = ScoringSpec.load(a)
    spec.reward_mean, spec.reward_std = 0.1, 0.4
    spec.save(a)
    b = str(shutil.copytree(rm_minilm, folder / "b"))
    settings = ServeSettings(model_dirs=[a], replicas=2, num_cpus=0.01, ingress_num_cpus=0.01, api_token=TOKEN,
                             admin_token=ADMIN)
    serve.run(build_app(settings), name="swap", route_prefix="/swap")
    texts = [p + r for p, r in ITEMS]
    expected = {"a": plain_transformers_scores(a, texts), "b": plain_transformers_scores(b, texts)}
    yield {"port": served["port"], "a": a, "b": b, "expected": expected, "folder": folder}
    serve.delete("swap")
    forget("swap")


CALLS: list[tuple[str, int, int]] = []  # every request this module sent to /swap: (endpoint, status, texts)


def _post(port, path, body, token=TOKEN):
    answer = post(port, path, body, token=token)
    texts = len(body.get("items") or [1]) if path.endswith("/score") else 0
    CALLS.append((path.removeprefix("/swap"), answer[0], texts))
    return answer


def _score(port, i):
    sent = time.time()
    status, body, _ = _post(port, "/swap/score", {"prompt": ITEMS[i][0], "response": ITEMS[i][1]})
    return {"sent": sent, "done": time.time(), "status": status, "item": i,
            "version": body.get("model_version") if status == 200 else None,
            "reward": body["rewards"][0] if status == 200 else body}


def _admin(port, body, token=ADMIN):
    return _post(port, "/swap/admin/models", body, token=token)


def test_a_swap_under_load_drops_nothing_and_every_answer_names_its_version(swap_app):
    """16 clients for the whole swap (2 scorer replicas): no failed request, every reward equal to
    plain transformers on the model its ``model_version`` names, nothing from the old version once the
    swap call returned, the old replicas gone, and answers in every second of the swap (no gap)."""
    from ray import serve

    from rmray.serve.versions import scorer_apps

    port, expected = swap_app["port"], swap_app["expected"]
    before = _post(port, "/swap/score", {"prompt": "x", "response": " y"})[1]["model_version"]
    answers, stop = [], threading.Event()

    def client(k):
        n = k
        while not stop.is_set():
            answers.append(_score(port, n % len(ITEMS)))
            n += 1

    with ThreadPoolExecutor(16) as pool:
        clients = [pool.submit(client, k) for k in range(16)]
        time.sleep(3)  # steady state first
        started = time.time()
        status, swapped, _ = _admin(port, {"models": [swap_app["b"]]})
        returned = time.time()
        time.sleep(3)
        stop.set()
        for c in clients:
            c.result()
    assert status == 200, swapped
    after = swapped["model_version"]
    assert swapped["previous_model_version"] == before and after != before
    assert [a["status"] for a in answers if a["status"] != 200] == []
    versions = {before: expected["a"], after: expected["b"]}
    for a in answers:
        assert a["reward"] == pytest.approx(versions[a["version"]][a["item"]], abs=1e-4), a
    assert {a["version"] for a in answers if a["sent"] > returned} == {after}
    assert {a["version"] for a in answers} == {before, after}
    assert scorer_apps("swap") == ["swap-scorers-g1-m0"] and "swap-scorers-g0-m0" not in serve.status().applications
    # No gap: every second of the swap has answers (the old version answers until the new one is ready).
    per_second = [sum(started + s <= a["done"] < started + s + 1 for a in answers)
                  for s in range(int(returned - started))]
    assert per_second and min(per_second) > 0, per_second
    swap_app["load_answers"] = answers


def test_admin_tokens_bad_folders_and_an_ensemble_swapped_for_one_model_and_back(swap_app):
    """No admin token -> 401, the API token or another -> 403; a folder that is not a model, or one whose
    replicas fail to start -> 422 naming why while the served version keeps answering; then B -> the
    ensemble [A, B] -> A."""
    from rmray.serve.versions import scorer_apps

    port, expected, a, b = swap_app["port"], swap_app["expected"], swap_app["a"], swap_app["b"]
    assert _admin(port, {"models": [a]}, token=None)[0] == 401
    assert _admin(port, {"models": [a]}, token=TOKEN)[0] == 403
    assert _admin(port, {"models": [a]}, token="wrong")[0] == 403
    missing = str(swap_app["folder"] / "nope")
    status, body, _ = _admin(port, {"models": [missing]})
    assert status == 422 and missing in body["detail"], body
    # A model folder whose weights are damaged passes every check and fails in the new replicas: refused
    # with their error, the new applications deleted, the old version still serving.
    broken = shutil.copytree(a, swap_app["folder"] / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    status, body, _ = _admin(port, {"models": [str(broken)]})
    assert status == 422 and "did not start" in body["detail"] and "still serving" in body["detail"], body
    assert scorer_apps("swap") == ["swap-scorers-g1-m0"]
    serving = _post(port, "/swap/score", {"prompt": ITEMS[3][0], "response": ITEMS[3][1]})[1]
    assert serving["rewards"][0] == pytest.approx(expected["b"][3], abs=1e-4)

    status, ens, _ = _admin(port, {"models": [a, b], "names": ["a", "b"]})
    assert status == 200 and ens["ensemble"] == "raw", ens  # B has no saved stats: raw mean
    sent = []
    for i in list(range(len(ITEMS))) * 2:
        out = _post(port, "/swap/score", {"prompt": ITEMS[i][0], "response": ITEMS[i][1]})[1]
        assert out["model_version"] == ens["model_version"] and out["combined"] == "raw"
        assert out["rewards"][0] == pytest.approx((expected["a"][i] + expected["b"][i]) / 2, abs=1e-4)
        assert out["per_model"]["a"][0] == pytest.approx(expected["a"][i], abs=1e-4)
        sent.append((i, out))
    swap_app["ensemble"] = (ens["model_version"], sent)
    _check_gauges(ens["model_version"], sent, a)

    status, back, _ = _admin(port, {"models": [a]})
    assert status == 200 and back["previous_model_version"] == ens["model_version"]
    out = _post(port, "/swap/score", {"prompt": ITEMS[0][0], "response": ITEMS[0][1]})[1]
    assert out["model_version"] == back["model_version"] and "reward_std" not in out
    assert out["rewards"][0] == pytest.approx(expected["a"][0], abs=1e-4)
    client = RewardClient(f"http://127.0.0.1:{port}/swap", token=TOKEN)  # an RL loop's view: the version too
    assert client([ITEMS[1][0]], [ITEMS[1][1]]) == pytest.approx([expected["a"][1]], abs=1e-4)
    assert client.last_model_version == back["model_version"]
    CALLS.append(("/score", 200, 1))


def _check_gauges(version: str, sent: list, model_a: str) -> None:
    """While ``version`` serves: the drift of A's mean from its saved eval mean in stds, and each model's
    Spearman(reward, tokens), against scipy on the rewards received. Ray exports a gauge's latest value every
    few seconds, so an early export (after two texts, a Spearman of +-1) may still be up: the scrape is
    repeated until the export catches up. Ray keeps a gauge about two export intervals after its last
    update, so they are read now, not after the next swap."""
    import ray
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_a)
    lengths = [len(tok(ITEMS[i][0] + ITEMS[i][1] + tok.eos_token)["input_ids"]) for i, _ in sent]
    rewards = {name: [out["per_model"][name][0] for _, out in sent] for name in ("a", "b")}
    expected = {("ray_rmray_reward_length_spearman", name): spearmanr(rewards[name], lengths).statistic
                for name in ("a", "b")}
    expected["ray_rmray_reward_drift_sd", "a"] = (sum(rewards["a"]) / len(sent) - 0.1) / 0.4

    def scraped(samples) -> dict:
        return {key: _value(samples, key[0], model=key[1], model_version=version) for key in expected}

    port = ray.nodes()[0]["MetricsExportPort"]
    deadline, samples = time.time() + 60, []
    while time.time() < deadline:
        samples = _scrape(port)
        if all(abs(got - expected[key]) <= 1e-6 for key, got in scraped(samples).items()):
            break
        time.sleep(1)
    for key, got in scraped(samples).items():
        assert got == pytest.approx(expected[key], abs=1e-6), key
    assert not [s for s in samples if s.name == "ray_rmray_reward_drift_sd" and s.labels.get("model") == "b"
                and s.labels.get("model_version") == version]  # B saved no eval stats: no drift to report


def _scrape(port: int) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name.startswith("ray_rmray_") and sample.labels.get("app") == "swap"]


def _value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_the_telemetry_series_carry_what_the_traffic_implies(swap_app):
    """On the node's metrics export port: request counts by endpoint and status and texts scored exactly
    as this module sent them; for the ensemble version, each model's reward bins and the disagreement
    histogram, against numbers computed here from the rewards received (its gauges are checked while it
    serves, in the test before)."""
    import ray

    from rmray.serve.telemetry import REWARD_BINS, REWARD_EDGES

    version, sent = swap_app["ensemble"]
    counts: dict[tuple[str, str], int] = {}
    for endpoint, status, _ in CALLS:
        counts[endpoint, str(status)] = counts.get((endpoint, str(status)), 0) + 1
    texts = sum(n for endpoint, status, n in CALLS if endpoint == "/score" and status == 200)
    port = ray.nodes()[0]["MetricsExportPort"]

    deadline, samples = time.time() + 180, []
    while time.time() < deadline:  # Ray's metrics agent exports every few seconds
        samples = _scrape(port)
        if _value(samples, "ray_rmray_requests_total", endpoint="/score", status="200") == counts["/score", "200"]:
            break
        time.sleep(2)
    for (endpoint, status), n in counts.items():
        assert _value(samples, "ray_rmray_requests_total", endpoint=endpoint, status=status) == n, (endpoint, status)
    assert _value(samples, "ray_rmray_texts_total", endpoint="/score") == texts

    for name in ("a", "b"):
        rewards = [out["per_model"][name][0] for _, out in sent]
        bins: dict[str, int] = {}
        for r in rewards:  # the bin: how many edges the reward reaches
            label = REWARD_BINS[sum(r >= edge for edge in REWARD_EDGES)]
            bins[label] = bins.get(label, 0) + 1
        got = {s.labels["bucket"]: s.value for s in samples
               if s.name == "ray_rmray_rewards_total" and s.labels.get("model_version") == version
               and s.labels.get("model") == name}
        assert got == bins, (name, got, bins)
    assert _value(samples, "ray_rmray_ensemble_disagreement_count", model_version=version) == len(sent)
    stds = [out["reward_std"][0] for _, out in sent]
    for bucket in (s for s in samples if s.name == "ray_rmray_ensemble_disagreement_bucket"
                   and s.labels.get("model_version") == version):  # Prometheus buckets: how many <= le
        assert bucket.value == sum(std <= float(bucket.labels["le"]) for std in stds), bucket.labels["le"]


def test_the_grafana_dashboard_reads_every_telemetry_series_and_only_those():
    """examples/grafana_rmray.json queries each series the ingress defines (under Ray's ``ray_`` prefix and
    Prometheus' suffixes), and nothing the ingress does not export."""
    import json
    import os
    import re

    from ..conftest import ROOT

    source = open(os.path.join(ROOT, "rmray", "serve", "telemetry.py")).read()
    defined = {name: kind for kind, name in re.findall(r'metrics\.(Counter|Gauge|Histogram)\("(rmray_\w+)"', source)}
    exported = set()
    for name, kind in defined.items():
        suffixes = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}[kind]
        exported |= {f"ray_{name}{suffix}" for suffix in suffixes}
    dashboard = json.load(open(os.path.join(ROOT, "examples", "grafana_rmray.json")))
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"ray_rmray_\w+", target["expr"])}
    assert len(defined) == 8 and queried <= exported, queried - exported
    assert {re.sub(r"_(total|bucket|sum|count)$", "", q).removeprefix("ray_") for q in queried} == set(defined)


def test_scorers_that_never_run_are_given_up_with_the_likely_cause(monkeypatch):
    """Replicas the cluster has no room for stay DEPLOYING for ever: the wait gives up after
    ``start_timeout_s`` naming the likely cause; a failed deployment is raised at once."""
    from types import SimpleNamespace

    import rmray.serve.versions as versions

    states = {"x-scorers-g1-m0": "DEPLOYING"}
    monkeypatch.setattr(versions.serve, "status", lambda: SimpleNamespace(applications={
        app: SimpleNamespace(status=state, deployments={}) for app, state in states.items()}))
    with pytest.raises(TimeoutError, match="room on the cluster for both versions"):
        versions._wait_running(["x-scorers-g1-m0"], timeout_s=1.0)
    states["x-scorers-g1-m0"] = "DEPLOY_FAILED"
    with pytest.raises(RuntimeError, match="failed to deploy"):
        versions._wait_running(["x-scorers-g1-m0"], timeout_s=60)
    states["x-scorers-g1-m0"] = "RUNNING"
    versions._wait_running(["x-scorers-g1-m0"], timeout_s=60)
