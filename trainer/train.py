"""The training loop: batches in, jitted steps, periodic validation, best/last checkpoints, logs.

    train(cfg)  decide the backend, plan the layout, join the cluster, prepare the data,
                build (trainer/build.py), run the loop
    Trainer     the loop of one rank
"""
import json
import time
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple, Union

import mindspore as ms
import numpy as np
import yaml
from tqdm import tqdm

from model.tokens import PAD
from trainer.build import build_training, recompute_note, speedups_note
from trainer.ckpt.run_checkpoints import RunCheckpoints
from trainer.ckpt.store import check_shared_storage
from trainer.compile_cache import compile_cache
from trainer.config import RunConfig
from trainer.data.batching import TokenBatcher, collate
from trainer.data.lm import LmBatcher, LmCorpus, prepare_lm
from trainer.data.packing import PackedBatcher, collate_packed, side_lengths
from trainer.dataset import Corpus, Split, prepare, prepare_pairs
from trainer.loop.host_memory import HostMemory, device_peak_mib
from trainer.loop.metrics import MetricsLog
from trainer.loop.schedule import learning_rate
from trainer.loop.startup import StartupClock
from trainer.loop.time_shares import TimeShares
from trainer.loop.tools import ThroughputWindow, catch_signals, prefetch, seed_everything
from trainer.mfu import ModelFlops
from trainer.parallel.clock import RunClock
from trainer.parallel.context import (ParallelContext, init_parallel, is_scheduler, select_backend,
                                      world_size_from_env)
from trainer.parallel.host_sum import world_sum
from trainer.parallel.plan import check_trainable, check_vocabulary, make_plan
from trainer.parallel.seam import reduction_path
from trainer.parallel.sizing import shared_sum_bytes
from trainer.precision import check_precision, precision_caveat
from trainer.step import StepResult
from trainer.validation import LmValidator, Validator


def training_batches(cfg: RunConfig, split: Split):
    """The training split's batcher and its collate function: length buckets, or packed rows."""
    data = cfg.data
    if data.packing:
        src_len, tgt_len = side_lengths(split.src_ids, split.tgt_ids, data.pack_length)
        return PackedBatcher(src_len, tgt_len, data.pack_length, data.max_tokens, cfg.train.seed), collate_packed
    return TokenBatcher(split.lengths(), data.buckets, data.max_tokens, cfg.train.seed), collate


