"""`mindrun ckpt inspect | merge | reshard`, and full weights of a step directory for inference."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from launcher.atomic import atomic_path, write_text
from trainer.ckpt import manifest as mf
from trainer.ckpt.layout import ShardLayout
from trainer.ckpt.store import (FILE_MODE, CheckpointError, ShardReader, load_tensors, make_private_dir, resolve,
                                step_dirs, write_shard_file)


def open_verified(path: Path) -> Tuple[Path, Dict]:
    """(step directory, manifest) of a step directory, pointer or checkpoints root whose files verify."""
    directory = resolve(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    manifest = mf.read(directory)  # ManifestError is a CheckpointError
    problem = mf.verify(directory, manifest)
    if problem:
        raise CheckpointError(f"{directory}: {problem}")
    return directory, manifest


def inspect(path: Path) -> Dict:
    """What a checkpoint holds: step, layout, files, tensors by kind, position, versions, verification."""
    directory = resolve(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path} does not exist" if not Path(path).exists() else
                                f"{path} holds no step directory (expected step_<N>/, latest, best or checkpoints/)")
    manifest = mf.read(directory)
    problem = mf.verify(directory, manifest)
    tensors = manifest["tensors"]
    kinds: Dict[str, Dict] = {}
    for entry in tensors.values():
        k = kinds.setdefault(entry["kind"], {"tensors": 0, "elements": 0, "split": 0})
        k["tensors"] += 1
        k["elements"] += int(np.prod(entry["shape"]))
        k["split"] += len(entry["parts"]) > 1
    return {"directory": str(directory), "step": manifest["step"], "layout": manifest["layout"],
            "files": manifest["files"], "bytes": sum(f["size"] for f in manifest["files"].values()),
            "kinds": kinds, "position": manifest["position"], "versions": manifest.get("versions", {}),
            "config_sha256": manifest.get("config_sha256"), "verified": problem is None, "problem": problem}


def describe(info: Dict) -> str:
    """`inspect`'s result as lines for a person."""
    lay = info["layout"]
    lines = [f"{info['directory']}: step {info['step']}, saved with data_parallel {lay['data_parallel']} x "
             f"model_parallel {lay['model_parallel']}",
             f"verified: {'yes' if info['verified'] else 'NO: ' + info['problem']}",
             f"files ({info['bytes'] / 2 ** 20:.1f} MiB):"]
    lines += [f"  {name}  {rec['size']:,} bytes  sha256 {rec['sha256'][:16]}..." for name, rec in info["files"].items()]
    for kind, k in info["kinds"].items():
        lines.append(f"{kind}: {k['tensors']} tensors, {k['elements']:,} elements, {k['split']} split over ranks")
    pos = info["position"]
    lines.append("position: " + ", ".join(f"{k} {pos[k]}" for k in ("step", "epoch", "batch_index") if k in pos))
    if info["versions"]:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    return "\n".join(lines)


def _full_weights(directory: Path, manifest: Dict, kinds=("weight",)) -> Dict[str, np.ndarray]:
    """name -> whole array of every tensor of the given kinds ("weight", "optimizer") in a step directory."""
    reader = ShardReader(directory, manifest)
    try:
        return {name: reader.read(name) for name, e in manifest["tensors"].items() if e["kind"] in kinds}
    finally:
        reader.close()


def merge(path: Path, out: Path) -> Path:
    """One full MindSpore checkpoint (weights only) of a sharded checkpoint, for inference."""
    import mindspore as ms

    directory, manifest = open_verified(path)
    weights = _full_weights(directory, manifest)
    out = Path(out)
    if out.suffix != ".ckpt":
        raise CheckpointError(f"{out}: the merged checkpoint's name must end in .ckpt (MindSpore's format)")
    with atomic_path(out, mode=FILE_MODE) as tmp:
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in weights.items()], str(tmp))
    return out


