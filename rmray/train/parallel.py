"""Data parallelism for the training loop: DDP replicas, or FSDP2 shards for models that do not fit.

The loop talks to one of two strategies and never branches on which. They differ where the
training loop touches the distributed state:

- wrapping: DDP through Ray Train's ``prepare_model``; FSDP2 ``fully_shard`` on every transformer
  block (the model's own ``_no_split_modules``), then on the whole reward model, so the custom
  read-out joins the last all-gather;
- gradient accumulation: DDP's ``no_sync``; FSDP2's ``set_requires_gradient_sync``;
- collectives per forward: FSDP all-gathers in every forward, so every rank must run the same number
  of forwards -- a micro-batch split into token-budget chunks is padded with zero-weight chunks
  to the largest count over ranks (DDP syncs once per micro-batch and needs none);
- state: checkpoints hold full, unsharded tensors (a plain HF model folder + the optimizer state
  keyed by parameter index), gathered to rank 0 on save and re-sharded on load, so a checkpoint
  is loadable by ``from_pretrained`` and resumable with either strategy and any number of workers.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from rmray.core.architecture import describe

FSDP_OPTIONS = {"full_shard", "shard_grad_op", "offload", "auto_wrap"}


class DDPStrategy:
    def wrap(self, raw_model, use_bf16: bool, device):
        import ray.train.torch

        # No buffer broadcast: it is a collective in every forward (ranks whose micro-batches split into
        # different numbers of chunks would hang), and the buffers here (rotary frequencies, position ids)
        # are constants. Gradients still sync once per micro-batch.
        return ray.train.torch.prepare_model(raw_model, parallel_strategy_kwargs={"broadcast_buffers": False})

    def eval_model(self, model, raw_model):
        return raw_model  # the plain module: evaluation needs no collectives, ranks take different batches

    def no_sync(self, model):
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()

    def equalize(self, chunks: list) -> list[tuple[object, float]]:
        return [(chunk, 1.0) for chunk in chunks]

    def grad_norm(self, value) -> float:
        return float(value)

    def model_state(self, model, raw_model) -> dict | None:
        return None  # the live model saves itself (save_pretrained)

    def optimizer_state(self, model, optimizer) -> dict:
        return optimizer.state_dict()

    def load_model_state(self, model, raw_model, state: dict) -> tuple[list, list]:
        result = raw_model.model.load_state_dict(state, strict=False)
        return list(result.missing_keys), list(result.unexpected_keys)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def every_rank_evaluates_all(self) -> bool:
        return False


class FSDPStrategy:
    """torch FSDP2 (``fully_shard``); gloo on CPU, nccl on GPU -- whatever Ray Train initialised."""

    def __init__(self, options: set[str]):
        self.options = options

    def wrap(self, raw_model, use_bf16: bool, device):
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kwargs = {"reshard_after_forward": "shard_grad_op" not in self.options}
        if use_bf16:  # bf16 compute and all-gathers, fp32 master weights and gradient reduction
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if "offload" in self.options:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        block_names = describe(raw_model.hf_model).blocks
        blocks = [m for m in raw_model.modules() if type(m).__name__ in block_names]
        if not blocks:
            raise ValueError(f"fsdp: {type(raw_model.hf_model).__name__} names no transformer block class "
                             f"(_no_split_modules); train it with DDP (fsdp='')")
        raw_model.to(device)
        self.device = device  # collectives of the loop's own (chunk counts) go on the backend's device
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(raw_model, **kwargs)
        return raw_model  # FSDP2 shards in place: the wrapper is the model

    def eval_model(self, model, raw_model):
        return model

    def no_sync(self, model):
        @contextlib.contextmanager
        def accumulate():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return accumulate()

    def equalize(self, chunks: list) -> list[tuple[object, float]]:
        count = torch.tensor([len(chunks)], device=self.device)  # NCCL reduces GPU tensors only
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        smallest = min(chunks, key=lambda c: c.computed_tokens)
        return [(chunk, 1.0) for chunk in chunks] + [(smallest, 0.0)] * (int(count) - len(chunks))

    def grad_norm(self, value) -> float:
        return float(value.full_tensor() if hasattr(value, "full_tensor") else value)

    def model_state(self, model, raw_model) -> dict | None:
        """The full HF state dict on rank 0 (CPU), ``{}`` elsewhere; every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {key.removeprefix("model."): value for key, value in full.items()}

    def optimizer_state(self, model, optimizer) -> dict:
        """Full optimizer state keyed by parameter index (the checkpoint format DDP writes too)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        index = {name: i for i, name in enumerate(_trainable_names(model))}
        groups = [{**g, "params": [index[name] for name in g["params"]]} for g in full.get("param_groups", [])]
        return {"state": {index[name]: s for name, s in full.get("state", {}).items()}, "param_groups": groups}

    def load_model_state(self, model, raw_model, state: dict) -> tuple[list, list]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        result = set_model_state_dict(model, {f"model.{k}": v for k, v in state.items()},
                                      options=StateDictOptions(full_state_dict=True, strict=False))
        strip = [k.removeprefix("model.") for k in result.missing_keys]
        return strip, [k.removeprefix("model.") for k in result.unexpected_keys]

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _trainable_names(model)
        full = {"state": {names[int(i)]: s for i, s in state["state"].items()},
                "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))

    def every_rank_evaluates_all(self) -> bool:
        return True  # forwards are collectives: ranks cannot take different eval batches


def _trainable_names(model) -> list[str]:
    """Parameter names in the optimizer's order (it is built from the same filtered list)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def make_strategy(fsdp: str):
    options = set(fsdp.split())
    return FSDPStrategy(options) if options else DDPStrategy()
