"""The Transformer of Vaswani et al. (2017) in MindSpore: one file per idea.

`model` holds only the maths; parallel layouts are applied from outside.
"""
from model.config import ModelConfig
from model.transformer import Transformer
from model.decoder_only import DecoderOnly
from model.api import ARCHITECTURES, build

__all__ = ["ModelConfig", "Transformer", "DecoderOnly", "ARCHITECTURES", "build"]
