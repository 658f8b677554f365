"""One benchmark item, and the checks every benchmark's rows share."""

from __future__ import annotations

from typing import Any, NamedTuple

from rmray.core.formats import BadRow


class Item(NamedTuple):
    """A prompt, its right answers (``chosen``) and its wrong ones (``rejected``)."""

    prompt: Any
    chosen: list
    rejected: list


def text(row: dict, field: str) -> str:
    """A text field; an empty one is an answer to score (a benchmark scores what it is given)."""
    value = row.get(field)
    if not isinstance(value, str):
        raise BadRow("missing_field" if value is None else "bad_type", field,
                     f"'{field}' must be text, got {type(value).__name__}")
    return value


def texts(row: dict, field: str, count: int | None = None) -> list[str]:
    """A list of texts (``count`` of them when given)."""
    value = row.get(field)
    value = value.tolist() if hasattr(value, "tolist") else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadRow("bad_type", field, f"'{field}' must be a list of texts, got {type(value).__name__}")
    if count is not None and len(value) != count:
        raise BadRow("bad_type", field, f"'{field}' must list {count} answers, got {len(value)}")
    if not value:
        raise BadRow("missing_field", field, f"'{field}' lists no answer")
    return list(value)
