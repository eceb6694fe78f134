"""`fromzero run`: every stage in order, each reading the previous stage's checkpoint.

A run directory holds `data/` (tokenizer and shards), one directory per stage (its checkpoints,
metrics.jsonl and `result.json`), `summary.json` and the report. A stage with a `result.json` is
finished and skipped on the next run unless it is redone (`--redo STAGE` redoes it and every stage
after it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fromzero import checkpoint, dist
from fromzero.config import Config
from fromzero.data import build as data_build
from fromzero.data.preference import PreferencePair
from fromzero.data.tasks import Task, cold_start_tasks, load_tasks, solution_conversations
from fromzero.data.world import World, biography, build_world
from fromzero.data.world_chat import (
    InstructData,
    Judge,
    Question,
    build_instructions,
    new_people_questions,
    practice_conversations,
    recognise,
)
from fromzero.data.world_pref import (
    WorldPreferences,
    build_preferences,
    preference_pairs,
    prompts_and_gold,
    sampled_pairs,
)
from fromzero.eval import general, qa, reasoning
from fromzero.eval.gold import GoldJudge
from fromzero.eval.report import write_report
from fromzero.eval.samples import complete
from fromzero.tokenizer import Tokenizer
from fromzero.train import dpo, grpo, loop, ppo, pretrain, reward, sft


@dataclass
class StageInputs:
    """What the stages train on, built from the config and the built-in world: the same for `fromzero run` and for
    a stage's own command (`fromzero sft`, `reward`, `dpo`, `ppo`)."""

    cfg: Config
    world: World
    info: dist.DistInfo
    _sampled: dict[Path, list[PreferencePair]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, cfg: Config, device: str = "auto") -> StageInputs:
        return cls(cfg, build_world(cfg.world), dist.setup(device))

    @functools.cached_property
    def instructions(self) -> InstructData:
        return build_instructions(self.world, self.cfg.instruct)

    def sft_conversations(self) -> list:
        """Stage 2's instruction conversations (sft.data's files or the built-in world's), PPO-ptx's too."""
        if not self.cfg.sft.data:
            return self.instructions.train
        conversations, stats = sft.load_conversations(self.cfg.sft)
        if stats.skipped and self.info.is_main:
            print(f"[sft] sft.data: skipped {stats.skipped} malformed records, e.g. {stats.errors[0]}")
        return conversations

    def stage2_conversations(self) -> list:
        """Everything stage 2 trains on: the instructions, and with stage 4 on its cold start (worked solutions to some
        of its training problems); what the synth stage replays."""
        conversations = self.sft_conversations()
        if self.cfg.reasoning_rl:
            r = self.cfg.reasoning
            conversations = conversations + solution_conversations(self.cold_start, r.direct_fraction, r.seed)
        return conversations

    def practice_conversations(self) -> list:
        """The synth stage's question writer's data: writing a question that a sentence of a practice person's
        biography answers."""
        return practice_conversations(
            self.world, self.cfg.instruct, random.Random(f"{self.cfg.instruct.seed}:practice")
        )

    @functools.cached_property
    def preferences(self) -> WorldPreferences:
        return build_preferences(self.world, self.cfg.preference, self.reasoning_tasks[0])

    def sampled_pairs(self, policy: Path) -> list[PreferencePair]:
        """Labelled pairs of a checkpoint's own sampled answers (`preference.sampled_questions`), made once."""
        if not self.cfg.preference.sampled_questions:
            return []  # without loading the checkpoint
        ckpt = checkpoint.resolve(policy)
        if ckpt not in self._sampled:
            model = checkpoint.load_model(ckpt, self.info.device)
            tok = Tokenizer.load(checkpoint.tokenizer_file(ckpt))
            sample = qa.sampler(model, tok, **self.cfg.eval.preference_sampling())
            self._sampled[ckpt] = sampled_pairs(self.world, self.preferences, self.cfg.preference, sample)
            if self.info.is_main:
                print(
                    f"{len(self._sampled[ckpt])} labelled pairs of {ckpt.parent.name}'s sampled answers to "
                    f"{self.cfg.preference.sampled_questions} questions (pairs the labellers would call a tie dropped)"
                )
        return self._sampled[ckpt]

    def preference_pairs(
        self, sources: Any, policy: Path | None = None
    ) -> tuple[list[PreferencePair], list[PreferencePair]]:
        """(train, held-out) pairs: from the stage's files split by prompt when it names any, else the built-in
        world's (whose held-out pairs the gold function labels without noise), with labelled pairs of the answers of
        `policy` (the model stage 3 starts from) when `preference.sampled_questions` asks for them."""

        def builtin() -> WorldPreferences:
            own = self.sampled_pairs(policy) if policy is not None else []
            return dataclasses.replace(self.preferences, train=self.preferences.train + own)

        train, heldout, stats = preference_pairs(sources, builtin, self.cfg.seed)
        if stats is not None and self.info.is_main:
            print(
                f"{stats.describe()}; {len(train)} pairs for training, {len(heldout)} held out by prompt"
                + (f", e.g. {stats.errors[0]}" if stats.errors else "")
            )
        return train, heldout

    def ppo_prompts(self, policy: Path | None = None) -> PPOPrompts:
        """PPO's prompts: those of the reward model's preference files (no gold function knows them, nothing is held
        out), else the built-in world's training questions with their gold answers, and its held-out prompts."""
        if self.cfg.reward.data:
            pairs = self.preference_pairs(self.cfg.reward, policy)[0]
            return PPOPrompts(list({json.dumps(p.messages): p.messages for p in pairs}.values()))
        share = self.cfg.preference.ppo_people_share
        prompts, gold = prompts_and_gold(self.world, self.preferences.train_questions, share)
        heldout, heldout_gold = prompts_and_gold(self.world, self.preferences.eval_questions)
        return PPOPrompts(prompts, gold, heldout, heldout_gold)

    @functools.cached_property
    def reasoning_tasks(self) -> tuple[list[Task], list[Task]]:
        """(train, held-out) reasoning tasks: the grpo section's files, or the built-in word problems."""
        return load_tasks(self.cfg.grpo, self.cfg.reasoning, self.world, self.cfg.seed)

    @functools.cached_property
    def cold_start(self) -> list[Task]:
        """The reasoning problems whose worked solutions SFT learns from (see `cold_start_tasks`)."""
        train, heldout = self.reasoning_tasks
        if self.cfg.grpo.data:
            return train[: self.cfg.reasoning.n_sft]
        return cold_start_tasks(self.cfg.reasoning, self.world, train, heldout)


