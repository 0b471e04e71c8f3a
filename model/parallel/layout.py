"""The Transformer's parallel layout: one table, applied to the unchanged model by one function.

`TRANSFORMER_LAYOUT` says, for each sublayer path pattern, how it is split over the
model-parallel group (Megatron's scheme): attention projections by heads (Q/K/V by output
columns, the output projection by input rows), the FFN's first layer by columns and second
by rows, the embedding and the output projection by vocabulary rows. `apply_hybrid`
swaps those sublayers for their parallel versions in place (explicit collectives, Megatron
style); `apply_semi_auto` states the same layout as MindSpore `shard()` strategies on the
unchanged sublayers, for MindSpore's auto-parallel on Ascend/GPU. A model gets one or the
other, never both: trainer/parallel/seam.py chooses.
"""
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Dict, List, Tuple

from mindspore import nn

from model.parallel.layers import (ColumnParallelDense, RowParallelDense, VocabParallelEmbedding,
                                   VocabParallelLogits, VocabRows)

TRANSFORMER_LAYOUT: Tuple[Tuple[str, str], ...] = (
    ("*_attn.w_q", "column"),
    ("*_attn.w_k", "column"),
    ("*_attn.w_v", "column"),
    ("*_attn.w_o", "row"),
    ("*.ffn.w1", "column"),
    ("*.ffn.w3", "column"),  # SwiGLU's value projection (model/feedforward.py)
    ("*.ffn.w2", "row"),
    ("src_embed", "vocab"),
    ("tgt_embed", "vocab"),
    ("embed", "vocab"),  # the decoder-only model's one table (model/decoder_only.py)
    ("out_proj", "vocab_rows"),  # untied output weight: vocabulary rows
    ("logits", "logits"),  # states x output weight^T: the vocabulary split, gathered after
)
_LAYERS = {"column": ColumnParallelDense, "row": RowParallelDense, "vocab": VocabParallelEmbedding,
           "vocab_rows": VocabRows}


@dataclass
class Applied:
    """What a layout did: which parameters are split, and along which axis."""

    shard_axis: Dict[str, int]


def _kind(path: str) -> str:
    for pattern, kind in TRANSFORMER_LAYOUT:
        if fnmatch(path, pattern):
            return kind
    return ""


def _set(root: nn.Cell, path: str, cell: nn.Cell) -> None:
    *parents, leaf = path.split(".")
    owner = root
    for name in parents:
        owner = owner[int(name)] if name.isdigit() else getattr(owner, name)
    setattr(owner, leaf, cell)


def _restore_names(cell: nn.Cell) -> None:
    # Cell.__setattr__ re-prefixes a new child's parameters with its attribute name only
    # ("w_q.weight"), which collides across layers; give back the full layer's names.
    for attr, name in cell.full_names.items():
        getattr(cell, attr).name = name


_AXES = {"column": {"weight": 0, "bias": 0}, "row": {"weight": 1}, "vocab": {"embedding_table": 0},
          "vocab_rows": {"weight": 0}}


def split_axes(model: nn.Cell) -> Dict[str, int]:
    """Parameter name -> the axis the layout splits it along (whatever the model-parallel size,
    1 included): what a checkpoint records so that it can be resharded to any size."""
    axes: Dict[str, int] = {}
    for path, cell in model.cells_and_names():
        for attr, axis in _AXES.get(_kind(path), {}).items():
            param = getattr(cell, attr, None)
            if param is not None:
                axes[param.name] = axis
    return axes


def split_axis_of(name: str):
    """The axis the layout splits parameter `name` along (None: replicated), from its name alone (no model
    built): what `split_axes` gives for a model holding that parameter."""
    path, _, attr = name.rpartition(".")
    return _AXES.get(_kind(path), {}).get(attr)


