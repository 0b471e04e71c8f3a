"""Sharded checkpoints (trainer/ckpt): commit, verification, retention, resharding, the ckpt tools.

Fast: a two-layer model and Adam, no training. Jobs that save and resume under real layouts are in
test_parallel_jobs.py; kill -9 trials in test_kill_trials.py and bench/kill_trials.py.
"""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from trainer.ckpt.single_file import CheckpointError
from trainer.ckpt import manifest as mf
from trainer.ckpt.layout import ShardLayout
from trainer.ckpt.store import CheckpointStore, load_tensors
from trainer.ckpt.tools import inspect, merge, open_verified, reshard

AXES = {"a.weight": 0, "a.bias": 0, "b.weight": 1}  # column- then row-split, as model/parallel lays out


class Two(nn.Cell):
    def __init__(self, d_in=4, d_hidden=6, d_out=3):
        super().__init__()
        self.a, self.b = nn.Dense(d_in, d_hidden), nn.Dense(d_hidden, d_out)


def optimizer_of(model, seed=0):
    """Adam with every tensor (weights, moments, counters) set to distinct random values."""
    opt = nn.Adam(model.trainable_params(), learning_rate=ms.Tensor(0.0, ms.float32))
    rng = np.random.default_rng(seed)
    for p in opt.get_parameters():
        data = rng.normal(size=p.shape) if p.dtype == ms.float32 else rng.integers(1, 100, size=p.shape)
        p.set_data(ms.Tensor(np.asarray(data), p.dtype))
    return opt


def state(opt):
    return {p.name: p.asnumpy().copy() for p in opt.get_parameters()}


def store(root, **kw):
    return CheckpointStore(root, ShardLayout(split_axes=AXES), warn=kw.pop("warn", lambda _: None), **kw)


def save(st, step, opt, best=False):
    return st.save(step, opt, {"step": step, "epoch": 0, "batch_index": step}, {"model": {"n_heads": 2}},
                   best=best)


def test_a_saved_state_loads_back_whole_with_private_modes_and_pointers(tmp_path):
    os.umask(0o022)
    opt = optimizer_of(Two())
    directory = save(store(tmp_path / "ck"), 5, opt, best=True)
    manifest = mf.read(directory)
    assert manifest["position"]["step"] == 5 and mf.verify(directory, manifest) is None
    assert set(manifest["tensors"]) == set(state(opt))
    assert manifest["tensors"]["moment1.a.weight"] == {"shape": [6, 4], "dtype": "float32", "kind": "optimizer",
                                                      "split_axis": 0, "parts": [{"file": "shard-mp00-of-01.safetensors"}]}
    for path in (tmp_path / "ck", directory):
        assert stat.S_IMODE(path.stat().st_mode) == 0o750
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []  # no temporary left
    for pointer in ("latest", "last", "best"):
        assert (tmp_path / "ck" / pointer).resolve() == directory.resolve()
    fresh = optimizer_of(Two(), seed=1)
    found = store(tmp_path / "ck").newest_verified()
    load_tensors(list(fresh.get_parameters()), ShardLayout(split_axes=AXES), *found)
    for name, value in state(opt).items():
        np.testing.assert_array_equal(state(fresh)[name], value, err_msg=name)
    assert state(fresh)["learning_rate"].shape == ()  # 0-d stays 0-d


def test_a_flipped_byte_a_truncated_manifest_and_a_missing_shard_fall_back_with_a_warning(tmp_path):
    warnings = []
    st = store(tmp_path, warn=warnings.append, keep_last=5)
    for step in (1, 2, 3, 4):
        save(st, step, optimizer_of(Two(), seed=step))
    shard = tmp_path / "step_4" / "shard-mp00-of-01.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    manifest = tmp_path / "step_3" / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])
    os.unlink(tmp_path / "step_2" / "shard-mp00-of-01.safetensors")
    directory, found = st.newest_verified()
    assert directory.name == "step_1" and found["step"] == 1
    assert "step_4" in warnings[0] and "SHA-256" in warnings[0] and "shard-mp00-of-01" in warnings[0]
    assert "step_3" in warnings[1] and "truncated" in warnings[1]
    assert "step_2" in warnings[2] and "missing" in warnings[2]
    with pytest.raises(CheckpointError, match="SHA-256"):
        open_verified(tmp_path / "step_4")


