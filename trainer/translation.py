"""Turning sentences into translations with a trained model: batching, decoding, detokenizing."""
import math
from typing import List, Sequence

import numpy as np
from tqdm import tqdm

from model.search import SequenceGenerator
from trainer.data.batching import bucket_of
from trainer.data.tokenizer import EOS, PAD


class Translator:
    """Source sentences in, detokenized target sentences out, in the input order."""

    def __init__(self, model, src_vocab, tgt_vocab, buckets: Sequence[int], beam: int,
                 length_penalty: float, max_len_a: float, max_len_b: int, batch_size: int):
        self.model, self.src_vocab, self.tgt_vocab = model, src_vocab, tgt_vocab
        self.buckets = list(buckets)
        self.max_len_a, self.max_len_b, self.batch_size = max_len_a, max_len_b, batch_size
        self.generator = SequenceGenerator(model, beam=beam, length_penalty=length_penalty)

    def cache_len(self, src_len: int) -> int:
        """Decoder cache length for a source bucket: room for the longest allowed output + EOS."""
        limit = self.model.max_target_positions(src_len)
        return min(limit, int(math.ceil(self.max_len_a * src_len + self.max_len_b)) + 1)

    def max_output(self, n_ids: int) -> int:
        """The most tokens a sentence of `n_ids` source ids (EOS included) may be translated into."""
        return int(self.max_len_a * n_ids + self.max_len_b)

    def translate_ids(self, sources: Sequence[Sequence[int]], progress: bool = False) -> List[List[int]]:
        """Token ids in, token ids out (without BOS/EOS)."""
        order = np.argsort([len(s) for s in sources], kind="stable")
        results: List[List[int]] = [[] for _ in sources]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for idx in tqdm(batches, desc="translate", disable=not progress, leave=False):
            longest = max(len(sources[i]) for i in idx) + 1
            width = bucket_of(longest, self.buckets)
            src = np.full((self.batch_size, width), PAD, np.int32)
            src[:, 0] = EOS  # spare rows hold a one-token sentence; their output is dropped
            max_lens = [1] * self.batch_size
            for row, i in enumerate(idx):
                ids = list(sources[i][:width - 1]) + [EOS]
                src[row, :len(ids)] = ids
                max_lens[row] = self.max_output(len(ids))
            cache = self.cache_len(width)
            max_lens = [min(m, cache - 1) for m in max_lens]
            outputs = self.generator.generate(src, max_lens, cache)
            for row, i in enumerate(idx):
                results[i] = outputs[row]
        return results

    def translate(self, sentences: Sequence[str], progress: bool = False) -> List[str]:
        """Plain source sentences -> plain target sentences."""
        ids = [self.src_vocab.encode(s) for s in sentences]
        return [self.tgt_vocab.decode(out) for out in self.translate_ids(ids, progress)]