@dataclass
class PPOPrompts:
    prompts: list
    gold: Any = None  # the gold answers of the built-in prompts, for logging the gold score
    heldout: list = field(default_factory=list)
    heldout_gold: Any = None


@dataclass
class RunContext(StageInputs):
    """A run's inputs, its directory, and the evaluations (in eval/) its stages are graded by."""

    out: Path = Path("runs")

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.data_dir)

    def model(self, ckpt: Path):
        return checkpoint.load_model(ckpt, self.info.device)

    def prompts(self) -> list[tuple[str, Question | None]]:
        """The fixed prompts, placeholders filled from the world, each with the question it asks (None: no rule
        grades it)."""
        person = self.world.trained_people[0]
        tasks = general.task_questions(self.reasoning_tasks[1], 1)
        fill = {
            "trained_person": person.name,
            "heldout_person": self.world.heldout_people[0].name,
            "town": person.town,
            "word_problem": tasks[0].question if tasks else "What is 3 plus 4?",
        }
        out = []
        for p in self.cfg.eval.prompts:
            text = p.format(**fill)
            task = [q for q in tasks if q.question == text]
            out.append((text, task[0] if task else recognise(self.world, text)))
        return out

    @functools.cached_property
    def general_questions(self) -> list[Question]:
        """The general evaluation's questions: every kind the instruction data teaches, word problems included."""
        n = self.cfg.instruct.general_questions
        return self.instructions.general + general.task_questions(self.reasoning_tasks[1], n)

    def general_accuracy(self, ckpt: Path, log_to: Path | None = None) -> dict[str, Any]:
        """{"general": {kind: accuracy}, "general_acc": the mean over kinds}; graded answers go to log_to."""
        per_kind, graded = general.evaluate(
            self.model(ckpt),
            self.tokenizer,
            self.general_questions,
            Judge(self.world),
            max_new_tokens=self.cfg.eval.max_new_tokens,
        )
        _log(log_to, graded)
        return {"general": per_kind, "general_acc": general.mean(per_kind)}

    def new_documents(self) -> list[tuple[str, str]]:
        """(name, text) of the documents the synth stage writes its data from: synth.docs, or one biography of each of
        the built-in world's new people, written to data/new_people/ as a user's own files would be."""
        from fromzero.synth import read_documents

        if self.cfg.synth.docs:
            return read_documents(self.cfg.synth.docs, self.cfg.synth.text_field)
        folder = self.data_dir / "new_people"
        if self.info.is_main and not folder.is_dir():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for p in self.world.new_people:
                (tmp / f"{p.first_name}_{p.last_name}.txt").write_text(biography(p, f"{self.cfg.seed}:new") + "\n")
            tmp.rename(folder)
        dist.barrier()
        return read_documents([str(folder)])

    def new_people_accuracy(self, ckpt: Path, log_to: Path | None = None) -> float:
        """Accuracy on every fact of the new people, asked in phrasings the synth stage's generator never writes."""
        questions = new_people_questions(self.world, self.cfg.seed)
        acc, graded = qa.accuracy(
            self.model(ckpt), self.tokenizer, questions, self.world, max_new_tokens=self.cfg.eval.qa_max_new_tokens
        )
        _log(log_to, qa.rows(graded))
        return acc

    def answers(self, ckpt: Path, chat: bool, *, random_init: bool = False) -> dict[str, dict[str, str]]:
        """The fixed prompts answered by a checkpoint (rank 0 only: sampling is cheap), each graded: continued as raw
        text before instruction tuning, in the chat template after it. The random model's answers are sampled from
        tokens that are text on their own (greedy, it repeats one token; with every token, it writes U+FFFD)."""
        model = self.model(ckpt)
        asked, e = self.prompts(), self.cfg.eval
        prompts = [text for text, _ in asked]
        if chat:
            texts = qa.answer(
                model,
                self.tokenizer,
                prompts,
                max_new_tokens=e.max_new_tokens,
                temperature=e.temperature,
                seed=self.cfg.seed,
            )
        else:
            texts = complete(
                model,
                self.tokenizer,
                prompts,
                max_new_tokens=e.max_new_tokens,
                seed=self.cfg.seed,
                temperature=1.0 if random_init else e.temperature,
                text_only=random_init,
            )
        judge = Judge(self.world)
        out = {}
        for (prompt, q), text in zip(asked, texts):
            verdict, why = judge.check(q, text) if q is not None else ("ungraded", "no rule knows this prompt")
            out[prompt] = {"answer": text, "verdict": verdict, "why": why}
        return out

    def qa_accuracy(self, ckpt: Path, *, chat: bool, log_to: Path | None = None) -> dict[str, float]:
        """Held-out question accuracy (phrasing, people) of a checkpoint; graded answers go to log_to."""
        sets = {
            "heldout_phrasing_acc": self.instructions.heldout_phrasing,
            "heldout_people_acc": self.instructions.heldout_people,
        }
        metrics, graded = qa.heldout_accuracy(
            self.model(ckpt),
            self.tokenizer,
            sets,
            self.world,
            chat=chat,
            max_new_tokens=self.cfg.eval.qa_max_new_tokens,
        )
        _log(log_to, graded)
        return metrics

    @functools.cached_property
    def gold(self) -> GoldJudge:
        """The gold function's verdict on a policy's sampled answers against SFT's (sampled once, for PPO and DPO)."""
        return GoldJudge(
            self.world,
            self.preferences.eval_questions,
            self.tokenizer,
            self.info.device,
            sampling=self.cfg.eval.preference_sampling(),
            seed=self.cfg.seed + 1,
        )

    def reasoning_accuracy(self, ckpt: Path, log_to: Path | None = None) -> dict[str, float]:
        """Greedy pass@1 (overall and per step count) and sampled pass@k on the held-out reasoning tasks."""
        metrics, graded = reasoning.evaluate(
            self.model(ckpt), self.tokenizer, self.reasoning_tasks[1], **reasoning.options(self.cfg)
        )
        _log(log_to, graded)
        return metrics

    def lm_metrics(self, ckpt: Path) -> dict[str, float]:
        evaluate = pretrain.lm_evaluator(
            self.data_dir,
            self.tokenizer,
            self.cfg.pretrain,
            self.cfg.eval.val_batches,
            self.info.rank,
            self.info.world_size,
        )
        with torch.no_grad():
            return evaluate(self.model(ckpt).eval())