def test_another_model_shape_is_an_error_listing_what_differs(tmp_path):
    directory = save(store(tmp_path), 1, optimizer_of(Two()))
    other = optimizer_of(Two(d_hidden=8))
    with pytest.raises(CheckpointError, match=r"another model shape \(9 tensors differ\)") as err:
        load_tensors(list(other.get_parameters()), ShardLayout(split_axes=AXES), directory, mf.read(directory))
    assert "a.weight: checkpoint [6, 4], this model [8, 4]" in str(err.value)


def test_retention_keeps_the_newest_complete_and_the_best(tmp_path):
    st = store(tmp_path, keep_last=2)
    for step in range(1, 7):
        save(st, step, optimizer_of(Two()), best=step == 2)
    (tmp_path / "step_7").mkdir()  # a save in progress (no manifest yet): left alone
    st.prune()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step_")) == [
        "step_2", "step_5", "step_6", "step_7"]
    assert os.readlink(tmp_path / "best") == "step_2" and os.readlink(tmp_path / "latest") == "step_6"


def test_averaging_takes_the_mean_of_the_checkpoint_and_those_kept_before_it(tmp_path):
    from trainer.ckpt.tools import averaging_window, load_averaged_weights

    st = store(tmp_path, keep_last=3)
    model, weights = Two(), []
    for step in range(1, 5):
        opt = optimizer_of(model, seed=step)
        weights.append({p.name: p.asnumpy().astype(np.float64) for p in model.trainable_params()})
        save(st, step, opt)
    (tmp_path / "step_5").mkdir()  # a save in progress: never averaged
    window = averaging_window(tmp_path / "latest", 3)
    assert [d.name for d in window] == ["step_4", "step_3", "step_2"]
    assert [d.name for d in averaging_window(tmp_path / "step_3", 2)] == ["step_3", "step_2"]
    position = load_averaged_weights(model, window)
    assert position["step"] == 4 and position["averaged"] == ["step_4", "step_3", "step_2"]
    for p in model.trainable_params():
        np.testing.assert_allclose(p.asnumpy(), np.mean([w[p.name] for w in weights[1:]], axis=0), rtol=1e-6)
    with pytest.raises(CheckpointError, match=r"--average 4: .* keeps 3 complete checkpoint\(s\) up to step 4"):
        averaging_window(tmp_path, 4)


def test_resharding_splits_and_joins_weights_and_moments(tmp_path):
    opt = optimizer_of(Two())
    full = state(opt)
    split = reshard(save(store(tmp_path), 1, opt), model_parallel=2, out=tmp_path / "mp2")
    manifest = mf.read(split)
    assert manifest["layout"]["model_parallel"] == 2 and len(manifest["files"]) == 2
    for rank in (0, 1):  # each rank of a model-parallel 2 layout reads its slices
        layout = ShardLayout(rank, 2, split_axes=AXES)
        local = Two(d_hidden=3)  # a's rows and b's columns halved
        local_opt = optimizer_of(local, seed=9)
        local.b.bias.set_data(ms.Tensor(np.zeros(3, np.float32)))
        load_tensors(list(local_opt.get_parameters()), layout, split, manifest)
        got = state(local_opt)
        np.testing.assert_array_equal(got["a.weight"], full["a.weight"][rank * 3:(rank + 1) * 3])
        np.testing.assert_array_equal(got["moment2.b.weight"], full["moment2.b.weight"][:, rank * 3:(rank + 1) * 3])
        np.testing.assert_array_equal(got["b.bias"], full["b.bias"])  # replicated
    joined = optimizer_of(Two(), seed=3)  # and back to one rank
    load_tensors(list(joined.get_parameters()), ShardLayout(split_axes=AXES), split, manifest)
    for name, value in full.items():
        np.testing.assert_array_equal(state(joined)[name], value, err_msg=name)
    with pytest.raises(CheckpointError, match="does not split over model_parallel=4"):
        reshard(split, model_parallel=4, out=tmp_path / "mp4")


def test_merge_writes_one_mindspore_checkpoint_of_the_weights(tmp_path):
    opt = optimizer_of(Two())
    split = reshard(save(store(tmp_path / "ck"), 1, opt), model_parallel=2, out=tmp_path / "mp2")
    out = merge(split, tmp_path / "full.ckpt")
    params = ms.load_checkpoint(str(out))
    assert set(params) == {"a.weight", "a.bias", "b.weight", "b.bias"}
    np.testing.assert_array_equal(params["b.weight"].asnumpy(), state(opt)["b.weight"])
    info = inspect(split)
    assert info["verified"] and info["step"] == 1 and info["kinds"]["weight"]["split"] == 3


