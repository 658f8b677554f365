"""``rmray`` command line: thin wrappers that parse a config and call one function."""

from __future__ import annotations

import argparse
import os
import sys

from rmray.config_fields import add_options, field_docs, options_of
from rmray.errors import UsageError
from rmray.ray_env import quiet_env, verbose
from rmray.serve.settings import ServeSettings

DEMO_EXAMPLES = [
    ("How do I keep basil fresh?", "Trim the stems and keep the bunch in a glass of water at room temperature."),
    ("How do I keep basil fresh?", "Figure it out yourself."),
    ("What is the best way to learn to juggle?", "Start with two balls, throw in an arc at eye level, then add a third."),
    ("What is the best way to learn to juggle?", "Nobody cares, ask someone else."),
]


def main(argv: list[str] | None = None) -> int:
    quiet_env()  # before transformers is imported: it reads the progress-bar switch once, at import
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as err:  # a mistake the user can fix: one line, no traceback (RMRAY_VERBOSE=1 shows it)
        if verbose():
            raise
        print(f"rmray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if verbose():
            raise
        print("rmray: interrupted (the same command again resumes a training run from its last whole checkpoint)",
              file=sys.stderr)
        return 130


SERVE_OPTIONS = ["host", "port", "replicas", "max_replicas", "target_ongoing_requests", "num_cpus", "num_gpus",
                 "max_inflight", "max_body_bytes", "ensemble", "precision", "metrics_export_port", "start_timeout_s"]
SCORE_OPTIONS = ["prompt_field", "response_field", "concurrency", "num_cpus", "num_gpus", "torch_threads", "batch_size",
                 "max_batch_tokens", "overwrite", "precision", "ensemble", "ray_address"]
EVAL_OPTIONS = ["benchmark", "output", "train_dir", "data_format", "concurrency", "num_cpus", "num_gpus", "torch_threads",
                "batch_size", "max_batch_tokens", "ensemble", "ray_address"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmray", description="Train and serve reward models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_serve(sub)
    _add_score(sub)
    _add_eval(sub)
    return parser


def _add_train(sub) -> None:
    p_train = sub.add_parser("train", help="train a reward model", add_help=False)
    p_train.add_argument("config", nargs="?", help="YAML config (see jobs/configs/)")
    p_train.add_argument("overrides", nargs="*", help="key=value overrides")
    p_train.add_argument("-h", "--help", action="store_true")
    p_demo = sub.add_parser("demo", help="train the offline demo model and score a few examples")
    p_demo.add_argument("config", nargs="?", default="jobs/configs/demo.yaml")
    p_demo.add_argument("overrides", nargs="*", help="key=value overrides")


def _add_serve(sub) -> None:
    p_serve = sub.add_parser("serve", help="serve models over HTTP with Ray Serve (Ctrl-C stops)")
    p_serve.add_argument("model_dirs", nargs="+", help="rmray model folders; several = an ensemble")
    add_options(p_serve, ServeSettings, SERVE_OPTIONS)
    p_serve.add_argument("--ray-address", default=None, help="join this cluster instead of starting one")


def _add_score(sub) -> None:
    from rmray.score.settings import ScoreConfig

    p_text = sub.add_parser("score-text", help="score prompt/response pairs with a trained model, texts as given "
                                               "(the same reward /score gives)")
    p_text.add_argument("model_dir")
    p_text.add_argument("--prompt", action="append", required=True)
    p_text.add_argument("--response", action="append", required=True)
    p_sc = sub.add_parser("score", help="score every row of a dataset offline (Ray Data) into Parquet")
    p_sc.add_argument("model_dir")
    p_sc.add_argument("input", help=field_docs(ScoreConfig)["input"])
    p_sc.add_argument("output", help=field_docs(ScoreConfig)["output"])
    p_sc.add_argument("--model", action="append", default=[], help="another model for an ensemble (repeatable)")
    add_options(p_sc, ScoreConfig, SCORE_OPTIONS)
    p_sc.add_argument("--top-k", type=int, default=None, help="best-of-n: keep the k best rows per prompt")
    p_sc.add_argument("--threshold", type=float, default=None, help="keep rows with reward >= this")
    p_sc.add_argument("--group-by", default=None, help="column to group by for --top-k (default: the prompt field)")
    p_sc.add_argument("--selected", default=None, help="where selected rows go (default: OUTPUT-selected)")


def _add_eval(sub) -> None:
    from rmray.score.settings import EvalConfig

    p_ev = sub.add_parser("eval", help="preference accuracy, margin and calibration, with a report")
    p_ev.add_argument("model_dir", help=field_docs(EvalConfig)["model_dir"])
    p_ev.add_argument("data", nargs="?", default=None, help=field_docs(EvalConfig)["data"])
    p_ev.add_argument("--model", action="append", default=[], help=field_docs(EvalConfig)["models"] + " (repeatable)")
    add_options(p_ev, EvalConfig, EVAL_OPTIONS)


def _run(args) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "demo":
        return _demo(args.config, args.overrides)
    if args.command == "serve":
        return _serve(args)
    if args.command == "score":
        return _score(args)
    if args.command == "eval":
        return _eval(args)
    return _score_text(args.model_dir, args.prompt, args.response)


def _train(args) -> int:
    from rmray.config import config_help, load_config

    if args.help or not args.config:
        print("usage: rmray train [CONFIG.yaml] [key=value ...]\n\nconfig keys:\n" + config_help())
        return 0 if args.help else 2
    config, overrides = args.config, list(args.overrides)
    if "=" in config and not os.path.exists(config):  # no YAML: every argument is an override
        config, overrides = None, [config, *overrides]
    if config is not None and not os.path.isfile(config):
        raise UsageError(f"config file {config!r} not found (fix: give a YAML file, key=value overrides, or both)")
    try:
        cfg = load_config(config, overrides)
    except ValueError as err:  # a value of the wrong type or out of range, named by its key
        raise UsageError(str(err)) from None
    from rmray.train.run import train

    train(cfg)
    return 0


def _demo(config: str, overrides: list[str]) -> int:
    from rmray.config import load_config
    from rmray.train.run import train

    result = train(load_config(config, ["overwrite_output_dir=true", *overrides]))
    accuracy = result.summary.get("eval_accuracy")
    print(f"\ndemo eval accuracy: {accuracy:.3f}" if accuracy is not None else "\ndemo finished (no eval)")
    # The demo model is trained on hh-rlhf-style dialogues, so its examples are written as one.
    return _score_text(result.final_model_dir, [f"\n\nHuman: {p}\n\nAssistant:" for p, _ in DEMO_EXAMPLES],
                       [" " + r for _, r in DEMO_EXAMPLES])


def _score(args) -> int:
    from rmray.score.offline import ScoreConfig, score_dataset
    from rmray.score.select import Selection, select_best

    cfg = ScoreConfig(model_dirs=[args.model_dir, *args.model], input=args.input, output=args.output,
                      **options_of(args, SCORE_OPTIONS))
    rule = None  # checked before anything is scored
    if args.top_k is not None or args.threshold is not None:
        rule = Selection(top_k=args.top_k, threshold=args.threshold, group_by=args.group_by or args.prompt_field,
                         response_field=args.response_field)
    score_dataset(cfg)
    if rule is not None:
        selected = args.selected or args.output.rstrip("/") + "-selected"
        print(f"rmray score: kept {select_best(args.output, selected, rule)} rows -> {selected}")
    return 0


def _eval(args) -> int:
    from rmray.score.evaluate import evaluate
    from rmray.score.settings import EvalConfig

    try:
        cfg = EvalConfig(model_dir=args.model_dir, models=args.model, data=args.data, **options_of(args, EVAL_OPTIONS))
    except ValueError as err:
        raise UsageError(str(err)) from None
    evaluate(cfg)
    return 0


def _serve(args) -> int:
    from rmray.serve.run import check_model_dirs, check_port_free, serve_forever

    check_model_dirs(args.model_dirs)  # before anything loads torch or starts Ray: an answer in a second
    check_port_free(args.host, args.port)
    try:
        settings = ServeSettings(model_dirs=args.model_dirs, **options_of(args, SERVE_OPTIONS))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_token:
        print(f"warning: serving on {settings.host} without a token; set RMRAY_API_TOKEN to require one",
              file=sys.stderr)
    serve_forever(settings, ray_address=args.ray_address)
    return 0


def _score_text(model_dir: str, prompts: list[str], responses: list[str]) -> int:
    from rmray.core.scoring import Scorer
    from rmray.core.spec import check_model_dir

    if len(prompts) != len(responses):
        print(f"error: {len(prompts)} --prompt but {len(responses)} --response; give them in pairs", file=sys.stderr)
        return 2
    check_model_dir(model_dir)
    # Scored exactly as given, as /score and rmray score take them (no template added here).
    scorer = Scorer.load(model_dir)
    names = scorer.attributes or []
    ids = [scorer.encode(p, r) for p, r in zip(prompts, responses)]
    print(f"\nrewards from {model_dir}:")
    for prompt, response, value in zip(prompts, responses, scorer.score_ids(ids, per_attribute=bool(names))):
        reward, detail = (value[0], " (" + ", ".join(f"{n} {v:+.3f}" for n, v in zip(names, value[1:])) + ")") \
            if names else (value, "")
        print(f"  {reward:+.3f}{detail}  {prompt!r} -> {response!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
