"""Hugging Face Llama weights in and out: `mindrun ckpt import-hf` and `mindrun ckpt export-hf`.

Import reads a Hugging Face directory (config.json, one `model.safetensors` or many shards with
`model.safetensors.index.json`, optionally a sentencepiece `tokenizer.model`), takes the model section
from config.json (`model_config`), renames the tensors (`HF_NAMES`; no transposes: MindSpore's Dense
keeps [out, in] as torch's Linear does) and writes a run directory:

    RUN/config.yaml                                   the recipe (or llama2_7b's settings) with the model
                                                      from config.json and the requested layout
    RUN/vocab/joint.model                             the tokenizer.model, when there is one
    RUN/checkpoints/step_0/shard-mpXX-of-YY.safetensors, manifest.json   weights only, float32, split for
                                                      the requested model_parallel (trainer/ckpt's format)

Tensors stream one at a time from the source's memory map into each shard file (a 7B import holds
one tensor, not the model). Export is the reverse for a step directory of a Llama-shaped model:
config.json, safetensors files of at most `max_shard_bytes` with their index, tokenizer.model.
Fine-tuning starts from an import with `--set train.init_from=RUN` (weights only, step 0).
"""
import json
import re
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import yaml

from launcher.atomic import atomic_directory, write_text
from trainer.ckpt.single_file import CheckpointError
from trainer.ckpt import manifest as mf
from trainer.ckpt.layout import ShardLayout
from trainer.ckpt.safetensors_io import TensorFile, write_streamed
from trainer.ckpt.store import FILE_MODE, ShardReader, make_private_dir

# (Hugging Face name pattern, mindrun name pattern); {i} is a layer index
HF_NAMES: Tuple[Tuple[str, str], ...] = (
    ("model.embed_tokens.weight", "embed.embedding_table"),
    ("model.norm.weight", "final_norm.gamma"),
    ("lm_head.weight", "out_proj.weight"),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.norm1.norm.gamma"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.norm2.norm.gamma"),
    *((f"model.layers.{{i}}.self_attn.{p}_proj.{w}", f"layers.{{i}}.self_attn.w_{p}.{w}")
      for p in "qkvo" for w in ("weight", "bias")),
    *((f"model.layers.{{i}}.mlp.{hf}_proj.{w}", f"layers.{{i}}.ffn.{ours}.{w}")
      for hf, ours in (("gate", "w1"), ("up", "w3"), ("down", "w2")) for w in ("weight", "bias")),
)


def _pattern(template: str) -> "re.Pattern":
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")


_TO_OURS = [(_pattern(hf), ours) for hf, ours in HF_NAMES]
_TO_HF = [(_pattern(ours), hf) for hf, ours in HF_NAMES]


def _rename(name: str, table) -> Optional[str]:
    for pattern, template in table:
        match = pattern.match(name)
        if match:
            return template.replace("{i}", match.group(1)) if match.groups() else template
    return None


def to_mindrun(name: str) -> Optional[str]:
    """A Hugging Face Llama tensor name -> mindrun's (None: not a tensor mindrun keeps, e.g. rotary buffers)."""
    return _rename(name, _TO_OURS)


def to_hf(name: str) -> Optional[str]:
    """A mindrun decoder-only tensor name -> Hugging Face Llama's."""
    return _rename(name, _TO_HF)


class HFError(CheckpointError):
    """A Hugging Face directory mindrun cannot import, or one that contradicts the recipe; one line."""


