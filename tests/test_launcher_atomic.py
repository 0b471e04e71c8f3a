"""launcher.atomic, the project's one atomic write: whole file or old file, fsynced, no temporary left behind."""
import os
import stat

import pytest

from launcher import atomic


@pytest.fixture
def synced(monkeypatch):
    """Paths passed to os.fsync, in order."""
    calls = []
    real = os.fsync

    def record(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", record)
    return calls


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_bytes_and_text_replace_the_whole_file_with_the_given_mode(tmp_path, synced):
    path = tmp_path / "sub" / "data.bin"
    assert atomic.write_bytes(path, b"\x00\x01" * 1000) == path
    assert path.read_bytes() == b"\x00\x01" * 1000 and stat.S_IMODE(path.stat().st_mode) == 0o644
    atomic.write_bytes(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    text = atomic.write_text(tmp_path / "t.json", "{\"ü\": 1}\n")
    assert text.read_text(encoding="utf-8") == "{\"ü\": 1}\n" and stat.S_IMODE(text.stat().st_mode) == 0o640
    assert len(synced) == 6 and synced[1] == os.path.realpath(path.parent)  # each write: file, then its folder
    assert leftovers(tmp_path) == [] and leftovers(path.parent) == []


def test_atomic_path_gives_a_writer_a_temporary_name_beside_the_target(tmp_path, synced):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old")
    with atomic.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".ckpt" and tmp != target and not tmp.exists()
        tmp.write_bytes(b"new checkpoint")  # e.g. save_checkpoint(net, str(tmp))
        assert target.read_bytes() == b"old"  # readers still see the old file
    assert target.read_bytes() == b"new checkpoint" and not tmp.exists()
    assert synced == [os.path.realpath(tmp), os.path.realpath(tmp_path)]  # the file before its rename, the folder
    assert leftovers(tmp_path) == []


def test_atomic_path_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="compiler failed"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("compiler failed")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="did not create"):
        with atomic.atomic_path(target):
            pass  # the writer wrote nothing
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_atomic_path_sets_the_mode_when_asked(tmp_path):
    with atomic.atomic_path(tmp_path / "k.so", mode=0o755) as tmp:
        tmp.write_bytes(b"\x7fELF")
    assert stat.S_IMODE((tmp_path / "k.so").stat().st_mode) == 0o755


def test_atomic_directory_is_all_or_nothing(tmp_path):
    from launcher.atomic import atomic_directory

    with atomic_directory(tmp_path / "done") as work:
        (work / "a").write_text("1")
    assert (tmp_path / "done" / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "failed") as work:
            (work / "a").write_text("1")
            raise RuntimeError("interrupted")
    with pytest.raises(OSError):
        with atomic_directory(tmp_path / "done") as work:  # a non-empty target is never replaced
            (work / "b").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"] and (tmp_path / "done" / "a").exists()
