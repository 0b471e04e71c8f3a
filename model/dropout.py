"""Dropout whose masks are a pure function of (key, site, element): a resumed run draws the same masks.

MindSpore's Dropout keeps its random state inside the kernel, where no checkpoint can reach
it, and the generator-based dropout (mint) does not run on the CPU. Here the mask of a call
is a counter-based hash (murmur3's finaliser) of the element's index, offset by a base
made from a per-call key (a Parameter the train step assigns from the host: a function of
the seed, the optimizer step and the micro-batch, `step_key`) and the site's own salt:

    h = fmix32(index * 0x9E3779B1 + key + salt * 0x6C8E9CF5)    keep the element iff h mod 2^24 < keep * 2^24

The index is the element's index in the *global* batch: a data-parallel rank holding rows
[r * n, (r + 1) * n) of it offsets its local indices by r times its tensor's size (`shard`),
so a data-parallel run draws exactly the standalone run's masks, row for row, and replicas
still draw different masks (they hold different rows). So the masks of step N are the same
whether the run got there straight or resumed, with any number of data-parallel ranks, and a
checkpoint needs no RNG state beyond the step. `CounterMask` computes the hash with
MindSpore ops (any backend); trainer/cpu swaps in a C++ kernel that computes the same bits
(bench/HISTORY.md: the ops version costs about three MindSpore Dropouts).
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

_GOLDEN, _MIX1, _MIX2, _SALT = 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35, 0x6C8E9CF5
BITS = 24  # mask resolution: keep-probabilities are rounded to multiples of 2^-24


def _i32(value: int) -> int:
    """An unsigned 32-bit constant as the int32 with the same bits (MindSpore multiplies int32 with wrap-around)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def fmix32(values: np.ndarray) -> np.ndarray:
    """murmur3's 32-bit finaliser on uint32 values (the reference for the graph and the C++ kernel)."""
    h = values.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h = h * np.uint32(_MIX1)
    h ^= h >> np.uint32(13)
    h = h * np.uint32(_MIX2)
    h ^= h >> np.uint32(16)
    return h


def mask_reference(shape, key: int, salt: int, threshold: int, shard: int = 0) -> np.ndarray:
    """The keep-mask (bool) a site with `salt` draws for `key` on data-parallel rank `shard`: NumPy, for tests."""
    size = int(np.prod(shape))
    index = np.arange(shard * size, (shard + 1) * size, dtype=np.uint64)
    h = (index * _GOLDEN + (key & 0xFFFFFFFF) + (salt * _SALT & 0xFFFFFFFF)) & 0xFFFFFFFF
    return ((fmix32(h) & ((1 << BITS) - 1)) < threshold).reshape(shape)


def step_key(seed: int, call: int) -> int:
    """The int32 key of one forward: mixes the run's seed and the call counter."""
    mixed = fmix32(np.array([(seed * 0x27D4EB2F + 0x165667B1) & 0xFFFFFFFF], np.uint64))
    mixed = fmix32((mixed.astype(np.uint64) + np.uint64(call) * np.uint64(_GOLDEN)) & np.uint64(0xFFFFFFFF))
    return _i32(int(mixed[0]))


class CounterMask(nn.Cell):
    """keep-mask (float32 0/1, the shape of x) of `base` by MindSpore ops: 13 element-wise passes."""

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = Tensor(threshold, ms.int32)
        self.low_bits = Tensor((1 << BITS) - 1, ms.int32)
        # attributes, not module constants: mindspore.amp's O1 rewrites construct into another module
        self.golden, self.mix1, self.mix2 = _i32(_GOLDEN), _i32(_MIX1), _i32(_MIX2)

    def _mix(self, h, bits: int, low: int):
        """h ^ (h >>> bits) on int32 bits. The logical shift is a floor division by 2^bits (an arithmetic shift,
        exact for int32) masked to the low 32 - bits bits: RightShift itself runs only as an AICPU operator on
        Atlas A2 (a host launch per call, three per dropout site); FloorDiv and BitwiseAnd have AICore kernels.
        tests/test_dropout.py: the same bits as fmix32; tests/test_ascend_ops.py: no deny-listed op in the step."""
        shifted = ops.bitwise_and(ops.floor_div(h, Tensor(1 << bits, ms.int32)), Tensor(low, ms.int32))
        return ops.bitwise_xor(h, shifted)

    def construct(self, x, base):
        h = ops.arange(0, x.size, dtype=ms.int32).reshape(x.shape) * self.golden + base
        h = self._mix(h, 16, 0xFFFF) * self.mix1
        h = self._mix(h, 13, 0x7FFFF) * self.mix2
        h = self._mix(h, 16, 0xFFFF)
        keep = ops.bitwise_and(h, self.low_bits) < self.threshold
        return ops.stop_gradient(keep.astype(ms.float32))


class Dropout(nn.Cell):
    """Inverted dropout with counter-based masks; identity in eval mode or at p == 0.

    `bind_dropout_key(model)` gives every site its salt and the shared key Parameter;
    an unbound site in training mode fails to compile (it has no key).
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = int(round((1.0 - p) * (1 << BITS)))
        self.scale = float((1 << BITS) / self.threshold)  # the rounded keep-probability's inverse
        self.golden = _GOLDEN  # an attribute: mindspore.amp's O1 rewrites construct into another module
        self.salt_offset = 0  # the key Parameter is attached by bind_dropout_key
        self.shard = 0  # this rank's share of the global batch (shard_dropout)
        self.mask = CounterMask(self.threshold)  # trainer/cpu may swap in the C++ kernel

    def construct(self, x):
        if not self.training or self.p == 0.0:
            return x
        offset = (self.shard * x.size * self.golden + self.salt_offset) % 4294967296  # constants: folded at compile
        if offset >= 2147483648:
            offset = offset - 4294967296
        mask = self.mask(x, self.key + offset)
        return x * (mask * self.scale).astype(x.dtype)


def dropout_sites(model: nn.Cell):
    """Every Dropout of `model`, in model order."""
    return [cell for _, cell in model.cells_and_names() if isinstance(cell, Dropout)]


def shard_dropout(model: nn.Cell, dp_rank: int) -> int:
    """Make `model`'s masks those of rows [dp_rank * n, (dp_rank + 1) * n) of the global batch; returns the sites."""
    sites = dropout_sites(model)
    for cell in sites:
        cell.shard = dp_rank
    return len(sites)


def bind_dropout_key(model: nn.Cell) -> Parameter:
    """Give every Dropout of `model` a salt (its order in the model) and one shared int32 key Parameter.

    The key is not trained and not checkpointed: the train step assigns it every call
    (`step_key`), so masks follow from the run's position alone.
    """
    key = Parameter(Tensor(0, ms.int32), name="dropout_key", requires_grad=False)
    for salt, cell in enumerate(dropout_sites(model), start=1):
        cell.salt_offset = salt * _SALT & 0xFFFFFFFF
        cell.key = key  # the same Parameter in every site (MindSpore keeps one, by identity)
    return key
