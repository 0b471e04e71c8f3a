"""The commit protocol, pointers, retention, and loading (resharding) of sharded checkpoints.

Save (every rank calls it at the same step):
  1. each writing rank writes its shard under a temporary name, fsyncs, renames (0640, in a
     0750 directory), and hashes it;
  2. one AllReduce carries every shard's SHA-256 and size (or its failure) to every rank;
  3. rank 0 writes manifest.json the same way, then moves the `latest` (and `best`) pointers,
     then removes step directories beyond the newest `keep_last` complete ones (never `best`).
A kill anywhere leaves at worst a step directory without a manifest: not a checkpoint.

Resume: rank 0 takes the newest step directory whose manifest parses and whose files verify
(warning about every one it skips), every rank learns which by one AllReduce, and each rank
reads its slices of every tensor, whatever layout the checkpoint was saved with.
"""
import contextlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from launcher.atomic import _fsync, atomic_path, write_text
from trainer.ckpt.single_file import CheckpointError
from trainer.ckpt import manifest as mf
from trainer.ckpt.layout import ShardLayout

DIR_MODE, FILE_MODE = 0o750, 0o640  # nobody but the owner's group reads a run's weights
_STEP_DIR = re.compile(r"^step_(\d+)$")
Sum = Callable[[np.ndarray], np.ndarray]  # an element-wise sum over ranks (trainer/parallel/host_sum.py)
_ROW = 20  # ok flag, 16 x 16 bits of SHA-256, 3 x 16 bits of size: exact in float32 sums


def _contiguous(array: np.ndarray) -> np.ndarray:
    """`array` itself when C-contiguous, else a C-contiguous copy, keeping 0-d arrays 0-d (np.ascontiguousarray
    makes them 1-d). Saving a 7B shard must not copy every array a second time after asnumpy()."""
    if isinstance(array, np.ndarray) and array.flags.c_contiguous:
        return array
    return np.array(array, order="C", copy=True)


def _sum_over_ranks(array: np.ndarray, world_size: int, summed: Optional[Sum] = None) -> np.ndarray:
    """Element-wise float32 sum over every rank: `summed` (trainer/parallel/host_sum.py's world_sum), else an
    AllReduce over MindSpore's world group; identity alone."""
    if world_size <= 1:
        return array
    if summed is None:
        from trainer.parallel.host_sum import world_allreduce as summed  # imports MindSpore: only when needed
    return summed(array.astype(np.float32))


def _encode(sha256: str, size: int) -> np.ndarray:
    row = np.zeros(_ROW, np.float32)
    row[0] = 1.0
    digest = bytes.fromhex(sha256)
    row[1:17] = [int.from_bytes(digest[i:i + 2], "big") for i in range(0, 32, 2)]
    row[17:20] = [(size >> shift) & 0xFFFF for shift in (32, 16, 0)]
    return row


def _decode(row: np.ndarray) -> Optional[Dict]:
    if row[0] != 1.0:
        return None
    words = [int(v) for v in row[1:17]]
    size = (int(row[17]) << 32) | (int(row[18]) << 16) | int(row[19])
    return {"sha256": b"".join(w.to_bytes(2, "big") for w in words).hex(), "size": size}


