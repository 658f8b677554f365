"""Ray Serve app over real HTTP on loopback: parity with plain transformers, every protocol, auth,
validation, fuzzing, a replica killed under load, overload answered with 503."""

import json
import math
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from rmray.core.spec import ScoringSpec
from rmray.serve.client import HandleRewardClient, RewardClient
from rmray.testing import plain_transformers_scores

TOKEN = "test-token-123"
PROMPT = "\n\nHuman: How do I make my tomato plants produce more fruit?\n\nAssistant:"
RESPONSES = [" Water deeply, feed with potassium, and pinch off suckers.", " No idea.",
             " Plant them in full sun and shake the flowers gently to help pollination.", " " + "grow " * 300]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, token=TOKEN, raw=None, headers=None):
    data = raw if raw is not None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
            **(headers or {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            body = json.loads(body)
        except ValueError:
            body = body.decode(errors="replace")
        return err.code, body, dict(err.headers)


@pytest.fixture(scope="module")
def served(ray_cluster, rm_qwen, rm_minilm, tmp_path_factory):
    """Seven apps on one Serve instance, deployed together: main (token, normalization stats), ensemble,
    tight (overload), an ensemble on two saved scales, a faulty model, a per-attribute model and an
    autoscaling one (1 to 2 scorer replicas)."""
    from ray import serve
    from ray.serve.api import RunTarget

    from rmray.core.spec import PLAIN_CHAT_TEMPLATE
    from rmray.core.tokenizer import load_tokenizer
    from rmray.serve.app import build_app
    from rmray.serve.settings import ServeSettings
    from rmray.testing import as_rmray_model

    folder = tmp_path_factory.mktemp("served")
    normed = str(shutil.copytree(rm_qwen, folder / "qwen-normed"))
    spec = ScoringSpec.load(normed)
    spec.reward_mean, spec.reward_std, spec.temperature = 0.5, 2.0, 0.5
    spec.save(normed)
    tokenizer = load_tokenizer(normed)  # a chat template, for conversational (TRL-style) requests
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    tokenizer.save_pretrained(normed)
    # An ensemble of two models on different saved scales, and a model whose spec allows more tokens
    # than its position embeddings (a deterministic fault in the scorer, not load).
    scaled = str(shutil.copytree(normed, folder / "qwen-scaled"))
    spec.reward_mean, spec.reward_std = 8.0, 0.5
    spec.save(scaled)
    faulty = str(shutil.copytree(rm_minilm, folder / "minilm-1024"))
    faulty_spec = ScoringSpec.load(faulty)
    faulty_spec.max_length = 1024  # MiniLM has 512 positions
    faulty_spec.save(faulty)
    # A model with a head per attribute (HelpSteer2 style), its reward their weighted sum.
    attr = as_rmray_model(rm_qwen, str(folder / "qwen-attr"), max_length=256,
                          attributes=["helpfulness", "verbosity"], attribute_weights=[0.75, -0.25])

    small = dict(num_cpus=0.2, ingress_num_cpus=0.1, api_token=TOKEN)
    tiny = dict(num_cpus=0.1, ingress_num_cpus=0.05)
    apps = {
        "main": ("/", ServeSettings(model_dirs=[normed], replicas=2, **small)),
        "ens": ("/ens", ServeSettings(model_dirs=[rm_qwen, rm_minilm], model_names=["qwen", "minilm"], **tiny)),
        "tight": ("/tight", ServeSettings(model_dirs=[rm_qwen], max_inflight=2, max_body_bytes=4096, **small)),
        "ensn": ("/ensn", ServeSettings(model_dirs=[normed, scaled], model_names=["a", "b"], **tiny)),
        "faulty": ("/faulty", ServeSettings(model_dirs=[faulty], **tiny)),
        "attr": ("/attr", ServeSettings(model_dirs=[attr], **tiny)),
        "auto": ("/auto", ServeSettings(model_dirs=[rm_qwen], max_replicas=2, target_ongoing_requests=1,
                                        upscale_delay_s=1, **tiny)),
    }
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run_many([RunTarget(build_app(settings), name=name, route_prefix=prefix)
                    for name, (prefix, settings) in apps.items()])
    try:
        yield {"port": port, "qwen": normed, "raw_qwen": rm_qwen, "minilm": rm_minilm, "attr": attr}
    finally:
        serve.shutdown()


def test_a_per_attribute_model_serves_each_attribute_and_their_weighted_reward(served):
    port = served["port"]
    outputs = plain_transformers_scores(served["attr"], [PROMPT + r for r in RESPONSES[:3]], all_outputs=True)
    assert all(len(o) == 2 for o in outputs)
    items = [{"prompt": PROMPT, "response": r} for r in RESPONSES[:3]]
    status, body, _ = post(port, "/attr/score", {"items": items})
    assert status == 200, body
    assert body["attributes"]["helpfulness"] == pytest.approx([o[0] for o in outputs], abs=1e-4)
    assert body["attributes"]["verbosity"] == pytest.approx([o[1] for o in outputs], abs=1e-4)
    assert body["rewards"] == pytest.approx([0.75 * h - 0.25 * v for h, v in outputs], abs=1e-4)
    status, group, _ = post(port, "/attr/score_group", {"prompt": PROMPT, "responses": RESPONSES[:3]})
    assert status == 200 and group["attributes"]["verbosity"] == pytest.approx([o[1] for o in outputs], abs=1e-4)
    status, reward, _ = post(port, "/attr/get_reward", {"query": [PROMPT + RESPONSES[0]], "prompts": [PROMPT]})
    assert status == 200 and reward["rewards"] == pytest.approx(body["rewards"][:1], abs=1e-4)  # OpenRLHF: the one reward


def test_score_equals_plain_transformers_and_normalizes(served):
    port = served["port"]
    expected = plain_transformers_scores(served["qwen"], [PROMPT + r for r in RESPONSES])
    status, body, _ = post(port, "/score", {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES],
                                            "normalize": True})
    assert status == 200, body
    assert body["rewards"][:3] == pytest.approx(expected[:3], abs=1e-4)
    assert body["truncated"] == [False, False, False, True]  # 300 words > max_length 256: cut and flagged
    assert body["normalized_rewards"] == pytest.approx([(r - 0.5) / 2.0 for r in body["rewards"]], abs=1e-6)
    status, single, _ = post(port, "/score", {"prompt": PROMPT, "response": RESPONSES[0]})
    assert status == 200 and single["rewards"][0] == pytest.approx(expected[0], abs=1e-4)
    assert "normalized_rewards" not in single


def test_score_group_equals_per_item_scores(served):
    port = served["port"]
    _, items, _ = post(port, "/score", {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES]})
    status, group, _ = post(port, "/score_group", {"prompt": PROMPT, "responses": RESPONSES})
    assert status == 200, group
    assert group["rewards"] == pytest.approx(items["rewards"], abs=1e-4)
    assert group["truncated"] == items["truncated"]
    assert "preferences" not in group  # only when asked


