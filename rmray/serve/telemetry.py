"""Reward telemetry through Ray's metrics system: what the served rewards do once an RL loop runs.

The first sign of reward hacking is in the served rewards themselves: they drift away from the eval-set
reference the model was trained to give, or grow with length. The ingress records, per request and per
scored text, into ``ray.util.metrics`` series that every node's metrics agent exports for Prometheus
(Ray prefixes them ``ray_``: ``ray_rmray_requests_total``):

- ``rmray_requests`` {endpoint, status}, ``rmray_texts`` and ``rmray_tokens`` {endpoint},
  ``rmray_request_seconds`` {endpoint}: traffic and latency;
- ``rmray_rewards`` {model, model_version, bucket}: how many raw rewards each model gave per reward bin
  (``bucket`` is ``"[-0.5,0)"``-style; a histogram by hand, as Ray's histograms take positive values only);
- ``rmray_reward_drift_sd`` {model, model_version}: (mean of every reward this version served - the
  eval-set mean saved at training) / the eval-set std; absent for a model saved without them;
- ``rmray_reward_length_spearman`` {model, model_version}: rank correlation of reward with the scored
  sequence's length in tokens over the last ``WINDOW`` texts (for a group sharing a prompt, its
  response length);
- ``rmray_ensemble_disagreement`` {model_version}: a histogram of the ensemble's per-text std.
Every series also carries ``app``, the Serve application.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque

from rmray.core.evaluation import spearman

WINDOW = 1024
REWARD_EDGES = [-8, -4, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2, 4, 8]
REWARD_BINS = ([f"(-inf,{REWARD_EDGES[0]})"] + [f"[{a},{b})" for a, b in zip(REWARD_EDGES, REWARD_EDGES[1:])]
               + [f"[{REWARD_EDGES[-1]},inf)"])
STD_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 4]
SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


class _ModelStats:
    """One model of one version: the running mean of its rewards and the last WINDOW (reward, length)."""

    def __init__(self, spec):
        self.count, self.total = 0, 0.0
        self.reference = (spec.reward_mean, spec.reward_std) if spec.reward_std else None
        self.window: deque = deque(maxlen=WINDOW)

    def add(self, rewards: list[float], lengths: list[int]) -> None:
        self.count += len(rewards)
        self.total += sum(rewards)
        self.window.extend(zip(rewards, lengths))

    def drift_sd(self) -> float | None:
        if not self.reference or not self.count:
            return None
        mean, std = self.reference
        return (self.total / self.count - mean) / std

    def length_spearman(self) -> float | None:
        if len(self.window) < 2:
            return None
        rho = spearman([r for r, _ in self.window], [n for _, n in self.window])
        return None if rho != rho else rho  # NaN: every reward or every length alike


class Telemetry:
    def __init__(self, app: str):
        from ray.util import metrics

        self.app = app
        self.requests = metrics.Counter("rmray_requests", "HTTP requests answered, by endpoint and status code",
                                        tag_keys=("app", "endpoint", "status"))
        self.texts = metrics.Counter("rmray_texts", "Texts scored", tag_keys=("app", "endpoint"))
        self.tokens = metrics.Counter("rmray_tokens", "Tokens scored (the first model's tokenization)",
                                      tag_keys=("app", "endpoint"))
        self.seconds = metrics.Histogram("rmray_request_seconds", "Request latency at the ingress",
                                         boundaries=SECONDS_BUCKETS, tag_keys=("app", "endpoint"))
        self.rewards = metrics.Counter("rmray_rewards", "Raw rewards served per reward bin, per model and version",
                                       tag_keys=("app", "model", "model_version", "bucket"))
        self.drift = metrics.Gauge("rmray_reward_drift_sd", "Served mean reward minus the eval-set mean, in eval-set stds",
                                   tag_keys=("app", "model", "model_version"))
        self.length = metrics.Gauge("rmray_reward_length_spearman",
                                    f"Spearman(reward, tokens) over the last {WINDOW} texts",
                                    tag_keys=("app", "model", "model_version"))
        self.disagreement = metrics.Histogram("rmray_ensemble_disagreement", "Per-text std of an ensemble's rewards",
                                              boundaries=STD_BUCKETS, tag_keys=("app", "model_version"))
        self.stats: dict[tuple[str, str], _ModelStats] = {}

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.inc(1, {"app": self.app, "endpoint": endpoint, "status": str(status)})
        self.seconds.observe(seconds, {"app": self.app, "endpoint": endpoint})

    def scored(self, endpoint: str, version, per_model: list[list[float]], body: dict) -> None:
        """One answer's rewards: every model's raw rewards, the sequence lengths, the ensemble's std."""
        lengths = body["_tokens"]
        tags = {"app": self.app, "endpoint": endpoint}
        self.texts.inc(len(lengths), tags)
        self.tokens.inc(sum(lengths), tags)
        for model, rewards in zip(version.models, per_model):
            mtags = {"app": self.app, "model": model.name, "model_version": version.id}
            stats = self.stats.setdefault((model.name, version.id), _ModelStats(model.spec))
            stats.add(rewards, lengths)
            for index, count in Counter(bisect.bisect_right(REWARD_EDGES, r) for r in rewards).items():
                self.rewards.inc(count, {**mtags, "bucket": REWARD_BINS[index]})
            for gauge, value in ((self.drift, stats.drift_sd()), (self.length, stats.length_spearman())):
                if value is not None:
                    gauge.set(value, mtags)
        for std in body.get("reward_std") or []:
            self.disagreement.observe(std, {"app": self.app, "model_version": version.id})
