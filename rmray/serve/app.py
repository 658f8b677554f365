"""The Ray Serve application: an HTTP/handle ingress in front of one batched scorer per model.

Why two deployments: the ingress tokenizes (each model under its own scoring spec), validates and
answers every protocol; scorer replicas only run forwards, merging concurrent requests with
``@serve.batch`` and cutting the merged work into length-sorted token-budget batches. Groups (one
prompt, N responses) use the shared-prefix forward, so a prompt is computed once for causal models.
Scale the two independently: many cheap ingress replicas, scorer replicas per GPU.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from ray import serve

from rmray.core.contract import combine, encode_item, encode_query, ensemble_rule, preference_matrix, split_attributes
from rmray.core.evaluation import ensemble
from rmray.core.formats import BadRow
from rmray.core.spec import ScoringSpec
from rmray.core.tokenize import encode_text, keep_end
from rmray.core.tokenizer import load_tokenizer

from .endpoints import ScoreRequest, router
from .guard import Guard
from .listen import bind_replica_grpc_privately
from .schemas import Item, validation_error
from .settings import ServeSettings

logger = logging.getLogger("rmray.serve")
TOKENIZE_THREADS = 4  # a few big bodies in tokenization leave a thread for the small requests behind them


class _ModelScorer:
    """One model's forwards; every call is ``(kind, sequences)``, kind ``items`` or ``group``."""

    def __init__(self, model_dir: str, settings: dict):
        import torch

        from rmray.core.scoring import Scorer

        s = ServeSettings.from_dict(settings)
        bind_replica_grpc_privately()
        torch.set_num_threads(s.torch_threads or max(1, int(s.num_cpus)))
        device = "cuda" if s.num_gpus > 0 and torch.cuda.is_available() else None
        self.scorer = Scorer.load(model_dir, trust_remote_code=s.trust_remote_code, device=device,
                                  precision=s.precision)
        self.max_batch_tokens = s.max_batch_tokens
        self.executor = ThreadPoolExecutor(1)  # forwards off the event loop, one at a time
        self.score.set_max_batch_size(s.max_batch_size)
        self.score.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def score(self, calls: list[tuple[str, list[list[int]]]]) -> list[list[float]]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._score_calls, calls)

    def _score_calls(self, calls):
        """Rewards per call; a per-attribute model's are ``[reward, output_1, ..., output_A]`` each."""
        singles = [seq for kind, seqs in calls if kind == "items" for seq in seqs]
        groups = [seqs for kind, seqs in calls if kind == "group"]
        options = {"max_batch_tokens": self.max_batch_tokens, "per_attribute": bool(self.scorer.attributes)}
        single_rewards = iter(self.scorer.score_ids(singles, **options))
        group_rewards = iter(self.scorer.score_id_groups(groups, **options))
        return [[next(single_rewards) for _ in seqs] if kind == "items" else next(group_rewards)
                for kind, seqs in calls]


