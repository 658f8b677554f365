"""The two halves of a served model: its scorer replicas (forwards) and what the ingress keeps of it.

A scorer replica holds the weights and merges concurrent requests with ``@serve.batch``, cutting the
merged work into length-sorted token-budget batches; groups (one prompt, N responses) use the
shared-prefix forward. The ingress keeps only each model's tokenizer and scoring spec
(:class:`ServedModel`), so it tokenizes under the scoring contract and sends token ids.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from fastapi import HTTPException
from ray import serve

from rmray.core.contract import encode_item, encode_query, process_item
from rmray.core.fingerprint import model_fingerprint
from rmray.core.formats import BadRow
from rmray.core.spec import ScoringSpec
from rmray.core.steps import StepRow, tokenize_steps
from rmray.core.tokenize import encode_text, keep_end
from rmray.core.tokenizer import load_tokenizer

from .listen import bind_replica_grpc_privately
from .schemas import Item
from .settings import ServeSettings


class StepIds(list):
    """A process model's item on its way to the scorer: its token ids, and where each step's reward is read."""

    def __init__(self, ids, positions):
        super().__init__(ids)
        self.positions = list(positions)


class ModelScorerReplica:
    """One model's forwards; every call is ``(kind, sequences)``, kind ``items``, ``group`` or (a process
    model) ``steps``."""

    def __init__(self, model_dir: str, settings: dict):
        import torch

        from rmray.core.scoring import Scorer
        from rmray.core.step_scoring import StepScorer

        s = ServeSettings.from_dict(settings)
        bind_replica_grpc_privately()
        torch.set_num_threads(s.torch_threads or max(1, int(s.num_cpus)))
        device = "cuda" if s.num_gpus > 0 and torch.cuda.is_available() else None
        process = ScoringSpec.load(model_dir).kind == "process"
        self.scorer = (StepScorer if process else Scorer).load(model_dir, trust_remote_code=s.trust_remote_code,
                                                               device=device, precision=s.precision)
        self.max_batch_tokens = s.max_batch_tokens
        self.executor = ThreadPoolExecutor(1)  # forwards off the event loop, one at a time
        self.score.set_max_batch_size(s.max_batch_size)
        self.score.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def score(self, calls: list[tuple[str, list[list[int]]]]) -> list[list[float]]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._score_calls, calls)

    def _score_calls(self, calls):
        """Rewards per call; a per-attribute model's are ``[reward, output_1, ..., output_A]`` each."""
        if self.scorer.spec.kind == "process":
            return self._score_step_calls(calls)
        singles = [seq for kind, seqs in calls if kind == "items" for seq in seqs]
        groups = [seqs for kind, seqs in calls if kind == "group"]
        options = {"max_batch_tokens": self.max_batch_tokens, "per_attribute": bool(self.scorer.attributes)}
        single_rewards = iter(self.scorer.score_ids(singles, **options))
        group_rewards = iter(self.scorer.score_id_groups(groups, **options))
        return [[next(single_rewards) for _ in seqs] if kind == "items" else next(group_rewards)
                for kind, seqs in calls]


    def _score_step_calls(self, calls):
        """A process model: every call's items in one length-sorted pass; ``steps`` calls get each item's step
        rewards, the others its one reward (the steps aggregated; a group is its items, no prefix shared)."""
        from rmray.core.steps import StepTokens

        flat = [StepTokens(list(seq), seq.positions, [], 0) for _, seqs in calls for seq in seqs]
        steps = iter(self.scorer.score_tokens(flat, max_batch_tokens=self.max_batch_tokens))
        return [[next(steps) if kind == "steps" else self.scorer.reward(next(steps)) for _ in seqs]
                for kind, seqs in calls]


ModelScorer = serve.deployment(name="scorer")(ModelScorerReplica)


def scorer_app(model_dir: str, s: ServeSettings):
    """One model's scorer deployment, bound: the whole of a Serve application of its own."""
    scaling = {"autoscaling_config": _autoscaling(s)} if s.max_replicas else {"num_replicas": s.replicas}
    return ModelScorer.options(ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
                               max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests,
                               **scaling).bind(model_dir, s.__dict__.copy())


