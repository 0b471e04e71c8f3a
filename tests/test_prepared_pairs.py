"""Translation on your own parallel text (issue 34): `mindrun data prepare --format parallel|tsv`, read back, and a
run on the prepared pairs that trains exactly like the same Multi30k pairs read the usual way."""
import gzip
import json

import pytest
import sentencepiece as spm

from trainer.cli import main
from trainer.data.token_files import PrepareError, TokenDataset, open_pairs, prepare


def multi30k_lines(data_dir, stem, lang, count):
    with gzip.open(data_dir / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(count)]


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sides(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    de, en = multi30k_lines(data_dir, "train", "de", 300), multi30k_lines(data_dir, "train", "en", 300)
    return root, write(root / "train.de", de), write(root / "train.en", en), de, en


def test_parallel_files_and_tsv_read_back_as_the_tokenizers_ids(sides, tmp_path):
    root, de_file, en_file, de, en = sides
    done = prepare([de_file, en_file], tmp_path / "par", vocab_size=300, input_format="parallel", workers=2,
                   batch_size=64)
    assert done.documents == 300 and not done.skipped
    manifest, src, tgt = open_pairs(done.directory)
    assert manifest["kind"] == "pairs" and manifest["pairs"] == 300
    sp = spm.SentencePieceProcessor(model_file=str(done.directory / "tokenizer.model"))
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id()) == (0, 2, 3)  # mindrun's: collate adds BOS and EOS
    assert [src[i].tolist() for i in range(300)] == sp.encode(de)  # no end ids appended
    assert [tgt[i].tolist() for i in range(300)] == sp.encode(en)
    write(tmp_path / "pairs.tsv", [f"{s}\t{t}" for s, t in zip(de[:50], en[:50])])
    tsv = prepare([tmp_path / "pairs.tsv"], tmp_path / "tsv", tokenizer=done.directory / "tokenizer.model",
                  input_format="tsv", workers=1).directory
    _, s2, t2 = open_pairs(tsv)
    assert [s2[i].tolist() for i in range(50)] == sp.encode(de[:50]) and len(t2) == 50
    with pytest.raises(PrepareError, match="holds sentence pairs"):
        TokenDataset(done.directory, 16)  # not a language-model corpus


def test_bad_parallel_input_is_one_clear_error(sides, tmp_path):
    root, de_file, en_file, de, en = sides
    short = write(tmp_path / "short.en", en[:299])
    with pytest.raises(PrepareError, match=r"train.de has more lines than .*short.en \(line 300"):
        prepare([de_file, short], tmp_path / "a", vocab_size=200, input_format="parallel", workers=1)
    write(tmp_path / "bad.tsv", ["ein Hund\ta dog", "nur eine Seite"])
    with pytest.raises(PrepareError, match=r"bad.tsv:2: expected source<TAB>target, found 1 field"):
        prepare([tmp_path / "bad.tsv"], tmp_path / "b", vocab_size=200, input_format="tsv", workers=1)
    with pytest.raises(PrepareError, match="takes two files"):
        prepare([de_file], tmp_path / "c", vocab_size=200, input_format="parallel", workers=1)
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())  # nothing half-written
    # a tokenizer without mindrun's special ids (a Llama's: unk 0, bos 1, eos 2) cannot encode translation pairs
    other = tmp_path / "other"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(de + en), model_prefix=str(other), vocab_size=200,
                                   minloglevel=2)
    with pytest.raises(PrepareError, match="special ids"):
        prepare([de_file, en_file], tmp_path / "d", tokenizer=other.with_suffix(".model"), input_format="parallel",
                workers=1)


def test_a_flipped_byte_in_prepared_pairs_is_caught_at_load(sides, tmp_path):
    root, de_file, en_file, _, _ = sides
    out = prepare([de_file, en_file], tmp_path / "p", vocab_size=200, input_format="parallel", workers=1).directory
    raw = bytearray((out / "target" / "tokens.bin").read_bytes())
    raw[100] ^= 0x04
    (out / "target" / "tokens.bin").write_bytes(bytes(raw))
    with pytest.raises(PrepareError, match=r"target/tokens.bin: bytes from 0 do not match"):
        open_pairs(out)


QUICK = ["data.buckets=[64]", "eval.max_len_b=2", "train.max_steps=5", "train.log_every=1", "data.train_limit=200",
         "data.valid_limit=30", "train.compile_cache=false"]


def records(run, kind):
    return [json.loads(line) for line in open(run / "metrics.jsonl") if json.loads(line)["kind"] == kind]


def test_a_run_on_prepared_pairs_trains_like_the_same_multi30k_pairs(data_dir, tmp_path, capfd):
    """The same 200 training and 30 validation pairs, encoded by the same tokenizer: read from Multi30k by the usual
    path, or prepared from parallel files. The batches, hence losses, gradient norms and validation, are the same;
    `mindrun evaluate` scores the run's data.valid by default."""
    from trainer.config import load_config
    from trainer.train import train

    train(load_config("tiny", [f"data.dir={data_dir}", f"train.out_dir={tmp_path / 'm30k'}", *QUICK]))
    tokenizer = tmp_path / "m30k" / "vocab" / "joint.model"
    files = {}
    for stem, name, count in (("train", "train", 200), ("val", "valid", 30)):
        files[name] = [write(tmp_path / f"{name}.{lang}", multi30k_lines(data_dir, stem, lang, count))
                       for lang in ("de", "en")]
        prepare(files[name], tmp_path / f"{name}_pairs", tokenizer=tokenizer, input_format="parallel", workers=1)
    cfg = load_config("tiny", [f"data.train={tmp_path / 'train_pairs'}", f"data.valid={tmp_path / 'valid_pairs'}",
                               f"train.out_dir={tmp_path / 'pairs'}", *QUICK])
    assert (cfg.data.source, cfg.data.objective) == ("tokens", "translation")  # auto: the manifest holds pairs
    train(cfg)
    want, got = records(tmp_path / "m30k", "train"), records(tmp_path / "pairs", "train")
    assert len(got) == 5
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in want]
    (v_want,), (v_got,) = records(tmp_path / "m30k", "valid"), records(tmp_path / "pairs", "valid")
    assert v_got["loss"] == v_want["loss"] and abs(v_got["bleu"] - v_want["bleu"]) < 0.5  # references decoded
    capfd.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "pairs"), "--beam", "1"]) == 0
    result = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert result["split"] == "valid" and abs(result["bleu"] - v_got["bleu"]) < 1e-6
    assert main(["evaluate", "--checkpoint", str(tmp_path / "pairs"), "--split", "test"]) == 2
    assert "no 'test' split" in capfd.readouterr().err
