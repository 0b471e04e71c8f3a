"""Multi30k task 1 (raw, cased): locate or download the files, verify them, read sentence pairs.

Files are found, in order, in: the config's `data.dir`, `$MINDRUN_DATA_DIR`, or the
user cache (downloaded from upstream on first use). Every file is checked against
its pinned SHA-256 before it is read.
"""
import gzip
import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from launcher.atomic import atomic_path

UPSTREAM = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"

SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}

SHA256 = {
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
}


class DataError(RuntimeError):
    """A data file is missing, corrupt or inconsistent; the message names it."""


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """mindrun's cache: the argument, else $MINDRUN_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("MINDRUN_CACHE_DIR"):
        return Path(os.environ["MINDRUN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mindrun"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path) -> None:
    """Raise DataError unless `path` exists and matches its pinned checksum."""
    if not path.is_file():
        raise DataError(f"Multi30k file missing: {path}")
    got = sha256_of(path)
    if got != SHA256[path.name]:
        raise DataError(
            f"checksum mismatch for {path}: expected sha256 {SHA256[path.name]}, got {got}; "
            f"the file is corrupt or not the Multi30k release: delete it to download it again")


def download(name: str, dest_dir: Path, url_template: str = UPSTREAM) -> Path:
    """Fetch one file into dest_dir atomically: a failed or corrupt download leaves nothing."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    url = url_template.format(name=name)
    try:
        with atomic_path(dest, mode=0o644) as tmp:  # renamed onto dest only if the checksum matches
            import urllib.request  # only to download (0.1 s of every worker's start-up otherwise)

            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}", leave=False) as bar:
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            got = sha256_of(tmp)
            if got != SHA256[name]:
                raise DataError(f"downloaded {url} but its sha256 is {got}, expected {SHA256[name]}")
    except Exception as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"could not download {url}: {exc}") from exc
    return dest


def locate(data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
           url_template: str = UPSTREAM) -> Path:
    """The directory holding all six verified files, downloading into the cache if needed."""
    explicit = data_dir or os.environ.get("MINDRUN_DATA_DIR")
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            source = "data.dir" if data_dir else "$MINDRUN_DATA_DIR"
            raise DataError(f"{source} points to {root}, which is not a directory")
        for name in SHA256:
            verify(root / name)
        return root
    root = cache_root(cache_dir) / "multi30k"
    for name in SHA256:
        path = root / name
        if path.is_file() and sha256_of(path) == SHA256[name]:
            continue
        download(name, root, url_template)
    return root


def read_lines(path: Path) -> List[str]:
    """Decode a gzip file of UTF-8 lines; a decoding error names the file and line."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: line {i} is not valid UTF-8 ({exc.reason})") from None
    return out


def read_split(root: Path, split: str, src_lang: str, tgt_lang: str) -> List[Tuple[str, str]]:
    """Sentence pairs of one split ('train', 'valid', 'test'); line counts must match."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    stem = SPLITS[split]
    src_path, tgt_path = root / f"{stem}.{src_lang}.gz", root / f"{stem}.{tgt_lang}.gz"
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: the files do not align")
    return list(zip(src, tgt))


def load_splits(root: Path, src_lang: str, tgt_lang: str) -> Dict[str, List[Tuple[str, str]]]:
    """All three splits as lists of (source, target) sentences."""
    return {split: read_split(root, split, src_lang, tgt_lang) for split in SPLITS}