def _autoscaling(s: ServeSettings) -> dict:
    """Serve's own autoscaler (it counts the requests queued and in flight at each scorer replica)."""
    return {"min_replicas": s.replicas, "initial_replicas": s.replicas, "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests, "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s}


class ServedModel:
    """What the ingress needs of a model: its tokenizer and scoring spec (no weights)."""

    def __init__(self, name: str, model_dir: str, handle, trust_remote_code: bool):
        self.name, self.model_dir, self.handle = name, model_dir, handle
        self.spec = ScoringSpec.load(model_dir)
        self.fingerprint = model_fingerprint(model_dir)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.vocab_size = len(self.tokenizer)

    @property
    def process(self) -> bool:
        return self.spec.kind == "process"

    def encode(self, items: list[Item], where: str) -> tuple[list[list[int]], list[bool]]:
        """``(prompt, response)`` items under the scoring contract (:func:`rmray.core.contract.encode_item`;
        a process model's: :func:`rmray.core.contract.process_item`)."""
        if self.process:
            return _encode_all(items, where, lambda item: _step_ids(process_item(
                self.tokenizer, self.spec, _plain(item.prompt), _plain(item.response))))
        return _encode_all(items, where, lambda item: encode_item(self.tokenizer, self.spec, _plain(item.prompt),
                                                                  _plain(item.response)))

    def encode_steps(self, items: list, where: str) -> tuple[list[list[int]], list[bool]]:
        """``(prompt, steps)`` items of a process model (:func:`rmray.core.steps.tokenize_steps`)."""
        return _encode_all(items, where, lambda item: _step_ids(tokenize_steps(
            self.tokenizer, StepRow(_plain(item.prompt), list(item.steps), None), self.spec.step_separator,
            self.spec.max_length)))

    def encode_queries(self, queries: list[str], prompts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """OpenRLHF's whole texts (:func:`rmray.core.contract.encode_query`). A process model needs the prompt
        boundary (``prompts``), to split the rest into steps."""
        if self.process:
            def one(qp):
                query, prompt = qp
                if not prompt or not query.startswith(prompt):
                    raise ValueError("a process reward model needs 'prompts' whose entry is the start of the query")
                return _step_ids(process_item(self.tokenizer, self.spec, prompt, query[len(prompt):]))

            return _encode_all(list(zip(queries, prompts)), "query", one)
        return _encode_all(list(zip(queries, prompts)), "query",
                           lambda qp: encode_query(self.tokenizer, self.spec, *qp))

    def encode_texts(self, texts: list, where: str, add_special_tokens: bool = True,
                     max_length: int | None = None) -> tuple[list[list[int]], list[bool]]:
        """Whole texts (or token ids) whose prompt boundary is unknown; too long, the end is kept."""
        def one(text):
            if self.process:
                raise ValueError("a process reward model scores steps after a prompt: send /score_steps, /score "
                                 "or /get_reward with prompts")
            if isinstance(text, str):
                return encode_text(self.tokenizer, self.spec, text, add_special_tokens=add_special_tokens,
                                   max_length=max_length)
            if max(text) >= self.vocab_size:
                raise ValueError(f"token id {max(text)} is outside the model's vocabulary of {self.vocab_size}")
            return keep_end(text, self.spec, max_length)

        return _encode_all(texts, where, one)


class _Encoded(NamedTuple):
    ids: list
    truncated: bool


def _step_ids(tokens) -> _Encoded:
    """A process model's tokens as what the scorer reads, truncated where the prompt lost tokens."""
    return _Encoded(StepIds(tokens.input_ids, tokens.positions), tokens.prompt_cut > 0)


def _encode_all(inputs: list, where: str, encode_one) -> tuple[list[list[int]], list[bool]]:
    ids, truncated = [], []
    for i, value in enumerate(inputs):
        try:
            enc = encode_one(value)
        except BadRow as err:
            raise HTTPException(422, f"{where}[{i}].{err.field or 'text'}: {err}") from None
        except ValueError as err:
            raise HTTPException(422, f"{where}[{i}]: {err}") from None
        ids.append(enc.ids)
        truncated.append(enc.truncated)
    return ids, truncated


def _plain(text):
    return [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in text] if isinstance(text, list) else text


