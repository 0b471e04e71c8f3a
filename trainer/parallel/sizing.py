"""How big a training job is per device: parameters, FLOPs per token, memory, and which layouts fit.

Estimates, from the config alone (nothing is allocated):

- parameters: model/size.py, equal to the built models' (tested);
- FLOPs per token: 3 x the forward matmuls (the "6N" rule plus the attention term), the same count
  bench/throughput.py uses for MFU; for the encoder-decoder averaged over source and target tokens;
- weights, gradients and Adam's two moments per device: float32 in every precision here (mindspore.amp
  keeps float32 parameters and casts at use), split parameters divided by model_parallel, Adam's
  state also by data_parallel with optimizer sharding;
- activations of one micro-batch per device (data.max_tokens is the global batch: each data-parallel
  rank takes its share of the rows): Korthikanti et al. 2022,
  per layer s*b*h*(10 + 24/t + 5*a*s/(h*t)) 16-bit units (x2 in float32), a decoder layer with
  cross-attention counted as 1.5 encoder layers, plus the float32 logits and their gradient;
  with full recompute only each layer's input is kept, plus one layer's activations; with selective
  recompute the attention core's 5*a*s/(h*t) term is not kept.

What a backend's runtime holds is the formula times that backend's `MemoryModel`: the formula as written for
Ascend (made for a fused, memory-reusing NPU backward; not yet measured on an NPU), factors fitted on measured
runs for the CPU (bench/planner.py; bench/README.md "bench.planner"), where MindSpore keeps every intermediate of
a compiled graph, so recompute and optimizer sharding free no host memory.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

from model.config import ModelConfig
from model.size import parameter_count, replicated_parameters
from trainer.config import RunConfig

GIB = 1024 ** 3
HEADROOM = 0.10  # of device memory kept free for the framework, workspace and fragmentation


@dataclass(frozen=True)
class Memory:
    """Bytes per device."""

    weights: float
    gradients: float
    optimizer: float
    optimizer_sharded: float
    activations: float
    activations_recompute: float  # model.recompute=full
    activations_selective: float = 0.0  # model.recompute=selective
    logits: float = 0.0  # of every activations_* figure: the float32 logits and their gradient (for reports)
    mixed: bool = False  # precision O1-O3: 16-bit compute over float32 parameters

    def activations_with(self, recompute: str) -> float:
        """Activation bytes under model.recompute = none | selective | full."""
        return {"none": self.activations, "selective": self.activations_selective,
                "full": self.activations_recompute}[recompute]

    def total(self, optimizer_shard: bool = False, recompute: str = "none",
              model: Optional["MemoryModel"] = None) -> float:
        """Bytes per device with these levers, as `model`'s backend holds them (default: the formula)."""
        model = model or FORMULA
        parts = self.parts(optimizer_shard if model.levers_free else False, recompute if model.levers_free else "none")
        params = self.weights / 4.0  # float32
        extra = ((model.shard_extra if optimizer_shard else 0.0)
                 + (model.recompute_extra if recompute != "none" else 0.0)) * params
        activations = model.mixed_activations if self.mixed else model.activations
        return model.fixed + model.state * parts[0] + activations * parts[1] + extra

    def parts(self, optimizer_shard: bool = False, recompute: str = "none") -> Tuple[float, float]:
        """(weights + gradients + Adam moments, activations with the logits) in bytes, as the formula counts them."""
        state = self.weights + self.gradients + (self.optimizer_sharded if optimizer_shard else self.optimizer)
        return state, self.activations_with(recompute)


