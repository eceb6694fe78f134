"""A ranking of models from arena votes: Bradley–Terry strengths with bootstrap confidence intervals.

P(model i beats model j) = σ(θ_i - θ_j). The θ are fit by maximum likelihood (Newton's method, with a weak
Gaussian prior so a model that won every vote still gets a finite rating); a tie or a "both bad" vote counts
half a win for each side, as in Chatbot Arena. Ratings are shown on the Elo scale (400 / ln 10 per unit of θ,
centred at 1000), and the interval is the 2.5–97.5 percentile of ratings refit on votes resampled with
replacement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ELO = 400 / math.log(10)


def outcomes(choices: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, float]]:
    """(model_a, model_b, score of a) from (model_a, model_b, choice) votes; battles of a model with itself say
    nothing about the ranking and are left out."""
    score = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
    return [(a, b, score[c]) for a, b, c in choices if a != b]


def bradley_terry(
    games: Sequence[tuple[int, int, float]], n: int, prior: float = 0.1, iterations: int = 50
) -> np.ndarray:
    """θ [n] (mean 0) maximising Σ s log σ(θ_a - θ_b) + (1 - s) log σ(θ_b - θ_a) - prior/2 · |θ|²."""
    theta = np.zeros(n)
    if not games:
        return theta
    a = np.array([g[0] for g in games])
    b = np.array([g[1] for g in games])
    s = np.array([g[2] for g in games], dtype=float)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(theta[a] - theta[b])))
        grad = -prior * theta
        np.add.at(grad, a, s - p)
        np.add.at(grad, b, p - s)
        w = p * (1 - p)
        hess = -prior * np.eye(n)
        np.add.at(hess, (a, a), -w)
        np.add.at(hess, (b, b), -w)
        np.add.at(hess, (a, b), w)
        np.add.at(hess, (b, a), w)
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-8:
            break
    return theta - theta.mean()


def leaderboard(
    models: Sequence[str], votes: Sequence[tuple[str, str, str]], rounds: int = 200, seed: int = 0
) -> list[dict]:
    """One row per model, best first: rating, 95 % interval, and its votes, wins, losses and ties."""
    games = outcomes(votes)
    names = list(dict.fromkeys([*models, *(m for a, b, _ in games for m in (a, b))]))
    index = {m: i for i, m in enumerate(names)}
    coded = [(index[a], index[b], s) for a, b, s in games]
    rating = 1000 + ELO * bradley_terry(coded, len(names))
    rng = np.random.default_rng(seed)
    samples = np.array(
        [
            1000 + ELO * bradley_terry([coded[i] for i in rng.integers(0, len(coded), len(coded))], len(names))
            for _ in range(rounds if coded else 0)
        ]
    )
    rows = []
    for m, i in index.items():
        mine = [(s if a == i else 1 - s) for a, b, s in coded if i in (a, b)]
        low, high = np.percentile(samples[:, i], [2.5, 97.5]) if len(samples) else (rating[i], rating[i])
        rows.append(
            {
                "model": m,
                "rating": round(float(rating[i]), 1),
                "ci": [round(float(low), 1), round(float(high), 1)],
                "votes": len(mine),
                "wins": sum(x == 1 for x in mine),
                "losses": sum(x == 0 for x in mine),
                "ties": sum(x == 0.5 for x in mine),
            }
        )
    return sorted(rows, key=lambda r: -r["rating"])
