"""FlatSplit (trainer/parallel/flat_split.py): a flat vector cut back into hundreds of pieces in a compiled graph."""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from trainer.parallel.flat_split import GROUP, FlatSplit

_hyper_map = ops.HyperMap()


def _shaped(piece, like):
    return piece.reshape(like.shape)


class RoundTrip(nn.Cell):
    """Tensors -> one flat vector -> FlatSplit -> the tensors' shapes: what FlatReduction and ShardedAdam do."""

    def __init__(self, sizes):
        super().__init__()
        self.split = FlatSplit(sizes)

    def construct(self, tensors):
        flat = ops.concat(_hyper_map(lambda t: t.reshape(-1), tensors))
        return _hyper_map(_shaped, self.split(flat), tensors)


def test_a_thousand_pieces_compile_and_come_back_whole_in_order():
    """One SplitWithSize of more than ~200 outputs exceeds graph mode's call depth (base's ~250 gradients did)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    shapes = [tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(1, 4)))) for _ in range(1000)]
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    out = RoundTrip([a.size for a in arrays])(tuple(ms.Tensor(a) for a in arrays))
    assert len(out) == len(arrays)
    for got, want in zip(out, arrays):
        assert got.shape == want.shape and np.array_equal(got.asnumpy(), want)


def test_few_pieces_take_one_split_and_many_take_groups():
    assert FlatSplit([3, 4, 5]).groups == ((3, 4, 5),)
    split = FlatSplit(list(range(1, 2 * GROUP + 2)))
    assert [len(g) for g in split.groups] == [GROUP, GROUP, 1]
    assert split.group_sizes == tuple(sum(g) for g in split.groups)
    assert sum(split.group_sizes) == sum(range(1, 2 * GROUP + 2))


class _Same(nn.Cell):
    """Stands in for an AllReduce over a group of one rank."""

    def construct(self, x):
        return x


def _weights(count):
    rng = np.random.default_rng(1)
    return [ms.Parameter(ms.Tensor(rng.standard_normal((i % 3 + 1, 4)).astype(np.float32)), name=f"w{i}")
            for i in range(count)]


def test_the_flat_gradient_reduction_of_300_gradients_compiles_and_returns_them():
    """The data-parallel step's reduction over a model with more gradients than one SplitWithSize can cut
    (base, llama2_7b): before FlatSplit it did not compile."""
    from trainer.parallel.seam import FlatReduction

    ms.set_context(mode=ms.GRAPH_MODE)
    weights = _weights(300)
    reduction = FlatReduction(weights, "unused_group")
    reduction.grad_sum, reduction.sum = _Same(), _Same()
    grads = tuple(ms.Tensor(w.asnumpy() * 2) for w in weights)
    out, loss_sum, _ = reduction(grads, ms.Tensor(3.0), ms.Tensor(2.0))
    assert float(loss_sum) == 3.0 and len(out) == 300
    assert all(np.array_equal(g.asnumpy(), o.asnumpy()) for g, o in zip(grads, out))


def test_the_sharded_optimizer_over_300_weights_compiles_and_writes_every_weight_back():
    from trainer.parallel.zero import FlatShard, ShardedAdam

    ms.set_context(mode=ms.GRAPH_MODE)
    weights = _weights(300)
    before = [w.asnumpy().copy() for w in weights]
    shard = FlatShard.of(weights, 0, 1, "unused_group", "cpu")
    adam = ShardedAdam(weights, shard)
    adam.gather_sum = _Same()
    adam.learning_rate.set_data(ms.Tensor(0.1, ms.float32))
    ones = ms.Tensor(np.ones(shard.piece, np.float32))
    adam((ones,))
    for w, b in zip(weights, before):  # Adam's first step moves every element by the rate (gradient 1)
        assert np.allclose(w.asnumpy(), b - 0.1, atol=1e-5)
