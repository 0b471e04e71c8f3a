"""A sharded checkpoint's manifest.json: what it holds, how it is split, and how to check it.

A step directory counts as a checkpoint only when its manifest parses, has every field
below, and every file it lists has the recorded size and SHA-256 (`verify`).
"""
import hashlib
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from trainer.ckpt.single_file import CheckpointError

FORMAT = "mindrun-sharded-checkpoint/1"
MANIFEST = "manifest.json"
_FIELDS = ("format", "step", "layout", "files", "tensors", "position")


class ManifestError(CheckpointError):
    """A manifest that is missing, truncated, or not one of ours; the message names the file."""


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file (hex), read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_entry(shape, dtype: str, kind: str, split_axis: Optional[int],
                 parts: Iterable[Dict]) -> Dict:
    """One tensor's record: global shape, dtype, kind (weight | optimizer), the axis the layout
    splits it along (null: never split), and its parts: file and [start, stop) along that axis
    (no start/stop: the whole tensor)."""
    return {"shape": [int(s) for s in shape], "dtype": dtype, "kind": kind, "split_axis": split_axis,
            "parts": list(parts)}


def read(step_dir: Path) -> Dict:
    """The manifest of `step_dir`, parsed and checked for its fields (ManifestError otherwise)."""
    path = Path(step_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (the save did not complete)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable or truncated manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a {FORMAT} manifest")
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        raise ManifestError(f"{path}: manifest lacks {', '.join(missing)}")
    return data


def verify(step_dir: Path, manifest: Dict, files: Optional[Iterable[str]] = None) -> Optional[str]:
    """None if every file the manifest lists (or those of them named in `files`) is there with its size and
    SHA-256, and every tensor's parts are in listed files; else what is wrong."""
    step_dir = Path(step_dir)
    wanted = manifest["files"] if files is None else {n: manifest["files"][n] for n in files}
    for name, record in wanted.items():
        path = step_dir / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != record["size"]:
            return f"{path} has {size} bytes, the manifest says {record['size']} (truncated or replaced)"
        if sha256_of(path) != record["sha256"]:
            return f"{path} does not match its SHA-256 in the manifest (corrupt)"
    files = set(manifest["files"])
    for name, entry in manifest["tensors"].items():
        unknown = {f for part in entry["parts"] for f in part_files(part)} - files
        if unknown:
            return f"{step_dir / MANIFEST}: tensor {name} is in {sorted(unknown)}, which the manifest does not list"
    return None


def part_files(part: Dict) -> List[str]:
    """The files one part of a tensor is read from: its file, or a flat part's piece files."""
    return [p["file"] for p in part["flat"]["pieces"]] if "flat" in part else [part["file"]]


def dumps(manifest: Dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=False) + "\n"
