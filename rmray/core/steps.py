"""Process reward models: step-labelled rows, their tokens, and one reward per step.

A process reward model (PRM) scores each step of a solution, not only the answer. The data is TRL's
stepwise-supervision format, which PRM800K and Math-Shepherd convert to::

    {"prompt": "What is 12 * 3 + 4?", "completions": ["12 * 3 = 36.", "36 + 4 = 41."], "labels": [true, false]}

(``prompt`` may be a message list: it is rendered by the chat template with the generation prompt.)

**Tokens** are built as TRL's ``PRMTrainer.tokenize_row`` built them, so a PRM trained under that
convention scores the same here: the prompt's ids (the tokenizer's BOS first when it has one), then each
step tokenized on its own followed by the separator's ids (``step_separator``, default ``"\\n"``). A
step's label sits at its last token, the separator's last; every other position is ``-100``.

Example (a tokenizer without BOS, ``"\\n"`` -> ``[198]``): prompt ``[5, 6]``, steps ``[7, 8]`` and ``[9]``
labelled ``[true, false]`` give ``input_ids = [5, 6, 7, 8, 198, 9, 198]`` and ``labels = [-100, -100, -100,
-100, 1, -100, 0]``.

**Truncation** never cuts a labelled step: a row longer than ``max_length`` loses prompt tokens from the
left (the question's start, as TRL's ``max_prompt_length`` did); if the steps alone are too long the
row is skipped as ``too_long`` and counted, never scored on a partial solution.

**Reading out**: a step's reward is P(correct) = softmax of the token-classification logits at its
position, class 1. One reward per solution aggregates the steps (``prm_aggregate``): ``min`` (the
weakest step; the default, as in the PRM literature's best-of-N), ``last``, ``mean`` or ``prod``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch

from .formats import BadRow, Text

AGGREGATES = ("min", "last", "mean", "prod")
IGNORE = -100  # a position without a label (torch's cross-entropy ignore_index, TRL's too)


class StepRow(NamedTuple):
    """One validated stepwise row; ``labels`` is None for rows to score rather than train on."""

    prompt: Text
    steps: list[str]
    labels: list[bool] | None


class StepTokens(NamedTuple):
    input_ids: list[int]
    positions: list[int]  # where each step's label sits, one per step
    labels: list[int]  # per position of input_ids: 0/1 at a step's last token, IGNORE elsewhere
    prompt_cut: int  # prompt tokens cut from the left to fit max_length


def is_stepwise(row: dict[str, Any]) -> bool:
    """A row in the stepwise format: a ``completions`` list (training rows) or a ``steps`` list (scoring)."""
    return isinstance(row.get("completions"), list) or isinstance(row.get("steps"), list)


def read_steps(row: dict[str, Any], *, need_labels: bool = True) -> StepRow:
    """Validate one stepwise row; :class:`BadRow` names the field and the reason otherwise."""
    if row.get("prompt") is None:
        raise BadRow("missing_field", "prompt", "missing field 'prompt'")
    prompt = row["prompt"]
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt))):
        raise BadRow("non_string_field", "prompt", "field 'prompt' must be text or a list of messages")
    field = "completions" if "completions" in row else "steps"
    steps = row.get(field)
    if not isinstance(steps, list) or not steps:
        raise BadRow("missing_field", field, f"field '{field}' must be a non-empty list of steps")
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise BadRow("non_string_field", field, f"step {i} of '{field}' is not text")
        if not step.strip():
            raise BadRow("empty_step", field, f"step {i} of '{field}' is empty")
    labels = row.get("labels")
    if labels is None:
        if need_labels:
            raise BadRow("missing_field", "labels", "missing field 'labels' (one true/false per step)")
        return StepRow(prompt, list(steps), None)
    if not isinstance(labels, list) or not all(isinstance(x, bool) for x in labels):
        raise BadRow("bad_step_labels", "labels", "field 'labels' must be a list of true/false, one per step")
    if len(labels) != len(steps):
        raise BadRow("bad_step_labels", "labels", f"{len(labels)} labels for {len(steps)} steps")
    return StepRow(prompt, list(steps), list(labels))


def prompt_text(tokenizer, prompt: Text) -> str:
    """A message prompt as the chat template renders it, with the generation prompt; text as it is."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def tokenize_steps(tokenizer, row: StepRow, separator: str, max_length: int) -> StepTokens:
    """The tokens of a stepwise row (see the module); :class:`BadRow` ``too_long`` if its steps do not fit."""
    prompt_ids = tokenizer(prompt_text(tokenizer, row.prompt), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    separator_ids = tokenizer.encode(separator, add_special_tokens=False)
    completion: list[int] = []
    ends: list[int] = []
    for step in row.steps:
        completion += tokenizer(step, add_special_tokens=False)["input_ids"] + separator_ids
        ends.append(len(completion) - 1)
    if len(completion) > max_length:
        raise BadRow("too_long", "completions", f"the {len(row.steps)} steps take {len(completion)} tokens, over "
                     f"max_length={max_length}; no step is cut (raise max_length)")
    cut = max(0, len(prompt_ids) + len(completion) - max_length)
    prompt_ids = prompt_ids[cut:]
    positions = [len(prompt_ids) + end for end in ends]
    labels = [IGNORE] * (len(prompt_ids) + len(completion))
    for position, label in zip(positions, row.labels or [None] * len(positions)):
        if label is not None:
            labels[position] = int(label)
    return StepTokens(prompt_ids + completion, positions, labels, cut)


def step_probabilities(logits: torch.Tensor, positions: Sequence[int]) -> list[float]:
    """P(correct) of each step: softmax over the two classes at its position, class 1. ``logits``: ``[T, 2]``."""
    picked = logits[torch.as_tensor(list(positions), dtype=torch.long, device=logits.device)].float()
    return torch.softmax(picked, dim=-1)[:, 1].tolist()


def aggregate(step_rewards: Sequence[float], rule: str) -> float:
    """One reward for a solution from its steps' rewards, by ``prm_aggregate``."""
    if rule not in AGGREGATES:
        raise ValueError(f"prm_aggregate must be one of {AGGREGATES}, got {rule!r}")
    if not step_rewards:
        raise ValueError("a solution needs at least one step to aggregate")
    if rule == "min":
        return min(step_rewards)
    if rule == "last":
        return step_rewards[-1]
    if rule == "mean":
        return sum(step_rewards) / len(step_rewards)
    return math.prod(step_rewards)


def split_response(response: str, separator: str) -> list[str]:
    """A whole response as steps, for consumers that send one text (``/score``, OpenRLHF's ``/get_reward``):
    split at the separator, empty pieces (a trailing separator, blank lines) dropped."""
    steps = [piece for piece in response.split(separator) if piece.strip()]
    return steps or [response]


def first_error(flags: Sequence[bool]) -> int:
    """The index of the first step marked wrong, -1 when every step is right (ProcessBench's convention)."""
    return next((i for i, ok in enumerate(flags) if not ok), -1)


def step_metrics(step_rewards: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]],
                 threshold: float = 0.5) -> dict:
    """How well step rewards find wrong steps, a step predicted right where its reward >= ``threshold``:

    - ``step_accuracy``; ``step_f1`` of finding the wrong steps (the class a PRM exists for);
    - ProcessBench-style, per solution: the first step predicted wrong against the first step labelled
      wrong (-1: none). ``erroneous_accuracy`` on solutions with a wrong step, ``correct_accuracy`` on
      those without, ``first_error_f1`` their harmonic mean.

    Example: rewards ``[[0.9, 0.2], [0.8, 0.7]]``, labels ``[[T, F], [T, T]]``: every step right
    (accuracy 1, F1 1); first errors 1 vs 1 and -1 vs -1: both accuracies 1, F1 1.
    """
    predicted = [[r >= threshold for r in rewards] for rewards in step_rewards]
    pairs = [(p, y) for ps, ys in zip(predicted, labels) for p, y in zip(ps, ys)]
    caught = sum(1 for p, y in pairs if not p and not y)
    flagged, wrong = sum(1 for p, _ in pairs if not p), sum(1 for _, y in pairs if not y)
    precision, recall = (caught / flagged if flagged else 0.0), (caught / wrong if wrong else 0.0)
    erroneous = [(first_error(p), first_error(y)) for p, y in zip(predicted, labels) if first_error(y) >= 0]
    correct = [(first_error(p), first_error(y)) for p, y in zip(predicted, labels) if first_error(y) < 0]
    err_acc = sum(a == b for a, b in erroneous) / len(erroneous) if erroneous else None
    cor_acc = sum(a == b for a, b in correct) / len(correct) if correct else None
    both = err_acc is not None and cor_acc is not None and err_acc + cor_acc > 0
    return {
        "solutions": len(labels), "steps": len(pairs),
        "step_accuracy": sum(p == y for p, y in pairs) / len(pairs) if pairs else None,
        "step_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "erroneous_accuracy": err_acc, "correct_accuracy": cor_acc,
        "first_error_f1": 2 * err_acc * cor_acc / (err_acc + cor_acc) if both else None,
    }


