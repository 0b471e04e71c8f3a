"""The parallel plan: `parallel:` checked against the model, the vocabulary and the world size.

Every impossible layout is a ConfigError that names the key and the fix, raised before
anything compiles (and, through `mindrun plan` or the launcher, before anything spawns).
"""
from dataclasses import dataclass
from typing import Optional

from trainer.config import ConfigError, RunConfig


# parallel.grad_reduce=auto sums gradients in one flat buffer up to this size (the buffer is one more copy of
# them; a 2-worker `small` job on the CPU went from 58 to 70 % efficiency, bench.dp_efficiency, for ~20 s
# more compile before the first update), and one AllReduce per gradient beyond, where a second copy of a
# large model's gradients would cost device memory
FLAT_LIMIT_BYTES = 1 << 30
UNTESTED_ON_HARDWARE = ("parallel.mode=semi_auto (MindSpore auto-parallel, shard() strategies) has not run on "
                        "Ascend or GPU hardware; the verified path is data_parallel/hybrid (parallel.mode=auto)")


@dataclass(frozen=True)
class Plan:
    """A resolved layout: the mode and each dimension (dp x mp x pp = world_size)."""

    mode: str
    data_parallel: int
    model_parallel: int
    pipeline_stages: int
    micro_batches: int
    optimizer_shard: bool
    world_size: int
    grad_reduce: str = "auto"  # parallel.grad_reduce: auto | per_tensor | flat | shared_memory
    grad_reduce_dtype: str = "float32"  # parallel.grad_reduce_dtype: the reduction's wire dtype

    @property
    def caveat(self) -> Optional[str]:
        """What the user must know about this layout before trusting a long run (None: nothing)."""
        return UNTESTED_ON_HARDWARE if self.mode == "semi_auto" else None

    def describe(self) -> str:
        reduction = ""
        if self.data_parallel > 1 and self.mode != "semi_auto":
            if self.grad_reduce == "shared_memory":
                reduction = f"; gradients summed in one flat {self.grad_reduce_dtype} buffer through shared memory"
            elif self.grad_reduce_dtype == "float16":
                reduction = "; gradients summed in one flat float16 buffer"
            elif self.grad_reduce == "flat":
                reduction = "; gradients summed in one flat float32 buffer"
            elif self.grad_reduce == "auto":
                reduction = (f"; gradients summed in one flat float32 buffer (one AllReduce per gradient past "
                             f"{FLAT_LIMIT_BYTES >> 20} MiB of them off a one-host CPU job)")
        if self.optimizer_shard and self.mode != "semi_auto":
            reduction = (f"; gradients reduce-scattered in one flat {self.grad_reduce_dtype} buffer, Adam's moments "
                         f"sharded over data_parallel {self.data_parallel}")
        return (f"{self.mode}: data_parallel {self.data_parallel} x model_parallel {self.model_parallel} x "
                f"pipeline_stages {self.pipeline_stages} = {self.world_size} workers{reduction}")


def _auto_mode(world: int, mp: int) -> str:
    # the same on every backend: explicit collectives, the path the CPU tests run with real
    # processes and that runs unchanged over HCCL; semi_auto only when asked for
    if world == 1:
        return "standalone"
    return "hybrid" if mp > 1 else "data_parallel"