def test_score_group_preferences_use_each_models_temperature(served):
    """P(i preferred to j) = sigmoid((r_i - r_j) / T): T = 0.5 saved in the main model's contract; the
    ensemble's models have none (T = 1), and their probabilities are averaged, not their rewards."""
    port = served["port"]
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    status, group, _ = post(port, "/score_group", {"prompt": PROMPT, "responses": RESPONSES[:3], "preferences": True})
    assert status == 200, group
    r = group["rewards"]
    assert group["preferences"] == [[pytest.approx(sigmoid((r[i] - r[j]) / 0.5), abs=1e-6) for j in range(3)]
                                    for i in range(3)]
    status, ens, _ = post(port, "/ens/score_group", {"prompt": PROMPT, "responses": RESPONSES[:2], "preferences": True})
    assert status == 200, ens
    q, m = ens["per_model"]["qwen"], ens["per_model"]["minilm"]
    want = (sigmoid(q[0] - q[1]) + sigmoid(m[0] - m[1])) / 2
    assert ens["preferences"][0][1] == pytest.approx(want, abs=1e-6)
    assert ens["preferences"][1][0] == pytest.approx(1 - want, abs=1e-6)


def test_openrlhf_and_vllm_protocols(served):
    port = served["port"]
    texts = [PROMPT + r for r in RESPONSES[:3]]
    expected = plain_transformers_scores(served["qwen"], texts)
    status, new, _ = post(port, "/get_reward", {"query": texts, "prompts": [PROMPT] * 3, "labels": [None] * 3})
    assert status == 200 and new["rewards"] == pytest.approx(expected, abs=1e-4) and new["scores"] == new["rewards"]
    status, old, _ = post(port, "/get_reward", {"query": texts})  # OpenRLHF before 0.6 sent only query
    assert status == 200 and old["rewards"] == pytest.approx(expected, abs=1e-4)
    assert post(port, "/get_reward", {"query": []})[1]["rewards"] == []  # an empty shard is not an error
    status, out, _ = post(port, "/classify", {"model": "qwen-normed", "input": texts[-1], "activation": False})
    assert status == 200 and out["data"][-1]["probs"][-1] == pytest.approx(expected[-1], abs=1e-4)  # verl's read
    status, out, _ = post(port, "/classify", {"input": texts, "activation": True})
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert out["data"][0]["probs"][0] == pytest.approx(1 / (1 + 2.718281828 ** -expected[0]), abs=1e-4)


