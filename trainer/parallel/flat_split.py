"""A flat vector cut back into many pieces inside a compiled graph.

One `SplitWithSize` does the cut in a single op (a static slice per piece, or `ops.split`, compiled slowly:
bench/README.md, bench.startup), but one with more than about 200 outputs exceeds graph mode's function-call
depth in MindSpore 2.10 ("Exceed function call depth limit 1000"): `base`'s 6+6 layers (~250 parameters)
failed to compile as a data-parallel job, and every larger model would. So the vector is cut in two levels:
into groups of at most GROUP pieces, then each group into its pieces (1,000 pieces compile and come back
whole: tests/test_flat_split.py).
"""
from typing import Sequence

from mindspore import nn
from mindspore.ops.auto_generate import SplitWithSize

GROUP = 64  # pieces per SplitWithSize; 150 compiled alone, 250 did not


class FlatSplit(nn.Cell):
    """flat (1-D) -> a tuple of its consecutive pieces of `sizes` elements (their sum is the flat length)."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__(auto_prefix=False)
        sizes = tuple(int(n) for n in sizes)
        self.groups = tuple(sizes[lo:lo + GROUP] for lo in range(0, len(sizes), GROUP))
        self.group_sizes = tuple(sum(group) for group in self.groups)
        self.cut = SplitWithSize()

    def construct(self, flat):
        if len(self.groups) == 1:
            return self.cut(flat, self.groups[0], 0)
        pieces = ()
        for chunk, group in zip(self.cut(flat, self.group_sizes, 0), self.groups):
            pieces = pieces + self.cut(chunk, group, 0)
        return pieces
