"""What a user reads while a run goes and after an eval: the progress lines and the HTML report's cards."""

from rmray.report.html import eval_report
from rmray.train.progress import _Printer


def test_progress_lines_survive_a_nan_loss_and_show_benchmark_scores(capsys):
    printer = _Printer(total=10)
    printer.update({"step": 3, "loss": None, "accuracy": None, "learning_rate": 1e-4, "pairs_per_s": 5.0})
    printer.update({"step": 4, "eval_accuracy": 0.75, "eval_loss": None, "bench/rm-bench/score": 0.5,
                    "bench/rm-bench/hard_acc": 0.25})
    printer.update({"step": 6, "bench/judgebench/score": 0.625})  # benchmarks alone, no eval split
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "step 3/10: loss nan, accuracy nan, lr 1.00e-04, 5.0 pairs/s"
    assert lines[1] == "eval @ step 4: accuracy 0.750, loss nan; rm-bench 0.500"
    assert lines[2] == "eval @ step 6: judgebench 0.625"


def test_the_report_shows_a_benchmarks_sections_and_rm_benchs_levels_side_by_side(tmp_path):
    metrics = {"accuracy": 0.5, "pairs": 6, "mean_margin": 0.1, "ece": 0.2,
               "benchmark": {"name": "rm-bench", "score": 0.6, "sections": {"chat": 0.7, "math": 0.5},
                             "hard_acc": 0.125, "normal_acc": 0.625, "easy_acc": 0.875}}
    html = open(eval_report(metrics, [], str(tmp_path / "report.html"), title="t")).read()
    for label, value in (("score", "0.600"), ("chat", "0.700"), ("math", "0.500"), ("hard", "0.125"),
                         ("normal", "0.625"), ("easy", "0.875")):
        assert f"<div class=v>{value}</div><div class=k>{label}</div>" in html, label