def test_trl_reward_function_over_http_and_handle(served):
    from ray import serve

    expected = plain_transformers_scores(served["qwen"], [PROMPT + r for r in RESPONSES[:2]])
    http = RewardClient(f"http://127.0.0.1:{served['port']}", token=TOKEN)
    assert http(prompts=[PROMPT] * 2, completions=RESPONSES[:2], completion_ids=None) == pytest.approx(expected,
                                                                                                       abs=1e-4)
    handle = HandleRewardClient(serve.get_app_handle("main"))
    assert handle([PROMPT] * 2, RESPONSES[:2]) == pytest.approx(expected, abs=1e-4)
    assert http.__name__ == "rmray_reward"  # TRL names the reward column after it
    # Conversational TRL data: prompt messages + completion messages, rendered by the chat template.
    from rmray.core.scoring import Scorer

    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "how are you?"}]]
    completions = [[{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "fine"}]]
    offline = Scorer.load(served["qwen"]).score(prompts, completions)
    assert http(prompts, completions) == pytest.approx(offline, abs=1e-4)
    assert handle(prompts, completions) == pytest.approx(offline, abs=1e-4)


def test_ensemble_returns_mean_and_disagreement(served):
    port = served["port"]
    status, body, _ = post(port, "/ens/score", {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES[:2]]})
    assert status == 200, body
    qwen = plain_transformers_scores(served["raw_qwen"], [PROMPT + r for r in RESPONSES[:2]])
    minilm = plain_transformers_scores(served["minilm"], [PROMPT + r for r in RESPONSES[:2]])
    assert body["per_model"]["qwen"] == pytest.approx(qwen, abs=1e-4)
    assert body["per_model"]["minilm"] == pytest.approx(minilm, abs=1e-4)
    assert body["rewards"] == pytest.approx([(a + b) / 2 for a, b in zip(qwen, minilm)], abs=1e-4)
    assert body["reward_std"] == pytest.approx([abs(a - b) / 2 for a, b in zip(qwen, minilm)], abs=1e-4)


def test_auth_and_client_errors_are_4xx_naming_the_field(served):
    port = served["port"]
    assert post(port, "/score", {"prompt": "a", "response": "b"}, token=None)[0] == 401
    assert post(port, "/score", {"prompt": "a", "response": "b"}, token="wrong")[0] == 401
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as r:  # health checks need no token
        assert json.loads(r.read())["status"] == "ok"
    cases = {
        "wrong type": ({"prompt": "a", "response": 3}, "response"),
        "empty items": ({"items": []}, "items"),
        "nothing to score": ({"prompt": "", "response": ""}, "empty"),
        "nothing in an item": ({"items": [{"response": "b"}, {"prompt": "", "response": ""}]}, "items"),
        "unknown field": ({"prompt": "a", "response": "b", "temperature": 1}, "temperature"),
        "too many": ({"items": [{"response": "b"}] * 1025}, "items"),
        "no response": ({"prompt": "a"}, "response"),
    }
    for name, (body, field) in cases.items():
        status, out, _ = post(port, "/score", body)
        assert status == 422, (name, status, out)
        assert field in json.dumps(out), (name, out)
    status, out, _ = post(port, "/score_group", {"prompt": "a", "responses": ["x", 5]})
    assert status == 422 and "responses" in json.dumps(out)
    status, out, _ = post(port, "/get_reward", {"query": ["a", "b"], "prompts": ["a"]})
    assert status == 422 and "prompts" in json.dumps(out)
    status, out, _ = post(port, "/score", None, raw=b"{not json")
    assert status == 422
    status, out, _ = post(port, "/tight/score", {"prompt": "a", "response": "b" * 5000})  # 4 KiB body limit
    assert status == 413 and "larger" in out["detail"]
    status, out, _ = post(port, "/ens/score", {"prompt": [{"role": "user", "content": "hi"}], "response": "hello"})
    assert status == 422 and "chat template" in out["detail"]  # names what to do, not a 500


