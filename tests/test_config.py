import glob
import os
import subprocess
import sys

import pytest

from rmray.config import TrainConfig, config_help, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1\nnum_workers: 3\nlora_target_modules: q_proj\n")
    cfg = load_config(str(path), ["num_workers=1", "bf16=true", "eval_data=x.jsonl", "max_steps=5"])
    assert cfg.optimization.learning_rate == 1.0 and isinstance(cfg.optimization.learning_rate, float)
    assert (cfg.ray.num_workers, cfg.optimization.bf16, cfg.data.eval_data, cfg.optimization.max_steps) == (1, True, "x.jsonl", 5)
    assert cfg.lora.lora_target_modules == ["q_proj"]


def test_unknown_key_suggests_closest():
    with pytest.raises(ValueError, match="unknown config key 'learning_rat'; did you mean 'learning_rate'"):
        load_config(None, ["learning_rat=1e-4"])


@pytest.mark.parametrize("override, message", [
    ("truncation=cut", "'truncation': 'cut' is not one of"),
    ("num_workers=two", "'num_workers': expected int"),
    ("bf16=1", "'bf16': expected true/false"),
    ("max_length=4", "'max_length': must be >= 8"),
    ("eval_split_ratio=1.5", "'eval_split_ratio'"),
    ("novalue", "must look like key=value"),
])
def test_invalid_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_shipped_configs_load_and_start_with_their_command():
    paths = glob.glob(os.path.join(ROOT, "jobs", "configs", "*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        assert isinstance(load_config(path), TrainConfig)
        assert open(path).readline().startswith("# rmray train jobs/configs/" + os.path.basename(path))


def test_help_lists_every_key_with_text():
    text = config_help()
    for key in ("model_name_or_path", "truncation", "center_rewards_coefficient", "num_workers"):
        assert f"  {key} = " in text
    assert "cuts the prompt from the left" in text


def test_core_never_imports_ray():
    """rmray.core must work with ray unimportable (the layering rule)."""
    code = (
        "import sys, importlib, pkgutil; sys.modules['ray'] = None\n"
        "import rmray.core\n"
        "for m in pkgutil.iter_modules(rmray.core.__path__): importlib.import_module('rmray.core.' + m.name)\n"
        "import rmray.config, rmray.testing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_serve_ingress_never_imports_the_model_classes():
    """The ingress replica only tokenizes: importing its module must not pull in rmray's model code or
    transformers' model classes (seconds per replica start)."""
    code = (
        "import sys, rmray.serve.app\n"
        "heavy = [m for m in ('rmray.core.model', 'rmray.core.scoring', 'transformers.modeling_utils') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_module_imports():
    code = (
        "import importlib, pkgutil, rmray\n"
        "for m in pkgutil.walk_packages(rmray.__path__, 'rmray.'): importlib.import_module(m.name)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_config_key_has_help():
    """`rmray train --help` prints a help line under every key: a key without a docstring fails here."""

    from rmray.config import TrainConfig, config_help

    lines = config_help().splitlines()
    keys = list(TrainConfig().flat())
    for key in keys:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  {key} = "))
        assert at + 1 < len(lines) and lines[at + 1].startswith("      ") and len(lines[at + 1].strip()) > 10, key


def test_every_serve_score_and_eval_setting_has_help_and_its_option_uses_it():
    """`rmray serve/score/eval --help` read the same field docstrings: a setting without one fails here,
    and an option's default is the dataclass's (the command line never re-types it)."""
    import dataclasses

    from rmray.cli import EVAL_OPTIONS, SCORE_OPTIONS, SERVE_OPTIONS, build_parser
    from rmray.config_fields import field_docs
    from rmray.score.settings import EvalConfig, ScoreConfig
    from rmray.serve.settings import ServeSettings

    for cls in (ServeSettings, ScoreConfig, EvalConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if len(docs.get(f.name, "")) <= 10]
        assert not missing, f"{cls.__name__}: no help for {missing}"
    parser = build_parser()
    for command, cls, names, positional in (("serve", ServeSettings, SERVE_OPTIONS, ["m"]),
                                            ("score", ScoreConfig, SCORE_OPTIONS, ["m", "in", "out"]),
                                            ("eval", EvalConfig, EVAL_OPTIONS, ["m", "data"])):
        args = parser.parse_args([command, *positional])
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        assert {n: getattr(args, n) for n in names} == {n: defaults[n] for n in names}, command
    assert parser.parse_args(["score", "m", "in", "out", "--max-batch-tokens", "512"]).max_batch_tokens == 512


def test_keys_nested_under_their_group_load_as_the_flat_keys(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("model_name_or_path: m\nlearning_rate: 2.0e-5\nlora_r: 8\nuse_peft: true\nnum_workers: 3\n")
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text("model:\n  model_name_or_path: m\noptimization:\n  learning_rate: 2.0e-5\n"
                       "lora:\n  use_peft: true\n  lora_r: 8\nnum_workers: 3\n")
    want = TrainConfig(model_name_or_path="m", learning_rate=2e-5, lora_r=8, use_peft=True, num_workers=3)
    assert load_config(str(flat)) == want
    assert load_config(str(grouped)) == want
    assert load_config(None, ["optimization.learning_rate=2.0e-5", "ray.num_workers=3"]) == \
        TrainConfig(learning_rate=2e-5, num_workers=3)


@pytest.mark.parametrize("text, override, message", [
    ("model:\n  lora_r: 8\n", [], r"g.yaml: config key 'lora_r' belongs to group 'lora', not 'model'"),
    ("learning_rate: 1.0\noptimization:\n  learning_rate: 2.0\n", [],
     r"g.yaml: config key 'learning_rate' is given twice \(learning_rate and optimization.learning_rate\)"),
    ("", ["model.learning_rate=1"], r"override 'model.learning_rate=1': config key 'learning_rate' belongs to "
                                    r"group 'optimization', not 'model'"),
    ("", ["modle.dtype=bfloat16"], r"'modle' is not a config group; the groups are model, data, optimization"),
    ("model:\n  model_nme: m\n", [], r"g.yaml: unknown config key 'model_nme'; did you mean 'model_name_or_path'"),
])
def test_a_key_under_the_wrong_group_or_given_twice_is_named(tmp_path, text, override, message):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(str(path), override)


def test_every_key_is_in_one_group_and_help_lists_them_by_group():

    from rmray.config_fields import field_groups

    groups = field_groups(TrainConfig)
    assert list(groups) == ["model", "data", "optimization", "speed", "lora", "checkpoints", "fault_tolerance",
                            "ray", "debug"]
    placed = [key for _, keys in groups.values() for key in keys]
    assert sorted(placed) == sorted(TrainConfig().flat())  # each once
    assert "chaos_kill_at_step" in groups["debug"][1] and "lora_r" in groups["lora"][1]
    text = config_help()
    assert text.index("\nlora: ") < text.index("  lora_r = ") < text.index("\ncheckpoints: ")


def _imports_of(path: str, module: str, modules: set[str]) -> set[str]:
    """The rmray modules ``module`` imports anywhere in its file (function-level imports count)."""
    import ast

    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


def test_no_import_circle_among_rmray_modules():
    """Imports point one way: a circle (even through an import inside a function) means two modules
    that should be one, or a rule that belongs in a third both can import."""
    paths = {}
    for path in glob.glob(os.path.join(ROOT, "rmray", "**", "*.py"), recursive=True):
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        paths[module] = path
    graph = {m: _imports_of(p, m, set(paths)) for m, p in paths.items()}
    assert "rmray.data.kinds" in graph["rmray.data.read"]  # the parser sees relative imports

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert not circles, f"modules on an import circle: {circles}"


def test_one_atomic_write_helper():
    """Every JSON and text file rmray writes for a reader goes through rmray.core.files (a reader never
    sees half a file); only whole folders (a model, a Parquet output) are swapped in by their own rename."""
    allowed = {"core/files.py", "core/export.py", "score/columns.py", "score/select.py"}
    offenders = []
    for path in glob.glob(os.path.join(ROOT, "rmray", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, os.path.join(ROOT, "rmray"))
        text = open(path).read()
        if rel not in allowed and ("os.replace(" in text or "json.dump(" in text):
            offenders.append(rel)
    assert not offenders, offenders


def test_no_config_object_is_a_giant():
    """One small dataclass per component: none in rmray/ has more than 30 fields (the training config is
    its sections)."""
    import ast

    big = []
    for path in glob.glob(os.path.join(ROOT, "rmray", "**", "*.py"), recursive=True):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.dump(d) for d in node.decorator_list):
                fields = sum(isinstance(item, ast.AnnAssign) for item in node.body)
                if fields > 30:
                    big.append(f"{node.name} ({fields})")
    assert not big, big
    assert len(TrainConfig().flat()) > 60  # the sections still hold every key