def make_private_dir(path: Path) -> Path:
    """mkdir -p with mode 0750 on what it creates (whatever the umask)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        with contextlib.suppress(OSError):
            os.chmod(p, DIR_MODE)
    return path


def write_shard_file(path: Path, arrays: Dict[str, np.ndarray]) -> Tuple[str, int]:
    """Write named arrays as one safetensors file atomically (0640); returns its SHA-256 and size."""
    from safetensors.numpy import save_file

    with atomic_path(path, mode=FILE_MODE) as tmp:
        save_file({name: _contiguous(a) for name, a in arrays.items()}, str(tmp), metadata={"format": mf.FORMAT})
    return mf.sha256_of(path), path.stat().st_size


def _point(root: Path, name: str, target: str) -> None:
    """Atomically (re)point the symlink root/name at `target` (a sibling directory)."""
    tmp = root / f".{name}.tmp-{secrets.token_hex(4)}"
    os.symlink(target, tmp)
    os.replace(tmp, root / name)
    _fsync(root)


def step_dirs(root: Path) -> List[Tuple[int, Path]]:
    """(step, directory) of every step_<N> under root, newest first."""
    if not Path(root).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(root).iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def resolve(path: Path) -> Path:
    """A step directory from a step directory, a pointer (best, latest), a checkpoints root or a run directory
    (its latest)."""
    path = Path(path)
    if path.is_dir() and not (path / mf.MANIFEST).exists() and (path / "checkpoints" / "latest").exists():
        path = path / "checkpoints"
    if path.is_dir() and not (path / mf.MANIFEST).exists() and (path / "latest").exists():
        path = path / "latest"
    return path.resolve()


def check_shared_storage(root: Path, rank: int, world_size: int, summed: Optional[Sum] = None) -> None:
    """Every rank must see every rank's files under `root` (the commit protocol and resume read
    them all): each writes a probe with a random token, rank 0 reads them all; a CheckpointError on
    every rank, at start, if it cannot (node-local storage on several nodes). `summed`: how ranks sum
    (host_sum.world_sum), else MindSpore's AllReduce."""
    if world_size <= 1:
        return
    make_private_dir(root)
    token = secrets.randbelow(1 << 24) + 1  # exact in float32
    probe = Path(root) / f".storage-probe-rank{rank}"
    write_text(probe, str(token), mode=FILE_MODE)
    tokens = np.zeros(world_size, np.float32)
    tokens[rank] = token
    tokens = _sum_over_ranks(tokens, world_size, summed)
    missing = np.zeros(1, np.float32)
    unseen = []
    if rank == 0:
        for r in range(world_size):
            try:
                seen = int((Path(root) / f".storage-probe-rank{r}").read_text())
            except (OSError, ValueError):
                seen = -1
            if seen != int(tokens[r]):
                unseen.append(r)
        missing[0] = len(unseen)
    missing = _sum_over_ranks(missing, world_size, summed)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    if missing[0]:
        shown = f" (ranks {unseen[:8]})" if unseen else ""
        raise CheckpointError(
            f"{root}: rank 0 cannot see the files of {int(missing[0])} ranks{shown}: the checkpoint directory "
            f"must be one shared directory for every node (NFS, Lustre, a cloud file system); set train.out_dir "
            f"to a path on shared storage")


