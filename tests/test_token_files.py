"""Own corpora (issue 34, first part): `mindrun data prepare` into memory-mapped token files, and the global sample
order every data-parallel rank reads its share of (trainer/data/token_files.py)."""
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from trainer.cli import main
from trainer.data.token_files import (GlobalOrder, PrepareError, TokenDataset, prepare, rank_rows,
                                      read_documents)

WORDS = ("the cat sat on a mat while two dogs played in the snow and a man rode his bike past the old park "
         "where children read books under green trees near the river").split()


def corpus(path: Path, documents: int, seed: int = 0, words=(3, 40)) -> list:
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, rng.integers(*words))) for _ in range(documents)]
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return docs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = corpus(root / "a.txt", 300) + corpus(root / "b.txt", 200, seed=1)
    done = prepare([root / "a.txt", root / "b.txt"], root / "prepared", vocab_size=120, workers=2, batch_size=64)
    return root, docs, done


def test_prepare_writes_every_document_with_an_end_id_and_a_manifest(prepared):
    root, docs, done = prepared
    out = done.directory
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["documents"], done.documents) == (500, 500) and not done.skipped
    assert manifest["dtype"] == "uint16" and manifest["eod_id"] == 3 and manifest["tokenizer"]["vocab_size"] <= 120
    assert [s["path"] for s in manifest["sources"]] == [str((root / n).resolve()) for n in ("a.txt", "b.txt")]
    tokens = np.fromfile(out / "tokens.bin", "<u2")
    index = np.load(out / "index.npy")
    assert len(tokens) == manifest["tokens"] == index[-1] and index[0] == 0 and len(index) == 501
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    for i in (0, 1, 299, 300, 499):  # both files, in order, each document ends with the end id
        ids = tokens[index[i]:index[i + 1]].tolist()
        assert ids[-1] == 3 and 3 not in ids[:-1]
        assert sp.decode(ids[:-1]) == docs[i]
    assert not list(root.glob(".prepared.tmp-*"))  # the work directory was renamed onto the target


def test_a_rerun_does_nothing_and_other_sources_are_refused(prepared, tmp_path):
    root, _, done = prepared
    again = prepare([root / "a.txt", root / "b.txt"], done.directory, vocab_size=120, workers=1)
    assert again.skipped and again.tokens == done.tokens
    with pytest.raises(FileExistsError, match="other sources"):
        prepare([root / "a.txt"], done.directory, vocab_size=120, workers=1)


