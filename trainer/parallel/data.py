"""Each data-parallel rank's rows of a batch."""
from typing import Sequence, Tuple

import numpy as np

from trainer.data.tokenizer import PAD
from trainer.parallel.context import ParallelContext


def shard_rows(arrays: Sequence[np.ndarray], ctx: ParallelContext) -> Tuple[np.ndarray, ...]:
    """This data-parallel rank's contiguous share of every array's rows.

    Rows are padded with PAD (which the loss ignores) to a multiple of data_parallel, so
    the ranks together hold exactly the global batch and every rank compiles one shape.
    A packed batch's segment ids and positions get the same value, PAD == 0, which is
    the segment id of padding (trainer/data/packing.py).
    """
    dp = ctx.plan.data_parallel
    if dp == 1:
        return tuple(arrays)
    rows = arrays[0].shape[0]
    per = -(-rows // dp)
    out = []
    for a in arrays:
        if per * dp != rows:
            a = np.concatenate([a, np.full((per * dp - rows,) + a.shape[1:], PAD, a.dtype)])
        out.append(a[ctx.dp_rank * per:(ctx.dp_rank + 1) * per])
    return tuple(out)


class RankRows(tuple):
    """A collated batch read as this data-parallel rank's rows only (trainer/data/lm.py: no rank reads the
    whole global batch), with the target-token count of the whole global batch: the loss's denominator."""

    global_targets: int

    def __new__(cls, arrays: Sequence[np.ndarray], global_targets: int) -> "RankRows":
        rows = super().__new__(cls, tuple(arrays))
        rows.global_targets = int(global_targets)
        return rows
