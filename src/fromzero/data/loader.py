"""Fixed-length training sequences cut from packed token shards, in a seeded order.

The token stream is cut into samples of seq_len + 1 tokens (inputs and shifted targets), visited in
a `GlobalOrder`: all ranks walk the same seeded order and each reads its own slice of every global
micro-batch, so N ranks with A accumulation steps see exactly the batches one process sees with N·A.
The data position is one integer, which makes resume exact.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from fromzero.data.shards import TokenShards


class SeededPosition:
    """A seeded order's resumable state: the seed it was drawn with (checked on load) and how far it has gone."""

    seed: int
    position: int

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint data order was seeded with {state['seed']}, this run with {self.seed}")
        self.position = state["position"]


class GlobalOrder(SeededPosition):
    """Which items each rank's next micro-batch holds, in a seeded order shared by all ranks.

    Items are visited epoch by epoch, each epoch in a permutation seeded by (seed, epoch); global
    micro-batch j holds items [j·mb·world, (j+1)·mb·world) of that stream and rank r takes its own
    mb-sized slice. The state is one integer, the global micro-batches consumed.
    """

    def __init__(self, n_items: int, micro_batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n_items, self.mb, self.seed, self.rank, self.world_size = n_items, micro_batch_size, seed, rank, world_size
        self.position = 0
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def item(self, s: int) -> int:
        """The s-th item of the order (every rank's alike)."""
        epoch = s // self.n_items
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        return int(self._order[s % self.n_items])

    def next_indices(self) -> list[int]:
        first = (self.position * self.world_size + self.rank) * self.mb
        self.position += 1
        return [self.item(s) for s in range(first, first + self.mb)]


class PackedBatches:
    def __init__(
        self,
        shards: TokenShards,
        seq_len: int,
        micro_batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.shards, self.seq_len = shards, seq_len
        n_samples = (len(shards) - 1) // seq_len
        if n_samples < micro_batch_size * world_size:
            raise ValueError(
                f"{len(shards)} tokens make only {n_samples} sequences of {seq_len}: fewer than one batch of "
                f"{micro_batch_size} × {world_size} ranks; use more data or a shorter seq_len"
            )
        self.order = GlobalOrder(n_samples, micro_batch_size, seed=seed, rank=rank, world_size=world_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.shards.slice(i * self.seq_len, self.seq_len + 1) for i in self.order.next_indices()])
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


def eval_batches(
    shards: TokenShards, seq_len: int, micro_batch_size: int, max_batches: int, *, rank: int = 0, world_size: int = 1
):
    """The first max_batches global micro-batches of a split, in order; this rank's slice of each."""
    n_samples = (len(shards) - 1) // seq_len
    for j in range(max_batches):
        first = (j * world_size + rank) * micro_batch_size
        if first >= n_samples:
            return
        idx = range(first, min(first + micro_batch_size, n_samples))
        t = torch.from_numpy(np.stack([shards.slice(i * seq_len, seq_len + 1) for i in idx]))
        yield t[:, :-1], t[:, 1:]


class LengthGroups(SeededPosition):
    """Which examples this rank's next micro-batch holds, for examples of varying length (SFT's conversations,
    preference pairs), and its share of the step: the same steps whatever the ranks.

    Groups of `group_size` examples (one process's micro-batch) are formed once: a seeded shuffle, a stable sort by
    length, chunks; they are visited in a new seeded order every epoch. An optimizer step takes the next
    `step_rows // group_size` groups, on every rank alike; its micro-batches split each group into
    `group_size // micro_batch` parts, rank r taking every world_size-th part. One process's objective is the mean
    of its micro-batches' means (each a group's); a part's `share` keeps it: the group's 1/groups-per-step times the
    part's fraction of the group's `units` (tokens, or pairs). None: the equal share of a whole group, as the loop
    gives by default. The state is one integer, this rank's micro-batches served.
    """

    def __init__(
        self,
        lengths: list[int],
        units: list[int],
        group_size: int,
        micro_batch: int,
        accumulation: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        step_rows = micro_batch * accumulation * world_size
        if group_size % micro_batch or step_rows % group_size:  # parts must not straddle groups: smaller groups
            group_size = max(d for d in range(micro_batch, group_size + 1, micro_batch) if step_rows % d == 0)
        self.groups_per_step, self.parts = step_rows // group_size, group_size // micro_batch
        self.units, self.accumulation, self.rank, self.world_size = units, accumulation, rank, world_size
        by_length = list(range(len(lengths)))
        random.Random(seed).shuffle(by_length)
        by_length.sort(key=lengths.__getitem__)
        self.groups = [by_length[i : i + group_size] for i in range(0, len(by_length), group_size)]
        self.order = GlobalOrder(len(self.groups), 1, seed=seed)
        self.seed, self.position = seed, 0

    def next_indices(self) -> tuple[list[int], float | None]:
        """(the examples of this rank's next micro-batch, its share of the step or None for an equal one)."""
        step, micro = divmod(self.position, self.accumulation)
        self.position += 1
        part = micro * self.world_size + self.rank  # of the step's groups_per_step × parts
        n, k = divmod(part, self.parts)
        group = self.groups[self.order.item(step * self.groups_per_step + n)]
        if self.parts == 1:
            return group, None
        rows = group[k * len(group) // self.parts : (k + 1) * len(group) // self.parts]
        if not rows:  # a short last group has fewer rows than parts: a row that counts nothing keeps ranks in step
            return group[:1], 0.0
        fraction = sum(self.units[i] for i in rows) / max(1, sum(self.units[i] for i in group))
        return rows, fraction / self.groups_per_step


class LengthGroupedBatches(ABC):
    """A resumable batch source over `LengthGroups`: a subclass names its items (for the error), gives each item's
    length and units, and collates a micro-batch's rows with their share (`collate`)."""

    items = "examples"

    def __init__(
        self,
        lengths: list[int],
        units: list[int],
        micro_batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group_size: int | None = None,
        accumulation: int = 1,
    ):
        if len(lengths) < micro_batch_size * world_size:
            raise ValueError(
                f"{len(lengths)} {self.items} are fewer than one batch of {micro_batch_size} × {world_size} ranks"
            )
        self.order = LengthGroups(
            lengths,
            units,
            group_size or micro_batch_size,
            micro_batch_size,
            accumulation,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )

    @abstractmethod
    def collate(self, rows: list[int], share: float | None) -> Any:
        """The micro-batch of these rows, carrying `share` as its weight."""

    def next_batch(self) -> Any:
        return self.collate(*self.order.next_indices())

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
