"""Identical batches for every contestant of bench/throughput.

Synthetic: `rows` sentence pairs with random lengths, padded to `length` (the notebook pads
every sequence to 32). Real: Multi30k pairs through the notebook's word-level preprocessing,
either padded to 32 in file order (the notebook's batching) or bucketed by length and packed
to a token budget (mindrun's). A batch is (src, tgt_in, tgt_out) int32 arrays; padding is
`pad`, so each framework can use its own id. Tokens counted are non-pad source + target.
"""
from typing import List, Tuple

import numpy as np

Batch = Tuple[np.ndarray, np.ndarray, np.ndarray]
BOS, EOS = 2, 3


def _pack(pairs, rows_len: int, pad: int) -> Batch:
    n = len(pairs)
    src = np.full((n, rows_len), pad, np.int32)
    tin = np.full((n, rows_len), pad, np.int32)
    tout = np.full((n, rows_len), pad, np.int32)
    for i, (s, t) in enumerate(pairs):
        s, t = list(s)[:rows_len], list(t)[:rows_len - 1]
        src[i, :len(s)] = s
        tin[i, :len(t) + 1] = [BOS] + t
        tout[i, :len(t) + 1] = t + [EOS]
    return src, tin, tout


def synthetic(count: int, rows: int, length: int, src_vocab: int, tgt_vocab: int, pad: int, seed: int = 0
              ) -> List[Batch]:
    """`count` batches of `rows` pairs, content lengths uniform in [length // 4, length - 1], padded to `length`."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        pairs = []
        for _ in range(rows):
            ls, lt = rng.integers(length // 4, length, 2)
            pairs.append((rng.integers(4, src_vocab, ls), rng.integers(4, tgt_vocab, lt - 1)))
        batches.append(_pack(pairs, length, pad))
    return batches


def repack(batch: Batch, pad: int, length: int = 64):
    """The pairs of a padded batch, placed by mindrun's packer in rows of `length` (first-fit decreasing).

    Placement is the trainer's (trainer/data/packing.py), fed longest pair first (first-fit
    decreasing); the token ids are the batch's own, so the packed batch trains on exactly
    the same sentences. Different batches may need different row counts (one compile each).
    """
    from trainer.data.packing import PackedBatcher, lay_out

    src, tin, tout = batch
    s_len, t_len = (src != pad).sum(1), (tout != pad).sum(1)
    order = np.argsort(-np.maximum(s_len, t_len), kind="stable")
    placed = PackedBatcher(s_len[order], t_len[order], length, length * len(src), seed=0, shuffle=False).epoch(0)
    assert len(placed) == 1, "a padded batch always fits one packed batch of as many rows"
    rows = [[(src[i, :s_len[i]], tin[i, :t_len[i]], tout[i, :t_len[i]]) for i in order[list(row)]]
            for row in placed[0].members]
    return lay_out(rows, len(rows), length, pad)


def tokens(batch: Batch, pad: int) -> int:
    """Non-pad source + target tokens of a batch."""
    return int((batch[0] != pad).sum() + (batch[2] != pad).sum())


def real_fixed(pairs, rows: int, length: int, pad: int, count: int) -> List[Batch]:
    """The notebook's batching: `rows` pairs in file order, padded or cut to `length`."""
    return [_pack(pairs[i:i + rows], length, pad) for i in range(0, rows * count, rows)]


def real_bucketed(pairs, max_tokens: int, buckets, pad: int, count: int, seed: int = 0) -> List[Batch]:
    """mindrun's batching: pairs grouped by length bucket, each batch packed to `max_tokens` slots."""
    by_bucket = {b: [] for b in buckets}
    for s, t in pairs:
        need = max(len(s), len(t) + 1)
        fit = next((b for b in buckets if need <= b), None)
        if fit is not None:
            by_bucket[fit].append((s, t))
    batches = []
    for b, group in by_bucket.items():
        per = max(1, max_tokens // b)
        batches += [_pack(group[i:i + per], b, pad) for i in range(0, len(group) - per + 1, per)]
    order = np.random.default_rng(seed).permutation(len(batches))
    return [batches[i] for i in order[:count]]


def real_packed(pairs, max_tokens: int, length: int, pad: int, count: int, seed: int = 0):
    """mindrun's packing: pairs in shuffled order placed by trainer/data/packing.py into
    [max_tokens // length, length] batches. Returns (packed arrays, the same pairs padded
    per batch) tuples: the padded twin is only for counting tokens and FLOPs alike."""
    from trainer.data.packing import PackedBatcher, lay_out

    s_len = np.array([len(s) for s, _ in pairs])
    t_len = np.array([len(t) + 1 for _, t in pairs])
    keep = np.flatnonzero((s_len <= length) & (t_len <= length))
    batches = PackedBatcher(s_len[keep], t_len[keep], length, max_tokens, seed=seed).epoch(0)[:count]
    out = []
    for b in batches:
        rows = [[(list(pairs[i][0]), [BOS] + list(pairs[i][1]), list(pairs[i][1]) + [EOS]) for i in keep[list(row)]]
                for row in b.members]
        twin = _pack([pairs[i] for row in b.members for i in keep[list(row)]], length, pad)
        out.append((lay_out(rows, b.rows, length, pad), twin))
    return out