class ShardReader:
    """Reads tensors of one step directory by name and slice (safetensors: no code, no pickles)."""

    def __init__(self, step_dir: Path, manifest: Dict):
        self.dir, self.manifest, self._files = Path(step_dir), manifest, {}

    def _file(self, name: str):
        if name not in self._files:
            from safetensors import safe_open

            self._files[name] = safe_open(str(self.dir / name), framework="np")
        return self._files[name]

    def read(self, name: str, axis: Optional[int] = None, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Tensor `name`, whole, or its [start, stop) along `axis`, from whichever parts hold it."""
        entry = self.manifest["tensors"][name]
        parts, saved = entry["parts"], entry["split_axis"]
        along = (lambda lo, hi: (slice(None),) * axis + (slice(lo, hi),)) if axis is not None else None
        if len(parts) == 1 and "start" not in parts[0]:  # saved whole
            if along is None:
                if "flat" in parts[0]:
                    return self._flat(parts[0]["flat"])
                return self._file(parts[0]["file"]).get_tensor(name).reshape(entry["shape"])  # 0-d stays 0-d
            return self._source(name, parts[0])[along(start, stop)]
        if along is not None and axis == saved:  # only the overlaps with the wanted range
            pieces = [self._source(name, p)[along(max(start, p["start"]) - p["start"],
                                                  min(stop, p["stop"]) - p["start"])]
                      for p in parts if max(start, p["start"]) < min(stop, p["stop"])]
            return np.concatenate(pieces, axis=axis)
        full = np.concatenate([self._source(name, p)[:] for p in parts], axis=saved)
        return full if along is None else full[along(start, stop)]

    def _source(self, name: str, part: Dict):
        """What one part of a tensor reads from: its file's slice, or a flat part made into its array."""
        return self._flat(part["flat"]) if "flat" in part else self._file(part["file"]).get_slice(name)

    def _flat(self, flat: Dict) -> np.ndarray:
        """A tensor kept as [offset, offset + size) of a flat vector saved in data-parallel pieces (a sharded
        optimizer's moments): the overlapping ranges of the pieces, joined and shaped."""
        first, end = flat["offset"], flat["offset"] + flat["size"]
        ranges = [self._file(p["file"]).get_slice(flat["tensor"])[max(first, p["start"]) - p["start"]:
                                                                  min(end, p["stop"]) - p["start"]]
                  for p in flat["pieces"] if max(first, p["start"]) < min(end, p["stop"])]
        return np.concatenate(ranges).reshape(flat["shape"])

    def close(self) -> None:
        self._files.clear()


class CheckpointStore:
    """The checkpoints of one run directory, seen from one rank (see the module docstring)."""

    def __init__(self, root: Path, layout: ShardLayout, world_size: int = 1, is_main: bool = True,
                 keep_last: int = 3, warn: Callable[[str], None] = print, summed: Optional[Sum] = None):
        self.root, self.layout, self.world_size, self.is_main = Path(root), layout, world_size, is_main
        self.keep_last, self.warn, self.summed = keep_last, warn, summed  # summed: how ranks sum (host_sum.py)

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step}"

    # -- saving ------------------------------------------------------------------------------
    def save(self, step: int, optimizer, position: Dict, config: Dict, extra: Optional[Dict] = None,
             best: bool = False) -> Path:
        """Write step_<step> (all ranks call this together); returns its directory once committed."""
        directory = self.step_dir(step)
        if self.is_main:
            make_private_dir(self.root)
            with contextlib.suppress(FileNotFoundError):  # a stale manifest of an earlier, failed save
                os.unlink(directory / mf.MANIFEST)
        layout = self.layout
        # a sharded optimizer (trainer/parallel/zero.py) saves its counters and weights like nn.Adam, and its
        # moments as this rank's pieces of the flat vector: every rank writes a piece file, nothing is gathered
        state, pieces = optimizer.save_state() if hasattr(optimizer, "save_state") else (self._state(optimizer), {})
        me = layout.dp_rank * layout.mp_size + layout.mp_rank  # a distinct row per rank
        table, failure = np.zeros((max(self.world_size, me + 1), 2, _ROW), np.float32), None
        try:
            if layout.writes:
                table[me, 0] = _encode(*self._write_shard(directory, state))
            if pieces:
                make_private_dir(directory)
                table[me, 1] = _encode(*write_shard_file(directory / layout.piece_file(),
                                                         {n: p.asnumpy() for n, p in pieces.items()}))
        except Exception as exc:  # every rank must still reach the exchange, then all raise
            failure = exc
        table = _sum_over_ranks(table, self.world_size, self.summed)
        files = {}
        for d in range(layout.dp_size):
            for r in range(layout.mp_size):
                if d == 0:
                    files[layout.file_name(r)] = _decode(table[d * layout.mp_size + r, 0])
                if pieces:
                    files[layout.piece_file(r, d)] = _decode(table[d * layout.mp_size + r, 1])
        failed = [name for name, record in files.items() if record is None]
        if failure is not None:
            raise CheckpointError(f"step {step}: writing in {directory} on data-parallel rank {layout.dp_rank}, "
                                  f"model-parallel rank {layout.mp_rank} failed: {failure}") from failure
        if failed:
            raise CheckpointError(f"step {step}: {', '.join(failed)} could not be written in {directory} "
                                  f"(see that rank's log); the checkpoint was not committed")
        if self.is_main:
            for r in range(self.layout.mp_size):
                files[self.layout.file_name(r)]["model_parallel_rank"] = r
            tensors = self._tensors(optimizer, state)
            if pieces:
                tensors.update(self._flat_tensors(optimizer))
            manifest = {"format": mf.FORMAT, "step": step, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "layout": {"data_parallel": self.layout.dp_size, "model_parallel": self.layout.mp_size,
                                   "writers": "data-parallel rank 0 of every model-parallel rank"
                                              + ("; every rank its optimizer pieces" if pieces else "")},
                        "files": files, "tensors": tensors, "position": position,
                        "config": config, **(extra or {})}
            write_text(directory / mf.MANIFEST, mf.dumps(manifest), mode=FILE_MODE)
            _point(self.root, "latest", directory.name)
            if not (self.root / "last").is_symlink():
                _point(self.root, "last", "latest")
            if best:
                _point(self.root, "best", directory.name)
            self.prune()
        return directory

    def _state(self, optimizer) -> List:
        """The tensors a checkpoint keeps (and a load sets): the optimizer's Parameters, or for a sharded
        optimizer its state in nn.Adam's names (trainer/parallel/zero.py: the whole moments to load into)."""
        if hasattr(optimizer, "load_state"):
            return optimizer.load_state()
        seen, state = set(), []
        for param in optimizer.get_parameters():
            if param.name not in seen:
                seen.add(param.name)
                state.append(param)
        return state

    def _write_shard(self, directory: Path, state: List) -> Tuple[str, int]:
        make_private_dir(directory)
        arrays = {p.name: p.asnumpy() for p in state if self.layout.owns(p.name)}
        return write_shard_file(directory / self.layout.file_name(), arrays)

    def _flat_tensors(self, optimizer) -> Dict:
        """Manifest entries `moment1.<weight>`, `moment2.<weight>` of a sharded optimizer's moments, read from the
        data-parallel ranks' piece files (ShardLayout.flat_parts): any layout loads them by those names."""
        flat, tensors = optimizer.flat_description(), {}
        for name, shape, offset, size in zip(flat["names"], flat["shapes"], flat["offsets"], flat["sizes"]):
            for moment in ("moment1", "moment2"):
                full = f"{moment}.{name}"
                shape_all = self.layout.global_shape(full, shape)
                tensors[full] = mf.tensor_entry(shape_all, "float32", "optimizer", self.layout.axis(full),
                                                self.layout.flat_parts(full, shape_all, f"zero.{moment}", offset, size,
                                                                       shape, flat["piece"]))
        return tensors

    def _tensors(self, optimizer, state: List) -> Dict:
        weights = {p.name for p in optimizer.parameters}
        tensors = {}
        for p in state:
            shape = self.layout.global_shape(p.name, p.shape)
            tensors[p.name] = mf.tensor_entry(shape, _dtype(p), "weight" if p.name in weights else "optimizer",
                                              self.layout.axis(p.name), self.layout.parts(p.name, shape))
        return tensors

    # -- retention ---------------------------------------------------------------------------
    def _pointed(self, name: str) -> Optional[str]:
        link = self.root / name
        return os.readlink(link) if link.is_symlink() else None

    def prune(self) -> List[Path]:
        """Remove step directories beyond the newest keep_last complete ones, and debris older than
        the newest complete one; never what `best` or `latest` points at. Rank 0 only."""
        keep = {self._pointed("best"), self._pointed("latest")}
        complete = 0
        removed = []
        for _, directory in step_dirs(self.root):
            is_complete = (directory / mf.MANIFEST).is_file()
            if directory.name in keep:
                complete += is_complete
                continue
            if is_complete and complete < self.keep_last:
                complete += 1
                continue
            if not is_complete and complete == 0:
                continue  # newer than any complete one: a save may be in progress (another job's?)
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
        return removed

    # -- resuming ----------------------------------------------------------------------------
    def newest_verified(self) -> Optional[Tuple[Path, Dict]]:
        """The newest step directory whose manifest parses and whose files verify; a warning for each skipped."""
        for _, directory in step_dirs(self.root):
            try:
                manifest = mf.read(directory)
            except mf.ManifestError as exc:
                self.warn(f"warning: skipping checkpoint {directory.name}: {exc}")
                continue
            problem = mf.verify(directory, manifest)
            if problem:
                self.warn(f"warning: skipping checkpoint {directory.name}: {problem}")
                continue
            return directory, manifest
        return None

    def agree_on_resume(self) -> Optional[Tuple[Path, Dict]]:
        """Every rank: the newest step directory whose manifest parses and whose files verify, or None.

        The hashing is spread over the ranks: of a candidate's files (sorted by name), rank k of the job hashes
        every world_size-th from the k-th, and one AllReduce per candidate tells every rank which file, if any,
        failed where. At 7B that reads the ~80 GB of a checkpoint in parallel instead of on rank 0 alone while
        the others wait in a collective. Rank 0 warns about every candidate it skips."""
        me = self.layout.dp_rank * self.layout.mp_size + self.layout.mp_rank  # a distinct index per rank
        for _, directory in step_dirs(self.root):  # every rank lists the same (shared storage, checked at start)
            try:
                manifest, problem = mf.read(directory), None
            except mf.ManifestError as exc:
                manifest, problem = None, str(exc)
            verdict = np.zeros(self.world_size, np.float32)  # 0: mine verify; i + 1: my i-th file failed
            if manifest is not None:
                names = sorted(manifest["files"])
                mine = names[me::self.world_size] if self.world_size > 1 else names
                problem = mf.verify(directory, manifest, mine)
                if problem:
                    failed = next((i for i, n in enumerate(names) if n in problem), len(names))
                    verdict[me % self.world_size] = failed + 1
            elif self.is_main:
                verdict[0] = 1.0  # the manifest itself: every rank saw it, rank 0 says so
            verdict = _sum_over_ranks(verdict, self.world_size, self.summed)
            if not verdict.any():
                return directory, manifest
            if problem is None:  # another rank's file failed
                rank = int(np.flatnonzero(verdict)[0])
                name = sorted(manifest["files"])[int(verdict[rank]) - 1] if manifest else "a file"
                problem = f"{directory / name} failed its size or SHA-256 check (hashed by rank {rank})"
            self.warn(f"warning: skipping checkpoint {directory.name}: {problem}")
        return None

    def load(self, optimizer, directory: Path, manifest: Dict) -> None:
        """Set every tensor of `optimizer` (weights, moments, counters) to this rank's slice of the checkpoint."""
        state = self._state(optimizer)
        load_tensors(state, self.layout, directory, manifest)
        if hasattr(optimizer, "load_checkpoint_state"):
            optimizer.load_checkpoint_state(state)  # the moments cut into this rank's pieces


