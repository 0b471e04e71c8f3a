"""Greedy and beam search with incremental decoding (cached keys and values).

The model runs one jitted step per output position over fixed-shape caches, so a
batch compiles once per (rows, source length, cache length); the bookkeeping of
beams happens on the host on small arrays (the top 2k candidates per sentence).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from model.tokens import BOS as BOS_ID, EOS as EOS_ID



def _mutable(*caches):
    """Per-layer cache tuples as graph inputs; without `mutable` graph mode would take a
    tuple for a constant and compile a new graph for every call."""
    return tuple(ms.mutable(tuple(c)) for c in caches)


class _Start(nn.Cell):
    """Encode, build caches, repeat them for `beam` hypotheses per sentence."""

    def __init__(self, model, max_len: int, beam: int):
        super().__init__(auto_prefix=False)
        self.model, self.max_len, self.beam = model, max_len, beam

    def construct(self, src):
        src_bias, ck, cv, sk, sv = self.model.start_decoding(src, self.max_len)
        if self.beam > 1:
            src_bias = ops.repeat_interleave(src_bias, self.beam, 0)
            ck = self._repeat(ck)
            cv = self._repeat(cv)
            sk = self._repeat(sk)
            sv = self._repeat(sv)
        return src_bias, ck, cv, sk, sv

    def _repeat(self, caches):
        out = ()
        for c in caches:
            out += (ops.repeat_interleave(c, self.beam, 0),)
        return out


class _GreedyStep(nn.Cell):
    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, token, position, src_bias, ck, cv, sk, sv):
        lprobs, sk, sv = self.model.decode_step(token, position, src_bias, ck, cv, sk, sv)
        return ops.argmax(lprobs, -1).astype(ms.int32), sk, sv


class _BeamStep(nn.Cell):
    """Reorder caches to the surviving beams, step, return the top 2k continuations per sentence."""

    def __init__(self, model, beam: int):
        super().__init__(auto_prefix=False)
        self.model, self.beam = model, beam

    def construct(self, token, position, reorder, scores, src_bias, ck, cv, sk, sv):
        new_k, new_v = (), ()
        for i in range(len(sk)):
            new_k += (ops.gather(sk[i], reorder, 0),)
            new_v += (ops.gather(sv[i], reorder, 0),)
        sk, sv = new_k, new_v
        lprobs, sk, sv = self.model.decode_step(token, position, src_bias, ck, cv, sk, sv)  # [B*k, V]
        vocab = lprobs.shape[-1]
        cand = (scores.reshape(-1, 1) + lprobs).reshape(-1, self.beam * vocab)  # [B, k*V]
        top_scores, top_idx = ops.topk(cand, 2 * self.beam)
        return top_scores, top_idx.astype(ms.int32), sk, sv


class SequenceGenerator:
    """Translate batches of padded source ids with greedy (beam=1) or beam search.

    Length penalty follows fairseq: a finished hypothesis scores sum(log p) / len**lp.
    """

    def __init__(self, model, beam: int = 5, length_penalty: float = 1.0):
        self.model, self.beam, self.length_penalty = model, beam, length_penalty
        self._starts: Dict[int, nn.Cell] = {}
        self._greedy = _GreedyStep(model)
        self._beam_step = _BeamStep(model, beam)

    def _start(self, max_len: int) -> nn.Cell:
        if max_len not in self._starts:
            self._starts[max_len] = _Start(self.model, max_len, self.beam if self.beam > 1 else 1)
        return self._starts[max_len]

    def generate(self, src: np.ndarray, max_lens: Sequence[int], cache_len: int) -> List[List[int]]:
        """src [B, Ls] int32 (padded); max_lens[i] caps sentence i's output; cache_len >= max(max_lens)."""
        self.model.set_train(False)
        if self.beam == 1:
            return self._greedy_search(src, max_lens, cache_len)
        return self._beam_search(src, max_lens, cache_len)

    def _greedy_search(self, src, max_lens, cache_len) -> List[List[int]]:
        rows = src.shape[0]
        src_bias, ck, cv, sk, sv = self._start(cache_len)(ms.Tensor(src))
        token = np.full((rows, 1), BOS_ID, np.int32)
        out: List[List[int]] = [[] for _ in range(rows)]
        done = np.zeros(rows, bool)
        for t in range(cache_len):
            nxt, sk, sv = self._greedy(ms.Tensor(token), ms.Tensor(t, ms.int32), src_bias, *_mutable(ck, cv, sk, sv))
            nxt = nxt.asnumpy()
            for i in np.flatnonzero(~done):
                if nxt[i] == EOS_ID or len(out[i]) >= max_lens[i]:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
            if done.all():
                break
            token = nxt.reshape(rows, 1)
        return out

    def _beam_search(self, src, max_lens, cache_len) -> List[List[int]]:
        rows, k = src.shape[0], self.beam
        src_bias, ck, cv, sk, sv = self._start(cache_len)(ms.Tensor(src))
        vocab = self.model.tgt_vocab
        scores = np.full((rows, k), -1e9, np.float32)
        scores[:, 0] = 0.0  # all beams start identical: keep one alive
        hyps: List[List[List[int]]] = [[[] for _ in range(k)] for _ in range(rows)]
        finished: List[List[Tuple[float, List[int]]]] = [[] for _ in range(rows)]
        done = np.zeros(rows, bool)
        token = np.full((rows * k, 1), BOS_ID, np.int32)
        reorder = np.arange(rows * k, dtype=np.int32)
        for t in range(cache_len):
            top_s, top_i, sk, sv = self._beam_step(
                ms.Tensor(token), ms.Tensor(t, ms.int32), ms.Tensor(reorder), ms.Tensor(scores),
                src_bias, *_mutable(ck, cv, sk, sv))
            top_s, top_i = top_s.asnumpy(), top_i.asnumpy()
            for b in range(rows):
                if done[b]:
                    reorder[b * k:(b + 1) * k] = b * k  # any live row will do
                    continue
                last = t + 1 >= max_lens[b]
                new_hyps, n = [], 0
                for rank, (score, idx) in enumerate(zip(top_s[b], top_i[b])):
                    beam_i, tok = divmod(int(idx), vocab)
                    seq = hyps[b][beam_i]
                    if tok == EOS_ID or last:
                        # an EOS among the top k ends a hypothesis; at max length every beam ends
                        if rank < k and score > -1e8:
                            final = seq if tok == EOS_ID else seq + [tok]
                            norm = score / (len(final) + 1) ** self.length_penalty
                            finished[b].append((norm, final))
                        continue
                    scores[b, n] = score
                    token[b * k + n, 0] = tok
                    reorder[b * k + n] = b * k + beam_i
                    new_hyps.append(seq + [tok])
                    n += 1
                    if n == k:
                        break
                hyps[b] = new_hyps + [[] for _ in range(k - len(new_hyps))]
                scores[b, n:] = -1e9
                reorder[b * k + n:(b + 1) * k] = b * k
                if len(finished[b]) >= k or last or n == 0:
                    done[b] = True
            if done.all():
                break
        return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]
