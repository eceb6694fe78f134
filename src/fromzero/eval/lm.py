"""Language-model metrics: validation loss and bits per byte.

Bits per byte divides the summed loss (in bits) by the UTF-8 bytes the target tokens stand for, so it
compares models with different tokenizers. Targets that are special tokens stand for no bytes and are
left out of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from fromzero.dist import all_reduce_sum
from fromzero.model import Transformer


@torch.no_grad()
def lm_metrics(
    model: Transformer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], token_bytes: torch.Tensor
) -> dict[str, float]:
    device = model.rope_cos.device
    token_bytes = token_bytes.to(device)
    # [nats over all targets, targets, nats over byte-bearing targets, bytes]
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        nbytes = token_bytes[y.flatten()]
        sums += torch.stack(
            [nats.sum(), torch.tensor(nats.numel(), device=device), nats[nbytes > 0].sum(), nbytes.sum()]
        ).double()
    all_reduce_sum(sums)
    if sums[1] == 0:
        raise ValueError("no validation tokens: the val split is empty or shorter than one sequence")
    return {"val_loss": (sums[0] / sums[1]).item(), "val_bpb": (sums[2] / math.log(2) / sums[3]).item()}
