"""trainer/parallel/shared_sum.py: sums through shared memory, its group forming and its failures. The members are
threads here (each with its own mapping and socket, as processes have); the launched 2-worker job that sums a
train step's gradients this way is in tests/test_precision.py."""
import os
import threading
import uuid

import numpy as np
import pytest

from trainer.parallel.shared_sum import SharedSum, SharedSumError


def members(size, count, dtype, timeout=10.0):
    """`size` SharedSum members of one new group, formed concurrently (index order)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    made, errors = [None] * size, []

    def form(i):
        try:
            made[i] = SharedSum(name, i, size, count, dtype, timeout=timeout)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=form, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not os.path.exists(f"/dev/shm/mindrun-{name}")  # unlinked once every member mapped it
    return made


def together(group, inputs):
    """Every member's sum of its input, called concurrently."""
    out = [None] * len(group)

    def call(i):
        out[i] = group[i](inputs[i])
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(group))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_three_members_sum_exactly_and_again():
    group = members(3, 1001, np.float32)  # chunks of 333/334: uneven
    rng = np.random.default_rng(0)
    for _ in range(3):  # the result region is reused: a stale chunk would show
        xs = [rng.normal(size=(7, 143)).astype(np.float32) for _ in group]
        want = (xs[0] + xs[1]) + xs[2]  # float32, in rank order: what every chunk computes
        for got in together(group, xs):
            assert got.shape == (7, 143) and got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
    for g in group:
        g.close()


def test_float16_inputs_are_summed_in_float32():
    group = members(3, 2, np.float16)
    xs = [np.array([2048, 0.5], np.float16), np.array([1, 0.25], np.float16), np.array([1, 0.25], np.float16)]
    for got in together(group, xs):
        assert got.dtype == np.float16
        # in float16, 2048 + 1 rounds back to 2048 (its spacing there is 2) and so does + 1 again; in float32 the
        # sum is 2050, which float16 holds
        np.testing.assert_array_equal(got, np.array([2050, 1.0], np.float16))
    for g in group:
        g.close()


def test_a_member_that_leaves_fails_the_others_next_sum_with_its_index():
    group = members(2, 8, np.float32)
    group[1].close()
    with pytest.raises(SharedSumError, match="group member 1 left the group"):
        group[0](np.ones(8, np.float32))
    group[0].close()


def test_a_wrong_size_is_an_error_before_any_barrier():
    group = members(2, 8, np.float32)
    with pytest.raises(SharedSumError, match="got 9 elements, sized for 8"):
        group[0](np.ones(9, np.float32))
    for g in group:
        g.close()


def test_shared_memory_too_small_for_the_segment_tells_every_member_why(monkeypatch):
    """A container's /dev/shm (64 MiB by default) can be smaller than the sums need: the first rank's reservation
    fails, and every member gets SharedMemoryTooSmall with the sizes (the seam then falls back to AllReduce, all
    ranks together, or stops under parallel.grad_reduce=shared_memory), not a SIGBUS at the first write."""
    import errno

    from trainer.parallel.shared_sum import SharedMemoryTooSmall

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", full)
    name, errors = f"test-{uuid.uuid4().hex[:12]}", []

    def form(i):
        try:
            SharedSum(name, i, 3, 1 << 20, np.float32, timeout=10.0)
        except SharedMemoryTooSmall as e:
            errors.append((i, str(e)))
    threads = [threading.Thread(target=form, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i, _ in errors) == [0, 1, 2]
    for _, message in errors:
        assert "/dev/shm has" in message and "MiB free, the sums need 16 MiB" in message, message
    assert not os.path.exists(f"/dev/shm/mindrun-{name}")


def test_a_member_that_never_joins_is_named_after_the_timeout():
    with pytest.raises(SharedSumError, match=r"members \[1\] did not join within 1 s"):
        SharedSum(f"test-{uuid.uuid4().hex[:12]}", 0, 2, 8, np.float32, timeout=1.0)


def test_a_member_without_a_leader_gives_up_after_the_timeout():
    with pytest.raises(SharedSumError, match="rank 1 found no group leader within 1 s"):
        SharedSum(f"test-{uuid.uuid4().hex[:12]}", 1, 2, 8, np.float32, timeout=1.0)


def test_the_seam_uses_shared_memory_only_where_it_can_and_says_why_not(monkeypatch):
    """auto: shared memory on the CPU with every rank on this host under `mindrun launch`, else AllReduce;
    parallel.grad_reduce=shared_memory where that does not hold is an error naming the reason."""
    from trainer.config import load_config
    from trainer.parallel.context import ParallelContext
    from trainer.parallel.plan import make_plan
    from trainer.parallel.seam import Parallelized

    def group(backend, *sets):
        cfg = load_config("tiny", ["parallel.mode=data_parallel", *sets])
        ctx = ParallelContext(make_plan(cfg, 2, backend), backend, rank=1, dp_rank=1, dp_group="hccl_world_group")
        return Parallelized("data_parallel", dp_group=ctx.dp_group, ctx=ctx).shared_memory_group()

    for name in ("MINDRUN_STORE", "MS_SCHED_HOST", "MS_SCHED_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MINDRUN_LOCAL_WORLD_SIZE", "2")
    assert group("CPU") is None  # not under the launcher: no master endpoint in the environment
    with pytest.raises(SharedSumError, match="not started by `mindrun launch`"):
        group("CPU", "parallel.grad_reduce=shared_memory")
    monkeypatch.setenv("MINDRUN_STORE", "127.0.0.1:29500")
    assert group("CPU") == ((0, 1), 1, None)  # auto: AllReduce if /dev/shm is too small
    assert group("CPU", "parallel.grad_reduce=shared_memory") == ((0, 1), 1, "parallel.grad_reduce=shared_memory")
    assert group("CPU", "parallel.grad_reduce=flat") is None  # asked for MindSpore's AllReduce
    assert group("Ascend") is None
    with pytest.raises(SharedSumError, match="the backend is Ascend, not CPU"):
        group("Ascend", "parallel.grad_reduce=shared_memory")
    monkeypatch.setenv("MINDRUN_LOCAL_WORLD_SIZE", "1")  # one of two nodes
    with pytest.raises(SharedSumError, match="not all on this host"):
        group("CPU", "parallel.grad_reduce=shared_memory")
