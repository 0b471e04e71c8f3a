"""The run configuration: one frozen dataclass per section, filled from a YAML recipe plus overrides.

Every key is checked at load (trainer/typed_yaml.py): an unknown or misspelt key names the
closest valid one, a wrong type names the expected type, an impossible value says how to fix
it. A loaded config is frozen: every override (command line, restart) is applied before.
"""
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from model.config import ModelConfig
from trainer.typed_yaml import ConfigError, build, check_key, parse_override, set_dotted

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class DataConfig:
    """What the run trains on (Multi30k, or corpora prepared by `mindrun data prepare`), how it is tokenized
    and batched."""

    # multi30k: the translation dataset (dir / $MINDRUN_DATA_DIR / download), tokenized here; tokens: prepared
    # directories (`mindrun data prepare`, trainer/data/token_files.py) named by data.train and data.valid;
    # auto: tokens when data.train or data.valid is set, else multi30k
    source: str = "auto"
    train: Optional[str] = None  # data.source=tokens: the prepared training corpus
    valid: Optional[str] = None  # data.source=tokens: the prepared validation corpus (same tokenizer)
    # translation (source -> target pairs) | causal_lm (next-token prediction on data.source=tokens, rows of
    # data.pack_length ids packed from consecutive documents, attention inside each; model.arch=decoder_only);
    # auto: translation for pairs (data.train prepared from parallel text) or Multi30k, causal_lm for documents
    objective: str = "auto"
    dir: Optional[str] = None  # local directory with the .gz files; else $MINDRUN_DATA_DIR; else download
    cache_dir: Optional[str] = None  # default: $MINDRUN_CACHE_DIR or ~/.cache/mindrun
    src_lang: str = "de"
    tgt_lang: str = "en"
    tokenizer: str = "bpe"  # bpe | unigram (sentencepiece) | word (the course's preprocessing)
    vocab_size: int = 8000  # sentencepiece only
    joint_vocab: bool = True
    min_freq: int = 2  # word tokenizer only
    max_tokens: int = 4096  # token budget of a batch: rows x padded length
    buckets: List[int] = field(default_factory=lambda: [12, 16, 20, 24, 32, 48, 64, 128])
    packing: bool = False  # several pairs a row in one [max_tokens // pack_length, pack_length] shape
    pack_length: int = 64  # row length when packing; longer pairs are cut to it
    train_limit: Optional[int] = None  # use only the first N training pairs (causal_lm: samples; tests, smoke runs)
    valid_limit: Optional[int] = None  # the first N validation pairs (causal_lm: samples)


@dataclass(frozen=True)
class OptimConfig:
    """Adam with warmup, gradient clipping and label smoothing."""

    lr: float = 7e-4
    schedule: str = "inverse_sqrt"  # inverse_sqrt | cosine
    warmup_steps: int = 1000
    min_lr: float = 1e-5  # cosine floor
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # 0 disables clipping
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """How long to train, when to evaluate, where to write."""

    out_dir: str = "runs/{name}"
    seed: int = 1
    max_epochs: int = 10
    max_steps: Optional[int] = None
    time_budget_minutes: Optional[float] = None  # stop (after a final evaluation) when spent
    eval_every: int = 500  # validate every N steps (0: never mid-epoch), and at the end of the run
    # also at the end of every epoch; false: a short run validates only every eval_every steps and at its end
    # (a validation pass is run time not spent training: the `quick` recipe); the end of an epoch still saves
    validate_epochs: bool = True
    log_every: int = 20
    # auto (bleu for translation, ppl for causal_lm) | bleu | loss | ppl (on the validation split only)
    best_metric: str = "auto"
    progress: bool = True  # tqdm bar
    # peak dense TFLOP/s of one device, for the logged model FLOPs utilisation (trainer/mfu.py); default:
    # $MINDRUN_DEVICE_PEAK_TFLOPS, set by `mindrun launch --cluster` from the file's device_peak_tflops
    device_peak_tflops: Optional[float] = None
    # keep MindSpore's compiled graphs in <run>/compile_cache, so a restart or --resume of this run skips
    # recompiling (trainer/compile_cache.py: keyed by sources, config and MindSpore version)
    compile_cache: bool = True
    # never | auto (true is auto): continue from the newest complete checkpoint of
    # <run>/checkpoints whose files verify (trainer/ckpt); none there: start afresh
    resume: Union[bool, str] = False
    # a run directory (or step directory) whose newest checkpoint's weights start this run (fine-tuning, e.g.
    # after `mindrun ckpt import-hf`): weights only, resliced to this layout; fresh optimizer, step 0. A resume
    # of this run's own checkpoints takes precedence
    init_from: Optional[str] = None
    # sharded checkpoints (trainer/ckpt): at every validation, every N optimizer steps and/or
    # every M minutes (0: off), at the end and on SIGTERM/SIGINT; the newest keep_last
    # complete ones are kept, plus the best by train.best_metric
    save_every_steps: int = 0
    save_every_minutes: float = 0.0
    keep_last: int = 3
    # micro-batches of data.max_tokens per optimizer step: one gradient reduction per step,
    # the loss normalised by the target tokens of all of them; steps count optimizer steps
    gradient_accumulation_steps: int = 1
    # The CPU speed-ups (trainer/cpu, applied by trainer/build.py on the CPU only; each computes
    # what the plain model computes). cpu_backward: bias, LayerNorm and softmax gradients written
    # out (steps 1.15-1.19x faster); false: MindSpore's kernels
    cpu_backward: bool = True
    # with cpu_backward: LayerNorm, the softmax backward and the clipping norm as C++ kernels
    # (trainer/cpu/kernels), compiled with the machine's g++ on first use into <cache>/kernels;
    # false: MindSpore ops
    cpu_kernels: bool = True
    # output projection and label-smoothed loss as one Cell with its backward written out
    # (trainer/cpu/loss.py): the logits' gradient is never built; false: logits, then the loss
    fused_loss: bool = True