class PackedSteps(NamedTuple):
    """Solutions packed for one forward (:mod:`rmray.core.packing`), and where their steps' labels sit."""

    inputs: dict  # input_ids, position_ids, attention_mask ([R, 1, L, L]) for a token classifier
    rows: torch.Tensor  # [S] row of each labelled step
    cols: torch.Tensor  # [S] its column
    labels: torch.Tensor  # [S] 0/1
    real_tokens: int


def pack_steps(items: Sequence[StepTokens], rule) -> PackedSteps:
    """Several solutions in few rows with no attention between them (each its own block; ``rule`` a
    :class:`rmray.core.packing.PackRule` with ``segments=False``): the labelled positions, moved to where
    each solution landed, give the same logits as a padded batch -- the packed-vs-padded test's claim."""
    from .packing import pack_for_model

    packed = pack_for_model([([], [list(t.input_ids)]) for t in items], rule)
    rows, cols, labels = [], [], []
    for i, tokens in enumerate(items):
        row, read = int(packed.readout_row[i]), int(packed.readout_col[i])
        start = read - (len(tokens.input_ids) - 1) if rule.causal else read  # causal: read at the last token
        for position, label in enumerate(tokens.labels):
            if label != IGNORE:
                rows.append(row)
                cols.append(start + position)
                labels.append(label)
    inputs = {"input_ids": packed.input_ids, "position_ids": packed.position_ids,
              "attention_mask": packed.attention_mask}
    return PackedSteps(inputs, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                       torch.tensor(labels, dtype=torch.long), packed.real_tokens)