def _log(path: Path | None, rows: list[dict]) -> None:
    if path is not None:
        checkpoint.write_jsonl_atomic(path, rows)


def random_init(cfg: Config, data_dir: Path, out: Path) -> Path:
    """Stage 0's checkpoint: random weights for the data's tokenizer, written once (by rank 0)."""
    if dist.setup(cfg.pretrain.device).is_main and not checkpoint.exists(out):
        model = pretrain.init_model(cfg.model, Tokenizer.load(data_dir), cfg.seed)
        checkpoint.save(out, 0, model, tokenizer_file=data_dir / "tokenizer.json", meta={"stage": "init"})
    dist.barrier()
    return out


def stage_init(ctx: RunContext) -> dict[str, Any]:
    """Stage 0: random weights. Its val loss should sit near ln(vocab) and its answers be gibberish."""
    out = random_init(ctx.cfg, ctx.data_dir, ctx.out / "init")
    metrics = ctx.lm_metrics(out)
    vocab = ctx.tokenizer.vocab_size
    return {"metrics": {**metrics, "ln_vocab": float(torch.log(torch.tensor(float(vocab))))}, "checkpoint": out}


def stage_pretrain(ctx: RunContext) -> dict[str, Any]:
    """Stage 1: next-token prediction on the corpus."""
    out = ctx.out / "pretrain"
    ckpt = pretrain.train(
        ctx.cfg.pretrain, ctx.data_dir, out, init=ctx.out / "init", val_batches=ctx.cfg.eval.val_batches, resume=True
    )
    return {"metrics": ctx.lm_metrics(ckpt), "checkpoint": ckpt}