@dataclass(frozen=True)
class PrecisionConfig:
    """Mixed precision through mindspore.amp, with loss scaling (trainer/precision.py).

    Parameters, gradients and Adam state stay float32 (master weights) at every level.
    """

    level: str = "O0"  # O0 float32 | O1 matmuls in dtype | O2 all but LayerNorm, loss in fp32 | O3 all
    dtype: str = "float16"  # float16 | bfloat16 (Ascend only: MindSpore's CPU MatMul refuses bfloat16)
    loss_scale: str = "auto"  # auto (dynamic for float16 at O1-O3, else none) | none | static | dynamic
    initial_scale: float = 65536.0  # static: the scale; dynamic: where it starts
    growth_factor: float = 2.0  # dynamic: scale *= this after growth_interval clean steps
    backoff_factor: float = 0.5  # dynamic: scale *= this on an overflow (the step is skipped)
    growth_interval: int = 1000
    min_scale: float = 1.0
    # stop with an error after this many consecutive skipped steps with the scale at min_scale
    # (the fp16 NaN spiral): nothing after the last good step is saved
    max_skips_at_min: int = 20

    def scaling(self) -> str:
        """The loss scaling in force: none, static or dynamic (auto resolved)."""
        if self.loss_scale != "auto":
            return self.loss_scale
        return "dynamic" if self.level != "O0" and self.dtype == "float16" else "none"


@dataclass(frozen=True)
class EvalConfig:
    """Decoding for evaluation and translation."""

    beam: int = 5
    length_penalty: float = 1.0
    max_len_a: float = 1.2  # max output length = a * source length + b
    max_len_b: int = 10
    batch_size: int = 64  # sentences per decoding batch
    train_beam: int = 1  # beam used for validation BLEU during training (1 = greedy, faster)


@dataclass(frozen=True)
class ParallelConfig:
    """How one model is laid out over the job's workers (checked by trainer.parallel.plan)."""

    mode: str = "auto"  # auto | standalone | data_parallel | hybrid | semi_auto
    data_parallel: Optional[int] = None  # replicas, each on a share of every batch; None: world / (mp x pp)
    model_parallel: int = 1  # tensor parallel: heads, FFN and vocabulary split Megatron-style
    pipeline_stages: int = 1  # > 1 is refused: pipeline parallelism is not wired yet
    micro_batches: int = 1  # pipeline micro-batches; > 1 is refused (no pipeline)
    # Adam's moments split over the data-parallel ranks (ZeRO-1; trainer/parallel/zero.py under data_parallel and
    # hybrid, MindSpore's own under semi_auto); needs data_parallel >= 2
    optimizer_shard: bool = False
    # the data-parallel gradient reduction (trainer/parallel/seam.py): per_tensor, one AllReduce per gradient
    # (MindSpore's DistributedGradReducer), or flat, all gradients in one buffer and one AllReduce; auto is
    # flat up to FLAT_LIMIT_BYTES of gradients (one more copy of them), per_tensor beyond, except on the CPU
    # with every rank on one host under `mindrun launch`: there auto is shared_memory, the flat buffer summed
    # through a shared segment instead of MindSpore's TCP collectives (trainer/parallel/shared_sum.py); on the
    # wire in float32, or float16 (half the bytes, ~3 significant digits; the update stays float32; float16
    # always goes through the flat buffer)
    grad_reduce: str = "auto"
    grad_reduce_dtype: str = "float32"


