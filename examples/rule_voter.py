"""A stand-in for a person in the arena: it asks `fromzero serve` for battles and votes by a clear rule, through
the same JSON API the arena page uses, so the votes land in the server's SQLite file like anyone's.

    python examples/rule_voter.py vote --url http://127.0.0.1:8000 --battles 300 --rule shorter --models sft grpo
    python examples/rule_voter.py judge --url http://127.0.0.1:8000 --before sft --after ppo-votes --rule shorter

`vote` draws prompts (the built-in world's questions of the tiny preset, or --prompts FILE with one prompt per
line), asks /api/arena for two answers and votes by the rule (a tie where the rule cannot tell). `judge` answers
held-out prompts with two models through /v1/chat/completions and reports how often the rule prefers `after`.
"""

from __future__ import annotations

import argparse
import json
import random
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

# rule(answer_a, answer_b) -> "a" | "b" | "tie"
RULES = {
    "shorter": lambda a, b: (
        "a" if len(a.split()) < len(b.split()) else "b" if len(b.split()) < len(a.split()) else "tie"
    ),
    "longer": lambda a, b: (
        "a" if len(a.split()) > len(b.split()) else "b" if len(b.split()) > len(a.split()) else "tie"
    ),
}


def call(url: str, body: dict | None = None, key: str | None = None, timeout: float = 300) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def builtin_prompts(heldout: bool = False) -> list[str]:
    """Questions about the built-in world's people (tiny preset): the training questions, or the held-out ones."""
    from fromzero.config import load_config
    from fromzero.data.world import build_world
    from fromzero.data.world_pref import build_preferences

    cfg = load_config("tiny")
    prefs = build_preferences(build_world(cfg.world), cfg.preference)
    return [q.question for q in (prefs.eval_questions if heldout else prefs.train_questions)]


def vote(
    url: str,
    prompts: list[str],
    battles: int,
    rule: str,
    models: list[str] | None = None,
    key: str | None = None,
    concurrency: int = 4,
    seed: int = 0,
    max_tokens: int | None = None,
) -> Counter:
    """Ask for `battles` battles and vote on each by `rule`; returns the count of each choice."""
    rng = random.Random(seed)
    picks = [rng.choice(prompts) for _ in range(battles)]

    def one(prompt: str) -> str:
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "session_id": f"rule-voter-{rule}",
            **({"models": models} if models else {}),
            **({"max_tokens": max_tokens} if max_tokens else {}),
        }
        battle = call(f"{url}/api/arena", body, key)
        answers = {a["side"]: a["text"] for a in battle["answers"]}
        choice = RULES[rule](answers["a"], answers["b"])
        ballot = {"id": battle["id"], "choice": choice, "idempotency_key": str(uuid.uuid4())}
        for attempt in range(3):  # a lost reply is retried with the same key: stored once
            try:
                call(f"{url}/api/vote", ballot, key)
                break
            except urllib.error.URLError:
                if attempt == 2:
                    raise
        return choice

    with ThreadPoolExecutor(concurrency) as pool:
        return Counter(pool.map(one, picks))


def judge(
    url: str,
    prompts: list[str],
    before: str,
    after: str,
    rule: str,
    key: str | None = None,
    temperature: float = 0.7,
    concurrency: int = 4,
) -> dict:
    """How often the rule prefers `after`'s answer to `before`'s (ties count half), and each model's mean words."""

    def answer(model: str, i: int, prompt: str) -> str:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature,
            "seed": i,
        }
        return call(f"{url}/v1/chat/completions", body, key)["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(concurrency) as pool:
        old = list(pool.map(lambda ip: answer(before, *ip), enumerate(prompts)))
        new = list(pool.map(lambda ip: answer(after, *ip), enumerate(prompts)))
    verdicts = Counter(RULES[rule](b, a) for a, b in zip(old, new))  # side a: after
    return {
        "prompts": len(prompts),
        "after_preferred": (verdicts["a"] + verdicts["tie"] / 2) / len(prompts),
        "wins": verdicts["a"],
        "ties": verdicts["tie"],
        "losses": verdicts["b"],
        "words_before": sum(len(a.split()) for a in old) / len(old),
        "words_after": sum(len(a.split()) for a in new) / len(new),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["vote", "judge"])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", default=None, help="the server's API key, if it has one")
    p.add_argument("--rule", choices=sorted(RULES), default="shorter")
    p.add_argument("--prompts", default=None, help="a file with one prompt per line (default: the built-in questions)")
    p.add_argument("--battles", type=int, default=300)
    p.add_argument("--models", nargs=2, default=None, help="vote: the two models to compare (default: drawn)")
    p.add_argument("--before", help="judge: the model started from")
    p.add_argument("--after", help="judge: the model trained on the votes")
    p.add_argument("--judge-prompts", type=int, default=200, help="judge: held-out prompts answered")
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    if args.prompts:
        with open(args.prompts) as f:
            prompts = [line.strip() for line in f if line.strip()]
    else:
        prompts = builtin_prompts(heldout=args.mode == "judge")
    if args.mode == "vote":
        counts = vote(args.url, prompts, args.battles, args.rule, args.models, args.key, args.concurrency)
        print(json.dumps({"battles": args.battles, "choices": dict(counts)}))
    else:
        print(
            json.dumps(
                judge(
                    args.url,
                    prompts[: args.judge_prompts],
                    args.before,
                    args.after,
                    args.rule,
                    args.key,
                    concurrency=args.concurrency,
                )
            )
        )


if __name__ == "__main__":
    main()
