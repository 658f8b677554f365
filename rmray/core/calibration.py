"""A temperature that turns reward differences into calibrated preference probabilities.

Bradley-Terry reads P(a beats b) = sigmoid(r_a - r_b), but nothing in training makes that probability
honest: a reward model is often under-confident (sigma(delta) near 0.5 where most pairs are right) or
over-confident. One scalar fixes the scale without touching the order: P = sigmoid(delta / T), with T
fitted by maximum likelihood on held-out pairs (Guo et al., 2017, "temperature scaling"). Raw rewards
stay as they are; the temperature travels in the scoring contract (``ScoringSpec.temperature``).

Worked example: margins [2, 1, -1] (two pairs right, one wrong). T = 1 gives NLL
mean(log(1+e^-2), log(1+e^-1), log(1+e^1)) = mean(0.1269, 0.3133, 1.3133) = 0.5845. The fit adds the
pseudo-pairs +4/3 and -4/3 (see :func:`fit_temperature`) and lands at T = 2.2984, where the five
margins' NLL is least (the wrong pair's confidence comes down).
"""

from __future__ import annotations

import math
from typing import Sequence

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


def preference_nll(margins: Sequence[float], temperature: float) -> float:
    """Mean -log sigmoid(margin / T): the loss of P(chosen beats rejected) over pairs whose truth is
    "chosen" (a margin is r_chosen - r_rejected)."""
    return sum(_softplus(-m / temperature) for m in margins) / max(len(margins), 1)


def fit_temperature(margins: Sequence[float]) -> float:
    """The T in [0.01, 100] minimizing :func:`preference_nll` over ``margins`` plus two pseudo-pairs at
    their mean absolute margin, one right and one wrong (Laplace's rule of succession: with every one of
    n pairs right, confidence is pulled to about (n + 1) / (n + 2), not to 1 -- an eval split the model
    separates perfectly would otherwise give T -> 0 and probabilities of exactly 0 or 1). The loss is
    convex in 1/T (a softplus of a linear function), so a golden-section search over 1/T finds it."""
    if not margins:
        raise ValueError("no pairs to fit a temperature on")
    scale = sum(abs(m) for m in margins) / len(margins)
    margins = [*margins, scale, -scale]
    lo, hi = 1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE  # inverse temperatures
    ratio = (math.sqrt(5) - 1) / 2
    loss = lambda beta: sum(_softplus(-m * beta) for m in margins)  # noqa: E731
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(80):  # the bracket shrinks by 0.618 a step: 80 steps reach ~1e-15 of 100
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return 1 / ((lo + hi) / 2)


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))
