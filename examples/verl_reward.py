"""verl custom reward function that scores each rollout with a running ``rmray serve``.

verl (0.9) has no setting for an outside reward-model server: with ``reward.reward_model.enable=true``
its ``RewardLoopManager`` starts vLLM servers of its own. To score with rmray instead, keep that off and
point verl's custom reward function at this file::

    rmray serve outputs/my-rm/final --port 8000            # on a node the verl workers can reach
    python -m verl.trainer.main_ppo ... \\
        reward.reward_model.enable=false \\
        reward.custom_reward_function.path=examples/verl_reward.py \\
        reward.custom_reward_function.name=compute_score \\
        +reward.custom_reward_function.reward_kwargs.url=http://127.0.0.1:8000

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` per rollout, with
the decoded response but not the prompt: put the prompt in each row's ``extra_info`` when you prepare
the dataset (``extra_info["prompt"]``: text or chat messages; verl's own recipes keep the question in
``extra_info["question"]``, which is used when ``prompt`` is absent). A chat prompt is rendered with the
reward model's own chat template by rmray, exactly as at training time.
"""

from __future__ import annotations

import os

from rmray.serve.client import RewardClient

_clients: dict[tuple, RewardClient] = {}


def _client(url: str, token: str | None, normalize: bool) -> RewardClient:
    key = (url, token, normalize)
    if key not in _clients:  # one per worker process and setting, reused across calls
        _clients[key] = RewardClient(url, token=token, normalize=normalize)
    return _clients[key]


def _prompt(extra_info) -> object:
    info = dict(extra_info or {})
    prompt = info.get("prompt", info.get("question", ""))
    if hasattr(prompt, "tolist"):  # a message list read back from Parquet arrives as a numpy array
        prompt = prompt.tolist()
    return [dict(m) for m in prompt] if isinstance(prompt, (list, tuple)) else str(prompt or "")


def compute_score(data_source, solution_str, ground_truth=None, extra_info=None, *, url: str | None = None,
                  token: str | None = None, normalize: bool = False, **kwargs) -> float:
    """The reward of one rollout: rmray's ``/score`` on (``extra_info``'s prompt, ``solution_str``).

    ``url`` defaults to ``RMRAY_URL`` (else ``http://127.0.0.1:8000``); ``token`` to ``RMRAY_API_TOKEN``;
    ``normalize`` returns rewards standardized by the model's saved eval-set mean/std."""
    url = url or os.environ.get("RMRAY_URL", "http://127.0.0.1:8000")
    return _client(url, token, normalize).score([_prompt(extra_info)], [solution_str])[0]
