"""The training loop: batches in, jitted steps, periodic validation, best/last checkpoints, logs."""
import json
import math
import queue
import random
import threading
import time
from typing import Dict, Iterable, Iterator, Optional

import numpy as np
import mindspore as ms
import yaml
from mindspore import nn
from tqdm import tqdm

from model.loss import LabelSmoothedCrossEntropy
from trainer import checkpoint
from trainer.config import RunConfig
from trainer.data.batching import TokenBatcher, collate
from trainer.data.tokenizer import PAD
from trainer.dataset import Corpus, Split, prepare
from trainer.metrics import MetricsLog
from trainer.run_dir import build_model
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
    """Produce `items` in a background thread, `depth` ahead of the consumer."""
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for item in items:
                q.put(item)
        except BaseException as exc:  # surface producer errors in the consumer
            q.put(exc)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


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


def train(cfg: RunConfig, corpus: Optional[Corpus] = None) -> Dict[str, object]:
    """Train per `cfg`; return a summary (best validation score, steps, paths)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    seed_everything(cfg.train.seed)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus = corpus or prepare(cfg.data)
    corpus.copy_vocab_to(run_dir / "vocab")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")

    train_split = corpus.splits["train"]
    model = build_model(cfg, len(corpus.src_vocab), len(corpus.tgt_vocab))
    optimizer = nn.Adam(model.trainable_params(), learning_rate=ms.Tensor(0.0, ms.float32), beta1=cfg.optim.beta1,
                        beta2=cfg.optim.beta2, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    step_fn = TrainStep(model, LabelSmoothedCrossEntropy(cfg.optim.label_smoothing, PAD), optimizer,
                        cfg.optim.clip_norm)
    step_fn.set_train(True)
    validator = Validator(cfg, model, corpus)
    batcher = TokenBatcher(train_split.lengths(), cfg.data.buckets, cfg.data.max_tokens, cfg.train.seed)
    per_epoch = len(batcher)
    total_steps = cfg.train.max_steps or per_epoch * cfg.train.max_epochs
    log = MetricsLog(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    better = (lambda new, old: new > old) if cfg.train.best_metric == "bleu" else (lambda new, old: new < old)
    best_value: Optional[float] = None
    best: Dict[str, float] = {}
    step, start = 0, time.time()
    budget = cfg.train.time_budget_minutes * 60 if cfg.train.time_budget_minutes else None

    def validate_and_save(epoch: int, batch_index: int) -> None:
        nonlocal best_value, best
        t0 = time.time()
        val = validator.run()
        val["seconds"] = round(time.time() - t0, 2)
        log.write("valid", step, {"epoch": epoch, **val})
        meta = {"step": step, "epoch": epoch, "batch_index": batch_index}
        checkpoint.save(step_fn, ckpt_dir / "last.ckpt", meta)
        value = val[cfg.train.best_metric]
        if best_value is None or better(value, best_value):
            best_value, best = value, {"step": step, **val}
            checkpoint.save(model, ckpt_dir / "best.ckpt", meta)
        tqdm.write(f"step {step} epoch {epoch}: valid loss {val['loss']:.3f} ppl {val['ppl']:.2f} "
                   f"BLEU {val['bleu']:.2f} (best {cfg.train.best_metric} {best_value:.3f} at step {best['step']})")

    stop = False
    window = {"tokens": 0, "loss": 0.0, "nll": 0.0, "targets": 0.0, "t0": time.time()}
    for epoch in range(cfg.train.max_epochs):
        batches = prefetch(collate(b, train_split.src_ids, train_split.tgt_ids) for b in batcher.iterate(epoch))
        bar = tqdm(batches, total=per_epoch, desc=f"epoch {epoch}", disable=not cfg.train.progress,
                   dynamic_ncols=True, leave=False)
        for i, (src, tin, tout) in enumerate(bar):
            step += 1
            rate = learning_rate(step, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule,
                                 total_steps, cfg.optim.min_lr)
            optimizer.learning_rate.set_data(ms.Tensor(rate, ms.float32))  # a Parameter inside the graph
            loss_sum, nll_sum, n_tgt, gnorm = step_fn(ms.Tensor(src), ms.Tensor(tin), ms.Tensor(tout))
            n_tgt = float(n_tgt.asnumpy())
            window["tokens"] += int((src != PAD).sum()) + int(n_tgt)
            window["loss"] += float(loss_sum.asnumpy())
            window["nll"] += float(nll_sum.asnumpy())
            window["targets"] += n_tgt
            if step % cfg.train.log_every == 0:
                elapsed = time.time() - window["t0"]
                n = max(window["targets"], 1.0)
                record = {"epoch": epoch, "loss": window["loss"] / n, "nll": window["nll"] / n, "lr": rate,
                          "grad_norm": float(gnorm.asnumpy()), "tokens_per_s": window["tokens"] / elapsed,
                          "elapsed_s": round(time.time() - start, 1)}
                log.write("train", step, record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window = {"tokens": 0, "loss": 0.0, "nll": 0.0, "targets": 0.0, "t0": time.time()}
            out_of_time = budget is not None and time.time() - start >= budget
            stop = out_of_time or (cfg.train.max_steps is not None and step >= cfg.train.max_steps)
            if (cfg.train.eval_every and step % cfg.train.eval_every == 0) or stop:
                validate_and_save(epoch, i + 1)
                window["t0"] = time.time()  # validation time is not training throughput
            if stop:
                break
        bar.close()
        if stop:
            break
        if not cfg.train.eval_every or step % cfg.train.eval_every:
            validate_and_save(epoch + 1, 0)
    log.close()
    summary = {"steps": step, "epochs": round(step / max(per_epoch, 1), 2), "train_seconds": round(time.time() - start, 1),
               "best": best, "run_dir": str(run_dir), "best_checkpoint": str(ckpt_dir / "best.ckpt"),
               "last_checkpoint": str(ckpt_dir / "last.ckpt")}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
