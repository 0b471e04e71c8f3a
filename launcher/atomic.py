"""Atomic file writes for the whole project: temporary name in the same folder, fsync, rename, fsync the folder.

It lives in launcher/ because the launcher installs and runs alone (`pip install mindrun`, no trainer, no
MindSpore) while the trainer already depends on the launcher package: the one home both can import.

Readers see the old file or the whole new one, never a torn one, even after a crash or a kill.

    write_text(path, text)            # our own text (JSON, YAML, vocabularies)
    write_bytes(path, data)           # our own bytes (downloads, kernels)
    with atomic_path(path) as tmp:    # a library that writes a file by name
        save_checkpoint(net, str(tmp))
    with atomic_directory(path) as work:   # a directory of files, all or nothing
        ...
"""
import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's entry for a renamed file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: PathLike) -> Path:
    """A fresh hidden name beside `path` that keeps its suffix (libraries such as save_checkpoint append
    their extension when it is missing): runs/last.ckpt -> runs/.last.tmp-1a2b3c4d.ckpt."""
    path = Path(path)
    return path.parent / f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}"


@contextlib.contextmanager
def atomic_path(path: PathLike, mode: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder for a writer that takes a file name; on success fsync it,
    set `mode` (if given), rename it onto `path` and fsync the folder; on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: the writer did not create the temporary file for {path}")
        if mode is not None:
            os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync(path.parent)


def write_bytes(path: PathLike, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically with permissions `mode`; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # the umask must not narrow what the caller asked for
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    return path


def write_text(path: PathLike, text: str, mode: int = 0o640) -> Path:
    """Write `text` (UTF-8) to `path` atomically with permissions `mode`; returns the path."""
    return write_bytes(path, text.encode("utf-8"), mode=mode)


@contextlib.contextmanager
def atomic_directory(path: PathLike) -> Iterator[Path]:
    """Yield a fresh hidden directory beside `path` to fill; on success rename it onto `path` (which must be
    missing or empty) and fsync the parent, so readers see no directory or the whole one; on failure remove it."""
    import shutil
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield work
        if path.exists():
            path.rmdir()  # empty, or this raises: never replace what is there
        os.replace(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _fsync(path.parent)