class _Model:
    """What the ingress needs of a model: its tokenizer and scoring spec (no weights)."""

    def __init__(self, name: str, model_dir: str, handle, trust_remote_code: bool):
        self.name, self.handle = name, handle
        self.spec = ScoringSpec.load(model_dir)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.vocab_size = len(self.tokenizer)

    def encode(self, items: list[Item], where: str) -> tuple[list[list[int]], list[bool]]:
        """``(prompt, response)`` items under the scoring contract (:func:`rmray.core.contract.encode_item`)."""
        return _encode_all(items, where, lambda item: encode_item(self.tokenizer, self.spec, _plain(item.prompt),
                                                                  _plain(item.response)))

    def encode_queries(self, queries: list[str], prompts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """OpenRLHF's whole texts (:func:`rmray.core.contract.encode_query`)."""
        return _encode_all(list(zip(queries, prompts)), "query",
                           lambda qp: encode_query(self.tokenizer, self.spec, *qp))

    def encode_texts(self, texts: list, where: str, add_special_tokens: bool = True,
                     max_length: int | None = None) -> tuple[list[list[int]], list[bool]]:
        """Whole texts (or token ids) whose prompt boundary is unknown; too long, the end is kept."""
        def one(text):
            if isinstance(text, str):
                return encode_text(self.tokenizer, self.spec, text, add_special_tokens=add_special_tokens,
                                   max_length=max_length)
            if max(text) >= self.vocab_size:
                raise ValueError(f"token id {max(text)} is outside the model's vocabulary of {self.vocab_size}")
            return keep_end(text, self.spec, max_length)

        return _encode_all(texts, where, one)


def _encode_all(inputs: list, where: str, encode_one) -> tuple[list[list[int]], list[bool]]:
    ids, truncated = [], []
    for i, value in enumerate(inputs):
        try:
            enc = encode_one(value)
        except BadRow as err:
            raise HTTPException(422, f"{where}[{i}].{err.field or 'text'}: {err}") from None
        except ValueError as err:
            raise HTTPException(422, f"{where}[{i}]: {err}") from None
        ids.append(enc.ids)
        truncated.append(enc.truncated)
    return ids, truncated


def _plain(text):
    return [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in text] if isinstance(text, list) else text


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
    which reach this instance as their service (``rewards``, ``models``)."""

    def __init__(self, scorers: list, settings: dict):
        s = ServeSettings.from_dict(settings)
        bind_replica_grpc_privately()
        self.guard_settings = SimpleNamespace(token=s.api_token, max_body_bytes=s.max_body_bytes,
                                              max_inflight=s.max_inflight)
        self.models = [_Model(n, d, h, s.trust_remote_code) for n, d, h in zip(s.model_names, s.model_dirs, scorers)]
        self.max_batch_tokens = s.max_batch_tokens
        self.specs, self.names = [m.spec for m in self.models], [m.name for m in self.models]
        self.ensemble = ensemble_rule(self.specs, s.ensemble)
        # Tokenizing a multi-megabyte body takes seconds; on the event loop it would stall every other
        # request and /healthz. Threads: the fast tokenizers release the GIL while they work.
        self.tokenize_pool = ThreadPoolExecutor(TOKENIZE_THREADS, thread_name_prefix="rmray-tokenize")
        self.started = time.time()

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = FastAPI(title="rmray reward model API",
                      description="Batched reward scoring: rmray's own protocol, OpenRLHF's remote RM "
                                  "(/get_reward) and vLLM's pooling API (/classify).")
        api.add_middleware(Guard, settings=self.guard_settings)
        api.exception_handler(RequestValidationError)(validation_error)
        api.state.service = self  # what every route in rmray.serve.endpoints reaches through ``serving``
        api.get("/healthz")(self.healthz)
        api.include_router(router)
        return api

    async def healthz(self) -> dict:
        return {"status": "ok", "models": [m.name for m in self.models], "uptime_s": round(time.time() - self.started, 1)}

    async def score_items(self, items: list[dict], normalize: bool = False) -> dict:
        """Handle API for RL loops inside the cluster: ``[{prompt, response}, ...]`` -> the /score body."""
        request = ScoreRequest(items=items, normalize=normalize)
        out = await self.rewards(lambda m: m.encode(request.as_items(), "items"), "items", normalize)
        out.pop("_tokens", None)
        return out

    async def rewards(self, encode_for, kind: str, normalize: bool, preferences: bool = False) -> dict:
        """``encode_for(model) -> (ids, truncated)`` runs on the tokenizer threads; the forwards on the scorers."""
        loop = asyncio.get_running_loop()
        encoded = [await loop.run_in_executor(self.tokenize_pool, encode_for, m) for m in self.models]
        per_model, attributes = split_attributes(self.names, self.specs,
                                                 await self._forward(kind, [ids for ids, _ in encoded]))
        truncated = [any(flags) for flags in zip(*[t for _, t in encoded])]
        body = {"truncated": truncated, "_tokens": [len(x) for x in encoded[0][0]]}
        body.update(combine(self.names, self.specs, per_model, self.ensemble))
        if attributes:
            body["attributes"] = attributes
        if normalize:
            normed = [m.spec.normalize(r) for m, r in zip(self.models, per_model)]
            if all(n is not None for n in normed):
                body["normalized_rewards"] = ensemble(normed)[0]
        if preferences:
            body["preferences"] = preference_matrix(self.specs, per_model)
        return body

    async def _forward(self, kind: str, ids_per_model: list) -> list[list[float]]:
        try:
            return await asyncio.gather(*[self._forward_one(m, kind, ids) for m, ids in zip(self.models, ids_per_model)])
        except Exception as err:  # noqa: BLE001 - sorted into load (503) and faults (500) below
            if _unavailable(err):  # a replica died or restarted, or the queue is full: retry helps
                logger.warning("scorer unavailable: %r", err)
                raise HTTPException(503, "a scorer replica is unavailable; retry",
                                    headers={"Retry-After": "1"}) from None
            logger.error("scorer failed: %s", _cause(err))
            raise HTTPException(500, f"the scorer failed: {_cause(err)}") from None


    async def _forward_one(self, model: _Model, kind: str, ids: list[list[int]]) -> list[float]:
        """A big request goes to the scorer in pieces of about ``max_batch_tokens``, one after another:
        a small request arriving meanwhile joins the next piece's batch instead of waiting behind the
        whole big one. A group stays whole (its prompt is shared)."""
        if kind == "group":
            return await model.handle.score.remote((kind, ids))
        rewards = []
        for piece in _pieces(ids, self.max_batch_tokens):
            rewards += await model.handle.score.remote((kind, piece))
        return rewards


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


ModelScorer = serve.deployment(name="scorer")(_ModelScorer)
RewardAPI = serve.deployment(name="ingress")(serve.ingress()(_RewardAPI))


def _autoscaling(s: ServeSettings) -> dict:
    """Serve's own autoscaler (it counts the requests queued and in flight at each scorer replica)."""
    return {"min_replicas": s.replicas, "initial_replicas": s.replicas, "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests, "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s}


def build_app(args: dict | ServeSettings):
    """Serve application builder (``import_path: rmray.serve.app:build_app`` in a Serve config file)."""
    s = args if isinstance(args, ServeSettings) else ServeSettings.from_dict(dict(args))
    settings = s.__dict__.copy()
    scaling = {"autoscaling_config": _autoscaling(s)} if s.max_replicas else {"num_replicas": s.replicas}
    scorers = [
        ModelScorer.options(name=f"scorer-{name}", ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
                            max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests,
                            **scaling).bind(model_dir, settings)
        for name, model_dir in zip(s.model_names, s.model_dirs)
    ]
    return RewardAPI.options(ray_actor_options={"num_cpus": s.ingress_num_cpus},
                             max_ongoing_requests=s.max_inflight + 16,
                             max_queued_requests=s.max_queued_requests).bind(scorers, settings)