@dataclass(frozen=True)
class MemoryModel:
    """How one backend's runtime holds what the formula counts: a factor per part, whether the levers free
    memory there, and what the sharded optimizer adds per parameter."""

    backend: str
    fixed: float = 0.0  # bytes the runtime holds whatever the model (compiled graph, kernels, workspace)
    state: float = 1.0  # x weights + gradients + Adam moments
    activations: float = 1.0  # x the activations, the logits included
    levers_free: bool = True  # recompute and optimizer sharding reduce what the runtime holds
    shard_extra: float = 0.0  # bytes per parameter of this device the sharded optimizer adds
    recompute_extra: float = 0.0  # bytes per parameter of this device recompute adds (where it frees nothing)
    mixed_activations: float = 1.0  # x the activations (16-bit, as the formula counts them) under O1-O3
    source: str = ""

    @property
    def is_formula(self) -> bool:
        """The formula as written: no factor, no fixed part."""
        return ((self.fixed, self.state, self.activations, self.shard_extra, self.recompute_extra,
                 self.mixed_activations) == (0, 1, 1, 0, 0, 1))

    def describe(self) -> str:
        """One line for `mindrun plan`: which backend's factors, and where they come from."""
        if self.is_formula:
            return f"memory model: {self.backend}, the formula as written (factors 1.0; {self.source})"
        levers = "" if self.levers_free else "; recompute and optimizer sharding free no memory there"
        return (f"memory model: {self.backend}, calibrated ({self.source}): {self.fixed / 2 ** 20:,.0f} MiB + state "
                f"x {self.state:.2f} + activations x {self.activations:.2f} (x {self.mixed_activations:.1f} under "
                f"O1-O3){levers}")


FORMULA = MemoryModel("ascend", source="not yet measured on an NPU")
# Fitted by `python -m bench.planner --fit` (bench/README.md "bench.planner"): MindSpore 2.10's CPU runtime keeps
# every intermediate of a compiled graph (a forward-only graph of 8 blocks held all their activations:
# bench/results/cpu_graph_memory-20261205/), so neither lever frees host memory there: full recompute adds
# graph nodes (2-26 % more in the runs) and the sharded optimizer's AllReduce emulation adds flat copies.
CPU = MemoryModel("cpu", fixed=184_646_212.0, state=1.937, activations=2.224, levers_free=False, shard_extra=11.725,
                  recompute_extra=9.385, mixed_activations=12.379,
                  source="bench.planner 2026-12-05: 23 runs of 5 models at dp 2, O0 and O2, within 14 %")


def memory_model(backend: str) -> MemoryModel:
    """The MemoryModel of a backend (cpu | ascend | gpu, any case); GPU and Ascend use the formula."""
    return CPU if backend.lower() == "cpu" else MemoryModel(backend.lower(), source=FORMULA.source)


def side_length(cfg: RunConfig) -> int:
    """Slots of one side (source or target) of a training row: the packed row, else the longest bucket (a
    causal_lm row is one side: data.pack_length)."""
    return cfg.data.pack_length if cfg.data.packing or cfg.data.objective == "causal_lm" else cfg.data.buckets[-1]


def sequence_length(cfg: RunConfig) -> int:
    """Positions one attention spans: a side, or both for the decoder-only model (source + target)."""
    joint = cfg.model.arch == "decoder_only" and cfg.data.objective != "causal_lm"
    return side_length(cfg) * (2 if joint else 1)


