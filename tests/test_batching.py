"""Token-budget batching: coverage, rank shares, determinism, resume, fixed shapes."""
import numpy as np
import pytest

from trainer.data.batching import Batch, TokenBatcher, bucket_of, collate, pair_length
from trainer.data.tokenizer import BOS, EOS, PAD

BUCKETS = [8, 16, 32]
RNG = np.random.default_rng(1)
LENGTHS = RNG.integers(2, 40, size=1000)


def all_indices(batches):
    return np.concatenate([b.indices for b in batches]) if batches else np.zeros(0, int)


def test_every_pair_exactly_once_per_epoch():
    batcher = TokenBatcher(LENGTHS, BUCKETS, max_tokens=256, seed=3)
    for epoch in range(3):
        idx = all_indices(batcher.epoch(epoch))
        assert sorted(idx.tolist()) == list(range(len(LENGTHS)))


def test_batches_respect_budget_and_bucket():
    batcher = TokenBatcher(LENGTHS, BUCKETS, max_tokens=256, seed=3)
    for b in batcher.epoch(0):
        assert b.rows * b.bucket <= 256
        assert len(b.indices) <= b.rows
        for i in b.indices:
            assert bucket_of(LENGTHS[i], BUCKETS) == b.bucket


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_get_disjoint_equal_shares(world):
    shares = [TokenBatcher(LENGTHS, BUCKETS, 256, seed=5, rank=r, world_size=world).epoch(2) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    idx = [set(all_indices(s).tolist()) for s in shares]
    for a in range(world):
        for b in range(a + 1, world):
            assert not idx[a] & idx[b]
    assert set().union(*idx) == set(range(len(LENGTHS)))
    assert len(TokenBatcher(LENGTHS, BUCKETS, 256, seed=5, rank=0, world_size=world)) == len(shares[0])


def test_order_is_deterministic_per_seed_and_epoch():
    a = TokenBatcher(LENGTHS, BUCKETS, 256, seed=7)
    b = TokenBatcher(LENGTHS, BUCKETS, 256, seed=7)
    same = [x.indices.tolist() for x in a.epoch(4)] == [x.indices.tolist() for x in b.epoch(4)]
    assert same
    assert [x.indices.tolist() for x in a.epoch(4)] != [x.indices.tolist() for x in a.epoch(5)]
    c = TokenBatcher(LENGTHS, BUCKETS, 256, seed=8)
    assert [x.indices.tolist() for x in a.epoch(4)] != [x.indices.tolist() for x in c.epoch(4)]


def test_resume_yields_exactly_the_remaining_batches():
    batcher = TokenBatcher(LENGTHS, BUCKETS, 256, seed=11, rank=1, world_size=2)
    full = [b.indices.tolist() for b in batcher.iterate(3)]
    for start in (0, 1, 17, len(full) - 1, len(full)):
        fresh = TokenBatcher(LENGTHS, BUCKETS, 256, seed=11, rank=1, world_size=2)
        assert [b.indices.tolist() for b in fresh.iterate(3, start)] == full[start:]


def test_shapes_come_from_a_small_fixed_set():
    batcher = TokenBatcher(LENGTHS, BUCKETS, 256, seed=0)
    src = [list(range(4, 4 + n)) for n in LENGTHS]
    shapes = {collate(b, src, src)[0].shape for b in batcher.epoch(0)}
    assert shapes <= {(256 // L, L) for L in BUCKETS}


def test_collate_layout():
    src, tgt = [[10, 11, 12]], [[20, 21]]
    s, tin, tout = collate(Batch(8, 2, np.array([0])), src, tgt)
    np.testing.assert_array_equal(s[0], [10, 11, 12, EOS, PAD, PAD, PAD, PAD])
    np.testing.assert_array_equal(tin[0], [BOS, 20, 21, PAD, PAD, PAD, PAD, PAD])
    np.testing.assert_array_equal(tout[0], [20, 21, EOS, PAD, PAD, PAD, PAD, PAD])
    assert (s[1] == PAD).all() and (tout[1] == PAD).all()  # spare row carries no tokens
    assert pair_length(src[0], tgt[0]) == 4


def test_overlong_pairs_are_truncated_to_the_last_bucket():
    s, tin, tout = collate(Batch(8, 1, np.array([0])), [list(range(4, 30))], [list(range(4, 30))])
    assert s.shape == (1, 8) and s[0, -1] == EOS and tout[0, -1] == EOS
