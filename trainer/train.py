"""The training loop: batches in, jitted steps, periodic validation, best/last checkpoints, logs."""
import contextlib
import json
import math
import os
import queue
import random
import signal
import threading
import time
from typing import Dict, Iterable, Iterator, Optional

import numpy as np
import mindspore as ms
import yaml
from mindspore import nn
from tqdm import tqdm

from model.loss import LabelSmoothedCrossEntropy
from model.parallel.layout import apply_hybrid
from trainer import checkpoint
from trainer.config import ConfigError, RunConfig
from trainer.data.batching import TokenBatcher, collate
from trainer.data.packing import PackedBatcher, collate_packed, side_lengths
from trainer.data.tokenizer import PAD
from trainer.dataset import Corpus, Split, prepare
from trainer.metrics import MetricsLog
from trainer.parallel.clock import RunClock
from trainer.parallel.context import ParallelContext, init_parallel, is_scheduler, world_size_from_env
from trainer.parallel.data import gather_full_params, shard_rows
from trainer.parallel.plan import make_plan
from trainer.run_dir import build_model, kernel_dir
from trainer.schedule import learning_rate
from trainer.scoring import score
from trainer.step import TrainStep
from trainer.translation import Translator


class LossSums(nn.Cell):
    """Teacher-forced loss sums for validation: (loss_sum, nll_sum, n_tokens)."""

    def __init__(self, model, criterion):
        super().__init__(auto_prefix=False)
        self.model, self.criterion = model, criterion

    def construct(self, src, tgt_in, tgt_out):
        return self.criterion(self.model(src, tgt_in), tgt_out)


def prefetch(items: Iterable, depth: int = 4) -> Iterator:
    """Produce `items` in a background thread, `depth` ahead of the consumer.

    The producer stops when the consumer stops early (break, exception, close()).
    """
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    done, stopped = object(), threading.Event()

    def put(item) -> bool:
        while not stopped.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # surface producer errors in the consumer
            put(exc)
        put(done)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()


def seed_everything(seed: int) -> None:
    """Python, NumPy and MindSpore RNGs from one seed."""
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


class Validator:
    """Validation loss and BLEU on the valid split (model selection never sees test)."""

    def __init__(self, cfg: RunConfig, model, corpus: Corpus):
        self.cfg, self.model, self.corpus = cfg, model, corpus
        self.split: Split = corpus.splits["valid"]
        self.loss = LossSums(model, LabelSmoothedCrossEntropy(cfg.optim.label_smoothing, PAD))
        self.batcher = TokenBatcher(self.split.lengths(), cfg.data.buckets, cfg.data.max_tokens,
                                    seed=0, shuffle=False)
        self.translator = Translator(model, corpus.src_vocab, corpus.tgt_vocab, cfg.data.buckets,
                                     cfg.eval.train_beam, cfg.eval.length_penalty, cfg.eval.max_len_a,
                                     cfg.eval.max_len_b, cfg.eval.batch_size)

    def run(self) -> Dict[str, float]:
        self.model.set_train(False)
        total = np.zeros(3)
        for batch in self.batcher.epoch(0):
            arrays = collate(batch, self.split.src_ids, self.split.tgt_ids)
            total += [float(x.asnumpy()) for x in self.loss(*map(ms.Tensor, arrays))]
        hyps = self.translator.translate_ids(self.split.src_ids)
        hyps = [self.corpus.tgt_vocab.decode(h) for h in hyps]
        refs = [t for _, t in self.split.pairs]
        scores = score(hyps, refs)
        self.model.set_train(True)
        n = max(total[2], 1.0)
        return {"loss": float(total[0] / n), "nll": float(total[1] / n), "ppl": math.exp(min(total[1] / n, 50)),
                "bleu": scores["bleu"], "bleu_lowercase": scores["bleu_lowercase"], "chrf": scores["chrf"]}


def training_batches(cfg: RunConfig, split: Split):
    """The training split's batcher and its collate function: length buckets, or packed rows."""
    data = cfg.data
    if data.packing:
        src_len, tgt_len = side_lengths(split.src_ids, split.tgt_ids, data.pack_length)
        return PackedBatcher(src_len, tgt_len, data.pack_length, data.max_tokens, cfg.train.seed), collate_packed
    return TokenBatcher(split.lengths(), data.buckets, data.max_tokens, cfg.train.seed), collate