def _dtype(param) -> str:
    import mindspore as ms

    names = {ms.float32: "float32", ms.float16: "float16", ms.int32: "int32", ms.int64: "int64",
             ms.float64: "float64", ms.bfloat16: "bfloat16"}
    return names.get(param.dtype, str(param.dtype))


def differences(params: Iterable, layout: ShardLayout, manifest: Dict, kinds=("weight", "optimizer")) -> List[str]:
    """What differs between the tensors `params` would need and those the checkpoint holds."""
    tensors = {k: v for k, v in manifest["tensors"].items() if v.get("kind") in kinds}
    problems, names = [], set()
    for p in params:
        names.add(p.name)
        want = layout.global_shape(p.name, p.shape)
        if p.name not in tensors:
            problems.append(f"{p.name} {list(want)}: not in the checkpoint")
        elif list(tensors[p.name]["shape"]) != list(want):
            problems.append(f"{p.name}: checkpoint {tensors[p.name]['shape']}, this model {list(want)}")
    problems += [f"{n} {tensors[n]['shape']}: in the checkpoint, not in this model" for n in sorted(set(tensors) - names)]
    return problems


def load_tensors(params: List, layout: ShardLayout, directory: Path, manifest: Dict,
                 kinds=("weight", "optimizer")) -> None:
    """Set each Parameter to its slice (per `layout`) of the checkpoint's tensor of the same name."""
    import mindspore as ms

    problems = differences(params, layout, manifest, kinds)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{directory} was saved from another model shape ({len(problems)} tensors "
                              f"differ):\n  {shown}")
    reader = ShardReader(directory, manifest)
    try:
        for p in params:
            if not getattr(p, "wanted", True):  # checked above, not needed here (zero.SkippedMoment)
                continue
            shape = manifest["tensors"][p.name]["shape"]
            span = layout.local_range(p.name, shape)
            data = reader.read(p.name, layout.axis(p.name), *span) if span else reader.read(p.name)
            p.set_data(ms.Tensor(_contiguous(data), p.dtype))
    finally:
        reader.close()
