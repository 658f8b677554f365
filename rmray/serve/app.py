"""The Ray Serve application: an HTTP/handle ingress in front of one batched scorer per model.

Why two kinds of deployment: the ingress tokenizes (each model under its own scoring spec), validates
and answers every protocol; scorer replicas (:mod:`rmray.serve.scorer`) only run forwards. Scale the
two independently: a cheap ingress, scorer replicas per GPU. The scorers run in Serve applications of
their own, one per model and version, so a retrained model can be swapped in under load
(:mod:`rmray.serve.versions`).
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from ray import serve

from rmray.core.contract import combine, preference_matrix, split_attributes
from rmray.core.evaluation import ensemble
from rmray.core.steps import aggregate

from .endpoints import ScoreRequest, router
from .guard import Guard
from .listen import bind_replica_grpc_privately
from .schemas import validation_error
from .scorer import ServedModel
from .settings import ServeSettings
from .telemetry import Telemetry
from .versions import Version, check_swap, delete, deploy, initial_version, registry, remember, start_key

logger = logging.getLogger("rmray.serve")
TOKENIZE_THREADS = 4  # a few big bodies in tokenization leave a thread for the small requests behind them


def _unavailable(err: BaseException) -> bool:
    """A dead or restarting replica, or a full queue: load, worth a retry. Anything else (an exception the
    scorer raised) is a fault that a retry repeats."""
    from ray import exceptions as rex
    from ray.serve import exceptions as sex

    transient = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError,
                 rex.OutOfMemoryError, sex.BackPressureError, sex.DeploymentUnavailableError,
                 sex.ReplicaUnavailableError)
    return isinstance(err, transient) and not isinstance(err, rex.RayTaskError)


def _cause(err: BaseException) -> str:
    """The scorer's own exception, one line: ``IndexError: index out of range in self``."""
    cause = getattr(err, "cause", None) or err
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"[:500]


