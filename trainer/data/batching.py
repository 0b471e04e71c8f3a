"""Token-budget batching in the manner of fairseq's max_tokens, with fixed bucket shapes.

Each pair goes to the smallest bucket length that holds both sides; a bucket of
length L makes batches of max_tokens // L rows, so every batch of a bucket has the
same shape [rows, L] and graph mode compiles once per bucket. The order of pairs
within a bucket and of batches within an epoch is a pure function of (seed, epoch),
so any position (epoch, i) can be resumed without replaying the data.
"""
from dataclasses import dataclass
from typing import Iterator, List, Sequence

import numpy as np

from trainer.data.tokenizer import BOS, EOS, PAD


@dataclass(frozen=True)
class Batch:
    """Example indices packed into one bucket; `indices` may be shorter than `rows` (or empty)."""

    bucket: int  # padded length
    rows: int
    indices: np.ndarray


def bucket_of(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length, or the last one (the pair is then truncated)."""
    i = int(np.searchsorted(buckets, length, side="left"))
    return buckets[min(i, len(buckets) - 1)]


def pair_length(src_ids: Sequence[int], tgt_ids: Sequence[int]) -> int:
    """Padded length a pair needs: source + EOS, and BOS/EOS-shifted target."""
    return max(len(src_ids), len(tgt_ids)) + 1


class TokenBatcher:
    """Deterministic, resumable, rank-sharded batches under a token budget."""

    def __init__(self, lengths: Sequence[int], buckets: Sequence[int], max_tokens: int, seed: int,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.buckets = list(buckets)
        self.rows = {b: max(1, max_tokens // b) for b in self.buckets}
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        lengths = np.asarray(lengths)
        which = np.searchsorted(self.buckets, lengths, side="left").clip(max=len(self.buckets) - 1)
        self.members = {b: np.flatnonzero(which == i) for i, b in enumerate(self.buckets)}

    def _global_batches(self, epoch: int) -> List[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for bucket, idx in self.members.items():
            if self.shuffle:
                idx = rng.permutation(idx)
            rows = self.rows[bucket]
            batches.extend(Batch(bucket, rows, idx[i:i + rows]) for i in range(0, len(idx), rows))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        # equal counts on every rank: pad with empty batches (they carry no tokens)
        short = -len(batches) % self.world_size
        empty_bucket = self.buckets[0]
        batches.extend(Batch(empty_bucket, self.rows[empty_bucket], np.zeros(0, np.int64)) for _ in range(short))
        return batches

    def epoch(self, epoch: int) -> List[Batch]:
        """This rank's batches for `epoch`, in training order."""
        return self._global_batches(epoch)[self.rank::self.world_size]

    def __len__(self) -> int:
        """Batches per epoch on each rank (the same for every epoch)."""
        total = sum(-(-len(idx) // self.rows[b]) for b, idx in self.members.items())
        return -(-total // self.world_size)

    def batches_in(self, epoch: int) -> int:
        """Batches of `epoch` on each rank (every epoch has the same count)."""
        return len(self)

    def iterate(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches of `epoch` from position `start` on, without touching earlier ones."""
        yield from self.epoch(epoch)[start:]


def collate(batch: Batch, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]):
    """Pad a batch to [rows, bucket] int32 arrays: source, decoder input, decoder target.

    Source gets EOS appended; decoder input is BOS + target, decoder target is
    target + EOS. Sequences longer than the bucket are truncated.
    """
    length = batch.bucket
    src_arr = np.full((batch.rows, length), PAD, np.int32)
    tin_arr = np.full((batch.rows, length), PAD, np.int32)
    tout_arr = np.full((batch.rows, length), PAD, np.int32)
    for row, i in enumerate(batch.indices):
        s = list(src[i][:length - 1]) + [EOS]
        t = list(tgt[i][:length - 1])
        src_arr[row, :len(s)] = s
        tin_arr[row, :len(t) + 1] = [BOS] + t
        tout_arr[row, :len(t) + 1] = t + [EOS]
    return src_arr, tin_arr, tout_arr
