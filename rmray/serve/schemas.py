"""Request and response bodies of the HTTP API, one pydantic model per endpoint.

Strict on purpose: unknown fields, wrong types and empty texts are 422s that name the field
(``loc`` in FastAPI's error body), never a 5xx from deep inside the model. List lengths are bounded
here and the byte size of a body by :mod:`rmray.serve.guard`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

MAX_ITEMS = 1024
MAX_TEXT_CHARS = 200_000


def _utf8(text: str) -> str:
    # JSON may carry a lone surrogate ("\ud800"): valid JSON, not text. Refused here, it is a 422 naming
    # the field; let through, it fails the tokenizer or the UTF-8 encoding of the answer (a 500).
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate such as \\ud800)") from None
    return text


Str = Annotated[StrictStr, AfterValidator(_utf8)]
Text = Annotated[Str, Field(max_length=MAX_TEXT_CHARS)]
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Annotated[Str, Field(min_length=1, max_length=64)]
    content: Text


Messages = Annotated[list[Message], Field(min_length=1, max_length=MAX_ITEMS)]
Prompt = Union[Text, Messages]
Response = Union[Text, Messages]


def _is_empty(text) -> bool:
    return text == "" or (isinstance(text, list) and all(not m.content for m in text))


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt = ""
    """Text, or chat messages (then ``response`` is the assistant's messages and the model's chat template
    renders both)."""
    response: Response
    """May be empty: a policy that emits EOS first made an empty completion, a legitimate RL sample; it
    is scored as the prompt alone (plus EOS), as TRL scores it in-process."""

    @model_validator(mode="after")
    def _not_both_empty(self):
        if _is_empty(self.prompt) and _is_empty(self.response):
            raise ValueError("prompt and response are both empty: there is nothing to score")
        return self


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
        if self.items is None and _is_empty(self.prompt or "") and _is_empty(self.response):
            raise ValueError("prompt and response are both empty: there is nothing to score")
        return self

    def as_items(self) -> list[Item]:
        return self.items if self.items is not None else [Item(prompt=self.prompt or "", response=self.response)]


class GroupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    responses: Annotated[list[Response], Field(min_length=1, max_length=MAX_ITEMS)]
    normalize: StrictBool = False
    preferences: StrictBool = False
    """Also return ``preferences[i][j]``, the calibrated P(response i preferred to response j)."""

    @model_validator(mode="after")
    def _something_to_score(self):
        if _is_empty(self.prompt):
            for i, response in enumerate(self.responses):
                if _is_empty(response):
                    raise ValueError(f"responses[{i}] and the prompt are both empty: there is nothing to score")
        return self


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


NonEmptyText = Annotated[Str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


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


class ScoreResponse(BaseModel):
    rewards: list[float]
    """Per item; for an ensemble the mean over models."""
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


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]] = {}
