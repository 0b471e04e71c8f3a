"""Validation during training: loss and BLEU on the valid split (model selection never sees test)."""
import math
from typing import Dict

import numpy as np
import mindspore as ms
from mindspore import nn

from model.loss import LabelSmoothedCrossEntropy
from model.tokens import PAD
from trainer.config import RunConfig
from trainer.data.batching import TokenBatcher, collate
from trainer.dataset import Corpus, Split
from trainer.scoring import score
from trainer.translation import Translator


class LossSums(nn.Cell):
    """Teacher-forced loss sums for validation: (loss_sum, nll_sum, n_tokens)."""

    def __init__(self, model, criterion):
        super().__init__(auto_prefix=False)
        self.model, self.criterion = model, criterion

    def construct(self, src, tgt_in, tgt_out):
        return self.criterion(self.model(src, tgt_in), tgt_out)


class Validator:
    """Validation loss, perplexity, BLEU and chrF of the model on the valid split."""

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
        """One pass over the valid split: loss sums in batches, then greedy (train_beam) translations."""
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
