"""Training health: early stopping and the warnings that catch reward-model failure modes while the run
is going -- reward collapse (every response gets the same score) and overfitting (train accuracy far
above eval accuracy). Pure logic, fed with the all-reduced eval metrics, so every rank decides alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Health:
    metric: str
    greater_is_better: bool
    patience: int | None
    threshold: float = 0.0
    collapse_std: float = 1e-3
    overfit_gap: float = 0.15
    best: float | None = None
    bad_evals: int = 0
    warned: set = field(default_factory=set)

    @classmethod
    def from_config(cls, checkpoints) -> "Health":
        """From the ``checkpoints`` section (:class:`rmray.config.CheckpointConfig`), the one it reads."""
        return cls(checkpoints.best_metric, checkpoints.best_is_greater, checkpoints.early_stopping_patience,
                   checkpoints.early_stopping_threshold, checkpoints.reward_collapse_std, checkpoints.overfit_warning_gap)

    def observe(self, eval_metrics: dict, train_accuracy: float | None) -> tuple[list[dict], bool]:
        """(warnings as metrics.jsonl records, whether to stop early) after one eval."""
        warnings = []
        loss = eval_metrics.get("eval_loss")
        if loss is not None and not math.isfinite(loss):  # every later step would be NaN too: stop now
            return [{"kind": "nonfinite_loss", "message": (
                f"eval loss is {loss}: the weights are no longer finite. Lower the learning rate, keep "
                "max_grad_norm, or use float32 weights; the run stops here.")}], True
        std = eval_metrics.get("eval_reward_std")
        if std is not None and std < self.collapse_std:
            warnings.append({"kind": "reward_collapse", "message": (
                f"eval reward std {std:.2e} < {self.collapse_std:g}: the model scores every response alike. "
                "Lower the learning rate, check that chosen and rejected differ after truncation, or add "
                "center_rewards_coefficient.")})
        accuracy = eval_metrics.get("eval_accuracy")
        if train_accuracy is not None and accuracy is not None and train_accuracy - accuracy > self.overfit_gap:
            warnings.append({"kind": "overfitting", "message": (
                f"train accuracy {train_accuracy:.3f} exceeds eval accuracy {accuracy:.3f} by more than "
                f"{self.overfit_gap:g}: fewer epochs, more data, LoRA or weight decay; early_stopping_patience stops "
                "such runs.")})
        value = eval_metrics.get(self.metric)
        if value is None:
            return warnings, False
        improved = self.best is None or (value > self.best + self.threshold if self.greater_is_better
                                         else value < self.best - self.threshold)
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return warnings, self.patience is not None and self.bad_evals >= self.patience
