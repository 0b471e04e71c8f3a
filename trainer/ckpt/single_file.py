"""Single-file MindSpore checkpoints, written atomically (temporary name, fsync, rename)."""
from pathlib import Path
from typing import Dict, Optional

import mindspore as ms

from launcher.atomic import atomic_path

META = "meta/"  # prefix of non-parameter entries (step, epoch, ...) stored beside the weights


def save(cell_or_params, path: Path, extra: Optional[Dict] = None) -> Path:
    """Save parameters (and scalar `extra` metadata) to `path` without ever leaving a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {META + k: v for k, v in (extra or {}).items()}
    with atomic_path(path) as tmp:  # the temporary name keeps ".ckpt", which save_checkpoint would append
        ms.save_checkpoint(cell_or_params, str(tmp), append_dict=meta or None)
    return path


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into; the message names the file."""


def read_meta(path: Path) -> Dict:
    """The metadata saved with a checkpoint, without loading it into a model."""
    params = ms.load_checkpoint(str(path))
    return {k[len(META):]: v.asnumpy().item() for k, v in params.items() if k.startswith(META)}


def load_into(cell, path: Path, strict: bool = True) -> Dict:
    """Load a checkpoint into `cell`; return the metadata saved with it (step, epoch, ...).

    Entries that are neither parameters of `cell` nor metadata (optimizer moments in a
    checkpoint of the whole training step, say) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    params = ms.load_checkpoint(str(path))
    names = {p.name for p in cell.get_parameters()}
    meta = {k[len(META):]: v for k, v in params.items() if k.startswith(META)}
    not_loaded, _ = ms.load_param_into_net(cell, {k: v for k, v in params.items() if k in names})
    trained = {p.name for p in cell.trainable_params()}
    not_loaded = [n for n in not_loaded if n in trained]  # state set every call (the dropout key) is no weight
    if strict and not_loaded:
        raise CheckpointError(f"{path} lacks {len(not_loaded)} parameters of this model, "
                              f"e.g. {sorted(not_loaded)[:3]}: it was saved from a different model or config")
    return {k: (v.asnumpy().item() if hasattr(v, "asnumpy") else v) for k, v in meta.items()}