class Trainer:
    """Owns the model, the jitted step and the bookkeeping of one training run (one rank of it)."""

    def __init__(self, cfg: RunConfig, corpus: Corpus, ctx: Optional[ParallelContext] = None):
        self.cfg, self.corpus = cfg, corpus
        self.ctx = ctx or ParallelContext(make_plan(cfg, 1, vocab_size=len(corpus.tgt_vocab)))
        self.run_dir = cfg.run_dir()
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.train_split = corpus.splits["train"]
        self.model = build_model(cfg, len(corpus.src_vocab), len(corpus.tgt_vocab))  # same init on every rank
        plan = self.ctx.plan
        self.layout = apply_hybrid(self.model, self.ctx.mp_group, self.ctx.mp_rank, plan.model_parallel)
        opt = cfg.optim
        self.optimizer = nn.Adam(self.model.trainable_params(), learning_rate=ms.Tensor(0.0, ms.float32),
                                 beta1=opt.beta1, beta2=opt.beta2, eps=opt.eps, weight_decay=opt.weight_decay)
        self.step_fn = TrainStep(self.model, LabelSmoothedCrossEntropy(opt.label_smoothing, PAD), self.optimizer,
                                 opt.clip_norm, self.ctx.dp_group, self.ctx.mp_group, plan.model_parallel,
                                 self.layout.shard_axis, fused_loss=cfg.train.fused_loss,
                                 kernel_dir=kernel_dir(cfg))
        self.step_fn.set_train(True)
        self.validator = Validator(cfg, self.model, corpus)
        self.batcher, self.collate = training_batches(cfg, self.train_split)
        self.total_steps = cfg.train.max_steps or len(self.batcher) * cfg.train.max_epochs
        self.step, self.epoch, self.batch_index = 0, 0, 0
        self.elapsed_before = 0.0  # training seconds of the runs this one resumes
        self.clock: Optional[RunClock] = None
        self.time_fraction: Optional[float] = None  # share of train.time_budget_minutes spent
        self.best_value: Optional[float] = None
        self.best: Dict[str, float] = {}
        self.log: Optional[MetricsLog] = None
        self.stop_signal: Optional[int] = None  # SIGTERM/SIGINT seen: save last.ckpt and stop

    def resume(self) -> bool:
        """Load last.ckpt (weights, Adam state, position) if present; return whether it was."""
        last = self.ckpt_dir / "last.ckpt"
        if not last.is_file():
            return False
        if self.ctx.plan.model_parallel > 1:
            raise ConfigError("train.resume with parallel.model_parallel > 1 needs sharded checkpoints, which "
                              "are not built yet; resume with the same data_parallel and model_parallel=1")
        meta = checkpoint.load_into(self.step_fn, last)
        self.step, self.epoch, self.batch_index = int(meta["step"]), int(meta["epoch"]), int(meta["batch_index"])
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))
        best = self.ckpt_dir / "best.ckpt"
        if best.is_file():  # best.ckpt's own metadata, in case a crash fell between the two saves
            best_meta = checkpoint.read_meta(best)
            self.best_value, self.best = best_meta["best_value"], {"step": int(best_meta["best_step"])}
        tqdm.write(f"resuming {self.run_dir} at step {self.step} (epoch {self.epoch}, batch {self.batch_index})")
        return True

    def _improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.cfg.train.best_metric == "bleu" else value < self.best_value

    def validate_and_save(self, epoch: int, batch_index: int) -> None:
        """Validate, then write best.ckpt (if better) and last.ckpt with the resume position.

        (epoch, batch_index) is where training continues: the next batch to run.
        """
        t0 = time.time()
        val = self.validator.run()
        val["seconds"] = round(time.time() - t0, 2)
        self.log.write("valid", self.step, {"epoch": round(self.step / len(self.batcher), 2), **val})
        value = val[self.cfg.train.best_metric]
        improved = self._improves(value)
        if improved:
            self.best_value, self.best = value, {"step": self.step, **val}
        meta = {"step": self.step, "epoch": epoch, "batch_index": batch_index, "elapsed_s": self.clock.local(),
                "best_value": float(self.best_value), "best_step": self.best["step"]}
        self._save(improved, meta)
        tqdm.write(f"step {self.step} epoch {epoch}: valid loss {val['loss']:.3f} ppl {val['ppl']:.2f} "
                   f"BLEU {val['bleu']:.2f} (best {self.cfg.train.best_metric} {self.best_value:.3f} "
                   f"at step {self.best['step']})")

    def _save(self, best: bool, meta: Dict) -> None:
        """best.ckpt (weights) if `best`, and last.ckpt (with Adam state unless the model is split).

        With model_parallel > 1 every rank takes part in gathering the shards; rank 0 writes.
        """
        if self.ctx.plan.model_parallel > 1:
            full = gather_full_params(self.model, self.layout.shard_axis, self.ctx)
            if self.ctx.is_main:
                if best:
                    checkpoint.save(full, self.ckpt_dir / "best.ckpt", meta)
                checkpoint.save(full, self.ckpt_dir / "last.ckpt", meta)
            return
        if self.ctx.is_main:
            if best:
                checkpoint.save(self.model, self.ckpt_dir / "best.ckpt", meta)
            checkpoint.save(self.step_fn, self.ckpt_dir / "last.ckpt", meta)

    def save_position(self, epoch: int, batch_index: int) -> None:
        """Write last.ckpt (weights, Adam state, position) without validating: the fast save on a signal."""
        best = float(self.best_value) if self.best_value is not None else float("nan")
        meta = {"step": self.step, "epoch": epoch, "batch_index": batch_index, "elapsed_s": self.clock.local(),
                "best_value": best, "best_step": self.best.get("step", 0)}
        self._save(False, meta)
        tqdm.write(f"saved {self.ckpt_dir / 'last.ckpt'} at step {self.step} after signal {self.stop_signal}")

    def _budget_spent(self, budget: Optional[float]) -> bool:
        """Update the share of the time budget spent (resumed runs' time included); True once spent.

        Every rank reads the same clock, so all ranks stop at the same step with the same rate.
        """
        if budget is None:
            return False
        self.time_fraction = self.clock.elapsed() / budget
        return self.time_fraction >= 1.0

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum

    def train_step(self, *arrays):
        """One optimiser step on a collated batch (padded: src, tin, tout; packed: also segments and positions).

        Returns (loss_sum, nll_sum, target tokens, grad-norm tensor, learning rate).
        """
        self.step += 1
        opt = self.cfg.optim
        rate = learning_rate(self.step, opt.lr, opt.warmup_steps, opt.schedule, self.total_steps, opt.min_lr,
                             self.time_fraction)
        self.optimizer.learning_rate.set_data(ms.Tensor(rate, ms.float32))  # a Parameter inside the graph
        arrays = shard_rows(arrays, self.ctx)
        loss_sum, nll_sum, n_tgt, gnorm = self.step_fn(*map(ms.Tensor, arrays))
        return float(loss_sum.asnumpy()), float(nll_sum.asnumpy()), float(n_tgt.asnumpy()), gnorm, rate

    def run(self) -> Dict[str, object]:
        """Train until max_epochs, max_steps or the time budget; return the summary."""
        cfg = self.cfg
        resumed = cfg.train.resume and self.resume()
        self.log = MetricsLog(self.run_dir, enabled=self.ctx.is_main, resume_step=self.step if resumed else None)
        self.clock = RunClock(self.ctx, self.elapsed_before)
        start = time.time()
        budget = cfg.train.time_budget_minutes * 60 if cfg.train.time_budget_minutes else None
        max_steps = cfg.train.max_steps
        # a finished run, resumed, or one whose budget the runs it resumes already spent
        stop = (max_steps is not None and self.step >= max_steps) or self._budget_spent(budget)
        window = _Window()
        per_epoch = len(self.batcher)
        handlers = _catch(self._on_signal)
        for epoch in range(self.epoch, cfg.train.max_epochs):
            if stop or self.stop_signal is not None:
                break
            first = self.batch_index if epoch == self.epoch else 0
            batches = prefetch(self.collate(b, self.train_split.src_ids, self.train_split.tgt_ids)
                               for b in self.batcher.iterate(epoch, first))
            bar = tqdm(batches, total=self.batcher.batches_in(epoch), initial=first, desc=f"epoch {epoch}",
                       disable=not (cfg.train.progress and self.ctx.is_main), dynamic_ncols=True, leave=False)
            for i, arrays in enumerate(bar, start=first):
                loss_sum, nll_sum, n_tgt, gnorm, rate = self.train_step(*arrays)
                window.add(int((arrays[0] != PAD).sum()) + int(n_tgt), loss_sum, nll_sum, n_tgt)
                if self.step % cfg.train.log_every == 0:
                    record = {"epoch": epoch, **window.flush(), "lr": rate, "grad_norm": float(gnorm.asnumpy()),
                              "elapsed_s": round(time.time() - start, 1)}
                    self.log.write("train", self.step, record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                if self.stop_signal is not None:  # the launcher's grace period: keep the work, then stop
                    self.save_position(epoch, i + 1)
                    break
                stop = self._budget_spent(budget) or (max_steps is not None and self.step >= max_steps)
                if (cfg.train.eval_every and self.step % cfg.train.eval_every == 0) or stop:
                    with window.paused():  # validation time is not training throughput
                        self.validate_and_save(epoch, i + 1)
                if stop:
                    break
            bar.close()
            if self.stop_signal is not None:
                break
            if not stop and (not cfg.train.eval_every or self.step % cfg.train.eval_every):
                with window.paused():
                    self.validate_and_save(epoch + 1, 0)
        if handlers is not None:
            _catch(None, handlers)
        self.log.close()
        summary = {"steps": self.step, "interrupted_by_signal": self.stop_signal,
                   "epochs": round(self.step / max(per_epoch, 1), 2),
                   "train_seconds": round(time.time() - start, 1), "best": self.best, "run_dir": str(self.run_dir),
                   "best_checkpoint": str(self.ckpt_dir / "best.ckpt"),
                   "last_checkpoint": str(self.ckpt_dir / "last.ckpt")}
        if self.ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary


class _Window:
    """Running sums between two log lines: tokens/s and per-token losses."""

    def __init__(self):
        self.tokens, self.loss, self.nll, self.targets = 0, 0.0, 0.0, 0.0
        self.t0 = time.time()

    def add(self, tokens: int, loss_sum: float, nll_sum: float, targets: float) -> None:
        self.tokens += tokens
        self.loss += loss_sum
        self.nll += nll_sum
        self.targets += targets

    @contextlib.contextmanager
    def paused(self):
        """Leave the time spent inside out of tokens/s (the tokens before it still count)."""
        start = time.time()
        try:
            yield
        finally:
            self.t0 += time.time() - start

    def flush(self) -> Dict[str, float]:
        n = max(self.targets, 1.0)
        out = {"loss": self.loss / n, "nll": self.nll / n, "tokens_per_s": self.tokens / (time.time() - self.t0)}
        self.__init__()
        return out


def _catch(handler, previous=None):
    """Route SIGTERM/SIGINT to `handler` (or restore `previous`); a no-op outside the main thread."""
    signals = (signal.SIGTERM, signal.SIGINT)
    try:
        if previous is not None:
            for sig, old in previous.items():
                signal.signal(sig, old)
            return None
        return {sig: signal.signal(sig, handler) for sig in signals}
    except ValueError:  # not the main thread: signals stay with whoever owns them
        return None


def train(cfg: RunConfig, corpus: Optional[Corpus] = None) -> Dict[str, object]:
    """Train per `cfg` (resuming from last.ckpt when cfg.train.resume); return a summary.

    Under `mindrun launch --max_restarts N` a restarted worker (MINDRUN_RESTART_COUNT > 0)
    resumes from last.ckpt by itself; SIGTERM saves last.ckpt at the next step and stops.
    """
    if int(os.environ.get("MINDRUN_RESTART_COUNT", "0") or 0) > 0:
        cfg.train.resume = True
    ms.set_context(mode=ms.GRAPH_MODE)
    if is_scheduler():  # msrun-style launchers run the script in the scheduler process too
        from mindspore.communication import init

        init()
        return {"role": "scheduler"}
    world = world_size_from_env()
    backend = ms.get_context("device_target")
    plan = make_plan(cfg, world, backend)  # layout errors before anything compiles
    ctx = init_parallel(plan)
    seed_everything(cfg.train.seed)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus = corpus or prepare(cfg.data)
    plan = make_plan(cfg, world, backend, vocab_size=len(corpus.tgt_vocab))
    if ctx.is_main:
        corpus.copy_vocab_to(run_dir / "vocab")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        if world > 1:
            tqdm.write(f"parallel plan: {plan.describe()}")
    return Trainer(cfg, corpus, ctx).run()
