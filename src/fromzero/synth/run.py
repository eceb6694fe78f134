"""The two jobs of `fromzero synth`: instruction pairs from chunks, and preference pairs from prompts.

Every request is keyed by a hash of what it asks (chunk, template, generator, sampling, seed) and its raw reply is
appended to a log as soon as it comes back, so a killed run loses at most the requests in flight and a re-run
skips what is done. The filters then run over the whole log, and the kept and rejected records are written
atomically, with a report of every count."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fromzero.checkpoint import write_text_atomic
from fromzero.synth import filters
from fromzero.synth.config import SynthConfig
from fromzero.synth.docs import Chunk
from fromzero.synth.generators import Generated, Generator
from fromzero.synth.judges import Judge
from fromzero.synth.parse import Parsed, parse_pairs, parse_question
from fromzero.synth.prompts import load_template, render_prompt, render_question_prompt, sentences


@dataclass
class SynthReport:
    requests: int = 0  # asked for this run's settings (done earlier ones included)
    resumed: int = 0  # of them, read back from the log instead of asked again
    failed: int = 0  # requests that errored or gave nothing parseable
    failed_reasons: Counter = field(default_factory=Counter)
    generated: int = 0  # pairs parsed (instructions) or prompts answered (preferences)
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "resumed": self.resumed,
            "failed": self.failed,
            "failed_reasons": dict(self.failed_reasons),
            "generated": self.generated,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "seconds": round(self.seconds, 2),
            "files": self.files,
        }

    def table(self) -> str:
        rows = [
            ("requests", self.requests),
            ("  read back from an earlier run", self.resumed),
            ("  failed (no usable reply)", self.failed),
        ]
        rows += [(f"    {k}", v) for k, v in sorted(self.failed_reasons.items())]
        rows += [("generated", self.generated)] + [(f"  dropped: {k}", v) for k, v in self.dropped.items() if v]
        rows += [("kept", self.kept)]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v:>7}" for k, v in rows)


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def seed_of(key: str) -> int:
    return int(key[:8], 16) & 0x7FFFFFFF


def side_files(out: Path) -> dict[str, Path]:
    """Where a job writes: the kept records at `out`, beside it the raw log, the rejected records and the report."""
    stem = out.name.removesuffix(".jsonl")
    return {
        "kept": out,
        "raw": out.with_name(stem + ".raw.jsonl"),
        "rejected": out.with_name(stem + ".rejected.jsonl"),
        "report": out.with_name(stem + ".report.json"),
    }


def read_log(path: Path) -> dict[str, dict[str, Any]]:
    """The records of an append-only log by key; a line cut short by a kill is dropped (and cut from the file, so
    the next append starts on a line of its own). A request that failed is asked again."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(data))
    done = {}
    for line in data.decode("utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("error") is None:
            done[r["key"]] = r
    return done


def run_requests(
    requests: Sequence[dict[str, Any]],
    gen: Generator,
    cfg: SynthConfig,
    log: Path,
    report: SynthReport,
    *,
    desc: str,
    progress: bool,
    batch: int = 16,
) -> dict[str, dict[str, Any]]:
    """Every request's reply, from the log where an earlier run got it, else asked now (in batches of `batch`, each
    appended to the log when it returns)."""
    done = read_log(log)
    report.requests = len(requests)
    todo = [r for r in requests if r["key"] not in done]
    report.resumed = len(requests) - len(todo)
    log.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(requests), initial=report.resumed, desc=desc, unit="req", disable=not progress)
    errors = 0
    with open(log, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            replies: list[Generated] = gen.complete(
                [r["prompt"] for r in part],
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                seeds=[r["seed"] for r in part],
            )
            for r, g in zip(part, replies):
                record = {**r, "output": g.text, "finish_reason": g.finish_reason, "error": g.error}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                if g.error is None:
                    done[r["key"]] = record
                else:
                    errors += 1
            f.flush()
            bar.update(len(part))
            bar.set_postfix(errors=errors)
    bar.close()
    return done


def instruction_requests(chunks: Sequence[Chunk], gen: Generator, cfg: SynthConfig) -> list[dict[str, Any]]:
    """unit=chunk: pairs_per_chunk pairs per chunk, pairs_per_request at a time; unit=sentence: questions_per_sentence
    questions for every sentence of every chunk."""
    by_sentence = cfg.unit == "sentence"
    template, sha = load_template(
        cfg.template,
        "question.txt" if by_sentence else "instruct.txt",
        ("{chunk}", "{sentence}") if by_sentence else ("{chunk}",),
    )
    out = []
    for c in chunks:
        if by_sentence:
            asks = [
                (s, 1, render_question_prompt(template, c.text, s))
                for s in sentences(c.text)
                for _ in range(cfg.questions_per_sentence)
            ]
        else:
            per = math.ceil(cfg.pairs_per_chunk / cfg.pairs_per_request)
            sizes = [min(cfg.pairs_per_request, cfg.pairs_per_chunk - i * cfg.pairs_per_request) for i in range(per)]
            asks = [(None, n, render_prompt(template, c.text, n)) for n in sizes]
        for i, (sentence, n, prompt) in enumerate(asks):
            sampling = (cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed)
            key = key_of("instruct", c.source, c.start, c.end, c.text, i, n, sentence, sha, gen.name, *sampling)
            # seeded by what is asked, not where the files are or which generator answers: a run moved or repeated
            # elsewhere (or under torchrun) samples the same replies
            seed = seed_of(key_of("instruct", Path(c.source).name, c.start, c.text, i, n, sentence, sha, *sampling))
            out.append(
                {
                    "key": key,
                    "seed": seed,
                    "prompt": prompt,
                    "document": c.source,
                    "chunk": c.index,
                    "start": c.start,
                    "end": c.end,
                    "request": i,
                    "generator": gen.name,
                    "template": sha,
                    "context": c.text,
                    "sentence": sentence,
                }
            )
    return out


def parse_reply(rec: dict[str, Any]) -> Parsed:
    """The pairs of one reply: those it wrote, or (unit=sentence) its question with the sentence as the answer."""
    if rec.get("sentence") is None:
        return parse_pairs(rec["output"])
    question, reason = parse_question(rec["output"])
    return Parsed([(question, rec["sentence"])] if question else [], reason, "question" if question else None)


def synth_instructions(
    chunks: Sequence[Chunk],
    gen: Generator,
    cfg: SynthConfig,
    out: Path,
    *,
    judge: Judge | None = None,
    progress: bool = True,
) -> SynthReport:
    """Question/answer pairs about every chunk, filtered; the kept ones written to `out` as messages JSONL."""
    t0, report, files = time.perf_counter(), SynthReport(), side_files(Path(out))
    requests = instruction_requests(chunks, gen, cfg)
    done = run_requests(requests, gen, cfg, files["raw"], report, desc="synth instruct", progress=progress)
    rejected: list[dict[str, Any]] = []
    candidates: list[tuple[dict[str, Any], str, str]] = []
    contamination = filters.Contamination(filters.eval_texts(cfg.decontaminate), cfg.decontaminate_ngram)
    for r in requests:
        if r["key"] not in done:
            report.failed += 1
            report.failed_reasons["request_error"] += 1
            rejected.append({"request": r["key"], "reason": "request_error", "document": r["document"]})
            continue
        rec = done[r["key"]]
        parsed = parse_reply(rec)
        if not parsed.pairs:
            report.failed += 1
            report.failed_reasons[f"parse_{parsed.reason}"] += 1
            rejected.append({"request": r["key"], "reason": f"parse_{parsed.reason}", "raw": rec["output"]})
            continue
        pairs = parsed.pairs
        report.generated += len(pairs)
        if rec["finish_reason"] == "length":  # the token limit may have cut the last answer short
            rejected.append(_rejected(rec, *pairs[-1], "truncated"))
            report.dropped["truncated"] += 1
            pairs = pairs[:-1]
        for q, a in pairs:
            reason = filters.length_reason(
                q, a, cfg.min_question_chars, cfg.max_question_chars, cfg.min_answer_chars, cfg.max_answer_chars
            )
            if reason is None and (
                filters.unknown_names(q, rec["context"])
                or cfg.grounding
                and filters.grounding(a, rec["context"]) < cfg.grounding
            ):
                reason = "ungrounded"
            if reason is None and contamination and contamination.hit(q):
                reason = "contaminated"
            if reason is None:
                candidates.append((rec, q, a))
            else:
                report.dropped[reason] += 1
                rejected.append(_rejected(rec, q, a, reason))
    seen: set[tuple[str, str]] = set()
    unique = []
    for rec, q, a in candidates:
        exact = (filters.normalise(q), filters.normalise(a))
        if exact in seen:
            report.dropped["duplicate"] += 1
            rejected.append(_rejected(rec, q, a, "duplicate"))
        else:
            seen.add(exact)
            unique.append((rec, q, a))
    scores: list[float | None] = [None] * len(unique)
    if judge is not None and unique:
        scores = judge.score([(rec["context"], q, a) for rec, q, a in unique])
    near = filters.NearDuplicates(cfg.near_duplicate) if cfg.near_duplicate < 1 else None  # 1: exact ones only
    kept = []
    for (rec, q, a), score in zip(unique, scores):
        reason = None
        if judge is not None:
            reason = (
                "judge_failed" if score is None else "judge_below_threshold" if score < cfg.judge_threshold else None
            )
        if reason is None and near is not None and near.seen(f"{q} {a}"):
            reason = "near_duplicate"
        if reason is not None:
            report.dropped[reason] += 1
            rejected.append(_rejected(rec, q, a, reason, score))
            continue
        provenance = {k: rec[k] for k in ("document", "chunk", "start", "end", "generator", "template", "seed")}
        if judge is not None:
            provenance |= {"judge": judge.name, "score": score}
        kept.append(
            {
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                "provenance": provenance,
            }
        )
    report.kept = len(kept)
    report.dropped = Counter({k: report.dropped[k] for k in filters.REASONS if report.dropped[k]})
    report.seconds = time.perf_counter() - t0
    return _write(files, kept, rejected, report)


def _rejected(rec: dict[str, Any], q: str, a: str, reason: str, score: float | None = None) -> dict[str, Any]:
    r = {
        "reason": reason,
        "question": q,
        "answer": a,
        "document": rec["document"],
        "chunk": rec["chunk"],
        "request": rec["key"],
    }
    return r | ({"score": score} if score is not None else {})


def _write(files: dict[str, Path], kept: list, rejected: list, report: SynthReport) -> SynthReport:
    report.files = {k: str(v) for k, v in files.items()}
    lines = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
    write_text_atomic(files["kept"], lines(kept))
    write_text_atomic(files["rejected"], lines(rejected))
    write_text_atomic(files["report"], json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: the user turns of instruction records (what `synth instruct` writes, or any format `sft`
    reads), records with a `prompt` or `question` field, or one prompt per line of a .txt file."""
    from fromzero.data.instruct import iter_conversations
    from fromzero.data.sources import DataError, iter_records

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    if path.name.lower().removesuffix(".gz").endswith((".txt", ".md")):
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        try:
            prompts = [next(m["content"] for m in c if m["role"] == "user") for c in iter_conversations(str(path))]
        except DataError:
            prompts = [r.record.get("prompt") or r.record.get("question") for r in iter_records(str(path))]
            bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
            if bad:
                raise DataError(
                    f"{path}: record {bad[0]} has no prompt (expected an instruction record, or a "
                    "'prompt' or 'question' field)"
                ) from None
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return list(dict.fromkeys(prompts))  # each prompt once


def synth_preferences(
    prompts: Sequence[str],
    gen: Generator,
    judge: Judge,
    cfg: SynthConfig,
    out: Path,
    *,
    k: int = 4,
    progress: bool = True,
) -> SynthReport:
    """k sampled answers per prompt, scored by the judge: the best and the worst become a prompt/chosen/rejected
    record (TRL's format, what `fromzero reward|dpo --data` reads). No ties and no unscored answers: a prompt whose
    best and worst score the same, or with fewer than two distinct scored answers, is dropped and counted."""
    if k < 2:
        raise ValueError(f"--k {k}: at least 2 answers per prompt are needed to make a pair")
    t0, report, files = time.perf_counter(), SynthReport(), side_files(Path(out))
    requests = []
    for p in prompts:
        for i in range(k):
            sampling = (cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed)
            key, seed = key_of("prefs", p, i, gen.name, *sampling), seed_of(key_of("prefs", p, i, *sampling))
            requests.append({"key": key, "seed": seed, "prompt": p, "sample": i, "generator": gen.name})
    done = run_requests(requests, gen, cfg, files["raw"], report, desc="synth prefs", progress=progress)
    answers: dict[str, list[dict[str, Any]]] = {p: [] for p in prompts}
    for r in requests:
        if r["key"] in done and done[r["key"]]["output"].strip():
            answers[r["prompt"]].append(done[r["key"]])
        else:
            report.failed += 1
            report.failed_reasons["request_error" if r["key"] not in done else "empty"] += 1
    items = [(p, p, a["output"]) for p, rows in answers.items() for a in _distinct(rows)]
    scores = iter(judge.score(items)) if items else iter(())
    kept, rejected = [], []
    for p, rows in answers.items():
        report.generated += 1
        scored = [(s, a) for a in _distinct(rows) if (s := next(scores)) is not None]
        if len(scored) < 2:
            reason = "unscored" if len(_distinct(rows)) >= 2 else "too_few_answers"
        elif max(scored, key=_score)[0] == min(scored, key=_score)[0]:
            reason = "tie"
        else:
            reason = None
        if reason is not None:
            report.dropped[reason] += 1
            rejected.append({"reason": reason, "prompt": p, "answers": [a["output"] for a in rows]})
            continue
        (best, chosen), (worst, rejected_answer) = max(scored, key=_score), min(scored, key=_score)
        kept.append(
            {
                "prompt": [{"role": "user", "content": p}],
                "chosen": chosen["output"],
                "rejected": rejected_answer["output"],
                "provenance": {
                    "generator": gen.name,
                    "judge": judge.name,
                    "chosen_score": best,
                    "rejected_score": worst,
                    "k": k,
                    "seeds": [chosen["seed"], rejected_answer["seed"]],
                },
            }
        )
    report.kept = len(kept)
    report.seconds = time.perf_counter() - t0
    return _write(files, kept, rejected, report)


def _score(scored: tuple[float, Any]) -> float:
    return scored[0]


def _distinct(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One answer per text: two identical answers make no pair."""
    return list({r["output"].strip(): r for r in rows}.values())
