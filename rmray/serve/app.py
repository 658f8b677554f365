"""The Ray Serve application: an HTTP/handle ingress in front of one batched scorer per model.

Why two deployments: the ingress tokenizes (each model under its own scoring spec), validates and
answers every protocol; scorer replicas only run forwards, merging concurrent requests with
``@serve.batch`` and cutting the merged work into length-sorted token-budget batches. Groups (one
prompt, N responses) use the shared-prefix forward, so a prompt is computed once for causal models.
Scale the two independently: many cheap ingress replicas, scorer replicas per GPU.
"""

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from rmray.core.formats import BadRow
from rmray.core.model import load_tokenizer
from rmray.core.scoring import ensemble
from rmray.core.spec import ScoringSpec
from rmray.core.tokenize import encode

from .guard import Guard
from .schemas import (
    ClassifyRequest,
    GetRewardRequest,
    GetRewardResponse,
    GroupRequest,
    Item,
    ScoreRequest,
    ScoreResponse,
)
from .settings import ServeSettings

logger = logging.getLogger("rmray.serve")


class _ModelScorer:
    """One model's forwards; every call is ``(kind, sequences)``, kind ``items`` or ``group``."""

    def __init__(self, model_dir: str, settings: dict):
        import torch

        from rmray.core.scoring import Scorer

        s = ServeSettings.from_dict(settings)
        torch.set_num_threads(s.torch_threads or max(1, int(s.num_cpus)))
        device = "cuda" if s.num_gpus > 0 and torch.cuda.is_available() else None
        self.scorer = Scorer.load(model_dir, trust_remote_code=s.trust_remote_code, device=device)
        self.max_batch_tokens = s.max_batch_tokens
        self.executor = ThreadPoolExecutor(1)  # forwards off the event loop, one at a time
        self.score.set_max_batch_size(s.max_batch_size)
        self.score.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def score(self, calls: list[tuple[str, list[list[int]]]]) -> list[list[float]]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._score_calls, calls)

    def _score_calls(self, calls):
        singles = [seq for kind, seqs in calls if kind == "items" for seq in seqs]
        groups = [seqs for kind, seqs in calls if kind == "group"]
        single_rewards = iter(self.scorer.score_ids(singles, max_batch_tokens=self.max_batch_tokens))
        group_rewards = iter(self.scorer.score_id_groups(groups, max_batch_tokens=self.max_batch_tokens))
        return [[next(single_rewards) for _ in seqs] if kind == "items" else next(group_rewards)
                for kind, seqs in calls]


class _Model:
    """What the ingress needs of a model: its tokenizer and scoring spec (no weights)."""

    def __init__(self, name: str, model_dir: str, handle, trust_remote_code: bool):
        self.name, self.handle = name, handle
        self.spec = ScoringSpec.load(model_dir)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)

    def encode(self, items: list[Item], where: str) -> tuple[list[list[int]], list[bool]]:
        ids, truncated = [], []
        for i, item in enumerate(items):
            prompt, response = _plain(item.prompt), _plain(item.response)
            if isinstance(prompt, list) and isinstance(response, str):
                response = [{"role": "assistant", "content": response}]
            try:
                enc = encode(self.tokenizer, self.spec, prompt, response)
            except BadRow as err:
                raise HTTPException(422, f"{where}[{i}].{err.field or 'text'}: {err}") from None
            except ValueError as err:
                raise HTTPException(422, f"{where}[{i}]: {err}") from None
            ids.append(enc.ids)
            truncated.append(enc.truncated)
        return ids, truncated


def _plain(text):
    return [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in text] if isinstance(text, list) else text


