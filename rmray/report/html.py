"""One self-contained HTML page for an evaluation: metrics, per-subset table, plots inlined as base64.

Self-contained so it can be attached to a ticket, opened from object storage or a CI artifact without
the PNGs beside it.
"""

from __future__ import annotations

import base64
import html
import os
from typing import Sequence

from rmray.core.files import write_text_atomic

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:980px;color:#1d2d35}
h1{font-size:1.5rem;margin-bottom:.2rem} .sub{color:#5c6f7a;margin-top:0}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1.2rem 0}
.card{border:1px solid #dde3e7;border-radius:8px;padding:.8rem 1.1rem;min-width:130px}
.card .v{font-size:1.6rem;font-weight:600} .card .k{color:#5c6f7a;font-size:.85rem}
table{border-collapse:collapse;margin:1rem 0} td,th{border-bottom:1px solid #e5e9ec;padding:.35rem .8rem;text-align:right}
th:first-child,td:first-child{text-align:left} img{max-width:100%;border:1px solid #eef1f3;border-radius:6px;margin:.5rem 0}
"""


def _img(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def eval_report(metrics: dict, plots: Sequence[str], path: str, *, title: str, subtitle: str = "") -> str:
    cards = [("accuracy", f"{metrics['accuracy']:.3f}"), ("pairs", f"{metrics['pairs']:,}"),
             ("mean margin", f"{metrics['mean_margin']:.3f}"), ("ECE", f"{metrics['ece']:.3f}")]
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class=sub>{html.escape(subtitle)}</p>", "<div class=cards>"]
    parts += [f'<div class=card><div class=v>{v}</div><div class=k>{html.escape(k)}</div></div>' for k, v in cards]
    parts.append("</div>")
    bench = metrics.get("benchmark")
    if bench:  # the sections side by side, as the benchmark's leaderboard shows them
        shown = [("score", bench["score"])] + list(bench["sections"].items())
        shown += [(k.replace("_acc", ""), bench[k]) for k in ("hard_acc", "normal_acc", "easy_acc") if k in bench]
        parts.append(f"<h2>{html.escape(bench['name'])}</h2><div class=cards>")
        parts += [f'<div class=card><div class=v>{"n/a" if v is None else f"{v:.3f}"}</div>'
                  f'<div class=k>{html.escape(k)}</div></div>' for k, v in shown]
        parts.append("</div>")
    if metrics.get("subsets"):
        parts.append("<h2>By subset</h2><table><tr><th>subset</th><th>pairs</th><th>accuracy</th><th>mean margin</th></tr>")
        for name, m in metrics["subsets"].items():
            parts.append(f"<tr><td>{html.escape(name)}</td><td>{m['pairs']:,}</td><td>{m['accuracy']:.3f}</td>"
                         f"<td>{m['mean_margin']:.3f}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    parts += [_img(p) for p in plots if p and os.path.exists(p)]
    if metrics.get("bad_rows"):
        parts.append(f"<p>{metrics['bad_rows']} rows could not be scored; see metrics.json for reasons.</p>")
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))
    return path