def test_empty_response_is_scored_as_the_prompt(served):
    port = served["port"]
    expected = plain_transformers_scores(served["qwen"], [PROMPT])[0]  # prompt + EOS
    status, body, _ = post(port, "/score", {"prompt": PROMPT, "response": ""})
    assert status == 200 and body["rewards"][0] == pytest.approx(expected, abs=1e-4)
    status, group, _ = post(port, "/score_group", {"prompt": PROMPT, "responses": ["", RESPONSES[0]]})
    assert status == 200 and group["rewards"][0] == pytest.approx(expected, abs=1e-4)
    status, out, _ = post(port, "/score_group", {"prompt": "", "responses": ["x", ""]})
    assert status == 422 and "responses[1]" in json.dumps(out)


def test_edges_found_by_fuzzing(served):
    port = served["port"]
    # A lone surrogate is valid JSON but not text: a 422 naming the field, never a 500.
    for path, raw in (("/classify", b'{"model": "\\ud800", "input": "hi"}'),
                      ("/score", b'{"prompt": "a", "response": "b\\udfff"}')):
        status, out, _ = post(port, path, None, raw=raw)
        assert status == 422, (path, status, out)
    # A chunked body (no content-length) over the limit is a 413 like any other.
    chunks = iter([b'{"prompt": "a", "response": "', b"b" * 3000, b"b" * 3000, b'"}'])
    status, out, _ = post(port, "/tight/score", None, raw=chunks,
                          headers={"Transfer-Encoding": "chunked"})
    assert status == 413 and "larger" in out["detail"], (status, out)
    # The bearer scheme is case-insensitive (RFC 7235); the token is not.
    for scheme in ("bearer", "BEARER", "Bearer"):
        status, out, _ = post(port, "/score", {"prompt": "a", "response": "b"}, token=None,
                              headers={"Authorization": f"{scheme} {TOKEN}"})
        assert status == 200, (scheme, out)
    assert post(port, "/score", {"prompt": "a", "response": "b"}, token=TOKEN.upper())[0] == 401


def test_a_scorer_fault_is_a_500_naming_it_not_a_retryable_503(served):
    port = served["port"]
    status, out, headers = post(port, "/faulty/score", {"prompt": "", "response": "word " * 700})
    assert status == 500, (status, out)
    # BERT's 512 positions: the scorer's own error, named (a RuntimeError from the embeddings here)
    assert "Error" in out["detail"] and "512" in out["detail"], out
    assert "retry-after" not in {k.lower() for k in headers}
    client = RewardClient(f"http://127.0.0.1:{port}/faulty", retries=5, backoff_s=30)  # a retry would wait 30 s
    with pytest.raises(RuntimeError, match="500"):
        client.score([""], ["word " * 700])
    assert post(port, "/faulty/score", {"prompt": "a", "response": "short"})[0] == 200


def test_ensemble_of_saved_scales_combines_standardized_rewards(served):
    port = served["port"]
    raw = plain_transformers_scores(served["qwen"], [PROMPT + r for r in RESPONSES[:2]])
    status, body, _ = post(port, "/ensn/score", {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES[:2]]})
    assert status == 200, body
    a = [(r - 0.5) / 2.0 for r in raw]
    b = [(r - 8.0) / 0.5 for r in raw]
    assert body["combined"] == "normalized"
    assert body["rewards"] == pytest.approx([(x + y) / 2 for x, y in zip(a, b)], abs=1e-4)
    assert body["reward_std"] == pytest.approx([abs(x - y) / 2 for x, y in zip(a, b)], abs=1e-4)
    assert body["per_model"]["b"] == pytest.approx(raw, abs=1e-4)  # raw rewards stay available
    status, plain, _ = post(port, "/ens/score", {"prompt": PROMPT, "response": RESPONSES[0]})
    assert plain["combined"] == "raw"  # these models carry no saved scale


