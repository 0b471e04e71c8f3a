"""The Transformer's parallel layout: one table, applied to the unchanged model by one function.

`TRANSFORMER_LAYOUT` says, for each sublayer path pattern, how it is split over the
model-parallel group (Megatron's scheme): attention projections by heads (Q/K/V by output
columns, the output projection by input rows), the FFN's first layer by columns and second
by rows, the embedding (and the tied output projection) by vocabulary rows. `apply_hybrid`
swaps those sublayers for their parallel versions in place; `semi_auto_strategies` states the
same layout as MindSpore `shard()` strategies for auto-parallel on Ascend/GPU.
"""
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Dict, List, Tuple

from mindspore import nn

from model.parallel.layers import ColumnParallelDense, RowParallelDense, VocabParallelEmbedding
from model.parallel.mappings import CopyToGroup, GatherLastDim

TRANSFORMER_LAYOUT: Tuple[Tuple[str, str], ...] = (
    ("*_attn.w_q", "column"),
    ("*_attn.w_k", "column"),
    ("*_attn.w_v", "column"),
    ("*_attn.w_o", "row"),
    ("*.ffn.w1", "column"),
    ("*.ffn.w2", "row"),
    ("src_embed", "vocab"),
    ("tgt_embed", "vocab"),
    ("out_proj", "column"),  # untied output projection: vocabulary split, gathered after
)
_LAYERS = {"column": ColumnParallelDense, "row": RowParallelDense, "vocab": VocabParallelEmbedding}


@dataclass
class Applied:
    """What a layout did: which parameters are split, and along which axis."""

    shard_axis: Dict[str, int]
    replaced: List[str]


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


def apply_hybrid(model: nn.Cell, group: str, rank: int, size: int) -> Applied:
    """Split `model` in place for tensor parallelism over `group` (this process is `rank` of `size`)."""
    if size == 1:
        return Applied({}, [])
    heads = model.cfg.n_heads
    new_cells: Dict[int, nn.Cell] = {}
    targets: List[Tuple[str, nn.Cell]] = []
    for path, cell in model.cells_and_names():
        kind = _kind(path)
        if kind:
            targets.append((path, cell))
        elif path.endswith("_attn"):
            cell.n_heads = heads // size  # this rank's heads; d_k is unchanged
    for path, cell in targets:
        if id(cell) not in new_cells:  # a tied embedding is one cell under two names
            new_cells[id(cell)] = _LAYERS[_kind(path)](cell, group, rank, size)
    shard_axis: Dict[str, int] = {}
    for path, cell in targets:
        _set(model, path, new_cells[id(cell)])
        shard_axis.update(new_cells[id(cell)].shard_axis)
    for cell in new_cells.values():
        _restore_names(cell)
    if model.cfg.share_embeddings:
        model.tgt_embed = model.src_embed  # cells_and_names lists a shared cell once
        model.before_logits = CopyToGroup(group)  # x is used by every rank's slice of the vocabulary
    model.after_logits = GatherLastDim(group, rank, size)
    return Applied(shard_axis, [p for p, _ in targets])


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
        "embedding.gather": ((mp, 1), (dp, 1)),   # table rows (vocabulary) split
        "logits.matmul": ((dp, 1), (mp, 1)),      # tied output projection: vocabulary split
    }


def semi_auto_plan(model: nn.Cell, dp: int, mp: int) -> List[Tuple[str, str, Tuple]]:
    """(operator path, operator, strategy) for every operator the layout shards, in model order."""
    strategies = semi_auto_strategies(dp, mp)
    rows: List[Tuple[str, str, Tuple]] = []
    for path, cell in model.cells_and_names():
        kind = _kind(path)
        if kind == "column" or kind == "row":
            rows.append((f"{path}.matmul", "MatMul", strategies[f"{kind}.matmul"]))
            if getattr(cell, "has_bias", False):
                rows.append((f"{path}.bias_add", "BiasAdd", strategies[f"{kind}.bias_add"]))
        elif kind == "vocab":
            rows.append((f"{path}.gather", "Gather", strategies["embedding.gather"]))
        elif path.endswith("_attn.attention"):
            rows.append((f"{path}.qk", "BatchMatMul", strategies["attention.qk"]))
            rows.append((f"{path}.softmax", "Softmax", strategies["attention.softmax"]))
            rows.append((f"{path}.av", "BatchMatMul", strategies["attention.av"]))
    if model.cfg.share_embeddings:
        rows.append(("logits_matmul", "MatMul", strategies["logits.matmul"]))
    return rows


def apply_semi_auto(model: nn.Cell, dp: int, mp: int) -> List[Tuple[str, str, Tuple]]:
    """Set shard() strategies on the model's primitives (for semi_auto_parallel on Ascend/GPU).

    Only the primitives the model holds as attributes are set here; the plan rows for
    operators called functionally (gather) are reported for the strategy file.
    """
    rows = semi_auto_plan(model, dp, mp)
    for path, _, strategy in rows:
        owner_path, _, attr = path.rpartition(".")
        owner = model
        for name in owner_path.split(".") if owner_path else []:
            owner = owner[int(name)] if name.isdigit() else getattr(owner, name)
        prim = getattr(owner, attr, None)
        if prim is not None and hasattr(prim, "shard"):
            prim.shard(strategy)
    return rows
