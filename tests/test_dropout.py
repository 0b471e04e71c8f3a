"""Counter-based dropout (model/dropout.py): masks are a pure function of key, site and element."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from model.dropout import Dropout, bind_dropout_key, mask_reference, shard_dropout, step_key
from trainer.cpu import kernels
from trainer.cpu.dropout import use_compiled_masks


class _Two(nn.Cell):
    def __init__(self):
        super().__init__()
        self.first, self.second = Dropout(0.5), Dropout(0.1)

    def construct(self, x):
        return self.second(self.first(x))


def _masks(net, key, shape=(24, 40)):
    net.dropout_key.set_data(ms.Tensor(key, ms.int32))
    out = net(ms.Tensor(np.ones(shape, np.float32))).asnumpy()
    return out != 0


def _expected(net, key, shape=(24, 40), shard=0):
    return (mask_reference(shape, key, 1, net.first.threshold, shard)
            & mask_reference(shape, key, 2, net.second.threshold, shard))


def test_masks_follow_the_key_and_match_the_reference():
    ms.set_context(mode=ms.GRAPH_MODE)
    net = _Two()
    net.dropout_key = bind_dropout_key(net)
    net.set_train(True)
    keys = [step_key(3, call) for call in range(2)]
    first, second = (_masks(net, k) for k in keys)
    assert (first == _expected(net, keys[0])).all() and (second == _expected(net, keys[1])).all()
    assert (first != second).any()
    assert (_masks(net, keys[0]) == first).all()  # the same key, the same masks: nothing hidden in a kernel
    ranked = _Two()  # data-parallel rank 1 (set before compiling, as build_training does): the next rows
    ranked.dropout_key = bind_dropout_key(ranked)
    assert shard_dropout(ranked, 1) == 2
    ranked.set_train(True)
    assert (_masks(ranked, keys[0]) == _expected(ranked, keys[0], shard=1)).all()
    net.set_train(False)
    assert _masks(net, keys[0]).all()  # identity in eval mode


def test_scale_keeps_the_expectation():
    d = Dropout(0.1)
    assert abs(d.scale * d.threshold / 2 ** 24 - 1.0) < 1e-12
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


@pytest.mark.skipif(kernels.compiler() is None, reason="needs a C++ compiler (the kernel's fallback is the ops path)")
def test_the_cpu_kernel_draws_the_same_bits(tmp_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    net = _Two()
    net.dropout_key = bind_dropout_key(net)
    assert use_compiled_masks(net, str(tmp_path)) == 2
    net.set_train(True)
    shard_dropout(net, 3)
    key = step_key(5, 7)
    assert (_masks(net, key, (3, 50, 16)) == _expected(net, key, (3, 50, 16), shard=3)).all()