def test_fuzzed_requests_never_5xx(served):
    """Property-based fuzzing, 1,200 cases over the four POST endpoints: random JSON and near-valid bodies."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    port = served["port"]
    scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=30)
    json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=10), inner, max_size=4), max_leaves=12)
    text = st.text(max_size=60)
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", ""]), "content": text})
    prompt = text | st.lists(message, max_size=3) | json_values
    item = st.fixed_dictionaries({"response": prompt}, optional={"prompt": prompt, "x": json_values})
    bodies = {
        "/score": st.fixed_dictionaries({}, optional={"items": st.lists(item, max_size=4) | json_values,
                                                      "prompt": prompt, "response": prompt,
                                                      "normalize": json_values}) | json_values,
        "/score_group": st.fixed_dictionaries({"prompt": prompt, "responses": st.lists(prompt, max_size=4)},
                                              optional={"normalize": st.booleans()}) | json_values,
        "/get_reward": st.fixed_dictionaries({"query": st.lists(text, max_size=4) | json_values},
                                             optional={"prompts": st.lists(text, max_size=4),
                                                       "labels": json_values}) | json_values,
        "/classify": st.fixed_dictionaries({"input": text | st.lists(text, max_size=3)},
                                           optional={"model": text, "activation": json_values}) | json_values,
    }
    seen = {"n": 0, "ok": 0}

    for path, strategy in bodies.items():
        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(body=strategy)
        def check(body):
            status, out, _ = post(port, path, body)
            seen["n"] += 1
            seen["ok"] += status == 200
            assert status < 500, (path, body, status, out)

        check()
    assert seen["n"] >= 1200
    assert seen["ok"] > 50  # the generator reaches the scoring path, not only validation errors


def test_killed_replica_loses_no_request_and_overload_gets_503(served):
    import ray

    port = served["port"]
    client = RewardClient(f"http://127.0.0.1:{port}", token=TOKEN, retries=10, backoff_s=0.2)
    expected = dict(zip(range(3), plain_transformers_scores(served["qwen"], [PROMPT + r for r in RESPONSES[:3]])))
    results, errors = {}, []

    def one(i):
        try:
            results[i] = client.score([PROMPT], [RESPONSES[i % 3]])[0]
        except Exception as err:  # noqa: BLE001 - recorded and asserted on below
            errors.append(repr(err))

    replicas = [name for name in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in name["name"] and "::main#scorer" in name["name"]]
    assert len(replicas) == 2, replicas
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(300)]
        time.sleep(1.0)
        victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
        ray.kill(victim, no_restart=True)
        for f in futures:
            f.result()
    assert errors == []
    assert len(results) == 300
    for i, reward in results.items():
        assert reward == pytest.approx(expected[i % 3], abs=1e-4)

    # Overload: the tight app admits 2 requests at a time; 48 concurrent long groups exceed it.
    big = {"prompt": PROMPT, "responses": [r * 3 for r in RESPONSES[:3]] * 2}
    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda _: post(port, "/tight/score_group", big), range(48)))
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    assert all(a[2].get("retry-after") or a[2].get("Retry-After") for a in answers if a[0] == 503)
    assert post(port, "/tight/score", {"prompt": "a", "response": "b"})[0] == 200  # recovered


def _running_scorers(app: str) -> int:
    from ray import serve

    deployments = serve.status().applications[app].deployments
    return sum(d.replica_states.get("RUNNING", 0) for name, d in deployments.items() if name.startswith("scorer"))


def test_sustained_load_scales_the_scorers_up_and_every_request_is_answered(served):
    """max_replicas=2, a target of 1 request in flight per replica: under 8 concurrent clients Serve adds
    the second scorer replica; requests sent while it starts are all answered, none from a third."""
    port, statuses, stop = served["port"], [], threading.Event()
    expected = plain_transformers_scores(served["raw_qwen"], [PROMPT + RESPONSES[0]])[0]
    body = {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES[:3] * 8]}

    def client():
        while not stop.is_set():
            status, answer, _ = post(port, "/auto/score", body)
            statuses.append(status)
            if status == 200:
                assert answer["rewards"][0] == pytest.approx(expected, abs=1e-4)

    counts = [_running_scorers("auto")]
    assert counts == [1]
    with ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(client) for _ in range(8)]
        deadline = time.time() + 120
        while counts[-1] < 2 and time.time() < deadline:
            time.sleep(0.5)
            counts.append(_running_scorers("auto"))
        scaled_after = len(statuses)
        for _ in range(4):  # requests keep flowing to both replicas, and no third one comes
            time.sleep(0.5)
            counts.append(_running_scorers("auto"))
        stop.set()
        for c in clients:
            c.result()
    assert counts[-1] == 2 and max(counts) == 2, f"replicas {counts} after {len(statuses)} requests"
    assert len(statuses) > scaled_after and set(statuses) == {200}, sorted(set(statuses))


def test_serve_config_file_is_valid_and_builds():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from rmray.serve.settings import ServeSettings

    path = os.path.join(os.path.dirname(__file__), "..", "jobs", "serve.yaml")
    with open(path) as f:
        config = yaml.safe_load(f)
    schema = ServeDeploySchema.parse_obj(config)
    app = schema.applications[0]
    assert app.import_path == "rmray.serve.app:build_app"
    assert schema.http_options.host == "127.0.0.1"
    settings = ServeSettings.from_dict(app.args)
    assert settings.model_dirs and settings.host == "127.0.0.1"
    with pytest.raises(ValueError, match="unknown serve setting"):
        ServeSettings.from_dict({**app.args, "replica": 2})


def _listening(root_pid: int, pid_filter) -> dict[str, list[str]]:
    """Listening TCP addresses of ``root_pid``'s descendants whose command line passes ``pid_filter``."""
    import psutil

    out = {}
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if pid_filter(cmd):
            try:
                out[cmd[:60]] = [c.laddr.ip for c in proc.net_connections(kind="tcp") if c.status == "LISTEN"]
            except psutil.Error:
                pass
    return out