def step_loss(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled steps (their mean), as TRL's PRM trainer took it over label != -100."""
    picked = logits[rows.to(logits.device), cols.to(logits.device)].float()
    return torch.nn.functional.cross_entropy(picked, labels.to(logits.device))


STEP_SUM_FIELDS = ("steps", "correct", "caught", "flagged", "wrong", "loss", "unused", "unused")


def step_sums(logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Sufficient statistics of labelled steps (``logits`` ``[S, 2]`` at their positions) as a float64 vector
    in :data:`STEP_SUM_FIELDS` order, the length of a reward model's (``rmray.core.loss.SUM_FIELDS``), so
    the training loop reduces either alike. A step is predicted right where P(correct) >= 0.5."""
    right = (logits[:, 1] >= logits[:, 0]).detach()
    truth = labels.to(logits.device).bool()
    zero = torch.zeros((), dtype=torch.float64, device=logits.device)
    return torch.stack([
        torch.tensor(float(labels.numel()), dtype=torch.float64, device=logits.device),
        (right == truth).double().sum(), (~right & ~truth).double().sum(), (~right).double().sum(),
        (~truth).double().sum(), torch.as_tensor(loss_sum, dtype=torch.float64, device=logits.device).detach().reshape(()),
        zero, zero,
    ])


def metrics_from_step_sums(sums: torch.Tensor) -> dict[str, float]:
    """Mean loss, step accuracy, and F1 of finding the wrong steps (as :func:`step_metrics`)."""
    s = dict(zip(STEP_SUM_FIELDS[:6], sums.double().tolist()))
    n = max(s["steps"], 1.0)
    precision = s["caught"] / s["flagged"] if s["flagged"] else 0.0
    recall = s["caught"] / s["wrong"] if s["wrong"] else 0.0
    return {"loss": s["loss"] / n, "accuracy": s["correct"] / n,
            "step_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0, "steps": s["steps"]}