def test_the_ckpt_command_inspects_and_reports_a_corrupt_checkpoint(tmp_path):
    directory = save(store(tmp_path), 7, optimizer_of(Two()))
    run = [sys.executable, "-m", "trainer", "ckpt", "inspect"]
    proc = subprocess.run([*run, str(tmp_path), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["step"] == 7
    (directory / "shard-mp00-of-01.safetensors").write_bytes(b"x")
    proc = subprocess.run([*run, str(directory)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "verified: NO" in proc.stdout and "1 bytes" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "trainer", "ckpt", "reshard", str(directory), "--parallel", "dp=2,mp=x"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "dp=N,mp=M" in proc.stderr


def test_a_checkpoint_directory_other_ranks_cannot_see_is_an_error_at_start(tmp_path, monkeypatch):
    """Rank 0 of a 2-rank job finds no probe from rank 1 (node-local storage on another node)."""
    from trainer.ckpt import store as store_module

    calls = []

    def fake_sum(array, world_size, summed=None):  # rank 1 wrote its probe elsewhere: its token never appears here
        calls.append(array.copy())
        if len(calls) == 1:
            array = array.copy()
            array[1] = 12345.0
        return array

    monkeypatch.setattr(store_module, "_sum_over_ranks", fake_sum)
    with pytest.raises(CheckpointError, match=r"cannot see the files of 1 ranks \(ranks \[1\]\).*shared"):
        store_module.check_shared_storage(tmp_path / "ck", rank=0, world_size=2)
    assert not any(p.name.startswith(".storage-probe") for p in (tmp_path / "ck").iterdir())  # cleaned up


def test_resume_verification_is_spread_over_the_ranks_and_agreed(tmp_path, monkeypatch):
    """Rank k hashes every world_size-th file of a candidate from the k-th (not rank 0 all of them: ~80 GB at 7B);
    one sum per candidate tells every rank which file failed where, so all skip the same checkpoints."""
    from trainer.ckpt import store as store_module

    root = tmp_path / "ck"
    for step in (1, 2):  # model-parallel 2 checkpoints: two shard files each
        reshard(save(store(tmp_path / f"src{step}"), step, optimizer_of(Two(), seed=step)), model_parallel=2,
                out=root / f"step_{step}")
    bad = root / "step_2" / "shard-mp01-of-02.safetensors"  # the second file in name order: rank 1's to hash
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    real_hash = mf.sha256_of
    hashed = {0: [], 1: []}

    def as_rank(rank, others):
        """Rank `rank`'s resume, the AllReduce adding the other rank's verdicts (`others`, by candidate)."""
        sent, warnings = [], []

        def fake_sum(array, world_size, summed=None):
            sent.append(array.copy())
            return array + (others[len(sent) - 1] if len(sent) <= len(others) else 0)

        monkeypatch.setattr(store_module, "_sum_over_ranks", fake_sum)
        monkeypatch.setattr(mf, "sha256_of", lambda path, *a: hashed[rank].append(Path(path).name) or real_hash(path))
        st = CheckpointStore(root, ShardLayout(rank, 2, split_axes=AXES), world_size=2, is_main=rank == 0,
                             warn=warnings.append)
        return st.agree_on_resume(), sent, warnings

    _, alone0, _ = as_rank(0, [])  # each rank's own verdicts first (rank 0 alone would take step_2)
    _, alone1, _ = as_rank(1, [])
    hashed = {0: [], 1: []}
    (dir0, _), _, warnings = as_rank(0, alone1)
    (dir1, _), _, _ = as_rank(1, alone0)
    assert dir0.name == dir1.name == "step_1"  # both skip step_2, whose bad file only rank 1 hashed
    assert hashed == {0: ["shard-mp00-of-02.safetensors"] * 2, 1: ["shard-mp01-of-02.safetensors"] * 2}
    assert len(warnings) == 1 and "step_2" in warnings[0] and "shard-mp01-of-02" in warnings[0] \
        and "rank 1" in warnings[0]


def test_a_sharded_optimizer_saves_pieces_without_gathering_and_any_layout_reads_the_moments(tmp_path, monkeypatch):
    """parallel.optimizer_shard at dp 2: each rank writes its pieces of the flat moments to its own file (no gather),
    the manifest names the moments as nn.Adam does (`moment1.<weight>` as ranges of the pieces), and one rank, or a
    model-parallel rank, reads them back exactly (the launched dp 2 and 2 x 2 jobs resume from such checkpoints)."""
    from types import SimpleNamespace

    from trainer.ckpt import store as store_module
    from trainer.parallel.zero import FlatShard

    reference = optimizer_of(Two())  # nn.Adam with every tensor random: what the two ranks' pieces make up
    want = state(reference)
    weights = list(reference.parameters)
    counters = [p for p in reference.get_parameters() if not p.name.startswith("moment")]

    def rank(d):
        shard = FlatShard.of(weights, d, 2, "dp", "CPU")
        pieces = {f"zero.{m}": ms.Parameter(ms.Tensor(shard.flatten({i: want[f"{m}.{w.name}"]
                                                                     for i, w in enumerate(weights)})),
                                            name=f"zero.{m}") for m in ("moment1", "moment2")}
        flat = {"names": [w.name for w in weights], "shapes": [list(s) for s in shard.shapes],
                "offsets": list(shard.offsets), "sizes": list(shard.sizes), "piece": shard.piece}
        return SimpleNamespace(parameters=weights, save_state=lambda: (counters, pieces), flat_description=lambda: flat)

    tables = {}

    def save_as(d, other):
        monkeypatch.setattr(store_module, "_sum_over_ranks",
                            lambda table, world, summed=None: (tables.__setitem__(d, table.copy()) or table + other))
        st = CheckpointStore(tmp_path, ShardLayout(0, 1, d, 2, AXES), world_size=2, is_main=d == 0,
                             warn=lambda _: None)
        return save(st, 7, rank(d))

    for d in (1, 0):  # each rank alone: its own rows (and a refusal to commit without the other's files)
        with pytest.raises(CheckpointError, match="could not be written"):
            save_as(d, 0)
    alone = dict(tables)
    save_as(1, alone[0])  # then together: each sees both ranks' rows, as the AllReduce gives them
    directory = save_as(0, alone[1])
    manifest = mf.read(directory)
    assert mf.verify(directory, manifest) is None
    assert sorted(manifest["files"]) == ["shard-mp00-of-01.safetensors", "zero-mp00-dp00-of-01x02.safetensors",
                                         "zero-mp00-dp01-of-01x02.safetensors"]
    from safetensors.numpy import load_file

    assert not any(n.startswith("moment") for n in load_file(str(directory / "shard-mp00-of-01.safetensors")))
    assert "flat" in manifest["tensors"]["moment2.b.weight"]["parts"][0]
    one = optimizer_of(Two(), seed=5)  # dp 1, unsharded
    load_tensors(list(one.get_parameters()), ShardLayout(split_axes=AXES), directory, manifest)
    for name, value in want.items():
        np.testing.assert_array_equal(state(one)[name], value, err_msg=name)
    half = optimizer_of(Two(d_hidden=3), seed=6)  # model-parallel rank 1 of 2: its rows of a, columns of b
    load_tensors(list(half.get_parameters()), ShardLayout(1, 2, split_axes=AXES), directory, manifest)
    np.testing.assert_array_equal(state(half)["moment1.a.weight"], want["moment1.a.weight"][3:])
    np.testing.assert_array_equal(state(half)["moment2.b.weight"], want["moment2.b.weight"][:, 3:])

    from trainer.parallel.zero import ShardedAdam, SkippedMoment

    read = []
    original = store_module.ShardReader.read
    monkeypatch.setattr(store_module.ShardReader, "read", lambda self, name, *a: read.append(name) or
                        original(self, name, *a))
    # a sharded rank reads only the moments its piece overlaps: a.weight [0, 24), a.bias [24, 30),
    # b.weight [30, 48), b.bias [48, 51) of 52; rank 0 holds [0, 26), rank 1 [26, 52)
    for d, skipped in ((0, {"b.weight", "b.bias"}), (1, {"a.weight"})):
        params = Two().trainable_params()
        shard = FlatShard.of(params, d, 2, "dp", "CPU")
        sharded = ShardedAdam(params, shard)
        layout = ShardLayout(0, 1, d, 2, AXES)
        assert {p.name for p in sharded.load_state() if isinstance(p, SkippedMoment)} == \
            {f"{m}.{n}" for m in ("moment1", "moment2") for n in skipped}
        read.clear()
        CheckpointStore(tmp_path, layout, world_size=2, warn=lambda _: None).load(sharded, directory, manifest)
        assert not {f"{m}.{n}" for m in ("moment1", "moment2") for n in skipped} & set(read)
        for m in ("moment1", "moment2"):
            np.testing.assert_array_equal(getattr(sharded, m).asnumpy(),
                                          shard.flatten({i: want[f"{m}.{w.name}"] for i, w in enumerate(weights)}))
        for w in sharded.parameters:
            np.testing.assert_array_equal(w.asnumpy(), want[w.name])
