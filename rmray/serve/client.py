"""Clients for RL loops: over HTTP (any process) or a Serve ``DeploymentHandle`` (inside the cluster).

Both are TRL reward functions: ``client(prompts, completions, **kwargs) -> list[float]``, usable as
``reward_funcs=[client]`` in TRL's GRPO/RLOO trainers (plain-text or conversational prompts).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

RETRY_STATUSES = (429, 502, 503, 504)


def _items(prompts: Sequence[Any], completions: Sequence[Any]) -> list[dict]:
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
    return [{"prompt": p, "response": c} for p, c in zip(prompts, completions)]


class RewardClient:
    """HTTP client with retries on 5xx/connection errors (a replica restarting) -- never on 4xx.

    ``last_model_version`` is the ``model_version`` of the last answer: log it beside the rewards, and a
    swap of the served models (``/admin/models``) shows in the RL loop's own records."""

    __name__ = "rmray_reward"  # TRL names reward columns after the function

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout: float = 120.0,
                 retries: int = 8, backoff_s: float = 0.25, normalize: bool = False):
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("RMRAY_API_TOKEN")
        self.timeout, self.retries, self.backoff_s, self.normalize = timeout, retries, backoff_s, normalize
        self.last_model_version: str | None = None

    def post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                if err.code not in RETRY_STATUSES or attempt == self.retries:
                    raise RuntimeError(f"POST {path} -> {err.code}: {err.read().decode(errors='replace')}") from None
                wait = float(err.headers.get("Retry-After") or 0)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == self.retries:
                    raise
                wait = 0.0
            time.sleep(max(wait, self.backoff_s * 2**attempt) if wait else self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _rewards(self, out: dict) -> list[float]:
        self.last_model_version = out.get("model_version")
        return out["normalized_rewards"] if self.normalize and "normalized_rewards" in out else out["rewards"]

    def score(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        return self._rewards(self.post("/score", {"items": _items(prompts, responses), "normalize": self.normalize}))

    def score_group(self, prompt: Any, responses: Sequence[Any]) -> list[float]:
        return self._rewards(self.post("/score_group", {"prompt": prompt, "responses": list(responses),
                                                        "normalize": self.normalize}))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
        return self.score(prompts, completions)


class HandleRewardClient:
    """The same over a ``DeploymentHandle`` to the ingress (``serve.get_app_handle("rmray")``): no HTTP."""

    __name__ = "rmray_reward"

    def __init__(self, handle, normalize: bool = False):
        self.handle, self.normalize = handle, normalize
        self.last_model_version: str | None = None

    def score(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        return self._rewards(self.handle.score_items.remote(_items(prompts, responses), self.normalize).result())

    async def score_async(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        return self._rewards(await self.handle.score_items.remote(_items(prompts, responses), self.normalize))

    def _rewards(self, out: dict) -> list[float]:
        self.last_model_version = out.get("model_version")
        return out["normalized_rewards"] if self.normalize and "normalized_rewards" in out else out["rewards"]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
        return self.score(prompts, completions)