# -- configs ------------------------------------------------------------------------------------------
def _rope_theta(hf: Dict) -> float:
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise HFError(f"config.json: rope type {kind!r} (rope scaling) is not wired in mindrun; only plain "
                           f"rotary positions (Llama 1/2, rope_type default) import")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config(hf: Dict) -> Dict:
    """The `model:` section of a mindrun config for a Hugging Face LlamaConfig (config.json as a dict)."""
    if hf.get("model_type") not in ("llama", None):
        raise HFError(f"config.json: model_type {hf.get('model_type')!r}; mindrun imports model_type llama")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFError(f"config.json: hidden_act {hf['hidden_act']!r}; mindrun's SwiGLU uses silu")
    heads, d = int(hf["num_attention_heads"]), int(hf["hidden_size"])
    if hf.get("head_dim") not in (None, d // heads):
        raise HFError(f"config.json: head_dim {hf['head_dim']} differs from hidden_size / num_attention_heads "
                           f"({d // heads}); mindrun derives the head size from d_model and n_heads")
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise HFError("config.json: attention_bias and mlp_bias differ; mindrun's model.bias covers both")
    kv = int(hf.get("num_key_value_heads") or heads)
    return {"arch": "decoder_only", "decoder_layers": int(hf["num_hidden_layers"]), "d_model": d, "n_heads": heads,
            "n_kv_heads": 0 if kv == heads else kv, "d_ff": int(hf["intermediate_size"]), "ffn": "swiglu",
            "norm": "rmsnorm", "layer_norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "positions": "rotary",
            "rope_theta": _rope_theta(hf), "bias": bool(hf.get("attention_bias", False)), "scale_embeddings": False,
            "pre_norm": True, "share_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "max_positions": int(hf.get("max_position_embeddings", 2048)),
            "attention_dropout": float(hf.get("attention_dropout", 0.0))}


def hf_config(model: Dict, vocab: int, dtype: str = "float32") -> Dict:
    """A Hugging Face LlamaConfig (config.json) for a mindrun model section; HFError naming the field that
    Llama cannot express."""
    required = {"arch": "decoder_only", "ffn": "swiglu", "norm": "rmsnorm", "positions": "rotary",
                "scale_embeddings": False, "pre_norm": True}
    for key, value in required.items():
        if model.get(key) != value:
            raise HFError(f"model.{key} is {model.get(key)!r}; a Llama checkpoint needs model.{key}={value} "
                               f"(export-hf writes Llama-shaped models only)")
    heads = int(model["n_heads"])
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": int(model["d_model"]),
            "intermediate_size": int(model["d_ff"]), "num_hidden_layers": int(model["decoder_layers"]),
            "num_attention_heads": heads, "num_key_value_heads": int(model.get("n_kv_heads") or heads),
            "head_dim": int(model["d_model"]) // heads, "hidden_act": "silu",
            "max_position_embeddings": int(model["max_positions"]), "rms_norm_eps": float(model["layer_norm_eps"]),
            "rope_theta": float(model["rope_theta"]), "vocab_size": int(vocab),
            "tie_word_embeddings": bool(model["share_embeddings"]), "attention_bias": bool(model["bias"]),
            "mlp_bias": bool(model["bias"]), "attention_dropout": float(model.get("attention_dropout", 0.0)),
            "torch_dtype": dtype, "bos_token_id": 1, "eos_token_id": 2}


def _compare(recipe_name: str, recipe_model: Dict, imported: Dict) -> None:
    """HFError naming the first model field where the recipe and config.json disagree."""
    for key, value in imported.items():
        mine = recipe_model.get(key)
        if isinstance(value, float) and isinstance(mine, (int, float)) and abs(mine - value) <= 1e-12 * abs(value):
            continue
        if mine != value:
            raise HFError(f"config.json gives model.{key}={value!r} but recipe {recipe_name} has "
                               f"model.{key}={mine!r}; drop --config or fix one of them")


# -- reading a Hugging Face directory ----------------------------------------------------------------
def _weight_files(hf_dir: Path) -> List[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (hf_dir / n).is_file()]
        if missing:
            raise HFError(f"{index} lists {', '.join(missing)}, which {hf_dir} does not hold")
        return [hf_dir / n for n in names]
    if (hf_dir / "model.safetensors").is_file():
        return [hf_dir / "model.safetensors"]
    if list(hf_dir.glob("*.bin")):
        raise HFError(f"{hf_dir} holds PyTorch .bin weights only; mindrun reads safetensors (nothing pickled): "
                           f"convert with transformers' save_pretrained(safe_serialization=True)")
    raise HFError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")


