"""Checks of the split train step (issue 16), standalone or as one rank of a launched job.

    python step_worker.py OUT_DIR

As one rank of a 2-worker data-parallel job, writes OUT_DIR/data_parallel/rank_<r>.json with what
tests/test_precision.py asserts:
  reductions     gradient reductions counted by a stand-in around the seam's reducer over 3
                 updates of k=4, and whether the micro-step holds any collective
  overflow       float16 O2, this rank's loss scale 2**30 on rank 1 (its gradients overflow) and
                 2**10 elsewhere: whether the step was applied, and whether weights and Adam
                 state stayed bit-for-bit
  dropout        a digest of the model's training-mode output on the same rows on every rank,
                 and of the initial weights
  float16_wire   3 SGD updates (rate 1, no clipping) with the gradients summed in float16 on the wire
                 under a static loss scale of 1024, against the same updates computed standalone in
                 this process in float32: the largest relative gap of the gradient norms and of the
                 weights' changes
  float32_wire   the same 3 updates in float32 through each flat reduction, shared memory (the CPU
                 default of a one-host `mindrun launch`) and MindSpore's AllReduce, against the same
                 standalone updates: the reduction's class and path, and the same two gaps
Accumulation under data and tensor parallelism is compared with standalone by the launched trainer jobs
(tests/test_parallel_jobs.py); the helpers here (micro-batches, builds, the accumulation gap) are imported by
the in-process tests too.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a plain script run

import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from model import Transformer  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.tokens import PAD  # noqa: E402
from trainer.build import assemble_step  # noqa: E402
from model.dropout import shard_dropout, step_key  # noqa: E402
from trainer.config import PrecisionConfig  # noqa: E402
from trainer.data.batching import Batch, collate  # noqa: E402
from trainer.data.packing import PackedBatcher, collate_packed, side_lengths  # noqa: E402
from trainer.parallel.seam import Parallelized, parallelize  # noqa: E402

VOCAB = 48  # divisible by a model-parallel size of 2


def pairs(seed, n, longest):
    rng = np.random.default_rng(seed)
    src = [list(rng.integers(4, VOCAB, rng.integers(1, longest))) for _ in range(n)]
    tgt = [list(rng.integers(4, VOCAB, rng.integers(1, longest))) for _ in range(n)]
    return src, tgt


def padded_micro_batches(seed=0, k=4, rows=4, width=12):
    """k padded global batches of one width (rows of different lengths inside)."""
    src, tgt = pairs(seed, k * rows, width - 1)
    return [collate(Batch(width, rows, np.arange(i * rows, (i + 1) * rows)), src, tgt) for i in range(k)]


def packed_micro_batches(seed=0, k=4, rows=4, length=24):
    """k packed global batches of `rows` rows (segment ids and positions)."""
    src, tgt = pairs(seed, 20 * k * rows, 8)
    ls, lt = side_lengths(src, tgt, length)
    batches = PackedBatcher(ls, lt, length, length * rows, seed=0, shuffle=False).epoch(0)[:k]
    assert len(batches) == k
    return [collate_packed(b, src, tgt) for b in batches]


def concatenated(batches):
    return tuple(np.concatenate(parts) for parts in zip(*batches))


def tiny_model(seed=0, dropout=0.0):
    ms.set_seed(seed)
    cfg = ModelConfig(encoder_layers=1, decoder_layers=1, d_model=32, n_heads=4, d_ff=64, dropout=dropout,
                      attention_dropout=0.0, activation_dropout=0.0, max_positions=64, share_embeddings=False)
    return Transformer(cfg, VOCAB, VOCAB, PAD)


def build(ctx=None, k=1, precision=PrecisionConfig(), speedups=None, optimizer="sgd", model=None, lr=1e-3,
          clip_norm=1.0):
    """(model, parallel, stepper) of the tiny model: parallelized by `ctx`'s plan if given."""
    from trainer import cpu

    model = cpu.accelerate(model or tiny_model(), speedups)
    parallel = parallelize(model, ctx) if ctx is not None else Parallelized("standalone")
    weights = model.trainable_params()
    opt = nn.SGD(weights, learning_rate=1.0) if optimizer == "sgd" else nn.Adam(weights, learning_rate=lr)
    stepper = assemble_step(model, opt, 0.1, clip_norm, parallel, speedups, precision, k)
    return model, parallel, stepper