def reshard(path: Path, model_parallel: int, data_parallel: int = 1, out: Optional[Path] = None) -> Path:
    """A copy of a checkpoint split for another layout (what resume does on load, written out)."""
    directory, manifest = open_verified(path)
    model = manifest.get("config", {}).get("model", {})
    for key in ("n_heads", "n_kv_heads"):
        if model.get(key) and model[key] % model_parallel:
            raise CheckpointError(f"model.{key} {model[key]} does not split over model_parallel={model_parallel}")
    tensors = manifest["tensors"]
    for name, e in tensors.items():
        if e["split_axis"] is not None and e["shape"][e["split_axis"]] % model_parallel:
            raise CheckpointError(f"{name} {e['shape']} does not split over model_parallel={model_parallel} "
                             f"along axis {e['split_axis']}")
    out = Path(out) if out else directory.with_name(f"{directory.name}-dp{data_parallel}-mp{model_parallel}")
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or give another --out")
    make_private_dir(out)
    axes = {n: e["split_axis"] for n, e in tensors.items() if e["split_axis"] is not None}
    reader = ShardReader(directory, manifest)
    files = {}
    for r in range(model_parallel):
        layout = ShardLayout(r, model_parallel, 0, data_parallel, axes)
        arrays = {}
        for name, e in tensors.items():
            if layout.is_split(name):
                arrays[name] = reader.read(name, e["split_axis"], *layout.local_range(name, e["shape"]))
            elif r == 0:
                arrays[name] = reader.read(name)
        sha256, size = write_shard_file(out / layout.file_name(), arrays)
        files[layout.file_name()] = {"sha256": sha256, "size": size, "model_parallel_rank": r}
    reader.close()
    layout = ShardLayout(0, model_parallel, split_axes=axes)
    new_tensors = {name: {**e, "parts": layout.parts(name, e["shape"])} for name, e in tensors.items()}
    new = {**manifest, "layout": {**manifest["layout"], "data_parallel": data_parallel,
                                  "model_parallel": model_parallel, "resharded_from": str(directory)},
           "files": files, "tensors": new_tensors}
    write_text(out / mf.MANIFEST, mf.dumps(new), mode=FILE_MODE)
    return out


def load_weights(model, path: Path) -> Dict:
    """Load the full weights of a checkpoint (step directory, pointer, root or merged .ckpt) into an
    unsplit `model`; returns the manifest's position (empty for a .ckpt)."""
    from model.parallel.layout import split_axes
    from trainer.ckpt import single_file as checkpoint

    path = Path(path)
    if path.is_file():
        return checkpoint.load_into(model, path)
    directory, manifest = open_verified(path)
    load_tensors(list(model.trainable_params()), ShardLayout(split_axes=split_axes(model)), directory, manifest,
                 kinds=("weight",))
    return manifest["position"]


def averaging_window(path: Path, count: int) -> List[Path]:
    """The step directory `path` names (a step directory, pointer or root) and the count - 1 complete ones
    before it, newest first (fairseq's checkpoint averaging); CheckpointError when fewer are kept."""
    newest = resolve(path)
    if not (newest / mf.MANIFEST).is_file():
        raise CheckpointError(f"{path}: --average needs a step directory, pointer or checkpoints root, not a file")
    step = mf.read(newest)["step"]
    complete = [d for s, d in step_dirs(newest.parent) if s <= step and (d / mf.MANIFEST).is_file()]
    if len(complete) < count:
        raise CheckpointError(f"--average {count}: {newest.parent} keeps {len(complete)} complete checkpoint(s) up "
                              f"to step {step} ({', '.join(d.name for d in complete)}); train with "
                              f"train.keep_last >= {count} or average fewer")
    return complete[:count]


def load_averaged_weights(model, directories: List[Path]) -> Dict:
    """Load the element-wise mean of the weights of several checkpoints into `model` (accumulated in
    float64); returns the newest one's position."""
    import mindspore as ms

    params = list(model.trainable_params())
    sums = [np.zeros(p.shape, np.float64) for p in params]
    position: Dict = {}
    for directory in directories:
        found = load_weights(model, directory)
        position = position or found
        for total, p in zip(sums, params):
            total += p.asnumpy()
    for param, total in zip(params, sums):
        param.set_data(ms.Tensor(total / len(directories), param.dtype))
    return dict(position, averaged=[d.name for d in directories])
