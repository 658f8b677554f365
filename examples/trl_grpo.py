"""TRL GRPO with an rmray reward model served over HTTP.

    rmray serve outputs/my-rm/final --port 8000
    python examples/trl_grpo.py --url http://127.0.0.1:8000 --policy Qwen/Qwen2.5-0.5B-Instruct

``RewardClient`` is a TRL reward function (``reward_funcs=[client]``): it sends each (prompt,
completion) to ``/score``, plain text or chat messages alike, retrying while a replica restarts and
failing at once on a 4xx. An empty completion (the policy emitted EOS first) is scored as the prompt.
"""

from __future__ import annotations

import argparse

from rmray.serve.client import RewardClient

QUESTIONS = ["How do I keep basil fresh?", "What is the best way to learn to juggle?",
             "How can I sleep better?", "How do I make my tomato plants produce more fruit?"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="rmray serve's address")
    parser.add_argument("--policy", default="Qwen/Qwen2.5-0.5B-Instruct", help="policy model: hub id or folder")
    parser.add_argument("--output-dir", default="outputs/grpo", help="where TRL writes the policy")
    parser.add_argument("--max-steps", type=int, default=100, help="GRPO steps")
    parser.add_argument("--num-generations", type=int, default=4, help="completions per prompt (the group)")
    parser.add_argument("--max-completion-length", type=int, default=128, help="tokens per completion")
    parser.add_argument("--conversational", action="store_true", help="chat-message prompts instead of text")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU")
    return parser


def main(argv: list[str] | None = None):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = build_parser().parse_args(argv)
    prompts = [[{"role": "user", "content": q}] if args.conversational else f"Question: {q}\nAnswer:"
               for q in QUESTIONS]
    config = GRPOConfig(output_dir=args.output_dir, max_steps=args.max_steps, num_generations=args.num_generations,
                        per_device_train_batch_size=args.num_generations,
                        max_completion_length=args.max_completion_length, use_cpu=args.cpu,
                        bf16=not args.cpu, report_to=[], save_strategy="no", logging_steps=1)
    trainer = GRPOTrainer(model=args.policy, reward_funcs=[RewardClient(args.url)], args=config,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
    trainer.train()
    return trainer


if __name__ == "__main__":
    main()
