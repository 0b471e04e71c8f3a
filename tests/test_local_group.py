"""trainer/parallel/local_group.py and the decision to run without MindSpore's cluster (trainer/parallel/context.py).
Members are threads here (each with its own socket, as processes have); the launched job that runs this way is in
tests/test_parallel_jobs.py."""
import threading
import uuid

import numpy as np
import pytest

from trainer.parallel.local_group import LocalGroup, LocalGroupError


def concurrently(size, call):
    """call(i) for i in range(size), each in its own thread; (results, errors by member)."""
    out, errors = [None] * size, {}

    def run(i):
        try:
            out[i] = call(i)
        except Exception as e:  # noqa: BLE001 (returned)
            errors[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, errors


def formed(size):
    name = f"test-{uuid.uuid4().hex[:12]}"
    group, errors = concurrently(size, lambda i: LocalGroup(name, i, size, timeout=10.0))
    assert not errors, errors
    return group


def test_sums_are_exact_in_member_order_broadcast_and_barrier():
    group = formed(3)
    rng = np.random.default_rng(0)
    for shape in [(4,), (5, 7), (2, 3)]:  # a new shape each time: nothing sized in advance
        xs = [rng.normal(size=shape).astype(np.float32) for _ in group]
        got, errors = concurrently(3, lambda i: group[i].sum(xs[i]))
        assert not errors
        for g in got:
            assert g.shape == shape and g.dtype == np.float32
            np.testing.assert_array_equal(g, (xs[0] + xs[1]) + xs[2])
    words, _ = concurrently(3, lambda i: group[i].broadcast(b"first" if i == 0 else b"ignored"))
    assert words == [b"first"] * 3
    _, errors = concurrently(3, lambda i: group[i].barrier())
    assert not errors
    for g in group:
        g.close()


def test_members_at_different_points_fail_together_naming_both_shapes():
    group = formed(2)
    shapes = [(3,), (4,)]
    _, errors = concurrently(2, lambda i: group[i].sum(np.ones(shapes[i], np.float32)))
    assert set(errors) == {0, 1}
    for e in errors.values():
        assert isinstance(e, LocalGroupError) and "member 1 summed <f4[4], member 0 <f4[3]" in str(e), e


def test_a_member_that_leaves_fails_the_others_next_exchange_naming_it():
    """The first rank names the member that left, and leaves too: the third member's sum fails at once."""
    group = formed(3)
    group[2].close()
    _, errors = concurrently(2, lambda i: group[i].sum(np.ones(2)))
    assert "group member 2 left the group" in str(errors[0])
    assert "the group's first rank left the group" in str(errors[1])


def test_a_member_whose_first_rank_left_gets_an_error_not_a_hang():
    group = formed(2)
    group[0].close()
    with pytest.raises(LocalGroupError, match="the group's first rank left the group"):
        group[1].sum(np.ones(2))


def test_forming_times_out_naming_the_missing():
    with pytest.raises(LocalGroupError, match=r"members \[1, 2\] did not join within 1 s"):
        LocalGroup(f"test-{uuid.uuid4().hex[:12]}", 0, 3, timeout=1.0)
    with pytest.raises(LocalGroupError, match="rank 1 found no group leader within 1 s"):
        LocalGroup(f"test-{uuid.uuid4().hex[:12]}", 1, 2, timeout=1.0)


# -- running without MindSpore's cluster -------------------------------------------------------------

def plan_of(*sets, backend="CPU"):
    from trainer.config import load_config
    from trainer.parallel.plan import make_plan

    return make_plan(load_config("tiny", ["parallel.mode=data_parallel", *sets]), 2, backend)


def test_only_a_one_host_cpu_store_mode_job_with_shared_memory_sums_goes_without_the_cluster(monkeypatch):
    from trainer.parallel.context import without_cluster

    for name in ("MINDRUN_STORE", "MS_SCHED_HOST", "MS_SCHED_PORT"):
        monkeypatch.delenv(name, raising=False)
    env = {"MINDRUN_STORE": "127.0.0.1:29500", "MINDRUN_LOCAL_WORLD_SIZE": "2"}
    monkeypatch.setenv("MINDRUN_LOCAL_WORLD_SIZE", "2")  # (shared_sum reads these from os.environ)
    monkeypatch.setenv("MINDRUN_STORE", "127.0.0.1:29500")
    assert without_cluster(plan_of(), "CPU", env) is None
    assert without_cluster(plan_of("parallel.grad_reduce=shared_memory"), "CPU", env) is None
    assert "backend is Ascend" in without_cluster(plan_of(backend="Ascend"), "Ascend", env)
    assert "grad_reduce=flat" in without_cluster(plan_of("parallel.grad_reduce=flat"), "CPU", env)
    assert "optimizer_shard" in without_cluster(plan_of("parallel.optimizer_shard=true"), "CPU", env)
    assert "launch_mode store" in without_cluster(plan_of(), "CPU", {"MINDRUN_LOCAL_WORLD_SIZE": "2"})
    monkeypatch.setenv("MINDRUN_LOCAL_WORLD_SIZE", "1")  # one of two nodes
    assert "not all on this host" in without_cluster(plan_of(), "CPU", env)


def test_a_dev_shm_too_small_for_the_estimate_sends_every_rank_to_the_cluster_together(monkeypatch, capsys):
    """The first rank's /dev/shm reading decides for all (a container's 64 MiB against the estimate): every
    rank gets None (then joins MindSpore's cluster), and rank 0 says why; with room, both get the group."""
    from trainer.parallel import context, shared_sum

    monkeypatch.setenv("MINDRUN_LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(shared_sum, "shared_memory_free", lambda: 64 << 20)
    plan = plan_of()
    for need, kept in ((100 << 20, False), (10 << 20, True)):
        monkeypatch.setenv("MINDRUN_STORE", f"127.0.0.1:{uuid.uuid4().int % 60000}")  # a new job: a new name
        groups, errors = concurrently(2, lambda i: context._local_group(plan, need, i))
        assert not errors, errors
        assert [g is not None for g in groups] == [kept, kept]
        for g in groups:
            if g is not None:
                g.close()
    assert "joining MindSpore's cluster: /dev/shm has 64 MiB free, the shared-memory sums need about 100 MiB" \
        in capsys.readouterr().out
