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


def _grid(n: int, cols: int = 2):
    """A figure of n panels, two to a row, each large enough to read in a browser at full width."""
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 4.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_training(out: Path, stages: list[str]) -> Path | None:
    """Training loss (and validation loss where evaluated) per trained stage, side by side."""
    curves = {s: read_metrics(out / s) for s in stages}
    curves = {s: m for s, m in curves.items() if any("loss" in r for r in m)}
    if not curves:
        return None
    fig, axes = _grid(len(curves))
    for ax, (stage, records) in zip(axes, curves.items()):
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
    (
        "grpo",
        [("reward/mean", "reward (train)"), ("pass@1", "pass@1 (held out, greedy)")],
        "step",
        "reward and accuracy",
    ),
    ("grpo", [("response_length", "tokens")], "step", "response length"),
    ("grpo", [("kl", "KL to the reference")], "step", "KL"),
    # ptx: whether the RL stage keeps stage 2's loss on its instructions down
    ("ppo", [("ptx_loss", "SFT loss (ptx)")], "step", "SFT loss on instructions"),
    ("grpo", [("ptx_loss", "SFT loss (ptx)")], "step", "SFT loss on instructions"),
]


def plot_rl(out: Path, stages: list[str]) -> Path | None:
    """The RL stages' curves: PPO's reward-model and gold reward against KL (over-optimisation shows as the gold
    curve falling while the reward model's rises), GRPO's reward, held-out pass@1, response length and KL, and either
    stage's ptx loss."""
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
    fig, axes = _grid(len(panels))
    for ax, (title, x, lines) in zip(axes, panels):
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


# what each stage does, and the metrics that show it: (sentence, [(metric, label)])
STORY = {
    "init": (
        "Random weights: it knows nothing, so its loss sits near ln(vocab) and it writes gibberish.",
        [("val_loss", "val loss"), ("ln_vocab", "ln(vocab)")],
    ),
    "pretrain": (
        "Next-token prediction on the corpus: grammar and the world's facts; it continues text, it does not answer.",
        [("val_loss", "val loss"), ("val_bpb", "bits per byte")],
    ),
    "sft": (
        "Instruction tuning: it learns to answer, and answers about people it only read about in stage 1.",
        [
            ("heldout_phrasing_acc", "new phrasings"),
            ("heldout_people_acc", "held-out people"),
            ("base_heldout_people_acc", "held-out people before SFT"),
            ("general_acc", "every kind"),
        ],
    ),
    "synth": (
        "Its own data: the SFT model writes questions and answers about documents it never saw, the filters keep "
        "what holds up, and SFT continues on them.",
        [
            ("kept", "pairs kept"),
            ("new_people_acc_before", "new people before"),
            ("new_people_acc_after", "new people after"),
            ("heldout_phrasing_acc_after", "new phrasings after"),
        ],
    ),
    "reward": (
        "A reward model learns which of two answers the labellers prefer.",
        [("heldout_acc", "held-out pairs right")],
    ),
    "dpo": (
        "DPO: the policy moves towards the preferred answers directly, without a reward model.",
        [("gold_win_rate", "gold win rate over SFT"), ("general_acc", "every kind")],
    ),
    "ppo": (
        "RLHF: PPO moves the policy towards what the reward model scores high, held near SFT by a KL penalty.",
        [("gold_win_rate", "gold win rate over SFT"), ("kl", "KL to SFT"), ("general_acc", "every kind")],
    ),
    "grpo": (
        "Reasoning RL: GRPO rewards answers checked against the known result; it learns to work problems out.",
        [
            ("pass1_before", "pass@1 before"),
            ("pass1_after", "pass@1 after"),
            ("general_acc", "every kind"),
            ("gold_win_rate", "gold win rate over SFT"),
        ],
    ),
}
MEANING = {
    "val_loss": "cross-entropy on held-out text (nats per token)",
    "val_bpb": "bits per byte of held-out text: comparable across tokenizers",
    "ln_vocab": "the loss of a uniform guess over the vocabulary",
    "heldout_phrasing_acc": "trained people asked in phrasings never trained on",
    "heldout_people_acc": "people whose facts appear only in the pretraining corpus",
    "base_heldout_phrasing_acc": "the same, asked of the pretrained model as raw text",
    "base_heldout_people_acc": "the same, asked of the pretrained model as raw text",
    "general_acc": "mean over kinds of the general evaluation (every kind of question)",
    "chunks": "pieces of the new documents the generator was asked about",
    "generated": "question/answer pairs the generator wrote and the parser read",
    "kept": "pairs left after the filters: what SFT continued on",
    "failed": "generation requests with no usable reply: an error, or nothing the parser could read (each kept with "
    "its raw text in synth/pairs.rejected.jsonl)",
    "new_people_acc_before": "every fact of the people only the new documents describe, asked in phrasings the "
    "generator never writes, before the stage",
    "new_people_acc_after": "the same, after SFT on the kept pairs",
    "heldout_phrasing_acc_after": "stage 2's held-out phrasings after the stage (what it must not forget)",
    "heldout_people_acc_after": "stage 2's held-out people after the stage",
    "heldout_acc": "held-out pairs where the reward model scores the gold function's choice higher",
    "gold_win_rate": "the gold function prefers this stage's sampled answer to SFT's ((wins + ties/2) / prompts)",
    "gold_win_rate_ceiling": "the win rate of a policy whose every answer is the best possible",
    "gold_score": "mean gold score of this stage's answers (right fact 2, minus a style penalty)",
    "gold_score_before": "the same for SFT's answers",
    "kl": "KL to the SFT model per answer, nats (last tenth of the steps)",
    "rm_reward_before": "reward model's mean score of SFT's greedy answers to held-out prompts",
    "rm_reward_after": "the same for this stage's answers",
    "pass1_before": "greedy pass@1 on held-out problems before the stage",
    "pass1_after": "greedy pass@1 on held-out problems after it",
}
MARK = {"right": "✓", "wrong": "✗", "evasive": "✗", "ungraded": "–"}


