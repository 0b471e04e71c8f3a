"""The Transformer of Vaswani et al. (2017) in MindSpore: one file per idea.

`model` holds only the maths; parallel layouts are applied from outside.
"""
from model.config import ModelConfig
from model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
