"""Moving data between ranks: each data-parallel rank's rows of a batch; shards back to full weights."""
from typing import Dict, List, Sequence, Tuple

import numpy as np

from trainer.data.tokenizer import PAD
from trainer.parallel.context import ParallelContext


def shard_rows(arrays: Sequence[np.ndarray], ctx: ParallelContext) -> Tuple[np.ndarray, ...]:
    """This data-parallel rank's contiguous share of every array's rows.

    Rows are padded with PAD (which the loss ignores) to a multiple of data_parallel, so
    the ranks together hold exactly the global batch and every rank compiles one shape.
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
    from mindspore import ops

    gather = ops.AllGather(ctx.mp_group) if ctx.mp_group else None
    full = []
    seen = set()
    for param in model.get_parameters():
        if param.name in seen:
            continue
        seen.add(param.name)
        data = param.value()
        axis = shard_axis.get(param.name)
        if axis is not None and gather is not None:
            if axis == 0:
                data = gather(data)
            else:  # AllGather stacks along axis 0: gather the transpose
                data = gather(data.swapaxes(0, 1)).swapaxes(0, 1)
        full.append({"name": param.name, "data": ms.Tensor(data.asnumpy())})
    return full