class _RewardAPI:
    """Plain class; Serve calls ``__serve_build_asgi_app__`` on the replica after ``__init__``, so the
    FastAPI app is built there (nothing of it is pickled): the routes of :mod:`rmray.serve.endpoints`,
    which reach this instance as their service (``rewards``, ``version``, ``swap``)."""

    def __init__(self, settings: dict):
        s = self.settings = ServeSettings.from_dict(settings)
        bind_replica_grpc_privately()
        self.guard_settings = SimpleNamespace(token=s.api_token, max_body_bytes=s.max_body_bytes,
                                              max_inflight=s.max_inflight)
        self.app_name = serve.get_replica_context().app_name
        self.version = initial_version(s, self.app_name)  # the scorers' applications, deployed or adopted
        self.swapping = asyncio.Lock()
        self.telemetry = Telemetry(self.app_name)
        # Tokenizing a multi-megabyte body takes seconds; on the event loop it would stall every other
        # request and /healthz. Threads: the fast tokenizers release the GIL while they work.
        self.tokenize_pool = ThreadPoolExecutor(TOKENIZE_THREADS, thread_name_prefix="rmray-tokenize")
        self.started = time.time()

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = FastAPI(title="rmray reward model API",
                      description="Batched reward scoring: rmray's own protocol, OpenRLHF's remote RM "
                                  "(/get_reward) and vLLM's pooling API (/classify).")
        api.add_middleware(Guard, settings=self.guard_settings, telemetry=self.telemetry)
        api.exception_handler(RequestValidationError)(validation_error)
        api.state.service = self  # what every route in rmray.serve.endpoints reaches through ``serving``
        api.get("/healthz")(self.healthz)
        api.include_router(router)
        return api

    async def healthz(self) -> dict:
        version = self.version
        return {"status": "ok", "models": version.names, "model_version": version.id,
                "uptime_s": round(time.time() - self.started, 1)}

    async def score_items(self, items: list[dict], normalize: bool = False) -> dict:
        """Handle API for RL loops inside the cluster: ``[{prompt, response}, ...]`` -> the /score body."""
        request = ScoreRequest(items=items, normalize=normalize)
        out = await self.rewards(lambda m: m.encode(request.as_items(), "items"), "items", normalize,
                                 endpoint="handle")
        out.pop("_tokens", None)
        out.pop("_names", None)
        return out

    async def rewards(self, encode_for, kind: str, normalize: bool, preferences: bool = False, *,
                      endpoint: str) -> dict:
        """``encode_for(model) -> (ids, truncated)`` runs on the tokenizer threads; the forwards on the scorers.
        The whole request is scored by the version serving when it arrived, and the answer names it."""
        version = self.version
        version.inflight += 1
        try:
            return await self._rewards(version, encode_for, kind, normalize, preferences, endpoint)
        finally:
            version.inflight -= 1

    async def _rewards(self, version: Version, encode_for, kind, normalize, preferences, endpoint) -> dict:
        loop = asyncio.get_running_loop()
        encoded = [await loop.run_in_executor(self.tokenize_pool, encode_for, m) for m in version.models]
        per_model, attributes = split_attributes(version.names, version.specs,
                                                 await self._forward(version, kind, [ids for ids, _ in encoded]))
        truncated = [any(flags) for flags in zip(*[t for _, t in encoded])]
        body = {"truncated": truncated, "_tokens": [len(x) for x in encoded[0][0]], "_names": version.names}
        body.update(combine(version.names, version.specs, per_model, version.ensemble))
        body["model_version"] = version.id
        if attributes:
            body["attributes"] = attributes
        if normalize:
            normed = [m.spec.normalize(r) for m, r in zip(version.models, per_model)]
            if all(n is not None for n in normed):
                body["normalized_rewards"] = ensemble(normed)[0]
        if preferences:
            body["preferences"] = preference_matrix(version.specs, per_model)
        self.telemetry.scored(endpoint, version, per_model, body)
        return body

    async def step_rewards(self, encode_for, *, endpoint: str) -> dict:
        """A process model's step rewards per item and its one reward per item (the steps aggregated by the
        model's ``prm_aggregate``); ``encode_for`` as in :meth:`rewards`."""
        version = self.version
        if not version.models[0].process:
            raise HTTPException(422, "step rewards need a process reward model (kind: process); the served "
                                     "models give one reward per response: use /score")
        version.inflight += 1
        try:
            model = version.models[0]
            ids, truncated = await asyncio.get_running_loop().run_in_executor(self.tokenize_pool, encode_for, model)
            steps = (await self._forward(version, "steps", [ids]))[0]
            rewards = [aggregate(s, model.spec.prm_aggregate) for s in steps]
            body = {"step_rewards": steps, "rewards": rewards, "model_version": version.id, "truncated": truncated,
                    "_tokens": [len(x) for x in ids]}
            self.telemetry.scored(endpoint, version, [rewards], body)
            return body
        finally:
            version.inflight -= 1

    async def _forward(self, version: Version, kind: str, ids_per_model: list) -> list[list[float]]:
        try:
            return await asyncio.gather(*[self._forward_one(m, kind, ids) for m, ids in zip(version.models, ids_per_model)])
        except Exception as err:  # noqa: BLE001 - sorted into load (503) and faults (500) below
            if _unavailable(err):  # a replica died or restarted, or the queue is full: retry helps
                logger.warning("scorer unavailable: %r", err)
                raise HTTPException(503, "a scorer replica is unavailable; retry",
                                    headers={"Retry-After": "1"}) from None
            logger.error("scorer failed: %s", _cause(err))
            raise HTTPException(500, f"the scorer failed: {_cause(err)}") from None

    async def _forward_one(self, model: ServedModel, kind: str, ids: list[list[int]]) -> list[float]:
        """A big request goes to the scorer in pieces of about ``max_batch_tokens``, one after another:
        a small request arriving meanwhile joins the next piece's batch instead of waiting behind the
        whole big one. A group stays whole (its prompt is shared)."""
        if kind == "group":
            return await model.handle.score.remote((kind, ids))
        rewards = []
        for piece in _pieces(ids, self.settings.max_batch_tokens):
            rewards += await model.handle.score.remote((kind, piece))
        return rewards

    async def swap(self, model_dirs: list[str], names: list[str] | None) -> dict:
        """Serve ``model_dirs`` instead of the current models (see :mod:`rmray.serve.versions`): returns once
        the new version answers every new request and the old one's replicas are gone."""
        if self.swapping.locked():
            raise HTTPException(409, "a swap is already in progress; retry when it returns")
        async with self.swapping:
            loop = asyncio.get_running_loop()
            old = self.version
            wanted = await loop.run_in_executor(None, check_swap, self.settings, model_dirs, names, old)
            try:
                new = await loop.run_in_executor(None, deploy, wanted, wanted.model_dirs, wanted.model_names,
                                                 self.app_name, old.generation + 1)
            except Exception as err:  # noqa: BLE001 - the old version keeps serving; the caller is told why
                logger.error("swap failed: %s", _cause(err))
                status = 503 if isinstance(err, TimeoutError) else 422
                raise HTTPException(status, f"the new models did not start: {_cause(err)}; "
                                            f"still serving {old.id}") from None
            self.version = new  # requests from here on; the ones in flight finish on the old version
            while old.inflight:
                await asyncio.sleep(0.05)
            await loop.run_in_executor(None, delete, old.apps)
            await loop.run_in_executor(None, remember, registry(self.app_name), start_key(self.settings), new)
            logger.info("swapped %s -> %s", old.id, new.id)
            return {**new.describe(), "previous_model_version": old.id}


def _pieces(ids: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Consecutive runs of sequences of at most ``budget`` tokens together (a longer one alone)."""
    pieces, current, tokens = [], [], 0
    for seq in ids:
        if current and tokens + len(seq) > budget:
            pieces.append(current)
            current, tokens = [], 0
        current.append(seq)
        tokens += len(seq)
    return pieces + [current] if current else pieces


RewardAPI = serve.deployment(name="ingress")(serve.ingress()(_RewardAPI))


def build_app(args: dict | ServeSettings):
    """Serve application builder (``import_path: rmray.serve.app:build_app`` in a Serve config file): the
    ingress; it deploys the scorers' applications itself (see :mod:`rmray.serve.versions`)."""
    s = args if isinstance(args, ServeSettings) else ServeSettings.from_dict(dict(args))
    return RewardAPI.options(ray_actor_options={"num_cpus": s.ingress_num_cpus},
                             max_ongoing_requests=s.max_inflight + 16,
                             max_queued_requests=s.max_queued_requests).bind(s.__dict__.copy())
