"""Iterative RLHF: GRPO against rmray serve, retrain the reward model on fresh pairs, swap it in, go on.

    export RMRAY_ADMIN_TOKEN=$(openssl rand -hex 16)
    rmray serve outputs/rm-round0/final --port 8000 &
    python examples/iterative_rlhf.py --url http://127.0.0.1:8000 --policy Qwen/Qwen2.5-0.5B-Instruct \
        --rm-base outputs/rm-round0/final --pairs round1.jsonl round2.jsonl --steps-per-round 50

One ``GRPOTrainer`` runs every round. After each ``--steps-per-round`` steps, ``rmray train`` fine-tunes
the current reward model on the next file of preference pairs (in practice: the policy's own samples,
labelled), and ``POST /admin/models`` swaps the new model in while the server keeps answering. The
trainer never sees a failed reward call, and every reward call's ``model_version`` is kept: which model
scored which step is in ``versions.jsonl`` beside the policy.

Retraining here blocks the RL loop for simplicity; on a cluster it runs as its own ``ray job submit`` and
the loop only calls the swap when the job's ``rmray eval`` passes.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request

from rmray.serve.client import RewardClient

QUESTIONS = ["How do I keep basil fresh?", "What is the best way to learn to juggle?",
             "How can I sleep better?", "How do I make my tomato plants produce more fruit?"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="rmray serve's address")
    parser.add_argument("--admin-token", default=os.environ.get("RMRAY_ADMIN_TOKEN"),
                        help="the server's RMRAY_ADMIN_TOKEN (default: from the environment)")
    parser.add_argument("--policy", default="Qwen/Qwen2.5-0.5B-Instruct", help="policy model: hub id or folder")
    parser.add_argument("--rm-base", required=True, help="the reward model folder being served (round 0)")
    parser.add_argument("--pairs", nargs="+", required=True, help="one preference-pair file per later round")
    parser.add_argument("--steps-per-round", type=int, default=50, help="GRPO steps between reward-model updates")
    parser.add_argument("--train", nargs="*", default=[], help="rmray train key=value overrides for retraining")
    parser.add_argument("--output-dir", default="outputs/iterative", help="policy, reward models, versions.jsonl")
    parser.add_argument("--num-generations", type=int, default=4, help="completions per prompt (the group)")
    parser.add_argument("--max-completion-length", type=int, default=128, help="tokens per completion")
    parser.add_argument("--cpu", action="store_true", help="train the policy on the CPU")
    return parser


class VersionedReward(RewardClient):
    """A TRL reward function that keeps the ``model_version`` of every call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.versions: list[str] = []

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        rewards = super().__call__(prompts, completions, **kwargs)
        self.versions.append(self.last_model_version)
        return rewards


def retrain(base: str, pairs: str, output_dir: str, overrides: list[str]) -> str:
    """``rmray train`` from the current reward model on the round's pairs; the new ``final/`` folder."""
    from rmray.config import load_config
    from rmray.train.run import train

    cfg = load_config(None, [f"model_name_or_path={base}", f"train_data={pairs}", f"output_dir={output_dir}",
                             *overrides])
    return train(cfg).final_model_dir


def swap(url: str, token: str, model_dir: str) -> str:
    """Serve ``model_dir`` instead; returns once it answers every request, with its ``model_version``."""
    request = urllib.request.Request(url.rstrip("/") + "/admin/models", data=json.dumps({"models": [model_dir]}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                                     method="POST")
    with urllib.request.urlopen(request, timeout=3600) as answer:
        return json.loads(answer.read())["model_version"]


def main(argv: list[str] | None = None):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    args = build_parser().parse_args(argv)
    if not args.admin_token:
        raise SystemExit("iterative_rlhf: set RMRAY_ADMIN_TOKEN (the server's) or pass --admin-token")
    reward = VersionedReward(args.url)
    rounds = {"base": args.rm_base, "pairs": list(args.pairs), "swapped": []}

    class NextRound(TrainerCallback):
        def on_step_end(self, trainer_args, state, control, **kwargs):
            if state.global_step % args.steps_per_round or not rounds["pairs"]:
                return
            k = len(rounds["swapped"]) + 1
            rounds["base"] = retrain(rounds["base"], rounds["pairs"].pop(0),
                                     os.path.join(args.output_dir, f"rm-round{k}"), args.train)
            rounds["swapped"].append(swap(args.url, args.admin_token, rounds["base"]))
            print(f"iterative_rlhf: step {state.global_step}: serving {rounds['swapped'][-1]}", flush=True)

    config = GRPOConfig(output_dir=os.path.join(args.output_dir, "policy"),
                        max_steps=args.steps_per_round * (len(args.pairs) + 1), num_generations=args.num_generations,
                        per_device_train_batch_size=args.num_generations,
                        max_completion_length=args.max_completion_length, use_cpu=args.cpu, bf16=not args.cpu,
                        report_to=[], save_strategy="no", logging_steps=1)
    prompts = [f"Question: {q}\nAnswer:" for q in QUESTIONS]
    trainer = GRPOTrainer(model=args.policy, reward_funcs=[reward], args=config, callbacks=[NextRound()],
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
    trainer.train()
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "versions.jsonl"), "w") as f:
        f.writelines(json.dumps({"reward_call": i, "model_version": v}) + "\n" for i, v in enumerate(reward.versions))
    return trainer, reward.versions, rounds["swapped"]


if __name__ == "__main__":
    main()
