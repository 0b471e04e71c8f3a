"""Multi30k files: verification, atomic download (from file:// URLs, never the network), reading."""
import gzip
import shutil

import pytest

from trainer.data import multi30k
from trainer.data.multi30k import DataError


def test_local_directory_verifies_and_reads(data_dir):
    root = multi30k.locate(str(data_dir))
    splits = multi30k.load_splits(root, "de", "en")
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [29000, 1014, 1000]
    de, en = splits["train"][0]
    assert de.startswith("Zwei junge weiße Männer") and en.startswith("Two young, White males")


def test_env_variable_is_used(data_dir, monkeypatch):
    monkeypatch.setenv("MINDRUN_DATA_DIR", str(data_dir))
    assert multi30k.locate() == data_dir


def test_missing_file_is_named(tmp_path, data_dir):
    for name in multi30k.SHA256:
        if name != "val.en.gz":
            shutil.copy(data_dir / name, tmp_path / name)
    with pytest.raises(DataError, match=r"missing: .*val\.en\.gz"):
        multi30k.locate(str(tmp_path))


def test_checksum_mismatch_is_named(tmp_path, data_dir):
    for name in multi30k.SHA256:
        shutil.copy(data_dir / name, tmp_path / name)
    with gzip.open(tmp_path / "train.de.gz", "ab") as fh:
        fh.write(b"extra\n")
    with pytest.raises(DataError, match=r"checksum mismatch for .*train\.de\.gz"):
        multi30k.locate(str(tmp_path))


def test_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        multi30k.locate(str(tmp_path / "nope"))


def _write_gz(path, data: bytes):
    with gzip.open(path, "wb") as fh:
        fh.write(data)


def test_line_count_mismatch_names_both_files(tmp_path):
    _write_gz(tmp_path / "val.de.gz", b"a\nb\nc\n")
    _write_gz(tmp_path / "val.en.gz", b"a\nb\n")
    with pytest.raises(DataError, match=r"val\.de\.gz has 3 lines but .*val\.en\.gz has 2"):
        multi30k.read_split(tmp_path, "valid", "de", "en")


def test_non_utf8_names_file_and_line(tmp_path):
    _write_gz(tmp_path / "val.de.gz", b"gut\n\xff\xfe kaputt\n")
    with pytest.raises(DataError, match=r"val\.de\.gz: line 2 is not valid UTF-8"):
        multi30k.read_lines(tmp_path / "val.de.gz")


def test_download_verifies_and_caches(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("MINDRUN_DATA_DIR", raising=False)  # else the local directory wins
    cache = tmp_path / "cache"
    root = multi30k.locate(cache_dir=str(cache), url_template=data_dir.as_uri() + "/{name}")
    assert root == cache / "multi30k"
    assert sorted(p.name for p in root.iterdir()) == sorted(multi30k.SHA256)


def test_failed_download_leaves_nothing(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("MINDRUN_DATA_DIR", raising=False)
    source = tmp_path / "mirror"
    source.mkdir()
    for name in multi30k.SHA256:
        shutil.copy(data_dir / name, source / name)
    (source / "val.de.gz").write_bytes(b"corrupt")  # wrong checksum
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"val\.de\.gz.*sha256"):
        multi30k.locate(cache_dir=str(cache), url_template=source.as_uri() + "/{name}")
    names = [p.name for p in (cache / "multi30k").iterdir()]
    assert "val.de.gz" not in names and not any(n.endswith(".part") for n in names)
    with pytest.raises(DataError, match="could not download"):
        multi30k.download("train.de.gz", cache / "x", (tmp_path / "absent").as_uri() + "/{name}")
    assert list((cache / "x").iterdir()) == []