def make_plan(cfg: RunConfig, world_size: int, backend: str = "CPU", vocab_size: Optional[int] = None,
              for_execution: bool = True) -> Plan:
    """Resolve `cfg.parallel` for `world_size` workers on `backend`; ConfigError on any violation.

    `vocab_size` is the real vocabulary (known once the tokenizer exists); before that the
    configured data.vocab_size is checked. `for_execution=False` plans without requiring
    that this machine can run the mode (what `mindrun plan` prints for Ascend).
    """
    par, model = cfg.parallel, cfg.model
    mp, pp, micro = par.model_parallel, par.pipeline_stages, par.micro_batches
    if world_size < 1:
        raise ConfigError(f"the job needs at least one worker, got world size {world_size}")
    if par.data_parallel is None:
        if world_size % (mp * pp):
            raise ConfigError(
                f"{world_size} workers cannot be split into model_parallel {mp} x pipeline_stages {pp} groups; "
                f"launch a multiple of {mp * pp} workers or change parallel.model_parallel/pipeline_stages")
        dp = world_size // (mp * pp)
    else:
        dp = par.data_parallel
    if dp * mp * pp != world_size:
        raise ConfigError(
            f"parallel.data_parallel ({dp}) x model_parallel ({mp}) x pipeline_stages ({pp}) = {dp * mp * pp}, "
            f"but the job has {world_size} workers; launch {dp * mp * pp} workers (--worker_num) or change "
            f"parallel.data_parallel (leave it unset to fill the world size)")
    mode = _auto_mode(world_size, mp) if par.mode == "auto" else par.mode
    if mode == "standalone" and world_size > 1:
        raise ConfigError(f"parallel.mode=standalone runs one process, but the job has {world_size} workers; "
                          f"use parallel.mode=data_parallel, hybrid or auto")
    if mode == "data_parallel" and mp > 1:
        raise ConfigError(f"parallel.mode=data_parallel cannot split the model (model_parallel={mp}); "
                          f"use parallel.mode=hybrid (CPU/GPU/Ascend) or semi_auto (Ascend/GPU)")
    if pp > 1:
        raise ConfigError(f"parallel.pipeline_stages={pp}: pipeline parallelism is not wired in mindrun yet "
                          f"(no stage assignment or micro-batch pipeline); set parallel.pipeline_stages=1 and "
                          f"use data_parallel x model_parallel")
    if micro > 1:
        raise ConfigError(f"parallel.micro_batches={micro} only means something with pipeline stages, which are "
                          f"not wired; for more tokens per update use gradient accumulation instead, and "
                          f"set parallel.micro_batches=1")
    if par.optimizer_shard and dp < 2:
        raise ConfigError(f"parallel.optimizer_shard splits Adam's moments over the data-parallel ranks, but this "
                          f"layout has data_parallel {dp} (mode {mode}); set parallel.optimizer_shard=false, or run "
                          f"with data_parallel >= 2")
    if for_execution and mode == "semi_auto" and backend.lower() == "cpu":
        raise ConfigError("parallel.mode=semi_auto cannot compile on CPU (MindSpore: 'Invalid communication "
                          "backend: CPU for semi_auto_parallel'); use parallel.mode=hybrid or data_parallel here")
    if mp > 1:
        if model.n_heads % mp:
            raise ConfigError(f"model.n_heads ({model.n_heads}) is not divisible by parallel.model_parallel ({mp}): "
                              f"each rank needs whole heads; choose model_parallel from the divisors of n_heads")
        if model.kv_heads % mp:
            raise ConfigError(f"model.n_kv_heads ({model.kv_heads}) is not divisible by parallel.model_parallel "
                              f"({mp}): each rank needs whole key/value heads (replicating them when model_parallel "
                              f"> n_kv_heads is not wired); choose model_parallel from the divisors of n_kv_heads")
        if model.d_ff % mp:
            raise ConfigError(f"model.d_ff ({model.d_ff}) is not divisible by parallel.model_parallel ({mp})")
        vocab = vocab_size if vocab_size is not None else (cfg.data.vocab_size if cfg.data.tokenizer != "word"
                                                           else None)
        if vocab is not None:
            _check_vocab_split(vocab, mp, "the vocabulary" if vocab_size is not None else "data.vocab_size")
    if cfg.data.objective == "causal_lm":
        rows = cfg.data.max_tokens // cfg.data.pack_length
        if rows % dp or rows < dp * micro:
            raise ConfigError(f"a causal_lm batch holds data.max_tokens // data.pack_length = {rows} rows, which "
                              f"must split evenly over data_parallel x micro_batches ({dp} x {micro}): every rank "
                              f"reads its own rows; set data.max_tokens to a multiple of "
                              f"{dp * micro * cfg.data.pack_length}")
    rows = cfg.data.max_tokens // cfg.data.buckets[-1]
    if cfg.data.objective != "causal_lm" and rows < dp * micro:
        raise ConfigError(f"a batch of the longest bucket ({cfg.data.buckets[-1]} tokens) holds {rows} rows "
                          f"(data.max_tokens {cfg.data.max_tokens}), fewer than data_parallel x micro_batches "
                          f"({dp} x {micro}); raise data.max_tokens to at least "
                          f"{dp * micro * cfg.data.buckets[-1]}")
    if mode == "semi_auto" and (par.grad_reduce, par.grad_reduce_dtype) != ("auto", "float32"):
        raise ConfigError("parallel.grad_reduce and grad_reduce_dtype choose our own data-parallel reduction; "
                          "under parallel.mode=semi_auto MindSpore inserts its own: leave them at their defaults")
    return Plan(mode, dp, mp, pp, micro, par.optimizer_shard, world_size, par.grad_reduce, par.grad_reduce_dtype)


def _check_vocab_split(vocab: int, mp: int, which: str) -> None:
    if vocab % mp:
        raise ConfigError(f"{which} ({vocab}) is not divisible by parallel.model_parallel ({mp}); the "
                          f"embedding and output projection are split by vocabulary rows: set data.vocab_size "
                          f"to a multiple of {mp}")


def check_trainable(plan: Plan) -> None:
    """ConfigError for a layout `mindrun train` cannot checkpoint: semi_auto, whose parameters
    MindSpore lays out itself (trainer/ckpt covers the explicit layouts only)."""
    if plan.mode == "semi_auto":
        raise ConfigError("parallel.mode=semi_auto: mindrun's sharded checkpoints do not cover MindSpore's "
                          "auto-parallel layout yet (it would need MindSpore's strategy files and "
                          "transform_checkpoints); train with parallel.mode=hybrid (the default), which shards "
                          "the same way")


def check_vocabulary(plan: Plan, vocab_size: int) -> None:
    """The real vocabulary (known once the tokenizer exists) against the plan's model-parallel split."""
    if plan.model_parallel > 1:
        _check_vocab_split(vocab_size, plan.model_parallel, "the vocabulary")
