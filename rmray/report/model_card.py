"""The model card (README.md) written into a training run's output folder: what was trained on what,
how well it did, and how to load and serve it -- the page a teammate opens first."""

from __future__ import annotations

import json
import os

from rmray.core.files import write_text_atomic
from rmray.core.loss import LOSS_TITLES

from . import plots


def _table(rows: list[tuple[str, object]]) -> str:
    out = ["| | |", "|---|---|"]
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:.4g}"
        out.append(f"| {key} | {value} |")
    return "\n".join(out)


def _what(config: dict) -> str:
    """One paragraph: the loss, the base model, the data, and a per-attribute model's reward."""
    loss = LOSS_TITLES.get(config.get("loss"), config.get("loss"))
    text = (f"A {loss} reward model trained with rmray from `{config.get('model_name_or_path')}` on "
            f"`{config.get('train_data')}`" + (f" (evaluated on `{config['eval_data']}`)" if config.get("eval_data") else "")
            + ".")
    names = config.get("attributes") or []
    if names:
        weights = config.get("attribute_weights") or [1.0 / len(names)] * len(names)
        reward = " + ".join(f"{w:g}·{n}" for n, w in zip(names, weights)).replace("+ -", "- ")
        text += (f" It has one output per attribute ({', '.join(names)}); its reward is {reward} (the weights are "
                 "in `rmray_scoring.json`; `/score` returns each attribute too).")
    return text


def write_model_card(output_dir: str, config: dict, summary: dict, data_reports: list[dict]) -> str:
    plot = None
    metrics_file = os.path.join(output_dir, "metrics.jsonl")
    if os.path.exists(metrics_file):
        plot = plots.training_curves(metrics_file, os.path.join(output_dir, "plots", "training_curves.png"))
    final = os.path.join(output_dir, "final")
    # Labels say what the numbers count: a run stopped mid-epoch has started an epoch, not finished it,
    # and pairs are counted once per epoch that saw them.
    labels = {"epochs": "epochs (started)", "train_pairs": "pairs trained (pairs x epochs)"}
    metric_rows = [(labels.get(k, k), summary[k]) for k in ("eval_accuracy", "eval_loss", "eval_margin",
                                                            "eval_reward_mean", "eval_reward_std", "steps", "epochs",
                                                            "train_pairs", "train_pairs_per_s", "train_runtime_s")
                   if k in summary]
    data_rows = []
    for report in data_reports:
        data_rows.append((f"{report.get('name', 'data')}: rows read / kept / truncated",
                          f"{report.get('rows_read')} / {report.get('rows_kept')} / {report.get('rows_truncated')}"))
        skipped = report.get("skipped") or {}
        if skipped:
            data_rows.append((f"{report.get('name', 'data')}: skipped", ", ".join(f"{k} {v}" for k, v in skipped.items())))
    lines = [
        f"# Reward model: {os.path.basename(os.path.normpath(output_dir))}", "",
        _what(config), "",
        "## Results", "", _table(metric_rows) if metric_rows else "No evaluation was run.", "",
    ]
    if plot:
        lines += [f"![training curves](plots/{os.path.basename(plot)})", ""]
    lines += ["## Data", "", _table(data_rows) if data_rows else "(no data report)", "",
              "Full counts and sample row ids of skipped rows: `data_report.json`.", "",
              "## Use it", "",
              "The folder `final/` is a plain transformers model plus `rmray_scoring.json` (the scoring rules: "
              "EOS, truncation, read-out, reward mean/std):", "",
              "```python",
              "from rmray.core.scoring import Scorer",
              f"scorer = Scorer.load({final!r})",
              "scorer.score([\"How do I boil an egg?\"], [\" Simmer it for 9 minutes.\"])",
              "```", "",
              "```bash",
              f"rmray serve {final}                     # HTTP on 127.0.0.1:8000: /score /score_group /get_reward /classify",
              f"rmray score {final} data.jsonl scored/   # offline, Ray Data -> Parquet",
              f"rmray eval {final} pairs.jsonl --output eval/ --train-dir {output_dir}",
              "```", "",
              "## Training config", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    return write_text_atomic(os.path.join(output_dir, "README.md"), "\n".join(lines))
