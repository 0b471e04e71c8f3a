"""Moving data between ranks: each data-parallel rank's rows of a batch; shards back to full weights."""
from typing import Dict, List, Sequence, Tuple

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


def gather_full_params(model, shard_axis: Dict[str, int], ctx: ParallelContext) -> List[Dict]:
    """Every parameter at full size, as save_checkpoint's list form; all model-parallel ranks must call it."""
    import mindspore as ms

    full = []
    seen = set()
    for param in model.get_parameters():
        if param.name in seen:
            continue
        seen.add(param.name)
        data = param.value()
        axis = shard_axis.get(param.name)
        if axis is not None and ctx.mp_group:
            data = _gather_axis(data, axis, ctx)
        full.append({"name": param.name, "data": ms.Tensor(data.asnumpy())})
    return full


def _gather_axis(data, axis: int, ctx: ParallelContext):
    """The model-parallel shards of `data` joined along `axis`, in rank order."""
    import mindspore as ms
    from mindspore import ops

    from model.parallel.mappings import all_gather_works

    if all_gather_works(ctx.mp_group, ctx.backend):
        gather = ops.AllGather(ctx.mp_group)  # stacks along axis 0: gather the transpose for axis 1
        return gather(data) if axis == 0 else gather(data.swapaxes(0, 1)).swapaxes(0, 1)
    mp, part = ctx.plan.model_parallel, data.asnumpy()
    n = part.shape[axis]
    shape = list(part.shape)
    shape[axis] = n * mp
    placed = np.zeros(shape, part.dtype)
    index = [slice(None)] * len(shape)
    index[axis] = slice(ctx.mp_rank * n, (ctx.mp_rank + 1) * n)
    placed[tuple(index)] = part
    return ops.AllReduce(ops.ReduceOp.SUM, ctx.mp_group)(ms.Tensor(placed))
