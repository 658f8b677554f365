"""Driver-side progress: a bar on a terminal, one line per logged step otherwise.

Worker output is not forwarded to the driver by default (Ray's own log lines are noise to most
users), so the driver follows ``metrics.jsonl`` -- the same record users read afterwards -- while
``fit()`` runs in a background thread (:class:`InBackground`).
"""

from __future__ import annotations

import json
import os
import sys
import threading


class InBackground:
    """Runs ``fn`` in a daemon thread from construction; ``result()`` returns its value or re-raises
    its error in the caller's thread."""

    def __init__(self, fn, name: str = "rmray-fit"):
        self._result: dict = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._result["value"] = fn()
        except BaseException as e:
            self._result["error"] = e

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def result(self):
        self._thread.join()
        if "error" in self._result:
            raise self._result["error"]
        return self._result.get("value")


def follow_progress(running: InBackground, metrics_path: str, total_steps: int, poll_s: float = 1.0):
    """Print the run's progress from ``metrics_path`` until ``running`` ends; return its result."""
    printer = _Printer(total_steps)
    offset = 0
    while running.is_alive():
        running.join(poll_s)
        offset = _follow(metrics_path, offset, printer)
    _follow(metrics_path, offset, printer)
    printer.close()
    return running.result()


def _follow(path: str, offset: int, printer) -> int:
    if not os.path.exists(path):
        return offset
    with open(path) as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind("\n") + 1]  # a line being written is read on the next poll
    for line in complete.splitlines():
        if line.strip():
            printer.update(json.loads(line))
    return offset + len(complete.encode())


class _Printer:
    def __init__(self, total: int):
        self.tty = sys.stderr.isatty()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)
        self.total = total

    def update(self, record: dict) -> None:
        if record.get("event") == "resume":
            self._say(f"resumed from step {record['step']} (epoch {record['epoch']})")
        elif record.get("event") == "warning":
            self._say(f"warning: {record['message']}")
        elif record.get("event") == "early_stop":
            self._say(f"early stop at step {record['step']}: {record['metric']} has not improved on {record['best']:.4f} "
                      f"for {record['patience']} evals")
        elif "event" not in record and any(k.startswith(("eval_", "bench/")) for k in record):
            parts = [f"accuracy {_num(record['eval_accuracy'], 3)}, loss {_num(record['eval_loss'], 4)}"] if "eval_accuracy" in record else []
            parts += [f"{k.split('/')[1]} {_num(v, 3)}" for k, v in record.items() if k.startswith("bench/") and k.endswith("/score")]
            self._say(f"eval @ step {record['step']}: " + "; ".join(parts))
        elif "loss" in record and "event" not in record:
            if self.bar is not None:
                self.bar.n = record["step"]
                self.bar.set_postfix(loss=_num(record["loss"], 4), acc=_num(record["accuracy"], 3),
                                     pairs_s=_num(record["pairs_per_s"], 1))
            else:
                print(f"step {record['step']}/{self.total}: loss {_num(record['loss'], 4)}, accuracy "
                      f"{_num(record['accuracy'], 3)}, lr {record['learning_rate']:.2e}, "
                      f"{_num(record['pairs_per_s'], 1)} pairs/s", flush=True)

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _num(value, digits: int) -> str:
    """A metric as text; ``nan`` for a value the JSON log holds as null (a NaN loss must not end the run's output)."""
    return "nan" if value is None else f"{value:.{digits}f}"