def _source_tensors(hf_dir: Path) -> Dict[str, Tuple[TensorFile, str]]:
    """mindrun name -> (file, its Hugging Face name) for every tensor mindrun keeps."""
    out: Dict[str, Tuple[TensorFile, str]] = {}
    for path in _weight_files(hf_dir):
        f = TensorFile(path)
        for name in f.names():
            ours = to_mindrun(name)
            if ours is None:
                if name.endswith("rotary_emb.inv_freq"):
                    continue  # a buffer older transformers saved; recomputed from rope_theta
                raise HFError(f"{path}: tensor {name} has no place in mindrun's Llama (an unknown "
                                   f"architecture or a newer layout)")
            out[ours] = (f, name)
    return out


def import_hf(hf_dir: Path, out: Path, recipe: Optional[str] = None, dp: int = 1, mp: int = 1,
              overrides: Optional[List[str]] = None, progress=None) -> Path:
    """Write a run directory `out` from Hugging Face directory `hf_dir` (module docstring); returns the step dir."""
    from model.size import decoder_only_parameters
    from trainer.config import apply_overrides, config_from_dict, load_config

    hf_dir, out = Path(hf_dir), Path(out)
    if not (hf_dir / "config.json").is_file():
        raise HFError(f"{hf_dir}: no config.json (expected a Hugging Face model directory)")
    hf = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    imported = model_config(hf)
    base = load_config(recipe or "llama2_7b", overrides)  # (--set data.vocab_size=N: a recipe at another vocabulary)
    tree = base.to_dict()
    if recipe:
        _compare(recipe, tree["model"], imported)
        if tree["data"]["vocab_size"] != int(hf["vocab_size"]):
            raise HFError(f"config.json gives vocab_size={hf['vocab_size']} but recipe {recipe} has "
                               f"data.vocab_size={tree['data']['vocab_size']}; drop --config or fix one of them")
    tree["name"] = recipe or f"hf:{hf_dir.name}"
    tree["model"].update(imported)
    tree["data"]["vocab_size"] = int(hf["vocab_size"])
    tree["parallel"].update({"data_parallel": dp, "model_parallel": mp})
    side = imported["max_positions"] // 2  # a translation row's source and target share the positions
    if not recipe and tree["data"]["buckets"][-1] > side:
        tree["data"].update(buckets=[side], pack_length=min(tree["data"]["pack_length"], side))
    tree["train"]["out_dir"] = str(out)
    cfg = config_from_dict(tree)
    if overrides:
        cfg = config_from_dict(apply_overrides(cfg.to_dict(), overrides))
    from trainer.parallel.plan import make_plan

    make_plan(cfg, dp * mp, "CPU", vocab_size=int(hf["vocab_size"]), for_execution=False)  # heads and vocabulary split by mp, else an error

    sources = _source_tensors(hf_dir)
    expected = decoder_only_parameters(cfg.model, int(hf["vocab_size"]))
    found = sum(int(np.prod(f.shape(n))) for f, n in sources.values())
    if found != expected:
        raise HFError(f"{hf_dir}: the safetensors hold {found:,} parameters, config.json's shape has "
                           f"{expected:,} (missing or extra tensors)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; remove it or give another --out")
    with atomic_directory(out) as work:  # an interrupted import leaves no run directory
        _write_run(work, cfg, hf, hf_dir, sources, dp, mp, progress)
    return out / "checkpoints" / "step_0"


