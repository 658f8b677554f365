"""Every endpoint of the HTTP API: its request (and response) model beside its route.

A route shapes the protocol's request into items, hands them to the service (``_RewardAPI`` in
:mod:`rmray.serve.app`: tokenize each model's way under the scoring contract, forward on the scorer
replicas, combine an ensemble) and maps the answer back into the protocol. The service reaches a route
as a FastAPI dependency, so adding an endpoint is one model and one function here, plus its test:

    @router.post("/score_pairs")
    async def score_pairs(body: PairsRequest, service=Depends(serving)) -> dict:
        return await service.rewards(lambda m: m.encode(body.items(), "pairs"), "items", False)
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from .guard import authorized
from .schemas import MAX_ITEMS, MAX_TEXT_CHARS, Item, NonEmptyText, Prompt, Response, Str, Text, TokenIds, is_empty

router = APIRouter()


def serving(request: Request):
    """The replica's service object (``_RewardAPI``), set on the app when the replica builds it."""
    return request.app.state.service


# --- rmray's own protocol: /score and /score_group -------------------------------------------------


class ScoreResponse(BaseModel):
    rewards: list[float]
    """Per item; for an ensemble the mean over models."""
    model_version: str
    """The models that scored this answer: each one's fingerprint (12 hex digits, the start of the one
    ``rmray score`` records), ``+``-joined for an ensemble with the combining rule. Changes with a swap."""
    normalized_rewards: list[float] | None = None
    truncated: list[bool]
    """True where the text was longer than the model's max_length and was cut as in training."""
    reward_std: list[float] | None = None
    """Ensembles only: the models' disagreement (population std) per item."""
    combined: Literal["normalized", "raw"] | None = None
    """Ensembles only: whether ``rewards``/``reward_std`` come from standardized rewards (every model
    saved its eval-set mean/std) or raw ones."""
    per_model: dict[str, list[float]] | None = None
    attributes: dict[str, list[float]] | None = None
    """A model with per-attribute heads: each attribute's score per item (``rewards`` is their weighted sum,
    the weights in the model's ``rmray_scoring.json``). An ensemble reports them per model name as
    ``"model/attribute"``."""
    preferences: list[list[float]] | None = None
    """``/score_group`` with ``preferences``: P(response i preferred to response j) = sigmoid((r_i - r_j) / T)
    with each model's fitted temperature T (1 for a model trained without an eval split), averaged over
    an ensemble's models."""


class ScoreRequest(BaseModel):
    """Either one item (``prompt`` + ``response``) or ``items``."""
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[Item], Field(min_length=1, max_length=MAX_ITEMS)] | None = None
    prompt: Prompt | None = None
    response: Response | None = None
    normalize: StrictBool = False
    """Also return rewards standardized by the eval-set mean/std saved at training time."""

    @model_validator(mode="after")
    def _one_form(self):
        if self.items is None and self.response is None:
            raise ValueError("give either 'items' (a list of {prompt, response}) or 'response' (and 'prompt')")
        if self.items is not None and (self.response is not None or self.prompt is not None):
            raise ValueError("give either 'items' or a single 'prompt'/'response', not both")
        if self.items is None and is_empty(self.prompt or "") and is_empty(self.response):
            raise ValueError("prompt and response are both empty: there is nothing to score")
        return self

    def as_items(self) -> list[Item]:
        return self.items if self.items is not None else [Item(prompt=self.prompt or "", response=self.response)]


@router.post("/score", response_model=ScoreResponse, response_model_exclude_none=True)
async def score(body: ScoreRequest, service=Depends(serving)) -> dict:
    where = "items" if body.items is not None else "item"
    out = await service.rewards(lambda m: m.encode(body.as_items(), where), "items", body.normalize, endpoint="/score")
    out.pop("_tokens")
    return out


class GroupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    responses: Annotated[list[Response], Field(min_length=1, max_length=MAX_ITEMS)]
    normalize: StrictBool = False
    preferences: StrictBool = False
    """Also return ``preferences[i][j]``, the calibrated P(response i preferred to response j)."""

    @model_validator(mode="after")
    def _something_to_score(self):
        if is_empty(self.prompt):
            for i, response in enumerate(self.responses):
                if is_empty(response):
                    raise ValueError(f"responses[{i}] and the prompt are both empty: there is nothing to score")
        return self


