"""The served version: which models answer, where their scorers run, and how a swap replaces them.

Each model's scorer deployment is a Serve application of its own, beside the ingress application:
``<ingress app>-scorers-g<generation>-m<index>``. A swap (``POST /admin/models``) is blue/green with
Serve's own application lifecycle:

1. the new version's applications are deployed next to the serving ones; Serve reports them RUNNING
   once every replica passed its health check (``serve.run_many(..., wait_for_applications_running)``);
2. the ingress points requests that arrive from then on at the new version -- a request keeps the
   version it started with, so each answer is scored wholly by one version and names it;
3. the old version's requests in flight finish, then its applications are deleted (``serve.delete``).

Why not a deployment update: Serve's rolling update stops old replicas before starting new ones, so a
one-replica model has no scorer while the new one loads. Why not model multiplexing: it loads the new
model inside the serving replicas (twice the memory, and the request that asks first waits for the load).

A small detached actor per ingress application remembers the version being served, so an ingress
replica that restarts serves it, not the models it was first started with.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import ray
from fastapi import HTTPException
from ray import serve

from rmray.core.contract import ensemble_rule
from rmray.core.fingerprint import models_version
from rmray.core.spec import check_model_dir
from rmray.errors import UsageError

from .scorer import ServedModel, scorer_app
from .settings import ServeSettings

REGISTRY_NAMESPACE = "rmray-serve"


@dataclass
class Version:
    """One set of served models; ``id`` is the ``model_version`` every answer it scores carries."""

    generation: int
    models: list[ServedModel]
    apps: list[str]
    ensemble: str
    id: str
    inflight: int = 0
    names: list[str] = field(init=False)
    specs: list = field(init=False)

    def __post_init__(self):
        self.names, self.specs = [m.name for m in self.models], [m.spec for m in self.models]

    def describe(self) -> dict:
        return {"model_version": self.id, "generation": self.generation, "ensemble": self.ensemble,
                "models": [{"name": m.name, "path": m.model_dir, "fingerprint": m.fingerprint} for m in self.models]}


def app_names(ingress_app: str, generation: int, count: int) -> list[str]:
    return [f"{ingress_app}-scorers-g{generation}-m{i}" for i in range(count)]


def scorer_apps(ingress_app: str) -> list[str]:
    """Every scorer application of ``ingress_app`` that Serve runs now, any generation."""
    return sorted(name for name in serve.status().applications if name.startswith(f"{ingress_app}-scorers-g"))


def load_version(s: ServeSettings, model_dirs: list[str], names: list[str], apps: list[str],
                 generation: int) -> Version:
    """The ingress's side of a deployed version: tokenizers, specs and handles (no weights)."""
    models = [ServedModel(n, d, serve.get_deployment_handle("scorer", app), s.trust_remote_code)
              for n, d, app in zip(names, model_dirs, apps)]
    rule = ensemble_rule([m.spec for m in models], s.ensemble)
    return Version(generation, models, apps, rule, models_version([m.fingerprint for m in models], rule))


def deploy(s: ServeSettings, model_dirs: list[str], names: list[str], ingress_app: str, generation: int) -> Version:
    """Deploy one scorer application per model and wait until Serve reports every one RUNNING. Blocking:
    call it from a thread. A version that does not come up is deleted again and the error raised."""
    from ray.serve.api import RunTarget

    apps = app_names(ingress_app, generation, len(model_dirs))
    try:
        serve.run_many([RunTarget(scorer_app(d, s), name=app, route_prefix=None) for d, app in zip(model_dirs, apps)],
                       wait_for_applications_running=False)
        _wait_running(apps, s.start_timeout_s)
        return load_version(s, model_dirs, names, apps, generation)
    except BaseException as err:
        reason = _failure(apps)
        delete(apps)
        if reason:
            raise RuntimeError(reason) from err
        raise