def snapshot(cells):
    """Every parameter's value but the dropout key (which each call sets: model/dropout.py)."""
    return {p.name: p.asnumpy().copy() for cell in cells for p in cell.get_parameters() if p.name != "dropout_key"}


def changes(model, train):
    """The change of each of `model`'s parameters made by calling `train()`."""
    before = snapshot([model])
    train()
    return {n: p - before[n] for n, p in snapshot([model]).items()}


def relative_gap(moved, reference):
    """(largest |moved - reference| over the largest reference change, that largest change)."""
    largest = max(np.abs(m).max() for m in reference.values())
    return float(max(np.abs(moved[n] - reference[n]).max() for n in reference) / largest), float(largest)


def accumulation_gap(updates, ctx=None, speedups=None):
    """Largest |weights after k-micro-batch updates - weights after one-batch updates| over the largest change.

    `updates`: the micro-batches of each update (two or more updates, so that an accumulator left holding the
    first update's gradients shows in the second). SGD at rate 1 without clipping: the weights move by the
    gradient itself, so a wrong scale or normalisation of the accumulated sum shows as much as a wrong term.
    """
    moves = []
    for merged in (False, True):
        model, _, stepper = build(ctx, 1 if merged else max(len(u) for u in updates), speedups=speedups,
                                  clip_norm=0.0)

        def train():
            for micro_batches in updates:
                assert stepper.update([concatenated(micro_batches)] if merged else micro_batches).finite
        moves.append(changes(model, train))
    return relative_gap(*moves)


class CountingReduction(nn.Cell):
    """The seam's reduction, counting its calls in a Parameter (the graph runs it, Python does not)."""

    def __init__(self, inner):
        super().__init__(auto_prefix=False)
        self.inner = inner
        self.calls = ms.Parameter(ms.Tensor(0, ms.int32), name="counted_reductions", requires_grad=False)

    def construct(self, grads, loss_sum, nll_sum):
        ops.assign_add(self.calls, ms.Tensor(1, ms.int32))
        return self.inner(grads, loss_sum, nll_sum)


def holds_collective(cell) -> bool:
    """Whether any Cell under `cell` holds a collective primitive or a gradient reducer."""
    kinds = (ops.AllReduce, ops.AllGather, ops.ReduceScatter, ops.Broadcast)
    for _, sub in cell.cells_and_names():
        if isinstance(sub, nn.DistributedGradReducer):
            return True
        if any(isinstance(v, kinds) for v in vars(sub).values()):
            return True
    return False


def count_reductions(ctx=None, updates=3):
    model, _, stepper = build(ctx, k=4)
    counting = CountingReduction(stepper.update_step.reduction)
    stepper.update_step.reduction = counting
    batches = padded_micro_batches(seed=3, k=4 * updates)
    for u in range(updates):
        stepper.update(batches[4 * u:4 * u + 4])
    return int(counting.calls.asnumpy()), holds_collective(stepper.micro_step)


def overflow(ctx, rank):
    """One O2 float16 update with rank 1's scale too large for float16: applied? state unchanged?"""
    precision = PrecisionConfig(level="O2", dtype="float16", loss_scale="dynamic", initial_scale=2.0 ** 10)
    model, _, stepper = build(ctx, precision=precision, optimizer="adam")
    if rank == 1:
        stepper.scaler.scale = 2.0 ** 30
    optimizer = stepper.update_step.optimizer
    before = snapshot([optimizer])
    scale_before = stepper.scaler.scale
    result = stepper.update(padded_micro_batches(seed=5, k=1))
    after = snapshot([optimizer])
    return {"finite": result.finite, "unchanged": all(np.array_equal(before[n], after[n]) for n in before),
            "scale_before": scale_before, "scale_after": stepper.scaler.scale,
            "skipped": stepper.scaler.skipped_steps, "n_params": len(before)}