def rows_per_device(cfg: RunConfig, dp: int) -> int:
    """Rows of a micro-batch each data-parallel rank trains on (the global batch's rows over dp)."""
    return max(1, -(-(cfg.data.max_tokens // side_length(cfg)) // dp))


def flops_per_token(model: ModelConfig, vocab: int, seq: int) -> float:
    """Training FLOPs per token of a pair, source and target tokens alike (forward + backward = 3 x the
    forward matmuls); `seq` is the span of one attention (sequence_length)."""
    d, ff = model.d_model, model.d_ff
    ffn = (6 if model.ffn == "swiglu" else 4) * d * ff  # SwiGLU: three matrices, not two
    self_layer = 8 * d * d + ffn + 4 * seq * d  # QKVO projections, FFN, scores and weighted sum
    out = 2 * d * vocab
    if model.arch == "decoder_only":  # every token through the stack; the output layer at target positions
        return 3.0 * (model.decoder_layers * self_layer + out / 2)
    src = model.encoder_layers * self_layer
    tgt = model.decoder_layers * (self_layer + 8 * d * d + 4 * seq * d) + out  # + cross-attention
    return 3.0 * (src + tgt) / 2  # a source and a target token on average


def _layers(model: ModelConfig, cross_weight: float = 1.0) -> float:
    """Layers of the model, an encoder-decoder's decoder layers counted `cross_weight` each (for their
    cross-attention)."""
    if model.arch == "decoder_only":
        return model.decoder_layers
    return model.encoder_layers + cross_weight * model.decoder_layers


def _activation_units(model: ModelConfig, seq: int, rows: int, mp: int) -> Tuple[float, float, float]:
    """(all layers' activations, one layer's, all layers' under selective recompute) in 16-bit units for
    `rows` sequences of `seq` tokens."""
    h, a = model.d_model, model.n_heads
    kept = seq * rows * h * (10 + 24 / mp)
    layer = kept + seq * rows * h * 5 * a * seq / (h * mp)
    layers = _layers(model, cross_weight=1.5)
    return layers * layer, 1.5 * layer, layers * kept


def memory(cfg: RunConfig, vocab: int, dp: int, mp: int) -> Memory:
    """Per-device memory of training `cfg` with data_parallel `dp` x model_parallel `mp`."""
    model = cfg.model
    total = parameter_count(model, vocab, vocab)
    replicated = replicated_parameters(model)
    per_device = replicated + (total - replicated) / mp
    act_bytes = 2.0 if cfg.precision.level in ("O1", "O2", "O3") else 4.0
    seq = sequence_length(cfg)
    rows = rows_per_device(cfg, dp)
    units, one_layer, selective = _activation_units(model, seq, rows, mp)
    layers = _layers(model)
    logits = 2 * 4.0 * side_length(cfg) * rows * vocab / mp  # float32 logits and their gradient (targets)
    activations = units * act_bytes / 2 + logits
    recompute = (layers * 2 * seq * rows * model.d_model + one_layer) * act_bytes / 2 + logits
    return Memory(weights=4.0 * per_device, gradients=4.0 * per_device, optimizer=8.0 * per_device,
                  optimizer_sharded=8.0 * per_device / dp, activations=activations,
                  activations_recompute=recompute, activations_selective=selective * act_bytes / 2 + logits,
                  logits=logits, mixed=cfg.precision.level in ("O1", "O2", "O3"))


@dataclass(frozen=True)
class Fit:
    """One layout on one cluster: its memory and whether (and by how much it does not) fit."""

    dp: int
    mp: int
    memory: Memory
    device_bytes: float
    optimizer_shard: bool
    recompute: str  # none | selective | full
    model: MemoryModel = FORMULA

    @property
    def needed(self) -> float:
        return self.memory.total(self.optimizer_shard, self.recompute, self.model)

    @property
    def usable(self) -> float:
        return self.device_bytes * (1 - HEADROOM)

    @property
    def fits(self) -> bool:
        return self.needed <= self.usable

    def shortfall(self) -> str:
        return (f"needs {self.needed / GIB:.1f} GiB per device but {self.device_bytes / GIB:.0f} GiB less "
                f"{HEADROOM:.0%} headroom leaves {self.usable / GIB:.1f} GiB: short by "
                f"{(self.needed - self.usable) / GIB:.1f} GiB")


def valid_layouts(model: ModelConfig, vocab: int, world: int) -> List[Tuple[int, int]]:
    """(dp, mp) with dp x mp = world and mp dividing heads, key/value heads, d_ff and the vocabulary."""
    return [(world // mp, mp) for mp in range(1, world + 1)
            if world % mp == 0 and model.n_heads % mp == 0 and model.kv_heads % mp == 0 and model.d_ff % mp == 0
            and vocab % mp == 0]


def step_seconds(cfg: RunConfig, vocab: int, dp: int, mp: int, peak_flops: float, link_bytes_s: float) -> float:
    """A rough step time: the global batch's FLOPs at 50 % of peak over all devices, plus the gradient
    all-reduce over dp (ring: 2 (dp-1)/dp of a replica's gradients) and 4 activation all-reduces per
    layer over mp, none overlapped."""
    seq = sequence_length(cfg)
    tokens = cfg.data.max_tokens * cfg.train.gradient_accumulation_steps  # the global batch
    compute = tokens * flops_per_token(cfg.model, vocab, seq) / (0.5 * peak_flops * dp * mp)
    grads = 4.0 * parameter_count(cfg.model, vocab, vocab) / mp
    comm = 2 * (dp - 1) / dp * grads / link_bytes_s if dp > 1 else 0.0
    if mp > 1:
        layers = _layers(cfg.model)
        activation = (rows_per_device(cfg, dp) * seq * cfg.model.d_model * 4.0
                      * cfg.train.gradient_accumulation_steps)
        comm += layers * 4 * 2 * (mp - 1) / mp * activation / link_bytes_s
    return compute + comm


RECOMPUTE_COST = {"none": 1.0, "selective": 1.03, "full": 4.0 / 3.0}  # compute: full reruns the forward (1 of 3)
# the memory levers in the order they are tried: the cheapest in step time first (sharding costs no compute and,
# with ReduceScatter + AllGather, no more bytes than the AllReduce it replaces)
LEVERS = ((False, "none"), (True, "none"), (False, "selective"), (True, "selective"), (False, "full"),
          (True, "full"))


@dataclass(frozen=True)
class Ranked:
    """A layout with the cheapest memory levers that make it fit (`fit`; without levers when none does) and
    its estimated step time (None: it does not fit even with all of them)."""

    fit: Fit
    seconds: Optional[float]

    def settings(self) -> List[str]:
        """The --set lines that select this layout and its levers."""
        out = [f"parallel.data_parallel={self.fit.dp}", f"parallel.model_parallel={self.fit.mp}"]
        if self.fit.optimizer_shard:
            out.append("parallel.optimizer_shard=true")
        if self.fit.recompute != "none":
            out.append(f"model.recompute={self.fit.recompute}")
        return out


def fit_with_levers(cfg: RunConfig, vocab: int, dp: int, mp: int, device_gib: float,
                    model: MemoryModel = FORMULA) -> Fit:
    """The layout with the first of LEVERS that fits (sharding only with dp > 1), else with none. Where the
    levers free no memory (`model.levers_free` false) none is proposed."""
    mem = memory(cfg, vocab, dp, mp)
    for shard, recompute in LEVERS if model.levers_free else LEVERS[:1]:
        if shard and dp < 2:
            continue
        fit = Fit(dp, mp, mem, device_gib * GIB, shard, recompute, model)
        if fit.fits:
            return fit
    return Fit(dp, mp, mem, device_gib * GIB, False, "none", model)


def rank(cfg: RunConfig, vocab: int, world: int, device_gib: float, peak_flops: float,
         link_bytes_s: float, model: MemoryModel = FORMULA) -> List[Ranked]:
    """Every valid layout with the levers it needs: those that fit first, by estimated step time (recompute's
    extra forward counted); then the rest by what they need."""
    out = []
    for dp, mp in valid_layouts(cfg.model, vocab, world):
        fit = fit_with_levers(cfg, vocab, dp, mp, device_gib, model)
        seconds = (step_seconds(cfg, vocab, dp, mp, peak_flops, link_bytes_s) * RECOMPUTE_COST[fit.recompute]
                   if fit.fits else None)
        out.append(Ranked(fit, seconds))
    return sorted(out, key=lambda r: (r.seconds is None, r.seconds if r.seconds is not None else r.fit.needed))


ASSUMED_VOCAB = 32000  # for the estimate below, before the data (and so the vocabulary) is read


def shared_sum_bytes(cfg: RunConfig, dp: int) -> int:
    """An upper estimate of the /dev/shm a one-host CPU job's shared-memory gradient sums take (a slot per
    data-parallel rank and the result, trainer/parallel/shared_sum.py), from the config alone: the vocabulary
    taken as data.vocab_size or ASSUMED_VOCAB, whichever is larger, and a quarter more."""
    from trainer.parallel.shared_sum import segment_bytes

    vocab = max(cfg.data.vocab_size, ASSUMED_VOCAB)
    wire = "float16" if cfg.parallel.grad_reduce_dtype == "float16" else "float32"
    return int(1.25 * segment_bytes(parameter_count(cfg.model, vocab, vocab), dp, wire))
