"""The parts every request body is built from (texts, messages, items, token ids) and the 422 body.

Strict on purpose: unknown fields, wrong types and empty texts are 422s that name the field
(``loc`` in FastAPI's error body), never a 5xx from deep inside the model. Texts and lists are bounded
here and the byte size of a body by :mod:`rmray.serve.guard`. Each endpoint's own request model sits
beside its route in :mod:`rmray.serve.endpoints`.
"""

from __future__ import annotations

from typing import Annotated, Union

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

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


def is_empty(text) -> bool:
    """Nothing to score in this prompt or response: an empty text, or messages whose contents are all empty."""
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
        if is_empty(self.prompt) and is_empty(self.response):
            raise ValueError("prompt and response are both empty: there is nothing to score")
        return self


NonEmptyText = Annotated[Str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


async def validation_error(request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default echoes the offending input, which fails on NaN/Infinity bodies (a 500) and
    # can be large; the field path and the rule are what a client needs.
    return JSONResponse(status_code=422, content={"detail": [validation_detail(e) for e in exc.errors()]})


def validation_detail(error: dict) -> dict:
    """One pydantic error as ``{"loc", "msg", "type"}`` naming the field and the rule. A union member's tag
    in ``loc`` is pydantic's repr of its validators (``function-after[functools.partial(<function
    max_length_validator at 0x7f...>...``): it becomes ``text`` or ``messages``, and a too-long text says
    characters, not items."""
    loc = []
    for part in error.get("loc", ()):
        if isinstance(part, str) and ("function-" in part or part == "str"):
            part = "text"
        elif isinstance(part, str) and part.startswith("list["):
            part = "messages" if "Message" in part else "list"
        loc.append(part)
    msg, ctx = str(error.get("msg", "")), error.get("ctx") or {}
    if error.get("type") == "too_long" and loc and loc[-1] == "text":
        msg = f"text longer than {ctx.get('max_length')} characters ({ctx.get('actual_length')})"
    return {"loc": loc, "msg": msg, "type": str(error.get("type", ""))}
