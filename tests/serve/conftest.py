"""The serving tests' one Serve instance (:func:`served`) and their HTTP helpers."""

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from rmray.core.spec import ScoringSpec

from ..conftest import free_port, user_env

TOKEN = "test-token-123"
PROMPT = "\n\nHuman: How do I make my tomato plants produce more fruit?\n\nAssistant:"
RESPONSES = [" Water deeply, feed with potassium, and pinch off suckers.", " No idea.",
             " Plant them in full sun and shake the flowers gently to help pollination.", " " + "grow " * 300]


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


def rmray_command(*args, timeout=60) -> subprocess.CompletedProcess:
    """The ``rmray`` command as a user runs it, in a process of its own (no Ray address inherited)."""
    return subprocess.run([sys.executable, "-m", "rmray.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=user_env(RAY_ADDRESS=""))


@pytest.fixture(scope="package")
def served(ray_cluster, rm_qwen, rm_minilm, rm_qwen_chat, tmp_path_factory):
    """Every app the serving tests call, on one Serve instance and deployed together (each Serve start
    and each replica is a process to start on a busy test box): main (token, normalization stats),
    ensemble, tight (overload), an ensemble on two saved scales, a faulty model, a per-attribute model,
    an autoscaling one (1 to 2 scorer replicas), and for the RL frameworks' clients a Qwen2 RM with
    ChatML (``/chat``) and one without a chat template (``/plain``); a process reward model (``/prm``)."""
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

    # A process reward model (step rewards), on the ChatML tokenizer for message prompts.
    from rmray.testing import build_tiny_prm

    prm = build_tiny_prm(rm_qwen_chat, str(folder / "prm"))
    tiny = dict(num_cpus=0.1, ingress_num_cpus=0.05)  # 1.7 logical CPUs in all, at most: the cluster has 2
    small = dict(tiny, api_token=TOKEN)
    apps = {
        "main": ("/", ServeSettings(model_dirs=[normed], replicas=2, **small)),
        "ens": ("/ens", ServeSettings(model_dirs=[rm_qwen, rm_minilm], model_names=["qwen", "minilm"], **tiny)),
        "tight": ("/tight", ServeSettings(model_dirs=[rm_qwen], max_inflight=2, max_body_bytes=4096, **small)),
        "ensn": ("/ensn", ServeSettings(model_dirs=[normed, scaled], model_names=["a", "b"], **tiny)),
        "faulty": ("/faulty", ServeSettings(model_dirs=[faulty], **tiny)),
        "attr": ("/attr", ServeSettings(model_dirs=[attr], **tiny)),
        "auto": ("/auto", ServeSettings(model_dirs=[rm_qwen], max_replicas=2, target_ongoing_requests=1,
                                        upscale_delay_s=1, **tiny)),
        "chat": ("/chat", ServeSettings(model_dirs=[rm_qwen_chat], **tiny)),
        "plain": ("/plain", ServeSettings(model_dirs=[rm_qwen], **tiny)),
        "prm": ("/prm", ServeSettings(model_dirs=[prm], **tiny)),
    }
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run_many([RunTarget(build_app(settings), name=name, route_prefix=prefix)
                    for name, (prefix, settings) in apps.items()])
    try:
        yield {"port": port, "qwen": normed, "raw_qwen": rm_qwen, "minilm": rm_minilm, "attr": attr,
               "chat": rm_qwen_chat, "prm": prm}
    finally:
        serve.shutdown()


@pytest.fixture(scope="package")
def apps(served):
    """What the RL frameworks' tests call: ``/chat`` (ChatML), ``/plain`` (no chat template) and ``/prm`` (a
    process reward model)."""
    return {"port": served["port"], "chat": served["chat"], "plain": served["raw_qwen"], "prm": served["prm"]}
