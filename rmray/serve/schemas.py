"""Request and response bodies of the HTTP API, one pydantic model per endpoint.

Strict on purpose: unknown fields, wrong types and empty texts are 422s that name the field
(``loc`` in FastAPI's error body), never a 5xx from deep inside the model. List lengths are bounded
here and the byte size of a body by :mod:`rmray.serve.guard`.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

MAX_ITEMS = 1024
MAX_TEXT_CHARS = 200_000


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    content: Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)]


Messages = Annotated[list[Message], Field(min_length=1, max_length=MAX_ITEMS)]
Prompt = Union[Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)], Messages]
Response = Union[Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_CHARS)], Messages]


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt = ""
    """Text, or chat messages (then ``response`` is the assistant's messages and the model's chat template
    renders both)."""
    response: Response


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
        return self

    def as_items(self) -> list[Item]:
        return self.items if self.items is not None else [Item(prompt=self.prompt or "", response=self.response)]


class GroupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    responses: Annotated[list[Response], Field(min_length=1, max_length=MAX_ITEMS)]
    normalize: StrictBool = False


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward-model protocol (``--remote_rm_url``): ``query`` holds full texts."""
    model_config = ConfigDict(extra="forbid")
    query: Annotated[list[Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)]], Field(max_length=MAX_ITEMS)]
    prompts: Annotated[list[StrictStr], Field(max_length=MAX_ITEMS)] | None = None
    labels: Annotated[list[Any], Field(max_length=MAX_ITEMS)] | None = None

    @model_validator(mode="after")
    def _aligned(self):
        if self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(f"'prompts' has {len(self.prompts)} entries but 'query' has {len(self.query)}")
        return self


class ClassifyRequest(BaseModel):
    """vLLM's pooling ``/classify`` request, as verl's reward loop sends it."""
    model_config = ConfigDict(extra="forbid")
    model: StrictStr | None = None
    input: Union[Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_CHARS)],
                 Annotated[list[Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_CHARS)]],
                           Field(min_length=1, max_length=MAX_ITEMS)]]
    activation: StrictBool | None = None
    """vLLM's flag: true applies a sigmoid to the reward; false/absent returns the raw reward."""
    use_activation: StrictBool | None = None
    user: StrictStr | None = None


class ScoreResponse(BaseModel):
    rewards: list[float]
    """Per item; for an ensemble the mean over models."""
    normalized_rewards: list[float] | None = None
    truncated: list[bool]
    """True where the text was longer than the model's max_length and was cut as in training."""
    reward_std: list[float] | None = None
    """Ensembles only: the models' disagreement (population std) per item."""
    per_model: dict[str, list[float]] | None = None


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]] = {}
