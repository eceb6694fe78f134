"""The run report: `report.md` and a self-contained `report.html`.

It is built from what the stages leave on disk (summary.json, each stage's result.json and
metrics.jsonl), so it can be rebuilt at any time and grows a column for every stage that runs.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fromzero.train.loop import read_metrics  # noqa: E402


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot_training(out: Path, stages: list[str]) -> Path | None:
    """Training loss (and validation loss where evaluated) per trained stage, side by side."""
    curves = {s: read_metrics(out / s) for s in stages}
    curves = {s: m for s, m in curves.items() if any("loss" in r for r in m)}
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for ax, (stage, records) in zip(axes[0], curves.items()):
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        ax.plot(*zip(*train), label="train loss", lw=1)
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o-", label="val loss")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# RL curves: (stage, metric, label) per panel; a stage's panels appear when its metrics.jsonl has them
RL_PANELS = [
    ("ppo", [("reward/mean", "reward model"), ("gold/mean", "gold")], "kl", "reward vs KL to the SFT model"),
    ("ppo", [("reward/mean", "reward model"), ("gold/mean", "gold")], "step", "reward per rollout"),
    ("ppo", [("val_reward", "reward model"), ("val_gold", "gold")], "step", "held-out prompts, greedy answers"),
    ("grpo", [("reward/mean", "reward (train)"), ("pass@1", "pass@1 (held out, greedy)")], "step", "reward and accuracy"),
    ("grpo", [("response_length", "tokens")], "step", "response length"),
    ("grpo", [("kl", "KL to the reference")], "step", "KL"),
]


def plot_rl(out: Path, stages: list[str]) -> Path | None:
    """The RL stages' curves: PPO's reward-model and gold reward against KL (over-optimisation shows as the gold
    curve falling while the reward model's rises), GRPO's reward, held-out pass@1, response length and KL."""
    panels = []
    for stage, series, x, title in RL_PANELS:
        if stage not in stages:
            continue
        records = read_metrics(out / stage)
        lines = [(label, [(r[x], r[k]) for r in records if k in r and x in r]) for k, label in series]
        lines = [(label, points) for label, points in lines if points]
        if lines:
            panels.append((f"{stage}: {title}", x, lines))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (title, x, lines) in zip(axes[0], panels):
        for label, points in lines:
            points.sort()
            if x == "kl":  # one point per step: a cloud, whose trend is the over-optimisation curve
                ax.plot(*zip(*points), "o", label=label, ms=3, alpha=0.6)
            elif len(points) < 12:
                ax.plot(*zip(*points), "o-", label=label, lw=1, ms=3)
            else:  # per-step rollout metrics are noisy: the raw curve faint, a moving average over 10 steps
                xs, ys = zip(*points)
                (raw,) = ax.plot(xs, ys, lw=0.8, alpha=0.35)
                smooth = [sum(ys[max(0, i - 9) : i + 1]) / len(ys[max(0, i - 9) : i + 1]) for i in range(len(ys))]
                ax.plot(xs, smooth, color=raw.get_color(), lw=1.5, label=f"{label} (mean of 10)")
        ax.set_title(title)
        ax.set_xlabel("KL (nats per answer)" if x == "kl" else x)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "rl.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, stages: list[str]) -> tuple[Path, Path]:
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    results = {}
    for s in stages:
        path = out / s / "result.json"
        if path.exists():
            results[s] = json.loads(path.read_text())
    done = [s for s in stages if s in results]

    def metrics(stage: str) -> str:  # a stage's metrics on one line: stages measure different things
        return " · ".join(f"{k} {_fmt(v)}" for k, v in summary["stages"][stage].items() if k != "seconds")
    prompts: list[str] = []
    for s in done:
        prompts += [p for p in results[s]["answers"] if p not in prompts]
    plot = plot_training(out, done)
    rl_plot = plot_rl(out, done)

    md = [f"# fromzero run report: preset `{summary['preset']}`", "",
          f"Total time: {summary['seconds']:.0f} s over {len(done)} stages.", "", "## Metrics per stage", "",
          "| stage | seconds | metrics |", "|---|---:|---|"]  # fmt: skip
    for s in done:
        md.append(f"| {s} | {summary['stages'][s]['seconds']:.0f} | {metrics(s)} |")
    if plot:
        md += ["", "## Training curves", "", f"![loss]({plot.name})"]
    if rl_plot:
        md += ["", "## Reinforcement learning", "", f"![rl]({rl_plot.name})"]
    md += ["", "## The same prompts after every stage", ""]
    for p in prompts:
        md += [f"### {p}", ""]
        for s in done:
            answer = results[s]["answers"].get(p, "").replace("\n", " ⏎ ")
            md.append(f"- **{s}**: {answer}")
        md.append("")
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    e = html.escape
    head = "<th>seconds</th><th>metrics</th>"
    rows = "".join(f"<tr><td>{e(s)}</td><td>{summary['stages'][s]['seconds']:.0f}</td><td>{e(metrics(s))}</td></tr>"
                   for s in done)  # fmt: skip
    img = ""
    if plot:
        img = f'<h2>Training curves</h2><img src="data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}">'
    if rl_plot:
        img += f'<h2>Reinforcement learning</h2><img src="data:image/png;base64,{base64.b64encode(rl_plot.read_bytes()).decode()}">'
    answer_head = "".join(f"<th>{e(s)}</th>" for s in done)
    answer_rows = "".join(
        f"<tr><td><b>{e(p)}</b></td>" + "".join(f"<td>{e(results[s]['answers'].get(p, ''))}</td>" for s in done) + "</tr>"
        for p in prompts
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fromzero report: {e(summary['preset'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
td{{white-space:pre-wrap}}img{{max-width:100%}}</style></head><body>
<h1>fromzero run report: preset <code>{e(summary['preset'])}</code></h1>
<p>Total time: {summary['seconds']:.0f} s over {len(done)} stages.</p>
<h2>Metrics per stage</h2><table><tr><th>stage</th>{head}</tr>{rows}</table>{img}
<h2>The same prompts after every stage</h2><table><tr><th>prompt</th>{answer_head}</tr>{answer_rows}</table>
</body></html>"""
    html_path = out / "report.html"
    html_path.write_text(page)
    return md_path, html_path