@pytest.mark.ray
def test_rmray_serve_command_end_to_end(rm_qwen, tmp_path):
    """The CLI in its own process and its own Ray: ready, scores, no replica listening on every
    interface, exits cleanly on SIGTERM (how Docker, Kubernetes and systemd stop it)."""
    import signal
    import subprocess
    import sys

    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rmray.cli", "serve", rm_qwen, "--port", str(port),
                             "--ray-address", "local", "--num-cpus", "0.25"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while "rmray: serving" not in (tmp_path / "serve.log").read_text() and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        status, body, _ = post(port, "/score", {"prompt": PROMPT, "response": RESPONSES[0]}, token=None)
        assert status == 200, body
        assert body["rewards"][0] == pytest.approx(plain_transformers_scores(rm_qwen, [PROMPT + RESPONSES[0]])[0],
                                                   abs=1e-4)
        replicas = _listening(proc.pid, lambda cmd: "ServeReplica" in cmd)
        assert len(replicas) == 2 and all(replicas.values()), replicas
        assert not [ip for ips in replicas.values() for ip in ips if ip in ("::", "0.0.0.0")], replicas
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
        out = (tmp_path / "serve.log").read_text()
        assert f"http://127.0.0.1:{port}" in out and "rmray: shutting down" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _rmray(*args, timeout=60):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "rmray.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_ADDRESS": ""})


def test_rmray_serve_refuses_a_taken_port_before_ray_starts(rm_qwen, tmp_path):
    """A Serve proxy opens its port with SO_REUSEPORT, so a second server would start and share it."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as Ray Serve's proxy does
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = _rmray("serve", rm_qwen, "--port", str(port), "--ray-address", "local")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and lines[0].startswith("rmray: error:"), result.stderr
    assert "starting Ray" not in result.stdout


def test_rmray_serve_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    for path in (str(tmp_path), str(tmp_path / "missing")):
        result = _rmray("serve", path, "--port", str(_free_port()))
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and path in lines[0] and "fix:" in lines[0], result.stderr


def test_big_requests_go_to_the_scorer_in_pieces():
    from rmray.serve.app import _pieces

    ids = [[1] * 5, [1] * 5, [1] * 7, [1] * 30, [1] * 2]
    assert [[len(s) for s in p] for p in _pieces(ids, 12)] == [[5, 5], [7], [30], [2]]
    assert _pieces([], 12) == []