@dataclass(frozen=True)
class RunConfig:
    """A whole run: the recipe's name plus one section per concern."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)

    def best_metric(self) -> str:
        """train.best_metric with auto resolved: bleu for translation, ppl for causal_lm."""
        if self.train.best_metric != "auto":
            return self.train.best_metric
        return "ppl" if self.data.objective == "causal_lm" else "bleu"

    def _validate_source(self) -> None:
        data = self.data
        _choice("data.source", data.source, ("auto", "multi30k", "tokens"))
        _choice("data.objective", data.objective, ("auto", "translation", "causal_lm"))
        if data.source != "tokens":  # tokens: documents or pairs, checked against the files when they are read
            if data.objective == "causal_lm":
                raise ConfigError("data.objective=causal_lm reads prepared token files: set data.train and "
                                  "data.valid (directories made by `mindrun data prepare`)")
            if data.train or data.valid:
                raise ConfigError("data.train and data.valid name prepared corpora, read only with "
                                  "data.source=tokens")
        if data.objective == "causal_lm":
            if self.model.arch != "decoder_only":
                raise ConfigError(f"data.objective=causal_lm trains a language model: set model.arch=decoder_only "
                                  f"(got {self.model.arch})")
            if self.train.best_metric == "bleu":
                raise ConfigError("train.best_metric=bleu scores translations; a causal_lm run is chosen by ppl "
                                  "(or loss): set train.best_metric=ppl or auto")
            _positive("data.pack_length", data.pack_length, minimum=2)
            if data.pack_length > self.model.max_positions:
                raise ConfigError(f"data.pack_length ({data.pack_length}) exceeds model.max_positions "
                                  f"({self.model.max_positions}); lower data.pack_length or raise model.max_positions")
            if data.max_tokens < data.pack_length:
                raise ConfigError(f"data.max_tokens ({data.max_tokens}) is smaller than data.pack_length "
                                  f"({data.pack_length}): a batch must hold one row; raise data.max_tokens")

    def validate(self) -> None:
        """Check values that types alone cannot; raise ConfigError naming the key."""
        try:
            self.model.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _choice("data.tokenizer", self.data.tokenizer, ("bpe", "unigram", "word"))
        _choice("optim.schedule", self.optim.schedule, ("inverse_sqrt", "cosine"))
        _choice("train.best_metric", self.train.best_metric, ("auto", "bleu", "loss", "ppl"))
        self._validate_source()
        if self.data.src_lang == self.data.tgt_lang:
            raise ConfigError("data.src_lang and data.tgt_lang must differ")
        for lang in ("src_lang", "tgt_lang"):
            _choice(f"data.{lang}", getattr(self.data, lang), ("de", "en"))
        buckets = self.data.buckets
        if not buckets or sorted(set(buckets)) != buckets or buckets[0] < 2:
            raise ConfigError(f"data.buckets must be strictly increasing lengths >= 2, got {buckets}")
        if self.data.objective != "causal_lm":  # causal_lm rows: _validate_source
            # a decoder-only model reads source and target as one sequence: each side gets half the positions
            joint = self.model.arch == "decoder_only"
            side = self.model.max_positions // 2 if joint else self.model.max_positions
            why = " (half of it: model.arch=decoder_only puts source and target in one sequence)" if joint else ""
            if buckets[-1] > side:
                raise ConfigError(
                    f"data.buckets goes up to {buckets[-1]} but model.max_positions is "
                    f"{self.model.max_positions}{why}; raise model.max_positions or lower the last bucket")
            if self.data.max_tokens < buckets[-1]:
                raise ConfigError(
                    f"data.max_tokens ({self.data.max_tokens}) is smaller than the longest bucket "
                    f"({buckets[-1]}): no batch could hold one sentence; raise data.max_tokens")
            if self.data.packing:
                _positive("data.pack_length", self.data.pack_length, minimum=2)
                if self.data.pack_length > side:
                    raise ConfigError(
                        f"data.pack_length ({self.data.pack_length}) exceeds model.max_positions "
                        f"({self.model.max_positions}){why}; lower data.pack_length or raise model.max_positions")
                if self.data.max_tokens < self.data.pack_length:
                    raise ConfigError(
                        f"data.max_tokens ({self.data.max_tokens}) is smaller than data.pack_length "
                        f"({self.data.pack_length}): a batch must hold one row; raise data.max_tokens")
        _positive("data.vocab_size", self.data.vocab_size, minimum=100)
        _positive("data.min_freq", self.data.min_freq)
        for key in ("train_limit", "valid_limit"):
            if getattr(self.data, key) is not None:
                _positive(f"data.{key}", getattr(self.data, key))
        _positive("optim.lr", self.optim.lr, minimum=0.0, strict=True)
        _positive("optim.warmup_steps", self.optim.warmup_steps, minimum=0)
        if not 0.0 <= self.optim.label_smoothing < 1.0:
            raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {self.optim.label_smoothing}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self.optim, key) < 1.0:
                raise ConfigError(f"optim.{key} must be in [0, 1), got {getattr(self.optim, key)}")
        _positive("optim.clip_norm", self.optim.clip_norm, minimum=0.0)
        _positive("train.max_epochs", self.train.max_epochs)
        if self.train.max_steps is not None:
            _positive("train.max_steps", self.train.max_steps)
        if self.train.time_budget_minutes is not None:
            _positive("train.time_budget_minutes", self.train.time_budget_minutes, minimum=0.0, strict=True)
        _positive("train.eval_every", self.train.eval_every, minimum=0)
        _positive("train.log_every", self.train.log_every)
        _positive("train.gradient_accumulation_steps", self.train.gradient_accumulation_steps)
        if self.train.resume not in (True, False, "never", "auto"):
            raise ConfigError(f"train.resume must be one of never, auto (or true/false); got {self.train.resume!r}")
        _positive("train.save_every_steps", self.train.save_every_steps, minimum=0)
        _positive("train.save_every_minutes", self.train.save_every_minutes, minimum=0.0)
        _positive("train.keep_last", self.train.keep_last)
        self._validate_precision()
        _positive("optim.eps", self.optim.eps, minimum=0.0, strict=True)
        _positive("optim.weight_decay", self.optim.weight_decay, minimum=0.0)
        _positive("eval.max_len_a", self.eval.max_len_a, minimum=0.0)
        _positive("eval.max_len_b", self.eval.max_len_b, minimum=0)
        if self.eval.max_len_a == 0 and self.eval.max_len_b == 0:
            raise ConfigError("eval.max_len_a and eval.max_len_b are both 0: no output could be produced")
        if self.train.device_peak_tflops is not None:
            _positive("train.device_peak_tflops", self.train.device_peak_tflops, minimum=0.0, strict=True)
        _positive("eval.beam", self.eval.beam)
        _positive("eval.train_beam", self.eval.train_beam)
        _positive("eval.batch_size", self.eval.batch_size)
        _choice("parallel.mode", self.parallel.mode, ("auto", "standalone", "data_parallel", "hybrid", "semi_auto"))
        _choice("parallel.grad_reduce", self.parallel.grad_reduce, ("auto", "per_tensor", "flat", "shared_memory"))
        _choice("parallel.grad_reduce_dtype", self.parallel.grad_reduce_dtype, ("float32", "float16"))
        if self.parallel.grad_reduce_dtype == "float16" and self.precision.scaling() == "none":
            # unscaled gradients are loss / tokens of the update: many below float16's smallest normal (6e-5),
            # some below its smallest subnormal (6e-8), so the sum would flush them to zero
            raise ConfigError("parallel.grad_reduce_dtype=float16 needs loss scaling, so that gradients fit float16's "
                              "range: set precision.loss_scale=static (precision.initial_scale e.g. 1024) or dynamic")
        for key in ("data_parallel", "model_parallel", "pipeline_stages", "micro_batches"):
            if getattr(self.parallel, key) is not None:
                _positive(f"parallel.{key}", getattr(self.parallel, key))
        if self.model.arch == "decoder_only" and not self.data.joint_vocab:
            raise ConfigError("model.arch=decoder_only reads source and target with one embedding: it needs "
                              "data.joint_vocab=true")
        if self.model.share_embeddings and not self.data.joint_vocab:
            raise ConfigError(
                "model.share_embeddings=true needs data.joint_vocab=true (one vocabulary for both "
                "languages); set one of them differently")

    def _validate_precision(self) -> None:
        p = self.precision
        _choice("precision.level", p.level, ("O0", "O1", "O2", "O3"))
        _choice("precision.dtype", p.dtype, ("float16", "bfloat16"))
        _choice("precision.loss_scale", p.loss_scale, ("auto", "none", "static", "dynamic"))
        _positive("precision.min_scale", p.min_scale, minimum=0.0, strict=True)
        if not p.initial_scale >= p.min_scale:
            raise ConfigError(f"precision.initial_scale ({p.initial_scale}) is below precision.min_scale "
                              f"({p.min_scale}); raise precision.initial_scale or lower precision.min_scale")
        _positive("precision.growth_factor", p.growth_factor, minimum=1.0, strict=True)
        if not 0.0 < p.backoff_factor < 1.0:
            raise ConfigError(f"precision.backoff_factor must be in (0, 1), got {p.backoff_factor}")
        _positive("precision.growth_interval", p.growth_interval)
        _positive("precision.max_skips_at_min", p.max_skips_at_min)

    def resumes(self) -> bool:
        """Whether train.resume asks to continue from the run's newest complete checkpoint."""
        return self.train.resume in (True, "auto")

    def run_dir(self) -> Path:
        """The output directory with `{name}` filled in."""
        return Path(self.train.out_dir.format(name=self.name))

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (for YAML dumps and checkpoints)."""
        return dataclasses.asdict(self)


def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _positive(key: str, value, minimum=1, strict=False) -> None:
    if not value >= minimum or (strict and value == minimum):  # `not >=` also catches NaN
        sign = ">" if strict else ">="
        raise ConfigError(f"{key} must be {sign} {minimum}, got {value}")


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe name ('small') from the package, or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    packaged = RECIPES_DIR / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"no recipe named '{name_or_path}' (recipes: {', '.join(names)}){hint}")


def apply_overrides(tree: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """Set each 'section.key=value' of `overrides` in a config tree; a key no section has is blamed on the
    command line (`--set ...`). Returns the tree."""
    for text in overrides or []:
        key, value = parse_override(text)
        try:
            check_key(RunConfig, key)
        except ConfigError as exc:  # the command line's key, not the recipe's
            raise ConfigError(f"--set {text}: {exc}") from None
        set_dotted(tree, key, value)
    return tree


def load_config(recipe: str, overrides: Optional[List[str]] = None) -> RunConfig:
    """Load a recipe (name or path), apply dotted overrides, validate, return the config."""
    path = resolve_recipe(recipe)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    tree.setdefault("name", path.stem)
    apply_overrides(tree, overrides)
    try:
        cfg = build(RunConfig, tree)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg = _resolve_auto(cfg)
    cfg.validate()
    return cfg


def config_from_dict(tree: Dict[str, Any]) -> RunConfig:
    """Rebuild a saved config (from a run directory) and validate it."""
    cfg = _resolve_auto(build(RunConfig, tree))
    cfg.validate()
    return cfg


def _prepared_kind(path: Optional[str]) -> Optional[str]:
    """What a prepared directory holds (documents or pairs), or None where it cannot be read (yet)."""
    try:
        return json.loads((Path(path).expanduser() / "manifest.json").read_text()).get("kind")
    except (TypeError, OSError, ValueError, AttributeError):
        return None


def _resolve_auto(cfg: RunConfig) -> RunConfig:
    """data.source and data.objective with auto decided (module docs of DataConfig), so that the saved config
    and every reader see what ran."""
    data = cfg.data
    source = data.source if data.source != "auto" else ("tokens" if data.train or data.valid else "multi30k")
    objective = data.objective
    if objective == "auto":
        objective = "causal_lm" if source == "tokens" and _prepared_kind(data.train) != "pairs" else "translation"
    return dataclasses.replace(cfg, data=dataclasses.replace(data, source=source, objective=objective))
