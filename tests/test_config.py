"""Config loading: recipes by name or path, dotted overrides, and clear errors."""
import pytest

from trainer.config import ConfigError, load_config, parse_override
from trainer.parallel.plan import make_plan


def test_recipes_load_by_name():
    small = load_config("small")
    assert (small.model.encoder_layers, small.model.d_model, small.model.n_heads) == (3, 256, 4)
    base = load_config("base")
    assert (base.model.encoder_layers, base.model.d_model, base.model.d_ff) == (6, 512, 2048)
    assert small.name == "small"


def test_recipe_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  d_model: 64\n  n_heads: 2\n")
    cfg = load_config(str(path))
    assert cfg.model.d_model == 64 and cfg.name == "mine"


def test_overrides_apply_and_parse_types():
    cfg = load_config("small", ["optim.lr=5e-4", "data.buckets=[8, 16, 128]", "model.pre_norm=true"])
    assert cfg.optim.lr == 5e-4 and cfg.data.buckets == [8, 16, 128] and cfg.model.pre_norm is True
    assert parse_override("train.max_steps=10") == ("train.max_steps", 10)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*did you mean 'optim\.lr'"):
        load_config("small", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'.*'model'"):
        load_config("small", ["modle.d_model=1"])


def test_unknown_key_in_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.max_epoch.*train\.max_epochs"):
        load_config(str(path))


@pytest.mark.parametrize("override, message", [
    ("model.d_model=abc", "model.d_model must be an integer"),
    ("model.pre_norm=3", "model.pre_norm must be true or false"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("data.buckets=7", "data.buckets must be a list"),
])
def test_wrong_types(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("small", [override])


@pytest.mark.parametrize("override, message", [
    ("model.n_heads=3", r"d_model \(256\) must be divisible by model.n_heads \(3\)"),
    ("optim.label_smoothing=1.5", "optim.label_smoothing must be in"),
    ("data.tokenizer=chars", "data.tokenizer must be one of"),
    ("data.buckets=[32, 16]", "strictly increasing"),
    ("data.max_tokens=10", "data.max_tokens"),
    ("optim.lr=0", "optim.lr must be >"),
    ("data.joint_vocab=false", "share_embeddings"),
    ("data.buckets=[16, 512]", "max_positions"),
    ("optim.lr=.nan", "optim.lr must be >"),
    ("optim.eps=0", "optim.eps must be >"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >="),
    ("eval.max_len_a=-1", "eval.max_len_a must be >="),
    ("eval.beam=0", "eval.beam must be >="),
])
def test_impossible_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("small", [override])


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        load_config("smal")


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("small", ["optim.lr"])


@pytest.mark.parametrize("overrides, message", [
    (["data.pack_length=512"], r"data.pack_length \(512\) exceeds model.max_positions \(256\)"),
    (["data.pack_length=1"], "data.pack_length must be >= 2"),
    (["data.max_tokens=32"], r"data.max_tokens \(32\) is smaller than data.pack_length \(64\)"),
])
def test_impossible_packing(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("small", ["data.packing=true", "data.buckets=[16]", *overrides])
    load_config("small", ["data.packing=false", "data.pack_length=512"])  # not checked while packing is off


@pytest.mark.parametrize("overrides, message", [
    (["data.joint_vocab=false", "model.share_embeddings=false"], "decoder_only .* needs data.joint_vocab=true"),
    (["model.max_positions=200"], r"buckets goes up to 128 .*half of it: model.arch=decoder_only"),
    (["data.pack_length=160", "data.buckets=[64]"], r"pack_length \(160\) exceeds .*half of it"),
])
def test_a_decoder_only_recipe_needs_one_vocabulary_and_room_for_both_sentences(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("gpt_hour", overrides)
    load_config("hour", overrides[1:] if "joint" in overrides[0] else overrides)  # fine for the encoder-decoder


def test_llama_block_options_are_checked_at_load():
    assert load_config("gpt_hour", ["model.share_embeddings=false"]).model.share_embeddings is False  # untied: Llama
    with pytest.raises(ConfigError, match=r"model.n_kv_heads \(3\) must divide model.n_heads \(4\)"):
        load_config("gpt_hour", ["model.n_kv_heads=3"])
    with pytest.raises(ConfigError, match="rotary is wired for model.arch=decoder_only only"):
        load_config("small", ["model.positions=rotary"])
    with pytest.raises(ConfigError, match="model.norm must be one of layernorm, rmsnorm"):
        load_config("small", ["model.norm=batchnorm"])
    with pytest.raises(ConfigError, match=r"n_kv_heads \(2\) is not divisible by parallel.model_parallel \(4\)"):
        make_plan(load_config("llama_tiny", ["parallel.model_parallel=4"]), 4, "CPU")


def test_float16_gradient_reduction_needs_loss_scaling():
    with pytest.raises(ConfigError, match="grad_reduce_dtype=float16 needs loss scaling"):
        load_config("small", ["parallel.grad_reduce_dtype=float16"])
    load_config("small", ["parallel.grad_reduce_dtype=float16", "precision.loss_scale=static",
                          "precision.initial_scale=1024"])
    with pytest.raises(ConfigError, match="parallel.grad_reduce must be one of"):
        load_config("small", ["parallel.grad_reduce=ring"])
