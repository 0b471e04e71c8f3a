import sys, time
import numpy as np
import mindspore as ms
from mindspore import nn, ops
sys.path.insert(0, "/work/main")
from trainer.config import load_config
from model import Transformer

def groups_of(w):
    g = {}
    for i, p in enumerate(w):
        g.setdefault(tuple(p.shape), []).append(i)
    return tuple(g), tuple(tuple(v) for v in g.values())

class ConcatOnly(nn.Cell):
    def __init__(self, w):
        super().__init__(); self.hm = ops.HyperMap()
    def construct(self, grads):
        return ops.concat(self.hm(self._f, grads)) * 2
    def _f(self, g):
        return g.reshape(-1)

class SliceOnly(nn.Cell):
    def __init__(self, w):
        super().__init__()
        self.shapes = tuple(p.shape for p in w)
        self.sizes = tuple(int(np.prod(p.shape)) for p in w)
        self.offsets = tuple(int(x) for x in np.cumsum((0,) + self.sizes[:-1]))
    def construct(self, flat):
        total = flat * 2
        return tuple([total[o:o + n].reshape(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)])

class StackGroups(nn.Cell):  # per shape: stack, (reduce), unstack; no concat
    def __init__(self, w):
        super().__init__()
        self.shapes, self.members = groups_of(w)
        where = {i: (g, k) for g, m in enumerate(self.members) for k, i in enumerate(m)}
        self.where = tuple(where[i] for i in range(len(w)))
    def construct(self, grads):
        parts = [ops.unstack(ops.stack([grads[i] for i in m]) * 2) for m in self.members]
        return tuple([parts[g][k] for g, k in self.where])

from mindspore.ops.auto_generate import SplitWithSize
class SplitSizes(nn.Cell):
    def __init__(self, w):
        super().__init__()
        self.shapes = tuple(p.shape for p in w)
        self.sizes = tuple(int(np.prod(p.shape)) for p in w)
        self.split = SplitWithSize()
    def construct(self, flat):
        pieces = self.split(flat * 2, self.sizes, 0)
        return tuple([p.reshape(s) for p, s in zip(pieces, self.shapes)])

class SplitOnly(SplitSizes):
    def construct(self, flat):
        return self.split(flat * 2, self.sizes, 0)

class Full(nn.Cell):  # concat, x2, SplitWithSize, reshape like the gradients via HyperMap
    def __init__(self, w):
        super().__init__()
        self.sizes = tuple(int(np.prod(p.shape)) for p in w)
        self.split = SplitWithSize()
        self.hm = ops.HyperMap()
    def construct(self, grads):
        flat = ops.concat(self.hm(self._f, grads))
        pieces = self.split(flat * 2, self.sizes, 0)
        return self.hm(self._like, pieces, grads)
    def _f(self, g):
        return g.reshape(-1)
    def _like(self, p, g):
        return p.reshape(g.shape)

ms.set_context(mode=ms.GRAPH_MODE)
cfg = load_config("small")
w = Transformer(cfg.model, 8000, 8000, 0).trainable_params()
grads = tuple(ms.Tensor(np.random.default_rng(i).normal(0, 1, p.shape).astype(np.float32)) for i, p in enumerate(w))
flat = ms.Tensor(np.concatenate([g.asnumpy().reshape(-1) for g in grads]))
name = sys.argv[1]
cell = {"concat": ConcatOnly, "slice": SliceOnly, "stack": StackGroups, "splitsizes": SplitSizes, "splitonly": SplitOnly, "full": Full}[name](w)
arg = flat if name.startswith("s") and name != "stack" else grads
t = time.time(); out = cell(arg); t1 = time.time() - t
t = time.time(); out = cell(arg); t2 = time.time() - t
print(f"{name}: first call {t1:.2f} s, second {t2*1000:.1f} ms", flush=True)
if name in ("splitsizes", "full"):
    print("exact", all(np.array_equal(o.asnumpy(), g.asnumpy() * 2) for o, g in zip(out, grads)))
if name == "stack":
    print("exact", all(np.array_equal(o.asnumpy(), g.asnumpy() * 2) for o, g in zip(out, grads)))
