"""JudgeBench (Tan et al. 2024, https://github.com/ScalerLab/JudgeBench): hard pairs where one answer is
objectively right -- knowledge (MMLU-Pro), reasoning and math (LiveBench), code (LiveCodeBench).

A reward model judges a pair by its two rewards (``utils/judges.py``: ``A>B`` when A's reward is higher,
else ``B>A``), both ways round, and ``utils/metrics.compute_final_metrics`` counts a pair right when the two
judgments agree with the label on balance. For a reward model that means: right when the preferred answer's
reward is strictly higher; an exact tie judges ``B>A`` one way and ``A>B`` the other, which counts as wrong.
Accuracy is reported per source prefix (``mmlu-pro``, ``livebench-reasoning``, ``livebench-math``,
``livecodebench``) and overall -- over all pairs, as ``run_judge.py`` prints it (fractions here, percent there).
"""

from __future__ import annotations

from rmray.core.formats import BadRow

from .item import Item, text

SOURCES = ["mmlu-pro", "livebench-reasoning", "livebench-math", "livecodebench"]


def item(row: dict) -> Item:
    """The label's preferred response is the chosen answer."""
    a, b, label = text(row, "response_A"), text(row, "response_B"), row.get("label")
    if label not in ("A>B", "B>A"):
        raise BadRow("bad_rating", "label", f"label must be 'A>B' or 'B>A', got {label!r}")
    chosen, rejected = (a, b) if label == "A>B" else (b, a)
    return Item(text(row, "question"), [chosen], [rejected])


def score(results: list[dict]) -> dict:
    """``{"name", "score", "sections", "missing_sections"}``: accuracy overall and per source prefix."""
    def accuracy(rows):
        return sum(r["chosen"][0] > r["rejected"][0] for r in rows) / len(rows)
    sections = {s: accuracy(found) for s in SOURCES
                if (found := [r for r in results if (r["subset"] or "").startswith(s)])}
    return {"name": "judgebench", "score": accuracy(results) if results else None, "sections": sections,
            "missing_sections": [s for s in SOURCES if s not in sections]}