@router.post("/score_group", response_model=ScoreResponse, response_model_exclude_none=True)
async def score_group(body: GroupRequest, service=Depends(serving)) -> dict:
    items = [Item(prompt=body.prompt, response=r) for r in body.responses]
    out = await service.rewards(lambda m: m.encode(items, "responses"), "group", body.normalize, body.preferences,
                                endpoint="/score_group")
    out.pop("_tokens")
    return out


# --- process reward models: /score_steps -------------------------------------------------------------

Step = Annotated[Str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class StepsItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    steps: Annotated[list[Step], Field(min_length=1, max_length=MAX_ITEMS)]
    """The solution's steps, each one text (the model's separator is added after each, as in training)."""


class StepsRequest(BaseModel):
    """Either one solution (``prompt`` + ``steps``) or ``items``."""
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[StepsItem], Field(min_length=1, max_length=MAX_ITEMS)] | None = None
    prompt: Prompt | None = None
    steps: Annotated[list[Step], Field(min_length=1, max_length=MAX_ITEMS)] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.items is None) == (self.steps is None) or (self.items is not None and self.prompt is not None):
            raise ValueError("give either 'items' (a list of {prompt, steps}) or 'prompt' and 'steps'")
        return self

    def as_items(self) -> list[StepsItem]:
        return self.items if self.items is not None else [StepsItem(prompt=self.prompt or "", steps=self.steps)]


class StepsResponse(BaseModel):
    step_rewards: list[list[float]]
    """Per item, per step: P(the step is correct), the softmax's class 1 at the step's last token."""
    rewards: list[float]
    """Per item: the steps' rewards aggregated by the model's ``prm_aggregate`` (``min`` by default)."""
    model_version: str
    truncated: list[bool]
    """True where the prompt lost tokens from its start to fit max_length (steps are never cut)."""


@router.post("/score_steps", response_model=StepsResponse)
async def score_steps(body: StepsRequest, service=Depends(serving)) -> dict:
    where = "items" if body.items is not None else "item"
    out = await service.step_rewards(lambda m: m.encode_steps(body.as_items(), where), endpoint="/score_steps")
    out.pop("_tokens")
    return out


# --- OpenRLHF's remote reward model: /get_reward ---------------------------------------------------


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward-model protocol (``--reward.remote_url``; ``--remote_rm_url`` before 0.11): ``query`` holds full texts."""
    model_config = ConfigDict(extra="forbid")
    query: Annotated[list[Text], Field(max_length=MAX_ITEMS)]
    prompts: Annotated[list[Text], Field(max_length=MAX_ITEMS)] | None = None
    """Where ``prompts[i]`` is a prefix of ``query[i]``, the text is split there and a too-long text loses
    the prompt's beginning, as in training; otherwise the whole query's beginning is cut (the end kept)."""
    labels: Annotated[list[Any], Field(max_length=MAX_ITEMS)] | None = None

    @model_validator(mode="after")
    def _aligned(self):
        if self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(f"'prompts' has {len(self.prompts)} entries but 'query' has {len(self.query)}")
        return self


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]] = {}
    model_version: str = ""
    """As in ``/score``; OpenRLHF reads ``rewards``/``scores`` and passes over it."""


@router.post("/get_reward", response_model=GetRewardResponse)
async def get_reward(body: GetRewardRequest, service=Depends(serving)) -> dict:
    if not body.query:  # OpenRLHF shards by server and may send an empty shard
        return {"rewards": [], "scores": [], "extra_logs": {}, "model_version": service.version.id}
    prompts = body.prompts or [""] * len(body.query)
    for i, query in enumerate(body.query):
        if not query:
            raise HTTPException(422, f"query[{i}] is empty")
    out = await service.rewards(lambda m: m.encode_queries(body.query, prompts), "items", False, endpoint="/get_reward")
    return {"rewards": out["rewards"], "scores": out["rewards"], "extra_logs": {}, "model_version": out["model_version"]}


# --- vLLM's pooling API, as verl's reward loop calls it: /classify -------------------------------


class ClassifyRequest(BaseModel):
    """vLLM's pooling ``/classify`` request, as verl's reward loop sends it."""
    model_config = ConfigDict(extra="forbid")
    model: Annotated[Str, Field(max_length=1024)] | None = None
    """Not checked (verl sends its model path): the answer names the served model."""
    input: Union[NonEmptyText, Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_ITEMS)],
                 TokenIds, Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_ITEMS)]]
    """A text, texts, a list of token ids, or lists of token ids (used as given, no special tokens added)."""
    activation: StrictBool | None = None
    """vLLM's flag: true applies a sigmoid to the reward; false/absent returns the raw reward (vLLM's own
    default is the sigmoid; rmray's is the raw reward that training and ``/score`` give)."""
    use_activation: StrictBool | None = None
    add_special_tokens: StrictBool = True
    """As in vLLM: whether the tokenizer adds its special tokens (BOS) to a text input."""
    truncate_prompt_tokens: Annotated[StrictInt, Field(ge=-1)] | None = None
    """As in vLLM: keep only the last k tokens (-1: the model's max_length). The scoring spec's max_length
    bounds it either way."""
    priority: StrictInt = 0
    """Accepted for vLLM compatibility and ignored: rmray schedules requests in arrival order."""
    user: Str | None = None

    def texts(self) -> list:
        """The inputs as a list: strings or token-id lists."""
        one = isinstance(self.input, str) or (self.input and isinstance(self.input[0], int))
        return [self.input] if one else list(self.input)


