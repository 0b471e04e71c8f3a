"""Activation recompute (`model.recompute`): keep fewer activations for the backward pass, compute them again.

    none       every activation the backward needs is kept from the forward
    full       each Transformer block (encoder, decoder and decoder-only blocks) keeps only its inputs; the
               backward reruns the block's forward first (MindSpore's `Cell.recompute()`, graph mode)
    selective  only the attention core is rerun: scores, softmax, dropout and the weighted sum
               (Korthikanti et al. 2022), the activations that grow with the square of the sequence

The rerun forward computes what the first one did: dropout masks come from the step's key and the row's
counters (model/dropout.py), not from a random state, and a block's collectives (the hybrid layout's
AllReduce) sum the same partial results again, so gradients are those of `none` (tests compare them).
"""
from mindspore import nn

from model.attention import ScaledDotProductAttention
from model.layers import DecoderLayer, EncoderLayer

BLOCKS = (EncoderLayer, DecoderLayer)


def apply_recompute(model: nn.Cell, mode: str) -> int:
    """Mark `model`'s blocks (full) or attention cores (selective) for recompute; returns how many cells."""
    if mode == "none":
        return 0
    kinds = {"full": BLOCKS, "selective": (ScaledDotProductAttention,)}[mode]
    marked = 0
    for _, cell in model.cells_and_names():
        if isinstance(cell, kinds):
            cell.recompute()
            marked += 1
    return marked