def stage_sft(ctx: RunContext) -> dict[str, Any]:
    """Stage 2: instruction tuning, graded on held-out phrasings and held-out people against stage 1."""
    out = ctx.out / "sft"
    ckpt = sft.train(ctx.cfg.sft, ctx.stage2_conversations(), ctx.out / "pretrain", out, resume=True)
    metrics: dict[str, float] = {}
    if ctx.info.is_main:
        metrics = ctx.qa_accuracy(ckpt, chat=True, log_to=out / "heldout_answers.jsonl")
        metrics.update(ctx.general_accuracy(ckpt, log_to=out / "general_answers.jsonl"))
        base = ctx.qa_accuracy(
            checkpoint.resolve(ctx.out / "pretrain"), chat=False, log_to=out / "base_heldout_answers.jsonl"
        )
        metrics.update({f"base_{k}": v for k, v in base.items()})
    return {"metrics": metrics, "checkpoint": ckpt, "chat": True}


def stage_synth(ctx: RunContext) -> dict[str, Any]:
    """Stage 2b: the SFT model (or synth.endpoint's) writes its own instruction data from documents it never saw (the
    new people's, or synth.docs), the filters keep what holds up, and SFT continues on it with a replay of stage 2's
    data. Graded on every fact of the new people before and after, and on stage 2's held-out phrasings (what it must
    not forget). A branch, as DPO is: the later stages start from SFT's model."""
    from fromzero import synth
    from fromzero.synth.generators import make_generator
    from fromzero.synth.judges import make_judge

    s, out, init = ctx.cfg.synth, ctx.out / "synth", checkpoint.resolve(ctx.out / "sft")
    pairs_file = out / "pairs.jsonl"
    docs = ctx.new_documents()
    known = not s.docs  # the built-in new people: questions about them grade the stage
    metrics: dict[str, Any] = {}
    if ctx.info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if known:
            metrics["new_people_acc_before"] = ctx.new_people_accuracy(init, log_to=out / "new_people_before.jsonl")
    writer = init
    if s.writer_steps and not s.endpoint:
        practice = ctx.practice_conversations()
        if not practice:
            raise ValueError(
                "synth.writer_steps needs practice conversations: set world.n_practice_people above 0, "
                "or synth.writer_steps to 0"
            )
        # the model's whole length: a practice prompt holds a whole chunk
        writer_cfg = _short_sft(ctx.cfg.sft, s.writer_steps, s.writer_lr, seq_len=ctx.cfg.model.max_seq_len)
        writer = sft.train(writer_cfg, practice, init, out / "writer", resume=True)
    if ctx.info.is_main:
        device = str(ctx.info.device)
        generator = make_generator(
            ckpt=None if s.endpoint else writer,
            endpoint=s.endpoint,
            model=s.model,
            api_key=s.api_key or os.environ.get("FROMZERO_SYNTH_API_KEY"),
            cfg=s,
            device=device,
        )
        chunks = synth.chunk_documents(docs, ctx.tokenizer, s.chunk_tokens, s.chunk_overlap)
        judge = make_judge(s.judge, generator, ckpt=s.judge_ckpt, template=s.judge_template, device=device)
        report = synth.synth_instructions(chunks, generator, s, pairs_file, judge=judge)
        print(f"[synth] {len(chunks)} chunks of {len(docs)} documents\n{report.table()}")
        metrics.update(
            {
                "chunks": len(chunks),
                "generated": report.generated,
                "kept": report.kept,
                "failed": report.failed,
                "dropped": dict(report.dropped),
            }
        )
    dist.barrier()
    kept = [json.loads(line)["messages"] for line in pairs_file.read_text().splitlines() if line.strip()]
    if not kept:  # nothing to learn: the stage's model is SFT's, and says so
        if ctx.info.is_main:
            print(
                f"[synth] warning: no generated pair passed the filters (see {out / 'pairs.rejected.jsonl'}): SFT "
                "does not continue"
            )
            if known:
                metrics["new_people_acc_after"] = metrics["new_people_acc_before"]
            sft_metrics = json.loads(result_path(ctx.out, "sft").read_text())["metrics"]
            metrics.update({f"{k}_after": sft_metrics[k] for k in ("heldout_phrasing_acc", "heldout_people_acc")})
        return {"metrics": metrics, "checkpoint": init, "chat": True}
    stage2 = ctx.stage2_conversations()
    replay = random.Random(f"{s.seed}:replay").sample(stage2, min(len(stage2), round(s.replay * len(kept))))
    ckpt = sft.train(_short_sft(ctx.cfg.sft, s.steps, s.lr), kept + replay, init, out, resume=True)
    if ctx.info.is_main:
        if known:
            metrics["new_people_acc_after"] = ctx.new_people_accuracy(ckpt, log_to=out / "new_people_after.jsonl")
        metrics.update({f"{k}_after": v for k, v in ctx.qa_accuracy(ckpt, chat=True).items()})
    return {"metrics": metrics, "checkpoint": ckpt, "chat": True}