def dropout_digest(ctx, dp_rank, seed=1):
    model = tiny_model(dropout=0.3)
    weights = float(sum(np.abs(p.asnumpy()).sum() for p in model.trainable_params()))
    if ctx is not None:
        parallelize(model, ctx)
        shard_dropout(model, dp_rank)  # as build_training does: this rank's rows' masks
    model.dropout_key.set_data(ms.Tensor(step_key(seed, 0), ms.int32))
    model.set_train(True)
    src, tin, _ = padded_micro_batches(seed=7, k=1)[0]
    out = model(ms.Tensor(src), ms.Tensor(tin)).asnumpy()
    return {"weights": weights, "output": float(np.abs(out).sum()), "output_head": out.ravel()[:16].tolist()}


def float16_wire(ctx, updates=3):
    """Gradient norms and weight changes of a float16 reduction against standalone float32 (see the module)."""
    import dataclasses

    wire = dataclasses.replace(ctx, plan=dataclasses.replace(ctx.plan, grad_reduce_dtype="float16"))
    batches = padded_micro_batches(seed=9, k=updates)
    runs = []
    for context, precision in ((wire, PrecisionConfig(loss_scale="static", initial_scale=1024.0)),
                               (None, PrecisionConfig())):
        model, _, stepper = build(context, precision=precision, clip_norm=0.0)
        norms = []
        runs.append((norms, changes(model, lambda: norms.extend(stepper.update([b]).grad_norm for b in batches)),
                     stepper.update_step.reduction))
    (norms16, moved16, reduction), (norms32, moved32, _) = runs
    weight_gap, largest = relative_gap(moved16, moved32)
    return {"reduction": f"{type(reduction).__name__} {getattr(reduction, 'wire', '')}", "largest_change": largest,
            "norm_gap": float(max(abs(a - b) / b for a, b in zip(norms16, norms32))), "weight_gap": weight_gap}


def float32_wire(ctx, updates=3):
    """Gradient norms and weight changes of each float32 flat reduction against standalone (see the module)."""
    import dataclasses

    batches = padded_micro_batches(seed=9, k=updates)

    def run(context):
        model, _, stepper = build(context, clip_norm=0.0)
        norms = []
        return norms, changes(model, lambda: norms.extend(stepper.update([b]).grad_norm for b in batches)), \
            stepper.update_step.reduction

    norms32, moved32, _ = run(None)
    report = {}
    for choice in ("shared_memory", "flat"):
        norms, moved, reduction = run(dataclasses.replace(ctx, plan=dataclasses.replace(ctx.plan, grad_reduce=choice)))
        weight_gap, largest = relative_gap(moved, moved32)
        report[choice] = {"reduction": f"{type(reduction).__name__} {reduction.wire}",
                          "path": type(reduction.grad_sum).__name__, "largest_change": largest,
                          "norm_gap": float(max(abs(a - b) / b for a, b in zip(norms, norms32))),
                          "weight_gap": weight_gap}
    return report


def main(out_dir: Path) -> None:
    from trainer.config import load_config
    from trainer.parallel.context import init_parallel, is_scheduler, select_backend, world_size_from_env
    from trainer.parallel.plan import make_plan

    ms.set_context(mode=ms.GRAPH_MODE)
    if is_scheduler():
        from mindspore.communication import init

        init()
        return
    backend = select_backend()
    cfg = load_config("tiny", ["parallel.mode=data_parallel", "data.vocab_size=400"])
    # joins the cluster: the data-parallel group is the world
    ctx = init_parallel(make_plan(cfg, world_size_from_env(), backend), backend)
    report = {"rank": ctx.rank, "dp_rank": ctx.dp_rank, "mode": "data_parallel",
              "reductions": count_reductions(ctx), "overflow": overflow(ctx, ctx.rank),
              "dropout": dropout_digest(ctx, ctx.dp_rank), "float16_wire": float16_wire(ctx),
              "float32_wire": float32_wire(ctx)}
    (out_dir / "data_parallel").mkdir(parents=True, exist_ok=True)
    (out_dir / "data_parallel" / f"rank_{ctx.rank}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