@router.post("/classify")
async def classify(body: ClassifyRequest, service=Depends(serving)) -> dict:
    limit = body.truncate_prompt_tokens
    limit = None if limit in (None, -1) else max(limit, 1)
    out = await service.rewards(lambda m: m.encode_texts(body.texts(), "input", body.add_special_tokens, limit),
                                "items", False, endpoint="/classify")
    sigmoid = bool(body.activation or body.use_activation)
    probs = [1 / (1 + math.exp(-r)) if sigmoid else r for r in out["rewards"]]
    tokens = sum(out.pop("_tokens"))
    return {
        "id": f"classify-{time.time_ns():x}", "object": "list", "created": int(time.time()),
        "model": body.model or out["_names"][0], "model_version": out["model_version"],
        "data": [{"index": i, "label": "reward", "probs": [p], "num_classes": 1} for i, p in enumerate(probs)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }


# --- swapping the served models: /admin/models ------------------------------------------------------


def admin(request: Request, service=Depends(serving)):
    """``RMRAY_ADMIN_TOKEN`` as a bearer token, checked before the body is read: no token set at start,
    no admin endpoints (404); none sent, 401; another, 403. The API token does not open them."""
    token = service.settings.admin_token
    if not token:
        raise HTTPException(404, "Not Found")
    header = request.headers.get("authorization")
    if not header:
        raise HTTPException(401, "admin endpoint: send 'Authorization: Bearer <RMRAY_ADMIN_TOKEN>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not authorized(header.encode("latin-1"), token):
        raise HTTPException(403, "admin endpoint: wrong token (RMRAY_ADMIN_TOKEN, not RMRAY_API_TOKEN)")
    return service


ModelPath = Annotated[Str, Field(min_length=1, max_length=4096)]


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: Annotated[list[ModelPath], Field(min_length=1, max_length=16)]
    """Model folders as ``rmray serve`` takes them, on the scorer nodes' filesystem: one, or several for an
    ensemble (combined by the rule the server was started with)."""
    names: Annotated[list[Annotated[Str, Field(min_length=1, max_length=128)]], Field(min_length=1, max_length=16)] | None = None
    """Names in answers; default: the folder names."""


@router.post("/admin/models")
async def swap_models(body: SwapRequest, service=Depends(admin)) -> dict:
    """Replace the served models under load; returns once the new version serves every new request and
    the old replicas are gone, with the new ``model_version``. A folder that cannot be served is a 422
    naming why, and the old version keeps serving."""
    return await service.swap(body.models, body.names)


@router.get("/admin/models")
async def served_models(service=Depends(admin)) -> dict:
    """The version serving now: its ``model_version``, models (name, path, fingerprint) and ensemble rule."""
    return service.version.describe()
