"""Sequence packing: several sentence pairs share a row, one batch shape for a whole run.

Bucketing (batching.py) pads every pair to its bucket's length; on Multi30k that still
leaves slots empty, and each bucket shape is compiled separately (~25-30 s each on CPU).
Packing puts pairs side by side in rows of `length` slots, source and target alike, so
batches are [max_tokens // length, length] with few empty slots. Each pair keeps its own
segment id and positions; the model's segment masks keep packed sentences from attending
to each other, so the loss and its gradients are those of the padded batch (tested).

Placement is first-fit in shuffled order into the rows of the open batch; when a pair
fits no row, the batch is closed and a new one opened. The result is a pure function of
(seed, epoch), so a position (epoch, i) resumes without replaying data. Epochs may differ
slightly in length (on Multi30k by a batch or so); `len()` is epoch 0's count.

Segment id 0 marks padding, which is also the value data-parallel row sharding pads
with (PAD), so a padded row is an empty row.
"""
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from trainer.data.tokenizer import BOS, EOS, PAD


@dataclass(frozen=True)
class PackedBatch:
    """Pairs placed in `rows` rows of `length` slots: `members[r]` are row r's example indices, in order."""

    length: int
    rows: int
    members: Tuple[Tuple[int, ...], ...]

    @property
    def pairs(self) -> int:
        """How many sentence pairs the batch holds."""
        return sum(len(m) for m in self.members)


def side_lengths(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], length: int
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Slots each pair takes on each side (source + EOS, BOS + target), at most `length` (longer ones are cut)."""
    src = np.fromiter((len(s) + 1 for s in src_ids), np.int64, len(src_ids))
    tgt = np.fromiter((len(t) + 1 for t in tgt_ids), np.int64, len(tgt_ids))
    return np.minimum(src, length), np.minimum(tgt, length)


class PackedBatcher:
    """Deterministic, resumable, rank-sharded packed batches of one shape [max_tokens // length, length].

    `src_lengths` and `tgt_lengths` are the slots each pair takes on each side, as
    `side_lengths` counts them (source + EOS, BOS + target).
    """

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int], length: int, max_tokens: int,
                 seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if max_tokens < length:
            raise ValueError(f"max_tokens ({max_tokens}) must hold at least one row of {length} slots")
        self.src_len = np.minimum(np.asarray(src_lengths, np.int64), length)
        self.tgt_len = np.minimum(np.asarray(tgt_lengths, np.int64), length)
        self.length, self.rows = length, max_tokens // length
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self._cache: Dict[int, List[PackedBatch]] = {}
        self._first_epoch_count = self.batches_in(0)

    def _pack(self, order: np.ndarray) -> List[PackedBatch]:
        """First fit: each pair (in `order`) into the first row of the open batch with room on both sides, else a
        new row, else the batch is closed and a new one opened. Plain Python on lists: per pair it compares a few
        small ints, where NumPy calls cost more than the work (0.2 s an epoch of Multi30k that way, on every
        start and every epoch)."""
        length, rows = self.length, self.rows
        src_len, tgt_len = self.src_len.tolist(), self.tgt_len.tolist()
        batches = []
        fill_src, fill_tgt = [0] * rows, [0] * rows
        members: List[List[int]] = [[] for _ in range(rows)]
        used = 0
        for i in order.tolist():
            ls, lt = src_len[i], tgt_len[i]
            room_src, room_tgt = length - ls, length - lt
            r = 0
            while r < used and (fill_src[r] > room_src or fill_tgt[r] > room_tgt):
                r += 1
            if r == used:
                if used < rows:
                    used += 1
                else:  # the batch is full for this pair: close it
                    batches.append(PackedBatch(length, rows, tuple(tuple(m) for m in members[:used])))
                    fill_src, fill_tgt = [0] * rows, [0] * rows
                    members = [[] for _ in range(rows)]
                    r, used = 0, 1
            fill_src[r] += ls
            fill_tgt[r] += lt
            members[r].append(i)
        if used:
            batches.append(PackedBatch(length, rows, tuple(tuple(m) for m in members[:used])))
        return batches

    def _global_batches(self, epoch: int) -> List[PackedBatch]:
        batches = self._cache.get(epoch)
        if batches is None:
            rng = np.random.default_rng([self.seed, epoch])
            n = len(self.src_len)
            batches = self._pack(rng.permutation(n) if self.shuffle else np.arange(n))
            if self.shuffle:  # the last batch of an epoch is the emptiest: do not always train on it last
                batches = [batches[i] for i in rng.permutation(len(batches))]
            # equal counts on every rank: pad with empty batches (they carry no tokens)
            batches += [PackedBatch(self.length, self.rows, ())] * (-len(batches) % self.world_size)
            self._cache = {epoch: batches}  # one epoch kept: the trainer walks them in order
        return batches

    def epoch(self, epoch: int) -> List[PackedBatch]:
        """This rank's batches for `epoch`, in training order."""
        return self._global_batches(epoch)[self.rank::self.world_size]

    def batches_in(self, epoch: int) -> int:
        """Batches of `epoch` on each rank."""
        return len(self._global_batches(epoch)) // self.world_size

    def __len__(self) -> int:
        """Batches per epoch on each rank, as in epoch 0 (later epochs may differ slightly)."""
        return self._first_epoch_count

    def iterate(self, epoch: int, start: int = 0) -> Iterator[PackedBatch]:
        """Batches of `epoch` from position `start` on, without touching earlier ones."""
        yield from self.epoch(epoch)[start:]


def lay_out(rows: Sequence[Sequence[Tuple[Sequence[int], Sequence[int], Sequence[int]]]], n_rows: int,
            length: int, pad: int = PAD):
    """Rows of (source, decoder input, decoder target) pieces, side by side, -> the 7 [n_rows, length]
    int32 arrays of a packed batch: the three token arrays, then source and target segment ids
    (1, 2, ... per row, 0 at padding) and positions (from 0 per sentence). Rows past the
    given ones are padding.
    """
    shape = (n_rows, length)
    src_arr, tin_arr, tout_arr = (np.full(shape, pad, np.int32) for _ in range(3))
    src_seg, tgt_seg, src_pos, tgt_pos = (np.zeros(shape, np.int32) for _ in range(4))
    for row, pieces in enumerate(rows):
        at_src = at_tgt = 0
        for seg, (s, t_in, t_out) in enumerate(pieces, start=1):
            cols_s, cols_t = slice(at_src, at_src + len(s)), slice(at_tgt, at_tgt + len(t_in))
            src_arr[row, cols_s], src_seg[row, cols_s], src_pos[row, cols_s] = s, seg, np.arange(len(s))
            tin_arr[row, cols_t], tout_arr[row, cols_t] = t_in, t_out
            tgt_seg[row, cols_t], tgt_pos[row, cols_t] = seg, np.arange(len(t_in))
            at_src, at_tgt = at_src + len(s), at_tgt + len(t_in)
    return src_arr, tin_arr, tout_arr, src_seg, tgt_seg, src_pos, tgt_pos


def collate_packed(batch: PackedBatch, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]):
    """[rows, length] int32 arrays of a packed batch, as `lay_out` describes them.

    Source gets EOS appended; decoder input is BOS + target, decoder target is target + EOS,
    as in `batching.collate`. Sequences longer than a row are truncated.
    """
    length = batch.length

    def pieces(i):
        t = list(tgt[i][:length - 1])
        return list(src[i][:length - 1]) + [EOS], [BOS] + t, t + [EOS]

    return lay_out([[pieces(i) for i in members] for members in batch.members], batch.rows, length)