def _short_sft(cfg: sft.SFTConfig, steps: int, lr: float, seq_len: int | None = None) -> sft.SFTConfig:
    """Stage 2's settings for one of the synth stage's short SFT runs."""
    return cfg.model_copy(
        update={
            "steps": steps,
            "lr": lr,
            "warmup_steps": min(cfg.warmup_steps, steps // 10),
            "eval_every": steps,
            "checkpoint_every": steps,
            "seq_len": seq_len or cfg.seq_len,
        }
    )


def stage_reward(ctx: RunContext) -> dict[str, Any]:
    """Stage 3a: the reward model, from the SFT model, graded on held-out pairs the gold function labelled."""
    out = ctx.out / "reward"
    init = checkpoint.resolve(ctx.out / "sft")
    pairs, heldout = ctx.preference_pairs(ctx.cfg.reward, init)
    if not heldout:
        raise ValueError("reward: no held-out pairs to grade the reward model on; set reward.val_fraction above 0")
    ckpt = reward.train(ctx.cfg.reward, pairs, heldout, init, out, resume=True)
    final = json.loads((out / loop.DONE).read_text())  # the last step's metrics, the held-out evaluation included
    return {"metrics": {"heldout_acc": final.get("val_accuracy", float("nan"))}, "checkpoint": ckpt}


def stage_dpo(ctx: RunContext) -> dict[str, Any]:
    """Stage 3 (offline): DPO from the SFT model on the same pairs, judged by the gold function against SFT."""
    out, init = ctx.out / "dpo", checkpoint.resolve(ctx.out / "sft")
    ckpt = dpo.train(ctx.cfg.dpo, *ctx.preference_pairs(ctx.cfg.dpo, init), init, out, resume=True)
    metrics: dict[str, float] = {}
    if ctx.info.is_main:
        metrics = ctx.gold.win_rate(ckpt, init)
        metrics.update(ctx.qa_accuracy(ckpt, chat=True))
        metrics.update(ctx.general_accuracy(ckpt, log_to=out / "general_answers.jsonl"))
    return {"metrics": metrics, "checkpoint": ckpt, "chat": True}


def stage_ppo(ctx: RunContext) -> dict[str, Any]:
    """Stage 3 (RLHF): PPO from the SFT model against the reward model, on the preference prompts; judged by the
    gold function against SFT, with the reward model's mean score on held-out prompts before and after."""
    out, init, rm = ctx.out / "ppo", checkpoint.resolve(ctx.out / "sft"), checkpoint.resolve(ctx.out / "reward")
    p = ctx.ppo_prompts(init)
    scorer = reward.load_reward_model(rm, ctx.info.device)
    evaluate = None
    if p.heldout:
        evaluate = ppo.reward_evaluator(
            scorer,
            ctx.tokenizer,
            p.heldout,
            max_new_tokens=ctx.cfg.ppo.max_new_tokens,
            gold=p.heldout_gold,
            rank=ctx.info.rank,
            world_size=ctx.info.world_size,
        )

    def held_out(path: Path) -> dict[str, float]:  # as the loop evaluates: no grad, the stage's autocast; every rank
        with torch.no_grad(), loop.autocast(ctx.cfg.ppo, ctx.info.device):
            return evaluate(checkpoint.load_model(path, ctx.info.device)) if evaluate else {}

    before = held_out(init)
    ptx = ctx.sft_conversations() if ctx.cfg.ppo.ptx_coef > 0 else []
    ckpt = ppo.train(ctx.cfg.ppo, p.prompts, init, rm, out, gold=p.gold, evaluate=evaluate, resume=True, ptx=ptx)
    after = held_out(ckpt)
    metrics: dict[str, float] = {}
    if ctx.info.is_main:
        # KL per answer over the last tenth of the steps: one rollout's is noisy
        kls = [r["kl"] for r in loop.read_metrics(out) if "kl" in r][-max(1, ctx.cfg.ppo.steps // 10) :]
        kl = sum(kls) / len(kls) if kls else float("nan")
        metrics = {
            **ctx.gold.win_rate(ckpt, init),
            "kl": kl,
            "rm_reward_before": before.get("val_reward", float("nan")),
            "rm_reward_after": after.get("val_reward", float("nan")),
            **ctx.qa_accuracy(ckpt, chat=True),
            **ctx.general_accuracy(ckpt, log_to=out / "general_answers.jsonl"),
        }
    return {"metrics": metrics, "checkpoint": ckpt, "chat": True}


def stage_grpo(ctx: RunContext) -> dict[str, Any]:
    """Stage 4: GRPO on the reasoning tasks from the last policy (with grpo.ptx_coef, SFT's loss on stage 2's
    instructions mixed in), graded on held-out problems before and after, on stage 2's held-out questions (what it
    must not forget) and by the gold win rate over SFT (what stage 3 gained)."""
    out = ctx.out / "grpo"
    init = checkpoint.resolve(ctx.out / source(ctx.cfg, "grpo").model)
    train, heldout = ctx.reasoning_tasks
    if not heldout:
        raise ValueError("grpo: no held-out problems to grade on; set grpo.eval_fraction above 0 or grpo.eval_data")
    before: dict[str, float] = {}
    if ctx.info.is_main:
        before = ctx.reasoning_accuracy(init, log_to=None)
    ptx = ctx.sft_conversations() if ctx.cfg.grpo.ptx_coef > 0 else []
    # ptx_keep ranks them by stage 3's reward model, where one was trained (`inputs` names it then)
    rm = checkpoint.resolve(ctx.out / "reward") if "reward" in inputs(ctx.cfg, "grpo") else None
    ckpt = grpo.train(ctx.cfg.grpo, train, heldout, init, out, resume=True, ptx=ptx, reward_model=rm)
    metrics: dict[str, float] = {}
    if ctx.info.is_main:
        after = ctx.reasoning_accuracy(ckpt, log_to=out / "heldout_answers.jsonl")
        qa_after = ctx.qa_accuracy(ckpt, chat=True)
        metrics = {
            "pass1_before": before["pass@1"],
            "pass1_after": after["pass@1"],
            **{f"{k}_before": v for k, v in before.items() if k != "pass@1"},
            **{f"{k}_after": v for k, v in after.items() if k != "pass@1"},
            **{f"sft_{k}_after": v for k, v in qa_after.items()},
            **ctx.general_accuracy(ckpt, log_to=out / "general_answers.jsonl"),
            # whether stage 4 keeps what stage 3 gained: the gold win rate over SFT, as PPO's and DPO's
            **ctx.gold.win_rate(ckpt, checkpoint.resolve(ctx.out / "sft")),
        }
    return {"metrics": metrics, "checkpoint": ckpt, "chat": True}


# Each stage returns {"metrics", "checkpoint", and "chat": True once the model speaks the chat template}; the
# stages in NOT_POLICIES make no language model (the reward model) and answer no prompts.
STAGES: list[tuple[str, Callable[[RunContext], dict[str, Any]]]] = [
    ("init", stage_init),
    ("pretrain", stage_pretrain),
    ("sft", stage_sft),
    ("synth", stage_synth),
    ("reward", stage_reward),
    ("dpo", stage_dpo),
    ("ppo", stage_ppo),
    ("grpo", stage_grpo),
]
NOT_POLICIES = ("reward",)
BRANCHES = ("synth",)  # policies no later stage starts from


def enabled(cfg: Config, stage: str) -> bool:
    """Whether `fromzero run` runs a stage under this config (preference_tuning, reasoning_rl)."""
    if stage in ("reward", "ppo"):
        return cfg.preference_tuning in ("ppo", "both")
    if stage == "dpo":
        return cfg.preference_tuning in ("dpo", "both")
    if stage == "synth":
        return cfg.synthetic_data
    if stage == "grpo":
        return cfg.reasoning_rl
    return True


def stage_names(cfg: Config) -> list[str]:
    return [name for name, _ in STAGES if enabled(cfg, name)]


def result_path(out: Path, stage: str) -> Path:
    return out / stage / "result.json"


def flat(metrics: dict[str, Any]) -> dict[str, float]:
    """Metrics with nested ones ({"general": {kind: acc}}) as dotted keys (general.people), for one log line."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def summarize(cfg: Config, out: Path) -> dict[str, Any]:
    stages = {}
    for name in stage_names(cfg):
        path = result_path(out, name)
        if path.exists():
            result = json.loads(path.read_text())
            stages[name] = {**result["metrics"], "seconds": result["seconds"]}
    return {"preset": cfg.preset, "stages": stages, "seconds": sum(s["seconds"] for s in stages.values())}


@dataclass(frozen=True)
class Start:
    """What a stage starts from: the stage whose model it reads ("" for none), and data beyond its own section's that
    it trains on. Its text (`str`) is what result.json records as "from"."""

    model: str
    data: tuple[str, ...] = ()

    def __str__(self) -> str:
        return " + ".join((self.model, *self.data))


def source(cfg: Config, stage: str) -> Start:
    """What a stage starts from under this config (GRPO: the last language model before it, PPO's with both); a
    finished stage that started from something else is redone."""
    if stage == "sft":
        return Start("pretrain", ("reasoning cold start",) if cfg.reasoning_rl and cfg.reasoning.n_sft else ())
    if stage in ("synth", "reward", "dpo", "ppo"):
        return Start("sft")
    if stage == "grpo":
        names = stage_names(cfg)
        return Start([n for n in names[: names.index(stage)] if n not in NOT_POLICIES + BRANCHES][-1])
    return Start({"init": "", "pretrain": "init"}[stage])


def inputs(cfg: Config, stage: str) -> list[str]:
    """The stages whose models a stage reads: the one it starts from, and for PPO (and GRPO ranking its ptx
    conversations) the reward model too. When one of them runs again, the stage is redone."""
    start = source(cfg, stage).model
    g = cfg.grpo  # GRPO's ptx_keep ranks its ptx conversations by the reward model
    ranks = stage == "grpo" and g.ptx_coef > 0 and g.ptx_keep < 1 and "reward" in stage_names(cfg)
    return ([start] if start else []) + (["reward"] if stage == "ppo" or ranks else [])


def run(cfg: Config, out: Path, *, redo: str | None = None, report: bool = True) -> dict[str, Any]:
    out = Path(out)
    info = dist.setup(cfg.pretrain.device)
    names, every = stage_names(cfg), [name for name, _ in STAGES]
    if redo is not None and redo not in names:
        if redo in every:
            raise ValueError(
                f"stage '{redo}' is off under preference_tuning={cfg.preference_tuning}, reasoning_rl="
                f"{cfg.reasoning_rl}; stages: {', '.join(names)}"
            )
        raise ValueError(f"unknown stage '{redo}'; stages: {', '.join(names)}")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(cfg.model_dump_json(indent=2))
        if redo is not None:  # every later stage too, also those off now: they were made from what is redone
            for name in every[every.index(redo) :]:
                shutil.rmtree(out / name, ignore_errors=True)
        data_build.build(cfg, out / "data")
    dist.barrier()
    ctx = RunContext(cfg, build_world(cfg.world), info, out=out)
    ran: set[str] = set()  # a stage that finished earlier but reads a model made again now is stale
    for name, fn in STAGES:
        if name not in names:
            continue
        path = result_path(out, name)
        stale = [i for i in inputs(cfg, name) if i in ran]
        if path.exists():
            origin = str(source(cfg, name))
            if not stale and json.loads(path.read_text()).get("from", origin) == origin:
                if info.is_main:
                    print(f"[{name}] finished earlier, skipped ({path})")
                continue
            if info.is_main:
                why = f"{stale[0]}, which it reads, was redone" if stale else f"it now starts from {origin}"
                print(f"[{name}] redone: {why}")
        if (path.exists() or stale) and info.is_main:  # an unfinished stage resumes, unless its input is new
            shutil.rmtree(out / name, ignore_errors=True)
        dist.barrier()
        ran.add(name)
        start = time.perf_counter()
        result = fn(ctx)
        if info.is_main:
            answers = {}
            if name not in NOT_POLICIES:
                answers = ctx.answers(result["checkpoint"], chat=result.get("chat", False), random_init=name == "init")
            record = {
                "metrics": result["metrics"],
                "seconds": time.perf_counter() - start,
                "from": str(source(cfg, name)),
                "checkpoint": str(result["checkpoint"]),
                "answers": answers,
            }
            checkpoint.write_text_atomic(path, json.dumps(record, indent=2))
            print(f"[{name}] " + "  ".join(f"{k}={v:.4g}" for k, v in flat(result["metrics"]).items()))
        dist.barrier()
    summary = summarize(cfg, out)
    if info.is_main:
        checkpoint.write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
        if report:
            write_report(out, names)
    return summary
