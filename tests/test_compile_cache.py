"""The compile cache's directory key: what changes compiled graphs changes it, run control does not, and
an older key's directory is removed when a run starts under a new one."""
import os

from trainer.compile_cache import cache_key, compile_cache
from trainer.config import load_config


def test_the_key_follows_what_shapes_the_graphs():
    base = cache_key(load_config("tiny"), 1)
    assert base == cache_key(load_config("tiny", ["train.max_steps=7", "train.log_every=1",
                                                  "train.time_budget_minutes=3", "train.out_dir=/tmp/x"]), 1)
    for change in (["model.d_model=64"], ["data.max_tokens=2048"], ["precision.level=O2"],
                   ["train.gradient_accumulation_steps=2"], ["parallel.grad_reduce=flat"]):
        assert cache_key(load_config("tiny", change), 1) != base, change
    assert cache_key(load_config("tiny"), 2) != base  # the world size shapes the layout


def test_a_new_key_replaces_the_old_directory(tmp_path):
    old = tmp_path / "compile_cache" / "0123456789abcdef" / "rank_0"
    old.mkdir(parents=True)
    (old / "graph.bin").write_text("stale")
    before = os.environ.get("MS_COMPILER_CACHE_ENABLE")
    with compile_cache(load_config("tiny"), tmp_path, rank=0, world_size=1) as path:
        assert path.is_dir() and path.name == "rank_0" and path.parent.name == cache_key(load_config("tiny"), 1)
        assert not old.parent.exists() and os.environ["MS_COMPILER_CACHE_ENABLE"] == "1"
    assert os.environ.get("MS_COMPILER_CACHE_ENABLE") == before  # nothing compiled later reads this run's cache