def _answer(record) -> dict[str, str]:
    """A stage's answer to a fixed prompt: {"answer", "verdict", "why"} (a run made before grading: the text only)."""
    return record if isinstance(record, dict) else {"answer": record, "verdict": "ungraded", "why": ""}


def _headline(stage: str, metrics: dict) -> str:
    parts = [f"{label} {_fmt(metrics[k])}" for k, label in STORY.get(stage, ("", []))[1] if k in metrics]
    return ", ".join(parts)


def write_report(out: Path, stages: list[str]) -> tuple[Path, Path]:
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    results = {}
    for s in stages:
        path = out / s / "result.json"
        if path.exists():
            results[s] = json.loads(path.read_text())
    done = [s for s in stages if s in results]
    speakers = [s for s in done if results[s]["answers"]]  # the reward model answers no prompt
    prompts: list[str] = []
    for s in speakers:
        prompts += [p for p in results[s]["answers"] if p not in prompts]
    general_stages = [s for s in done if isinstance(summary["stages"][s].get("general"), dict)]
    kinds: list[str] = []
    for s in general_stages:
        kinds += [k for k in summary["stages"][s]["general"] if k not in kinds]
    plot, rl_plot = plot_training(out, done), plot_rl(out, done)

    def stage_metrics(stage: str) -> list[tuple[str, str, str]]:
        rows = []
        for k, v in summary["stages"][stage].items():
            if k in ("seconds", "general"):
                continue
            if isinstance(v, dict):  # synth's dropped pairs, by reason
                rows += [(f"{k}.{kk}", _fmt(vv), f"pairs {k}: {kk.replace('_', ' ')}") for kk, vv in v.items()]
            else:
                rows.append((k, _fmt(v), MEANING.get(k, "")))
        return rows

    def right_count(stage: str) -> str:
        verdicts = [_answer(results[stage]["answers"][p])["verdict"] for p in results[stage]["answers"]]
        graded = [v for v in verdicts if v != "ungraded"]
        return f"{sum(v == 'right' for v in graded)}/{len(graded)}" if graded else "–"

    md = [
        f"# fromzero run report: preset `{summary['preset']}`",
        "",
        f"Total time: {summary['seconds']:.0f} s over {len(done)} stages.",
        "",
        "## The stages",
        "",
        "| stage | what it does | the number that shows it | fixed prompts right | seconds |",
        "|---|---|---|---:|---:|",
    ]
    for s in done:
        story = STORY.get(s, ("", []))[0]
        md.append(
            f"| {s} | {story} | {_headline(s, summary['stages'][s])} | "
            f"{right_count(s) if s in speakers else '–'} | {summary['stages'][s]['seconds']:.0f} |"
        )
    if general_stages:
        md += [
            "",
            "## Every kind of question",
            "",
            "Held-out questions of every kind the instruction data teaches, each graded by the rule that fits it "
            "(the right fact or number; for small talk and language-model questions, on topic and stating no "
            "person's fact). Accuracy per kind:",
            "",
            "| kind | " + " | ".join(general_stages) + " |",
            "|---|" + "---:|" * len(general_stages),
        ]
        for k in kinds:
            md.append(
                f"| {k} | "
                + " | ".join(_fmt(summary["stages"][s]["general"].get(k, float("nan"))) for s in general_stages)
                + " |"
            )
        md.append(
            "| **mean (general_acc)** | "
            + " | ".join(f"**{_fmt(summary['stages'][s]['general_acc'])}**" for s in general_stages)
            + " |"
        )
    md += [
        "",
        "## The same prompts after every stage",
        "",
        "Each answer graded: ✓ right, ✗ wrong or off the point (why in brackets), – no rule for the prompt.",
        "",
    ]
    for p in prompts:
        md += [f"### {p}", ""]
        for s in speakers:
            a = _answer(results[s]["answers"].get(p, {"answer": "", "verdict": "ungraded", "why": ""}))
            text = a["answer"].replace("\n", " ⏎ ")
            md.append(f"- **{s}** {MARK.get(a['verdict'], '–')} {text}" + (f" *({a['why']})*" if a["why"] else ""))
        md.append("")
    md += ["## Metrics per stage", ""]
    for s in done:
        md += [f"### {s}", "", "| metric | value | meaning |", "|---|---:|---|"]
        md += [f"| {k} | {v} | {m} |" for k, v, m in stage_metrics(s)] + [""]
    if plot:
        md += ["## Training curves", "", f"![loss]({plot.name})", ""]
    if rl_plot:
        md += ["## Reinforcement learning", "", f"![rl]({rl_plot.name})", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    e = html.escape
    story_rows = "".join(
        f"<tr><td><b>{e(s)}</b></td><td>{e(STORY.get(s, ('', []))[0])}</td><td>{e(_headline(s, summary['stages'][s]))}"
        f"</td><td>{e(right_count(s)) if s in speakers else '–'}</td><td>{summary['stages'][s]['seconds']:.0f}</td></tr>"
        for s in done
    )
    general_html = ""
    if general_stages:
        rows = "".join(
            f"<tr><td>{e(k)}</td>"
            + "".join(
                f"<td class=num>{_fmt(summary['stages'][s]['general'].get(k, float('nan')))}</td>"
                for s in general_stages
            )
            + "</tr>"
            for k in kinds
        )
        rows += (
            "<tr><td><b>mean (general_acc)</b></td>"
            + "".join(f"<td class=num><b>{_fmt(summary['stages'][s]['general_acc'])}</b></td>" for s in general_stages)
            + "</tr>"
        )
        general_html = (
            "<h2>Every kind of question</h2><p>Held-out questions of every kind the instruction data "
            "teaches, each graded by the rule that fits it. Accuracy per kind:</p><table><tr><th>kind</th>"
            + "".join(f"<th>{e(s)}</th>" for s in general_stages)
            + f"</tr>{rows}</table>"
        )

    def cell(s: str, p: str) -> str:
        a = _answer(results[s]["answers"].get(p, {"answer": "", "verdict": "ungraded", "why": ""}))
        why = f'<div class="why">{e(a["why"])}</div>' if a["why"] else ""
        return f'<td class="{e(a["verdict"])}"><span class="mark">{MARK.get(a["verdict"], "–")}</span> {e(a["answer"])}{why}</td>'

    answer_rows = "".join(
        f"<tr><td><b>{e(p)}</b></td>" + "".join(cell(s, p) for s in speakers) + "</tr>" for p in prompts
    )
    metric_tables = "".join(
        f"<h3>{e(s)}</h3><table><tr><th>metric</th><th>value</th><th>meaning</th></tr>"
        + "".join(f"<tr><td>{e(k)}</td><td class=num>{e(v)}</td><td>{e(m)}</td></tr>" for k, v, m in stage_metrics(s))
        + "</table>"
        for s in done
    )
    imgs = ""
    for title, path in (("Training curves", plot), ("Reinforcement learning", rl_plot)):
        if path:
            imgs += f'<h2>{title}</h2><img alt="{e(title)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fromzero report: {e(summary["preset"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;line-height:1.4}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
td{{white-space:pre-wrap}}td.num{{text-align:right}}td.right{{background:#eefbea}}td.wrong,td.evasive{{background:#fdeeee}}
.mark{{font-weight:bold}}.why{{color:#666;font-size:85%;margin-top:2px}}img{{width:100%;max-width:1200px;display:block;margin:1em 0}}</style>
</head><body>
<h1>fromzero run report: preset <code>{e(summary["preset"])}</code></h1>
<p>Total time: {summary["seconds"]:.0f} s over {len(done)} stages.</p>
<h2>The stages</h2><table><tr><th>stage</th><th>what it does</th><th>the number that shows it</th><th>fixed prompts right</th><th>seconds</th></tr>{story_rows}</table>
{general_html}
<h2>The same prompts after every stage</h2><p>✓ right, ✗ wrong or off the point (why below each answer), – no rule for the prompt.</p>
<table><tr><th>prompt</th>{"".join(f"<th>{e(s)}</th>" for s in speakers)}</tr>{answer_rows}</table>
<h2>Metrics per stage</h2>{metric_tables}
{imgs}
</body></html>"""
    html_path = out / "report.html"
    html_path.write_text(page)
    return md_path, html_path
