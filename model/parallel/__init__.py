"""Parallel layouts for the one model definition: collectives, parallel layers, layout tables."""
