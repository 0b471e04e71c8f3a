"""Compile time of the flat gradient reduction alone: per-gradient slices (old) vs stacked by shape (new)."""
import sys, time
import numpy as np
import mindspore as ms
from mindspore import nn, ops
sys.path.insert(0, sys.argv[1])
from trainer.config import load_config
from model import Transformer

class Old(nn.Cell):
    def __init__(self, weights):
        super().__init__()
        self.shapes = tuple(p.shape for p in weights)
        self.sizes = tuple(int(np.prod(p.shape)) for p in weights)
        self.offsets = tuple(int(x) for x in np.cumsum((0,) + self.sizes[:-1]))
        self.hm = ops.HyperMap()
    def construct(self, grads):
        flat = ops.concat(self.hm(self._flatten, grads))
        total = (flat * 2).astype(ms.float32)
        return tuple([total[o:o + n].reshape(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)])
    def _flatten(self, g):
        return g.reshape(-1).astype(ms.float32)

from trainer.parallel import seam
class New(seam.FlatReduction):
    def __init__(self, weights):
        super().__init__(weights, "x")
        self.grad_sum = ops.Identity(); self.sum = ops.Identity()
    def construct(self, grads):
        return super().construct(grads, ms.Tensor(1.0), ms.Tensor(2.0))[0]

class Mul(nn.Cell):
    def __init__(self, weights):
        super().__init__()
        self.hm = ops.HyperMap()
    def construct(self, grads):
        return self.hm(self._m, grads)
    def _m(self, g):
        return g * 2

ms.set_context(mode=ms.GRAPH_MODE)
cfg = load_config("small")
model = Transformer(cfg.model, 8000, 8000, 0)
w = model.trainable_params()
print(len(w), "gradients", len({tuple(p.shape) for p in w}), "shapes")
grads = tuple(ms.Tensor(np.random.default_rng(i).normal(0, 1, p.shape).astype(np.float32)) for i, p in enumerate(w))
warm = Mul(w[:3]); warm(grads[:3])
for name in sys.argv[2:]:
    cell = {"old": Old, "new": New, "mul": Mul}[name](w)
    t = time.time(); out = cell(grads); t1 = time.time() - t
    t = time.time(); out = cell(grads); t2 = time.time() - t
    ok = all(np.array_equal(o.asnumpy(), g.asnumpy() * (1 if name == "new" else 2)) for o, g in zip(out, grads))
    print(f"{name}: first call {t1:.2f} s, second {t2*1000:.1f} ms, exact {ok}", flush=True)
