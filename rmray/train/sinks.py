"""Metric sinks beside metrics.jsonl: TensorBoard event files (default), MLflow and W&B when installed
and asked for. Rank 0 only; a sink that cannot start is reported once and skipped, never fatal."""

from __future__ import annotations

import os
import sys


class Sinks:
    def __init__(self, output_dir: str, report_to: list[str], run_name: str, config: dict):
        self.writers = []
        for name in report_to:
            try:
                if name == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter

                    tb = SummaryWriter(log_dir=os.path.join(output_dir, "runs"))
                    self.writers.append(("tensorboard", tb))
                elif name == "mlflow":
                    import mlflow

                    mlflow.start_run(run_name=run_name)
                    mlflow.log_params({k: str(v)[:250] for k, v in config.items()})
                    self.writers.append(("mlflow", mlflow))
                elif name == "wandb":
                    import wandb

                    self.writers.append(("wandb", wandb.init(name=run_name, config=config)))
            except Exception as err:  # noqa: BLE001 - a missing optional sink must not stop training
                print(f"rmray: metric sink {name!r} unavailable ({err}); metrics.jsonl still has everything",
                      file=sys.stderr)

    def write(self, record: dict) -> None:
        step = record.get("step")
        if step is None or "event" in record:
            return
        scalars = {k: float(v) for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for key, value in scalars.items():
                    writer.add_scalar(key if key.startswith("eval_") else f"train/{key}", value, step)
                writer.flush()
            elif kind == "mlflow":
                writer.log_metrics(scalars, step=step)
            elif kind == "wandb":
                writer.log(scalars, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            if kind == "tensorboard":
                writer.close()
            elif kind == "mlflow":
                writer.end_run()
            elif kind == "wandb":
                writer.finish()