def apply_hybrid(model: nn.Cell, group: str, rank: int, size: int, all_gather: bool = True) -> Applied:
    """Split `model` in place for tensor parallelism over `group` (this process is `rank` of `size`).

    `all_gather`: whether AllGather works over `group` on this backend (mappings.all_gather_works).
    """
    if size == 1:
        return Applied({})
    heads, kv_heads = model.cfg.n_heads, model.cfg.kv_heads
    if kv_heads % size:
        raise ValueError(f"model.n_kv_heads ({kv_heads}) does not split over model_parallel={size}: each rank needs "
                         f"whole key/value heads (replicating them when model_parallel > n_kv_heads is not wired)")
    new_cells: Dict[int, nn.Cell] = {}
    targets: List[Tuple[str, nn.Cell]] = []
    for path, cell in model.cells_and_names():
        kind = _kind(path)
        if kind in _LAYERS:
            targets.append((path, cell))
        elif path.endswith("_attn"):
            cell.n_heads = heads // size  # this rank's heads; d_k is unchanged
            cell.n_kv_heads = kv_heads // size  # w_k/w_v's column split gives each rank whole key/value heads,
            #                                     the ones its query heads read (grouped in order)
    for path, cell in targets:
        if id(cell) not in new_cells:  # a tied embedding is one cell under two names
            new_cells[id(cell)] = _LAYERS[_kind(path)](cell, group, rank, size)
    shard_axis: Dict[str, int] = {}
    for path, cell in targets:
        _set(model, path, new_cells[id(cell)])
        shard_axis.update(new_cells[id(cell)].shard_axis)
    for cell in new_cells.values():
        _restore_names(cell)
    if hasattr(model, "src_embed") and model.cfg.share_embeddings:
        model.tgt_embed = model.src_embed  # cells_and_names lists a shared cell once
    model.logits = VocabParallelLogits(group, rank, size, all_gather)
    return Applied(shard_axis)


def semi_auto_strategies(dp: int, mp: int) -> Dict[str, Tuple]:
    """The same layout as MindSpore shard() strategies, per operator kind (inputs' splits)."""
    return {
        "column.matmul": ((dp, 1), (mp, 1)),      # x [N, d] by W [out, d]: W's rows split
        "column.bias_add": ((dp, mp), (mp,)),
        "row.matmul": ((dp, mp), (1, mp)),        # x [N, in/mp] by W [out, in]: W's columns split
        "row.bias_add": ((dp, 1), (1,)),
        "attention.qk": ((dp, mp, 1, 1), (dp, mp, 1, 1)),  # [B, H, L, dk]: heads split
        "attention.av": ((dp, mp, 1, 1), (dp, mp, 1, 1)),
        "attention.softmax": ((dp, mp, 1, 1),),
        # nn.Embedding gathers the flattened ids: table [V, d] rows split, ids [B * L] by batch
        "embedding.gather": ((mp, 1), (dp,)),
        "logits.matmul": ((dp, 1), (mp, 1)),      # output projection: vocabulary split
    }


def semi_auto_plan(model: nn.Cell, dp: int, mp: int) -> List[Tuple[str, str, Tuple]]:
    """(operator path, operator, strategy) for every operator the layout shards, in model order."""
    strategies = semi_auto_strategies(dp, mp)
    rows: List[Tuple[str, str, Tuple]] = []
    for path, cell in model.cells_and_names():
        kind = _kind(path)
        if kind in ("column", "row"):
            rows.append((f"{path}.matmul", "MatMul", strategies[f"{kind}.matmul"]))
            if getattr(cell, "has_bias", False):
                rows.append((f"{path}.bias_add", "BiasAdd", strategies[f"{kind}.bias_add"]))
        elif kind == "vocab":
            rows.append((f"{path}.gather", "Gather", strategies["embedding.gather"]))
        elif kind == "logits":
            rows.append((f"{path}.matmul", "MatMul", strategies["logits.matmul"]))
        elif path.endswith("_attn.attention"):
            rows.append((f"{path}.qk", "BatchMatMul", strategies["attention.qk"]))
            rows.append((f"{path}.softmax", "Softmax", strategies["attention.softmax"]))
            rows.append((f"{path}.av", "BatchMatMul", strategies["attention.av"]))
    return rows


def apply_semi_auto(model: nn.Cell, dp: int, mp: int) -> List[Tuple[str, str, Tuple]]:
    """Set shard() strategies on the model's primitives (for semi_auto_parallel on Ascend/GPU).

    The model is otherwise unchanged: no parallel layers, no collectives. Every row of the
    plan names a primitive the model holds as an attribute; a missing one is an error.
    """
    rows = semi_auto_plan(model, dp, mp)
    for path, _, strategy in rows:
        owner_path, _, attr = path.rpartition(".")
        owner = model
        for name in owner_path.split(".") if owner_path else []:
            owner = owner[int(name)] if name.isdigit() else getattr(owner, name)
        prim = getattr(owner, attr, None)
        if prim is None or not hasattr(prim, "shard"):
            raise ValueError(f"semi_auto layout: {path} is not a primitive of the model")
        prim.shard(strategy)
    return rows
