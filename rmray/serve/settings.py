"""Serving configuration: one dataclass, loadable from the CLI, a Serve config file's ``args``, or code."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from rmray.core.spec import DEFAULT_MAX_BATCH_TOKENS


@dataclass
class ServeSettings:
    model_dirs: list[str] = field(default_factory=list)
    """rmray model folders (training's ``final/``); several make an ensemble behind one endpoint."""
    model_names: list[str] | None = None
    """Names in responses and ``/classify``'s ``model``; default: the folder names."""
    name: str = "rmray"
    """The Serve application's name."""
    route_prefix: str = "/"
    """Path under which the endpoints are served."""
    host: str = "127.0.0.1"
    """Bind address. Loopback unless you mean to expose it (then also set a token)."""
    port: int = 8000
    """HTTP port; a taken port is refused before Ray starts."""
    replicas: int = 1
    """Scorer replicas per model (the minimum when ``max_replicas`` enables autoscaling)."""
    max_replicas: int | None = None
    """Autoscale each model's scorers up to this many replicas; default: a fixed ``replicas``."""
    target_ongoing_requests: float = 8.0
    """Autoscaling: requests in flight per scorer replica that Serve aims for; above it adds replicas,
    below it removes them (RL loops send bursts: a low target scales up sooner)."""
    upscale_delay_s: float = 30.0
    """Autoscaling: how long the load must stay above the target before a replica is added (Serve's default)."""
    downscale_delay_s: float = 600.0
    """Autoscaling: how long the load must stay below the target before a replica is removed (Serve's default)."""
    num_cpus: float = 0.5
    """Logical CPUs per scorer replica."""
    num_gpus: float = 0.0
    """GPUs per scorer replica; fractions pack several replicas on one GPU."""
    torch_threads: int | None = None
    """Intra-op threads per replica; default: max(1, num_cpus)."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Forward precision: ``auto`` is bf16 autocast on a GPU with bf16, float32 on CPU."""
    max_batch_size: int = 64
    """Requests merged into one dynamic batch (``@serve.batch``) before the token budget splits it."""
    batch_wait_timeout_s: float = 0.005
    """How long a dynamic batch waits for more requests before it runs."""
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    """Padded tokens per forward: length-sorted rows are cut at this budget, so one long text never pads
    a batch of short ones."""
    max_ongoing_requests: int = 128
    """Requests one scorer replica takes at once (Serve's limit)."""
    max_queued_requests: int = 1024
    """Requests Serve queues for the scorers beyond that; more are refused (503)."""
    max_inflight: int = 64
    """Requests the HTTP ingress holds at once; beyond that it answers 503 with Retry-After at once. Keep
    it at what the scorers finish within the clients' timeout (OpenRLHF 180 s, rmray's client 120 s):
    admitted requests wait for the forwards ahead of them, rejected ones retry with back-off."""
    max_body_bytes: int = 8 * 2**20
    """Largest request body accepted (413 above it), chunked bodies included."""
    ingress_num_cpus: float = 0.25
    """Logical CPUs of the HTTP ingress replica."""
    api_token: str | None = None
    """Bearer token; default: the ``RMRAY_API_TOKEN`` environment variable. Unset: no auth (loopback)."""
    admin_token: str | None = None
    """Bearer token of ``/admin/models`` (swap the served models); default: the ``RMRAY_ADMIN_TOKEN``
    environment variable. Unset: the admin endpoints do not exist (404)."""
    start_timeout_s: float = 900.0
    """How long the scorer replicas of a model set may take to be running (at start and in a swap) before
    it is given up: replicas the cluster has no room for wait forever otherwise."""
    metrics_export_port: int | None = None
    """Port of this node's Prometheus metrics (the ``rmray_`` reward telemetry among Ray's own), when
    ``rmray serve`` starts Ray itself; default: Ray picks one (``ray start --metrics-export-port`` on a cluster)."""
    trust_remote_code: bool = False
    """Let transformers run a model folder's own Python code; off by default (built-in architectures only)."""
    ensemble: Literal["normalized", "raw"] = "normalized"
    """Several models: average rewards standardized by each model's saved eval mean/std (when every model
    has them; else raw), so models on different scales count alike. ``raw`` averages raw rewards."""

    def __post_init__(self):
        if isinstance(self.model_dirs, str):
            self.model_dirs = [self.model_dirs]
        if not self.model_dirs:
            raise ValueError("model_dirs is empty: give at least one rmray model folder (a training run's final/)")
        if self.model_names is None:
            from rmray.core.scoring import model_name  # here, not at import: it loads torch

            self.model_names = [model_name(d) for d in self.model_dirs]
        if len(self.model_names) != len(self.model_dirs):
            raise ValueError(f"{len(self.model_names)} model_names for {len(self.model_dirs)} model_dirs")
        if len(set(self.model_names)) != len(self.model_names):
            self.model_names = [f"{n}-{i}" for i, n in enumerate(self.model_names)]
        if self.api_token is None:
            self.api_token = os.environ.get("RMRAY_API_TOKEN") or None
        if self.admin_token is None:
            self.admin_token = os.environ.get("RMRAY_ADMIN_TOKEN") or None
        if self.ensemble not in ("normalized", "raw"):
            raise ValueError(f"ensemble must be 'normalized' or 'raw', got {self.ensemble!r}")
        for key in ("replicas", "max_batch_size", "max_batch_tokens", "max_inflight", "max_body_bytes"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas}), "
                             "the autoscaling minimum: raise max_replicas or leave it unset")
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"target_ongoing_requests must be above 0, got {self.target_ongoing_requests}")
        for key in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be 0 or more seconds, got {getattr(self, key)}")

    @classmethod
    def from_dict(cls, data: dict) -> "ServeSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown serve setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def public(self) -> dict:
        """Settings safe to log or show (the token masked)."""
        out = asdict(self)
        out["api_token"] = "***" if self.api_token else None
        out["admin_token"] = "***" if self.admin_token else None
        return out