def _write_run(out: Path, cfg, hf: Dict, hf_dir: Path, sources, dp: int, mp: int, progress) -> None:
    """config.yaml, vocab/ and checkpoints/step_0 (weights split for dp x mp) of an import, into `out`."""
    from model.parallel.layout import split_axis_of

    step_dir = out / "checkpoints" / "step_0"
    make_private_dir(step_dir)
    names = sorted(sources)
    axes = {n: split_axis_of(n) for n in names}
    axes = {n: a for n, a in axes.items() if a is not None}
    files = {}
    for r in range(mp):
        layout = ShardLayout(r, mp, 0, dp, axes)
        entries = []
        for name in names:
            if not layout.owns(name):
                continue
            f, hf_name = sources[name]
            shape = list(f.shape(hf_name))
            span = layout.local_range(name, shape)
            if span:
                shape[layout.axis(name)] = span[1] - span[0]
            entries.append((name, tuple(shape), "F32", _producer(f, hf_name, layout.axis(name), span, progress)))
        sha256, size = write_streamed(step_dir / layout.file_name(), entries, {"format": mf.FORMAT}, FILE_MODE)
        files[layout.file_name()] = {"sha256": sha256, "size": size, "model_parallel_rank": r}
    layout = ShardLayout(0, mp, split_axes=axes)
    tensors = {}
    for name in names:
        f, hf_name = sources[name]
        shape = list(f.shape(hf_name))
        tensors[name] = mf.tensor_entry(shape, "float32", "weight", axes.get(name), layout.parts(name, shape))
    manifest = {"format": mf.FORMAT, "step": 0, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "layout": {"data_parallel": dp, "model_parallel": mp, "writers": "mindrun ckpt import-hf"},
                "files": files, "tensors": tensors, "position": {"step": 0, "epoch": 0, "batch_index": 0},
                "config": cfg.to_dict(), "imported_from": {"directory": str(hf_dir.resolve()),
                                                           "config": hf, "weights_only": True}}
    write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_text(step_dir / mf.MANIFEST, mf.dumps(manifest), mode=FILE_MODE)
    if (hf_dir / "tokenizer.model").is_file():
        (out / "vocab").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hf_dir / "tokenizer.model", out / "vocab" / "joint.model")
    for pointer in ("latest", "last", "best"):
        link = out / "checkpoints" / pointer
        link.symlink_to("step_0")


def _producer(f: TensorFile, name: str, axis: Optional[int], span, progress):
    def produce() -> np.ndarray:
        array = f.read(name)
        if span:
            array = np.ascontiguousarray(np.take(array, np.arange(*span), axis=axis))
        if progress is not None:
            progress(name)
        return array

    return produce


# -- export -------------------------------------------------------------------------------------------
def export_hf(step: Path, out: Path, dtype: str = "float32", max_shard_bytes: int = 2 * 2 ** 30,
              progress=None) -> Path:
    """Write `out` as a Hugging Face Llama directory (config.json, safetensors + index, tokenizer.model)
    from a step directory (or pointer / checkpoints root) of a Llama-shaped mindrun model."""
    from trainer.ckpt.tools import open_verified

    codes = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}
    if dtype not in codes:
        raise HFError(f"--dtype {dtype!r}: choose float32, float16 or bfloat16")
    code, width = codes[dtype]
    directory, manifest = open_verified(Path(step))
    config = manifest.get("config", {})
    model = config.get("model", {})
    weights = {n: e for n, e in manifest["tensors"].items() if e["kind"] == "weight"}
    if "embed.embedding_table" not in weights:
        raise HFError(f"{directory}: no embed.embedding_table: not a decoder-only checkpoint")
    vocab = weights["embed.embedding_table"]["shape"][0]
    hf = hf_config(model, vocab, dtype)
    names = {}
    for name in weights:
        target = to_hf(name)
        if target is None:
            raise HFError(f"{directory}: tensor {name} has no Hugging Face Llama name")
        names[name] = target
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; remove it or give another directory")
    out.mkdir(parents=True, exist_ok=True)
    groups: List[List[str]] = [[]]
    size = 0
    for name in sorted(weights, key=lambda n: names[n]):
        nbytes = int(np.prod(weights[name]["shape"])) * width
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    reader = ShardReader(directory, manifest)
    weight_map, total = {}, 0
    try:
        for i, group in enumerate(groups):
            file = "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"

            write_streamed(out / file, [(names[n], tuple(weights[n]["shape"]), code,
                                         lambda n=n: _report(reader.read(n), progress, n)) for n in group],
                           {"format": "pt"})
            for n in group:
                weight_map[names[n]] = file
                total += int(np.prod(weights[n]["shape"])) * width
    finally:
        reader.close()
    if len(groups) > 1:
        write_text(out / "model.safetensors.index.json",
                   json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n", 0o644)
    write_text(out / "config.json", json.dumps(hf, indent=2) + "\n", 0o644)
    run = directory.parent.parent
    if (run / "vocab" / "joint.model").is_file():
        shutil.copyfile(run / "vocab" / "joint.model", out / "tokenizer.model")
    return out


def _report(array: np.ndarray, progress, name: str) -> np.ndarray:
    if progress is not None:
        progress(name)
    return array