def _wait_running(apps: list[str], timeout_s: float) -> None:
    """Until Serve reports every application RUNNING; a failed one, or one still deploying after
    ``timeout_s`` (replicas the cluster has no room for wait forever), raises."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications
        states = {app: str(getattr(status.get(app), "status", "NOT_STARTED")) for app in apps}
        if all(state.endswith("RUNNING") for state in states.values()):
            return
        if any(state.endswith("DEPLOY_FAILED") for state in states.values()):
            raise RuntimeError(f"scorer applications failed to deploy: {states}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the new scorer replicas were not running after {timeout_s:.0f} s: is there room on "
                               f"the cluster for both versions' replicas (--num-cpus/--num-gpus each)? (start_timeout_s)")
        time.sleep(0.5)


def _failure(apps: list[str]) -> str | None:
    """The replicas' own error (``SafetensorError: ...``), from Serve's status of the failed applications."""
    status = serve.status().applications
    for app in apps:
        for deployment in getattr(status.get(app), "deployments", {}).values():
            lines = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
            errors = [line for line in lines if "Error" in line.split(":")[0]]
            if errors or lines:
                return (errors or lines)[-1][:500]
    return None


def check_swap(s: ServeSettings, model_dirs: list[str], names: list[str] | None, current: Version) -> ServeSettings:
    """The settings of the version asked for, checked before anything deploys: every folder an rmray
    model with weights whose tokenizer and spec load, and able to answer what the serving version
    answers. Otherwise a 422 naming the folder and the reason."""
    try:
        wanted = dataclasses.replace(s, model_dirs=list(model_dirs), model_names=names)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    models = []
    for name, path in zip(wanted.model_names, wanted.model_dirs):
        try:
            check_model_dir(path)
            if not glob.glob(os.path.join(path, "*.safetensors")):
                raise UsageError(f"{path} has no *.safetensors weights")
            models.append(ServedModel(name, path, None, s.trust_remote_code))
        except UsageError as err:
            raise HTTPException(422, str(err)) from None
        except Exception as err:  # noqa: BLE001 - a tokenizer or spec that does not load: the reason, one line
            raise HTTPException(422, f"{path} cannot be served: {type(err).__name__}: {err}") from None
    problem = _cannot_replace(current.models, models)
    if problem:
        raise HTTPException(422, problem)
    return wanted


def _cannot_replace(old: list[ServedModel], new: list[ServedModel]) -> str | None:
    """What the serving models answer that the new ones could not: chat messages, per-attribute scores."""
    if all(m.tokenizer.chat_template for m in old):
        for m in new:
            if not m.tokenizer.chat_template:
                return (f"{m.model_dir} has no chat template: the served models score chat messages, and "
                        "requests with messages would fail (save the tokenizer with a chat template)")
    problem = process_ensemble_problem([m.spec.kind for m in new])
    if problem:
        return problem
    if any(m.process for m in old) != any(m.process for m in new):
        return ("a process reward model and reward models answer different endpoints (/score_steps): swap a "
                "process model only for another one, a reward model for reward models")
    if any(m.spec.attributes for m in old) and not any(m.spec.attributes for m in new):
        return ("the served models answer per-attribute scores and the new ones have no attributes: "
                "clients reading 'attributes' would break")
    return None


def process_ensemble_problem(kinds: list[str]) -> str | None:
    """A process reward model serves alone: its reward is a probability aggregated over steps, with no one
    rule to combine it with other models' rewards or step lists."""
    if len(kinds) > 1 and "process" in kinds:
        return "a process reward model (kind: process) is served alone, not in an ensemble (fix: serve it by itself)"
    return None


def delete(apps: list[str]) -> None:
    """Delete scorer applications (blocking until their replicas are gone); missing ones are skipped."""
    running = set(serve.status().applications)
    for app in apps:
        if app in running:
            serve.delete(app, _blocking=True)


@ray.remote(num_cpus=0)
class _Registry:
    """What one ingress application serves now: ``{"key", "generation", "model_dirs", "model_names"}``."""

    def __init__(self):
        self.state: dict | None = None

    def get(self) -> dict | None:
        return self.state

    def set(self, state: dict) -> None:
        self.state = state


def registry(ingress_app: str):
    return _Registry.options(name=f"served-{ingress_app}", namespace=REGISTRY_NAMESPACE, lifetime="detached",
                             get_if_exists=True).remote()


def start_key(s: ServeSettings) -> str:
    """What an ingress was started with: a restart with the same arguments adopts the swapped version."""
    return hashlib.sha256(json.dumps([s.model_dirs, s.model_names]).encode()).hexdigest()[:16]


def initial_version(s: ServeSettings, ingress_app: str) -> Version:
    """The version a (re)started ingress replica serves: the one its application serves already when it was
    started with these arguments (a replica restart, after swaps included), else ``s.model_dirs``, deployed."""
    reg = registry(ingress_app)
    state, key = ray.get(reg.get.remote()), start_key(s)
    running = set(serve.status().applications)
    if state and state["key"] == key:
        apps = app_names(ingress_app, state["generation"], len(state["model_dirs"]))
        if all(app in running for app in apps):
            return load_version(s, state["model_dirs"], state["model_names"], apps, state["generation"])
    generation = state["generation"] + 1 if state else 0
    version = deploy(s, s.model_dirs, s.model_names, ingress_app, generation)
    remember(reg, key, version)
    delete([app for app in scorer_apps(ingress_app) if app not in version.apps])  # a former start's leftovers
    return version


def remember(reg, key: str, version: Version) -> None:
    ray.get(reg.set.remote({"key": key, "generation": version.generation,
                            "model_dirs": [m.model_dir for m in version.models], "model_names": version.names}))


def forget(ingress_app: str) -> None:
    """Delete an ingress application's scorer applications and its registry: what ``serve.delete(app)``
    leaves behind (``serve.shutdown()`` deletes every application; the registry then remains)."""
    delete(scorer_apps(ingress_app))
    forget_registry(ingress_app)


def forget_registry(ingress_app: str) -> None:
    try:
        ray.kill(ray.get_actor(f"served-{ingress_app}", namespace=REGISTRY_NAMESPACE))
    except ValueError:
        pass
