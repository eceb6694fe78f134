"""Fixed-length training sequences cut from packed token shards, in a seeded order.

The token stream is cut into samples of seq_len + 1 tokens (inputs and shifted targets), visited in
a `GlobalOrder`: all ranks walk the same seeded order and each reads its own slice of every global
micro-batch, so N ranks with A accumulation steps see exactly the batches one process sees with N·A.
The data position is one integer, which makes resume exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fromzero.data.shards import TokenShards


class GlobalOrder:
    """Which items each rank's next micro-batch holds, in a seeded order shared by all ranks.

    Items are visited epoch by epoch, each epoch in a permutation seeded by (seed, epoch); global
    micro-batch j holds items [j·mb·world, (j+1)·mb·world) of that stream and rank r takes its own
    mb-sized slice. The state is one integer, the global micro-batches consumed.
    """

    def __init__(self, n_items: int, micro_batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n_items, self.mb, self.seed, self.rank, self.world_size = n_items, micro_batch_size, seed, rank, world_size
        self.position = 0
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def _item(self, s: int) -> int:
        epoch = s // self.n_items
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        return int(self._order[s % self.n_items])

    def next_indices(self) -> list[int]:
        first = (self.position * self.world_size + self.rank) * self.mb
        self.position += 1
        return [self._item(s) for s in range(first, first + self.mb)]

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint data order was seeded with {state['seed']}, this run with {self.seed}")
        self.position = state["position"]


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