class Trainer:
    """Owns the built model and step and the bookkeeping of one training run (one rank of it)."""

    def __init__(self, cfg: RunConfig, corpus: Union[Corpus, LmCorpus], ctx: ParallelContext,
                 startup: Optional[StartupClock] = None):
        self.cfg, self.corpus, self.ctx = cfg, corpus, ctx
        self.startup = startup  # closed phase by phase up to the first update, then logged
        self.run_dir = cfg.run_dir()
        self.host_memory = HostMemory()  # before the model: MindSpore, the data
        built = build_training(cfg, ctx, len(corpus.src_vocab), len(corpus.tgt_vocab))
        self.model, self.parallel, self.optimizer, self.stepper = built.model, built.parallel, built.optimizer, built.step
        if hasattr(self.optimizer, "state_elements"):  # parallel.optimizer_shard (trainer/parallel/zero.py)
            whole = 2 * sum(int(p.size) for p in self.optimizer.parameters)
            print(f"optimizer state: data-parallel rank {ctx.dp_rank} holds {self.optimizer.state_elements()} of "
                  f"{whole} Adam moment elements (parallel.optimizer_shard over {ctx.plan.data_parallel})", flush=True)
        self.checkpoints = RunCheckpoints(self.run_dir / "checkpoints", cfg.to_dict(), cfg.best_metric(),
                                          self.optimizer, built.layout, ctx, cfg.train.keep_last, tqdm.write)
        if isinstance(corpus, LmCorpus):  # causal_lm: each rank reads its rows of the token files
            shares, share = built.parallel.row_share()
            self.batcher = LmBatcher(corpus.train, cfg.data.max_tokens // cfg.data.pack_length, cfg.train.seed,
                                     shares, share, cfg.data.train_limit)
            self.validator = LmValidator(cfg, self.model, corpus.valid, shares, share, built.parallel.dp_group,
                                         cfg.data.valid_limit, ctx)
        else:
            self.train_split = corpus.splits["train"]
            self.batcher, self.collate = training_batches(cfg, self.train_split)
            self.validator = Validator(cfg, self.model, corpus, ctx)
        self.flops = ModelFlops(cfg, len(corpus.tgt_vocab), ctx.plan.world_size)
        self.accumulation = cfg.train.gradient_accumulation_steps
        self.total_steps = cfg.train.max_steps or -(-len(self.batcher) // self.accumulation) * cfg.train.max_epochs
        self.step, self.epoch, self.batch_index = 0, 0, 0
        self.elapsed_before = 0.0  # training seconds of the runs this one resumes
        self.clock: Optional[RunClock] = None
        self.time_fraction: Optional[float] = None  # share of train.time_budget_minutes spent
        self.log: Optional[MetricsLog] = None
        self.stop_signal: Optional[int] = None  # SIGTERM/SIGINT seen on this rank
        self.stopping = False  # a signal seen on any rank: every rank saves and stops at the same step
        self.last_save = 0.0  # agreed run-clock seconds at the last save (train.save_every_minutes)
        self.last_validation: Optional[int] = None  # the step of this process's last validation
        self.read_at: Optional[int] = None  # the step of the last agreed clock reading (`_agree`)
        self.time_shares = TimeShares(startup.origin if startup is not None else time.time())
        if startup is not None:
            startup.close("build")

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint (weights, Adam state, position, loss scale,
        RNGs) if there is one; return whether there was."""
        meta = self.checkpoints.resume()
        if meta is None:
            return False
        self.step, self.epoch, self.batch_index = int(meta["step"]), int(meta["epoch"]), int(meta["batch_index"])
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))
        self.stepper.scaler.restore(meta["scaler"])
        if self.ctx.is_main:
            tqdm.write(f"resuming from {meta['directory']} at step {self.step} (epoch {self.epoch}, "
                       f"batch {self.batch_index})")
        return True

    def _position(self, epoch: int, batch_index: int) -> Dict:
        """Where training continues (the next batch to run), for a checkpoint's manifest."""
        return {"step": self.step, "epoch": epoch, "batch_index": batch_index, "elapsed_s": self.clock.local(),
                "scaler": self.stepper.scaler.state()}

    def validate_and_save(self, epoch: int, batch_index: int) -> None:
        """Validate, then save step_<N> with the resume position (the new `best` if it is better)."""
        self.host_memory.training_done()  # validation's graphs are not training's memory
        t0 = time.time()
        with self.time_shares.timing("validation"):
            val = self.validator.run()
        val["seconds"] = round(time.time() - t0, 2)
        self.last_validation = self.step
        self.log.write("valid", self.step, {"epoch": round(self.step / len(self.batcher), 2), **val})
        with self.time_shares.timing("checkpoints"):
            self.checkpoints.after_validation(self.step, val, self._position(epoch, batch_index))
        self.last_save = self.clock.agreed
        c = self.checkpoints
        bleu = f" BLEU {val['bleu']:.2f}" if "bleu" in val else ""
        tqdm.write(f"step {self.step} epoch {epoch}: valid loss {val['loss']:.3f} ppl {val['ppl']:.2f}{bleu} "
                   f"(best {c.best_metric} {c.best_value:.3f} at step {c.best['step']})")

    def save_position(self, epoch: int, batch_index: int, why: str) -> None:
        """Save step_<N> (weights, Adam state, position) without validating."""
        with self.time_shares.timing("checkpoints"):
            path = self.checkpoints.save(self.step, self._position(epoch, batch_index))
        self.last_save = self.clock.agreed
        if self.ctx.is_main:
            tqdm.write(f"saved {path} at step {self.step} ({why})")

    def _agree(self, budget: Optional[float], force: bool = False) -> bool:
        """After an update, when the clock says a reading is due (every step alone; with several ranks, at
        steps every rank plans alike, at most 5 s apart): the run clock and any rank's signal, agreed by
        every rank (one small sum over ranks); sets the budget share spent and `stopping`; True once the
        budget is spent. All ranks stop, save and change rate at the same step. `force`: read now (every rank
        at the same point: before a validation, which a signal should not have to wait for; nothing when this
        step's reading was taken already)."""
        if not (force or self.clock.due(self.step)) or self.read_at == self.step:
            return False
        self.read_at = self.step
        elapsed, signalled = self.clock.agree(self.stop_signal is not None)
        self.clock.plan_next(self.step, budget)
        self.stopping = self.stopping or signalled
        if budget is None:
            return False
        self.time_fraction = elapsed / budget
        return self.time_fraction >= 1.0

    def _log_startup(self, resumed: bool) -> None:
        """After the first update: the start-up phases to metrics.jsonl and one console line (main rank)."""
        self.startup.close("first update")
        self.time_shares.seconds["start-up"] = self.startup.total()
        self.log.write("startup", self.step, {"resumed": bool(resumed), **self.startup.record()})
        if self.ctx.is_main:
            tqdm.write(self.startup.line(resumed))
        self.startup = None

    def _save_due(self) -> bool:
        t = self.cfg.train
        if t.save_every_steps and self.step % t.save_every_steps == 0:
            return True
        return bool(t.save_every_minutes) and self.clock.agreed - self.last_save >= t.save_every_minutes * 60

    def _validated_recently(self) -> bool:
        """Whether this run validated less than a tenth of an epoch ago: the end of an epoch or of the run then
        saves without a second pass whose numbers would barely differ (it costs a validation's time)."""
        return self.last_validation is not None and self.step - self.last_validation < len(self.batcher) / 10

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum

    def train_step(self, *arrays) -> StepResult:
        """One optimiser step on one collated batch (padded: src, tin, tout; packed: also segments and positions)."""
        return self.update([arrays])[0]

    def update(self, micro_batches: List[Sequence[np.ndarray]]) -> Tuple[StepResult, float]:
        """One optimiser step on up to k collated global batches; returns its result and learning rate.

        ScaleCollapsed (trainer/precision.py) when the loss scale cannot recover.
        """
        self.step += 1
        opt = self.cfg.optim
        rate = learning_rate(self.step, opt.lr, opt.warmup_steps, opt.schedule, self.total_steps, opt.min_lr,
                             self.time_fraction)
        return self.stepper.update(micro_batches, self.step, rate), rate  # assigned to Adam's Parameter in the graph

    def batch_arrays(self, batch) -> Sequence[np.ndarray]:
        """The collated arrays of one training batch (causal_lm: only this rank's rows, read from the files)."""
        if isinstance(self.batcher, LmBatcher):
            return self.batcher.collate(batch)
        return self.collate(batch, self.train_split.src_ids, self.train_split.tgt_ids)

    def describe_batch(self) -> str:
        """The effective batch, for the run's first lines."""
        dp = self.ctx.plan.data_parallel
        share = f"; each of data_parallel {dp} ranks trains 1/{dp} of the rows" if dp > 1 else ""
        return (f"tokens per update: data.max_tokens {self.cfg.data.max_tokens} x gradient_accumulation_steps "
                f"{self.accumulation} = {self.cfg.data.max_tokens * self.accumulation} (budget, padding "
                f"included{share}); precision {self.cfg.precision.level}"
                + ("" if self.cfg.precision.level == "O0" else
                   f" {self.cfg.precision.dtype}, loss scaling {self.cfg.precision.scaling()}")
                + self.sums_path())

    def sums_path(self) -> str:
        """How the data-parallel sums travel ("" without any): for the run's first lines and the compile cache."""
        return reduction_path(getattr(self.stepper.update_step, "reduction", None))

    def run(self) -> Dict[str, object]:
        """Train until max_epochs, max_steps or the time budget; return the summary."""
        cfg = self.cfg
        resumed = cfg.resumes() and self.resume()
        if not resumed and cfg.train.init_from:
            source = self.checkpoints.init_weights(cfg.train.init_from)
            if self.ctx.is_main:
                tqdm.write(f"weights from {source} (train.init_from; fresh optimizer, step 0)")
        if self.startup is not None:
            self.startup.close("checkpoint")
        self.log = MetricsLog(self.run_dir, enabled=self.ctx.is_main, resume_step=self.step if resumed else None)
        self.clock = RunClock(self.ctx, self.elapsed_before)
        start = time.time()
        budget = cfg.train.time_budget_minutes * 60 if cfg.train.time_budget_minutes else None
        max_steps = cfg.train.max_steps
        self.last_save = self.clock.agreed
        # a finished run, resumed, or one whose budget the runs it resumes already spent
        stop = (max_steps is not None and self.step >= max_steps) or self._agree(budget)
        window = ThroughputWindow()
        per_epoch = len(self.batcher)
        handlers = catch_signals(self._on_signal)
        if self.ctx.is_main:
            tqdm.write(self.describe_batch())
        for epoch in range(self.epoch, cfg.train.max_epochs):
            if stop or self.stopping:
                break
            first = self.batch_index if epoch == self.epoch else 0
            batches = prefetch(self.batch_arrays(b) for b in self.batcher.iterate(epoch, first))
            bar = tqdm(batches, total=self.batcher.batches_in(epoch), initial=first, desc=f"epoch {epoch}",
                       disable=not (cfg.train.progress and self.ctx.is_main), dynamic_ncols=True, leave=False)
            last = self.batcher.batches_in(epoch) - 1
            group: List[Sequence[np.ndarray]] = []
            for i, arrays in enumerate(bar, start=first):
                group.append(arrays)
                if len(group) < self.accumulation and i < last:
                    continue  # the epoch's last update takes what is left
                took = time.time()
                result, rate = self.update(group)
                took = time.time() - took
                if self.startup is not None:
                    self._log_startup(resumed)  # start-up's time: spawn to the end of this first update
                else:
                    self.time_shares.seconds["updates"] += took
                window.add(sum(int((a[0] != PAD).sum()) for a in group) + int(result.n_tokens),
                           result.loss_sum, result.nll_sum, result.n_tokens, skipped=not result.finite)
                group = []
                if self.step % cfg.train.log_every == 0:
                    scaler = self.stepper.scaler
                    rates = window.flush()
                    record = {"epoch": epoch, **rates, **self.flops.record(rates["tokens_per_s"]), "lr": rate,
                              "grad_norm": result.grad_norm,
                              "loss_scale": scaler.scale, "skipped_steps": scaler.skipped_steps,
                              "elapsed_s": round(time.time() - start, 1)}
                    self.log.write("train", self.step, record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                stop = self._agree(budget) or (max_steps is not None and self.step >= max_steps)
                validate = bool(cfg.train.eval_every and self.step % cfg.train.eval_every == 0) or stop
                if validate and not self.stopping:  # a signal already seen stops before the validation
                    stop = self._agree(budget, force=True) or stop
                if self.stopping:  # the launcher's grace period: keep the work, then stop
                    self.save_position(epoch, i + 1, f"signal {self.stop_signal or 'on another rank'}")
                    break
                if validate and stop and self._validated_recently():  # the end of the run, just after one
                    with window.paused():
                        self.save_position(epoch, i + 1, f"end of the run; validated at step {self.last_validation}")
                elif validate:
                    with window.paused():  # validation time is not training throughput
                        self.validate_and_save(epoch, i + 1)
                elif self._save_due():
                    with window.paused():
                        self.save_position(epoch, i + 1, "train.save_every_*")
                if stop:
                    break
            bar.close()
            if self.stopping:
                break
            last_epoch = epoch + 1 == cfg.train.max_epochs
            if not stop and (not cfg.train.eval_every or self.step % cfg.train.eval_every):
                stop = self._agree(budget, force=True)  # the epoch's validation: a signal seen stops first
                if self.stopping:
                    self.save_position(epoch + 1, 0, f"signal {self.stop_signal or 'on another rank'}")
                    break
                with window.paused():
                    if not (cfg.train.validate_epochs or stop or last_epoch):  # a checkpoint, not a pass
                        self.save_position(epoch + 1, 0, "end of epoch (train.validate_epochs: false)")
                    elif self._validated_recently():
                        self.save_position(epoch + 1, 0, f"end of epoch; validated at step {self.last_validation}")
                    else:
                        self.validate_and_save(epoch + 1, 0)
        if handlers is not None:
            catch_signals(None, handlers)
        self.log.close()
        ckpt = self.checkpoints
        memory, device = self.host_memory.record(), device_peak_mib(self.ctx.backend)
        print(self.host_memory.line(self.ctx.rank, memory), flush=True)
        if device is not None:  # what `mindrun plan` estimates on an accelerator (its calibration's input)
            print(f"peak device memory: {device:,} MiB (rank {self.ctx.rank}; MindSpore's allocator)", flush=True)
        summary = {"steps": self.step, "interrupted_by_signal": self.stop_signal, "peak_host_mib": memory["peak"],
                   "host_mib": memory, "device_peak_mib": device,
                   "time_s": self.time_shares.record(time.time()),
                   "epochs": round(self.step / max(per_epoch, 1), 2),
                   "train_seconds": round(time.time() - start, 1), "best": ckpt.best, "run_dir": str(self.run_dir),
                   "best_checkpoint": str(ckpt.best_path), "last_checkpoint": str(ckpt.last)}
        if self.ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary


def prepare_corpus(cfg: RunConfig) -> Union[Corpus, LmCorpus]:
    """The run's data: Multi30k tokenized (data.source=multi30k), or the prepared token files (tokens):
    documents for a language model, sentence pairs for translation."""
    if cfg.data.source != "tokens":
        return prepare(cfg.data)
    return prepare_lm(cfg.data) if cfg.data.objective == "causal_lm" else prepare_pairs(cfg.data)


def train(cfg: RunConfig, corpus: Optional[Corpus] = None) -> Dict[str, object]:
    """Train per `cfg` (resuming from last.ckpt when cfg.train.resume); return a summary.

    SIGTERM saves last.ckpt at the next step and stops.
    """
    startup = StartupClock()
    ms.set_context(mode=ms.GRAPH_MODE)
    if is_scheduler():  # msrun-style launchers run the script in the scheduler process too
        from mindspore.communication import init

        init()
        return {"role": "scheduler"}
    backend = select_backend()
    world = world_size_from_env()
    plan = make_plan(cfg, world, backend)  # layout errors before anything compiles
    check_precision(cfg, backend)
    check_trainable(plan)
    ctx = init_parallel(plan, backend, shared_sum_bytes(cfg, plan.data_parallel))  # (context.py: without_cluster)
    startup.close("cluster")
    if ctx.is_main and ctx.local is not None:
        tqdm.write("note: running without MindSpore's cluster (every rank on this CPU host, store mode): sums go "
                   "through shared memory and a local socket group")
    if ctx.is_main and plan.caveat:
        tqdm.write(f"warning: {plan.caveat}")
    caveat, note = precision_caveat(cfg), speedups_note(cfg, backend)
    if ctx.is_main and caveat:
        tqdm.write(f"warning: {caveat}")
    for note in (note, recompute_note(cfg, backend)):
        if ctx.is_main and note:
            tqdm.write(f"note: {note}")
    seed_everything(cfg.train.seed)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    # multi-node: shared storage, or stop now
    check_shared_storage(run_dir / "checkpoints", ctx.rank, plan.world_size, world_sum(ctx))
    corpus = corpus or prepare_corpus(cfg)
    check_vocabulary(plan, len(corpus.tgt_vocab))
    startup.close("data")
    if ctx.is_main:
        corpus.copy_vocab_to(run_dir / "vocab")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        if world > 1:
            tqdm.write(f"parallel plan: {plan.describe()}")
    trainer = Trainer(cfg, corpus, ctx, startup)  # nothing compiles before run(): the cache may be chosen after
    variant = trainer.sums_path() + ("; without MindSpore's cluster" if ctx.local is not None else "")
    cache = (compile_cache(cfg, run_dir, ctx.rank, plan.world_size, variant) if cfg.train.compile_cache else
             nullcontext())
    with cache:
        return trainer.run()