class _RewardAPI:
    """Plain class; Serve calls ``__serve_build_asgi_app__`` on the replica after ``__init__``, so the
    FastAPI app is built there (nothing of it is pickled) with routes bound to this instance."""

    def __init__(self, scorers: list, settings: dict):
        s = ServeSettings.from_dict(settings)
        self.guard_settings = SimpleNamespace(token=s.api_token, max_body_bytes=s.max_body_bytes,
                                              max_inflight=s.max_inflight)
        self.models = [_Model(n, d, h, s.trust_remote_code) for n, d, h in zip(s.model_names, s.model_dirs, scorers)]
        self.started = time.time()

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = FastAPI(title="rmray reward model API",
                      description="Batched reward scoring: rmray's own protocol, OpenRLHF's remote RM "
                                  "(/get_reward) and vLLM's pooling API (/classify).")
        api.add_middleware(Guard, settings=self.guard_settings)
        api.exception_handler(RequestValidationError)(_validation_error)
        api.get("/healthz")(self.healthz)
        api.post("/score", response_model=ScoreResponse, response_model_exclude_none=True)(self.score)
        api.post("/score_group", response_model=ScoreResponse, response_model_exclude_none=True)(self.score_group)
        api.post("/get_reward", response_model=GetRewardResponse)(self.get_reward)
        api.post("/classify")(self.classify)
        return api

    async def healthz(self) -> dict:
        return {"status": "ok", "models": [m.name for m in self.models], "uptime_s": round(time.time() - self.started, 1)}

    async def score(self, request: ScoreRequest) -> dict:
        out = await self._score(request.as_items(), "items" if request.items is not None else "item",
                                "items", request.normalize)
        out.pop("_tokens")
        return out

    async def score_group(self, request: GroupRequest) -> dict:
        items = [Item(prompt=request.prompt, response=r) for r in request.responses]
        out = await self._score(items, "responses", "group", request.normalize)
        out.pop("_tokens")
        return out

    async def get_reward(self, request: GetRewardRequest) -> dict:
        if not request.query:  # OpenRLHF shards by server and may send an empty shard
            return {"rewards": [], "scores": [], "extra_logs": {}}
        items = []
        for i, query in enumerate(request.query):
            prompt = request.prompts[i] if request.prompts is not None else ""
            # Split at the prompt when it is a prefix: truncation then cuts the prompt first, as in training.
            if prompt and query.startswith(prompt) and len(query) > len(prompt):
                items.append(Item(prompt=prompt, response=query[len(prompt):]))
            elif query:
                items.append(Item(prompt="", response=query))
            else:
                raise HTTPException(422, f"query[{i}] is empty")
        out = await self._score(items, "query", "items", False)
        return {"rewards": out["rewards"], "scores": out["rewards"], "extra_logs": {}}

    async def classify(self, request: ClassifyRequest) -> dict:
        texts = [request.input] if isinstance(request.input, str) else request.input
        out = await self._score([Item(prompt="", response=t) for t in texts], "input", "items", False)
        sigmoid = bool(request.activation or request.use_activation)
        probs = [1 / (1 + math.exp(-r)) if sigmoid else r for r in out["rewards"]]
        tokens = sum(out.pop("_tokens"))
        return {
            "id": f"classify-{time.time_ns():x}", "object": "list", "created": int(time.time()),
            "model": request.model or self.models[0].name,
            "data": [{"index": i, "label": "reward", "probs": [p], "num_classes": 1} for i, p in enumerate(probs)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }

    async def score_items(self, items: list[dict], normalize: bool = False) -> dict:
        """Handle API for RL loops inside the cluster: ``[{prompt, response}, ...]`` -> the /score body."""
        request = ScoreRequest(items=items, normalize=normalize)
        out = await self._score(request.as_items(), "items", "items", normalize)
        out.pop("_tokens", None)
        return out

    async def _score(self, items: list[Item], where: str, kind: str, normalize: bool) -> dict:
        encoded = [m.encode(items, where) for m in self.models]
        try:
            per_model = await asyncio.gather(*[m.handle.score.remote((kind, ids))
                                               for m, (ids, _) in zip(self.models, encoded)])
        except Exception as err:  # a replica died or restarted: retryable, not the client's fault
            logger.warning("scorer call failed: %r", err)
            raise HTTPException(503, "a scorer replica is unavailable; retry", headers={"Retry-After": "1"}) from None
        truncated = [any(flags) for flags in zip(*[t for _, t in encoded])]
        mean, std = ensemble(per_model)
        body = {"rewards": mean, "truncated": truncated, "_tokens": [len(x) for x in encoded[0][0]]}
        if normalize:
            normed = [m.spec.normalize(r) for m, r in zip(self.models, per_model)]
            if all(n is not None for n in normed):
                body["normalized_rewards"] = ensemble(normed)[0]
        if len(self.models) > 1:
            body["reward_std"] = std
            body["per_model"] = {m.name: r for m, r in zip(self.models, per_model)}
        return body


async def _validation_error(request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default echoes the offending input, which fails on NaN/Infinity bodies (a 500) and
    # can be large; the field path and the message are what a client needs.
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


ModelScorer = serve.deployment(name="scorer")(_ModelScorer)
RewardAPI = serve.deployment(name="ingress")(serve.ingress()(_RewardAPI))


def build_app(args: dict | ServeSettings):
    """Serve application builder (``import_path: rmray.serve.app:build_app`` in a Serve config file)."""
    s = args if isinstance(args, ServeSettings) else ServeSettings.from_dict(dict(args))
    settings = s.__dict__.copy()
    scaling = ({"autoscaling_config": {"min_replicas": s.replicas, "max_replicas": s.max_replicas,
                                       "target_ongoing_requests": 8}}
               if s.max_replicas else {"num_replicas": s.replicas})
    scorers = [
        ModelScorer.options(name=f"scorer-{name}", ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
                            max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests,
                            **scaling).bind(model_dir, settings)
        for name, model_dir in zip(s.model_names, s.model_dirs)
    ]
    return RewardAPI.options(ray_actor_options={"num_cpus": s.ingress_num_cpus},
                             max_ongoing_requests=s.max_inflight + 16,
                             max_queued_requests=s.max_queued_requests).bind(scorers, settings)
