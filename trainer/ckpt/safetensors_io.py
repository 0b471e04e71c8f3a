"""safetensors files read one tensor at a time (bfloat16 included) and written as a stream.

The `safetensors` package reads bfloat16 only into torch, and writes a file from a dict that
holds every tensor at once. Hugging Face checkpoints are often bfloat16 and a 7B model's tensors
are 27 GB in float32, so import and export (trainer/ckpt/hf.py) use this instead: the format is
an 8-byte little-endian header length, a JSON header (name -> dtype, shape, data_offsets), then
the raw little-endian bytes. Reading memory-maps the file; writing computes the header from
shapes first, then writes each tensor as it is produced (one tensor in memory), hashing as it goes.
"""
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from launcher.atomic import atomic_path

_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _NUMPY.items() if k != "BOOL"}


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact: bfloat16 is float32's upper half)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even (as torch does); NaN stays NaN."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


class TensorFile:
    """One safetensors file, memory-mapped; `read` returns one tensor as float32 (or its own integer dtype)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 2 ** 20:
                raise ValueError(f"{self.path}: a {length}-byte header: not a safetensors file")
            header = json.loads(f.read(length))
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header: Dict[str, Dict] = header
        self._start = 8 + length
        self._map = np.memmap(self.path, np.uint8, "r") if os.path.getsize(self.path) > self._start else None

    def names(self) -> List[str]:
        return list(self.header)

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` as a new array: floating dtypes as float32, others as stored."""
        entry = self.header[name]
        lo, hi = entry["data_offsets"]
        raw = self._map[self._start + lo:self._start + hi] if hi > lo else np.zeros(0, np.uint8)
        code = entry["dtype"]
        if code == "BF16":
            out = bf16_to_f32(raw.view(np.uint16))
        elif code in _NUMPY:
            out = raw.view(np.dtype(_NUMPY[code]).newbyteorder("<")).astype(
                np.float32 if code in ("F64", "F32", "F16") else _NUMPY[code])
        else:
            raise ValueError(f"{self.path}: tensor {name} has dtype {code}, which mindrun does not read")
        return out.reshape(entry["shape"])


def encode(array: np.ndarray, dtype: str) -> bytes:
    """An array's bytes in safetensors dtype `dtype` (F32, F16, BF16)."""
    if dtype == "BF16":
        return f32_to_bf16(np.asarray(array, np.float32)).astype("<u2").tobytes()
    return np.ascontiguousarray(array, np.dtype(_NUMPY[dtype]).newbyteorder("<")).tobytes()


def code_of(array_dtype) -> str:
    return _CODES[np.dtype(array_dtype)]


def write_streamed(path: Path, entries: Iterable[Tuple[str, Tuple[int, ...], str, Callable[[], np.ndarray]]],
                   metadata: Optional[Dict[str, str]] = None, mode: int = 0o644) -> Tuple[str, int]:
    """Write a safetensors file atomically from (name, shape, dtype code, produce) entries, calling each
    `produce` only when its bytes are due (one tensor in memory). Returns (SHA-256, size)."""
    entries = list(entries)
    width = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}
    header: Dict[str, object] = {"__metadata__": dict(metadata or {})} if metadata else {}
    offset = 0
    for name, shape, code, _ in entries:
        size = int(np.prod(shape, dtype=np.int64)) * width[code]
        header[name] = {"dtype": code, "shape": [int(s) for s in shape], "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as the reference writer does
    digest = hashlib.sha256()
    with atomic_path(Path(path), mode=mode) as tmp, open(tmp, "wb") as f:
        for chunk in (struct.pack("<Q", len(blob)), blob):
            f.write(chunk)
            digest.update(chunk)
        for name, shape, code, produce in entries:
            array = produce()
            if tuple(array.shape) != tuple(shape):
                raise ValueError(f"{path}: {name} was announced as {list(shape)} but is {list(array.shape)}")
            data = encode(array, code)
            f.write(data)
            digest.update(data)
            del array, data
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest(), Path(path).stat().st_size