def test_an_interrupted_prepare_leaves_nothing_behind(prepared, tmp_path):
    root, _, done = prepared

    def interrupt(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([root / "a.txt"], tmp_path / "out", tokenizer=done.directory / "tokenizer.model", workers=1,
                batch_size=16, progress=interrupt)
    assert list(tmp_path.iterdir()) == []  # neither the target nor its work directory


def test_jsonl_and_blank_line_documents(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "one doc"}\n\n{"text": "two", "id": 2}\n', encoding="utf-8")
    assert list(read_documents([tmp_path / "d.jsonl"], "jsonl")) == ["one doc", "two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(PrepareError, match=r"bad.jsonl:2: no string field 'text'"):
        list(read_documents([tmp_path / "bad.jsonl"], "jsonl"))
    (tmp_path / "p.txt").write_text("a b\nc\n\n\nd e\n", encoding="utf-8")
    assert list(read_documents([tmp_path / "p.txt"], "blank_lines")) == ["a b\nc", "d e"]


def test_the_cli_prepares_and_bad_input_is_one_line(prepared, tmp_path, capsys):
    root, _, done = prepared
    assert main(["data", "prepare", str(root / "a.txt"), "--out", str(tmp_path / "p"), "--tokenizer",
                 str(done.directory / "tokenizer.model"), "--workers", "1"]) == 0
    assert "300 documents" in capsys.readouterr().out
    assert main(["data", "prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "q"), "--vocab-size",
                 "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.txt: no such file" in err[0]


def test_samples_keep_attention_inside_documents(prepared):
    _, _, done = prepared
    data = TokenDataset(done.directory, 32)
    tokens = np.fromfile(done.directory / "tokens.bin", "<u2")
    assert len(data) == (len(tokens) - 1) // 32
    for i in (0, 7, len(data) - 1):
        inputs, targets, seg, pos = data.sample(i)
        assert np.array_equal(inputs, tokens[i * 32:i * 32 + 32]) and np.array_equal(targets, tokens[i * 32 + 1:i * 32 + 33])
        for j in range(1, 32):  # a new segment starts right after an end id, positions restart there
            starts = inputs[j - 1] == 3
            assert seg[j] == seg[j - 1] + starts and (pos[j] == 0 if starts else pos[j] == pos[j - 1] + 1)
        assert seg[0] == 1 and pos[0] == 0


def test_the_global_order_is_the_same_for_every_dp_size_and_after_a_resume(prepared):
    _, _, done = prepared
    data = TokenDataset(done.directory, 16)
    order = GlobalOrder(len(data), seed=5)
    assert np.array_equal(order.epoch(0), GlobalOrder(len(data), seed=5).epoch(0))  # every rank, every restart
    assert not np.array_equal(order.epoch(0), order.epoch(1)) and sorted(order.epoch(1)) == list(range(len(data)))
    rows = 8
    for batch in range(order.batches(rows)):
        whole = order.global_batch(0, batch, rows)
        for dp in (1, 2, 4):
            shares = [rank_rows(order, 0, batch, rows, dp, r) for r in range(dp)]
            assert np.array_equal(np.concatenate(shares), whole)  # the ranks' shares are the global batch
    # a run that stops after batch 2 and resumes at (epoch 0, batch 3), at another dp size, reads what the
    # uninterrupted run reads next
    straight = [order.global_batch(0, b, rows) for b in range(3, 6)]
    resumed = [np.concatenate([rank_rows(GlobalOrder(len(data), 5), 0, b, rows, 2, r) for r in range(2)])
               for b in range(3, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(straight, resumed))
    batch = data.rows(rank_rows(order, 0, 0, rows, 2, 1))
    assert batch["inputs"].shape == (4, 16) and batch["inputs"].dtype == np.int32


def test_a_corpus_larger_than_the_memory_it_may_use_streams(tmp_path):
    """The peak memory of a prepare of a 30 MB corpus is not the corpus: it exceeds a 0.3 MB one's by far less."""
    big = tmp_path / "big.txt"
    corpus(big, 150_000, words=(20, 60))  # about 30 MB of text
    small = tmp_path / "small.txt"
    corpus(small, 2_000)
    model = prepare([small], tmp_path / "vocab", vocab_size=120, workers=1).directory / "tokenizer.model"
    script = ("import resource, sys; from trainer.data.token_files import prepare; "
              "prepare([sys.argv[1]], sys.argv[2], tokenizer=sys.argv[3], workers=1); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    peaks = {}
    for name, path in (("small", small), ("big", big)):
        proc = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / f"out_{name}"), str(model)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[name] = int(proc.stdout.split()[-1]) / 1024  # MiB (Linux reports KiB)
    size = big.stat().st_size / 2 ** 20
    assert size > 25 and peaks["big"] - peaks["small"] < size / 3, (size, peaks)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_jsonl_prepared_reads_back_as_the_tokenizers_ids(prepared, tmp_path):
    root, docs, done = prepared
    lines = [json.dumps({"id": i, "body": d}) for i, d in enumerate(docs[:50])]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = done.directory / "tokenizer.model"
    out = prepare([tmp_path / "d.jsonl"], tmp_path / "p", tokenizer=model, input_format="jsonl", field="body",
                  workers=1).directory
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tokens, index = np.fromfile(out / "tokens.bin", "<u2"), np.load(out / "index.npy")
    assert [tokens[index[i]:index[i + 1]].tolist() for i in range(50)] == [ids + [3] for ids in sp.encode(docs[:50])]


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_token_file_is_caught_at_load(prepared, tmp_path):
    import shutil

    _, _, done = prepared
    copy = tmp_path / "copy"
    shutil.copytree(done.directory, copy)
    TokenDataset(copy, 16)  # intact: loads
    _flip(copy / "tokens.bin", 1001)
    with pytest.raises(PrepareError, match=r"tokens.bin: bytes 0-.* do not match their checksum"):
        TokenDataset(copy, 16)
    shutil.copy2(done.directory / "tokens.bin", copy / "tokens.bin")
    _flip(copy / "index.npy", 200)
    with pytest.raises(PrepareError, match="index.npy does not match its checksum"):
        TokenDataset(copy, 16)


def test_a_large_token_file_is_verified_chunk_by_chunk_before_each_first_read(prepared, tmp_path, monkeypatch):
    """Files above VERIFY_AT_LOAD_BYTES open without reading them whole; a sample is checked before it is used."""
    import trainer.data.token_files as tf

    root, _, done = prepared
    monkeypatch.setattr(tf, "CHUNK_BYTES", 256)
    out = prepare([root / "a.txt"], tmp_path / "p", tokenizer=done.directory / "tokenizer.model", workers=1).directory
    assert len(json.loads((out / "manifest.json").read_text())["tokens_sha256_chunks"]) > 10
    monkeypatch.setattr(tf, "VERIFY_AT_LOAD_BYTES", 0)
    _flip(out / "tokens.bin", 256 * 5 + 7)  # chunk 5: ids 640-767
    data = TokenDataset(out, 16)
    assert not data.verified.any()
    data.sample(0)
    data.sample(60)  # ids 960-976: chunk 7
    assert data.verified.sum() == 2
    with pytest.raises(PrepareError, match="bytes 1,280-1,536 do not match"):
        data.sample(41)  # ids 656-672
