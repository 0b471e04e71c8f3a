"""Tokenizers: round trip, train-split-only training, caching, the course's word level."""
import pytest

from trainer.config import DataConfig
from trainer.data import tokenizer as tok
from trainer.dataset import prepare


@pytest.fixture(scope="module")
def corpus(data_dir, tmp_path_factory):
    cfg = DataConfig(dir=str(data_dir), cache_dir=str(tmp_path_factory.mktemp("c")), vocab_size=1000,
                     train_limit=3000)
    return prepare(cfg)


def test_round_trip_gives_plain_text(corpus):
    vocab = corpus.src_vocab
    for de, en in corpus.splits["valid"].pairs[:50]:
        assert vocab.decode(vocab.encode(en)) == en
        assert vocab.decode(vocab.encode(de)) == de
    assert vocab.decode([tok.BOS] + vocab.encode("Ein Hund.") + [tok.EOS, tok.PAD]) == "Ein Hund."


def test_joint_vocabulary_and_specials(corpus):
    assert corpus.src_vocab is corpus.tgt_vocab
    sp = corpus.src_vocab.sp
    assert [sp.id_to_piece(i) for i in range(4)] == tok.SPECIALS


def test_trained_on_train_split_only(data_dir, tmp_path, monkeypatch):
    seen = []
    real = tok._train_sentencepiece

    def spy(sentences, *args, **kwargs):
        seen.extend(sentences)
        return real(sentences, *args, **kwargs)

    monkeypatch.setattr(tok, "_train_sentencepiece", spy)
    cfg = DataConfig(dir=str(data_dir), cache_dir=str(tmp_path), vocab_size=500, train_limit=500)
    corpus = prepare(cfg)
    train = corpus.splits["train"].pairs
    assert sorted(seen) == sorted([s for s, _ in train] + [t for _, t in train])
    held_out = {s for split in ("valid", "test") for pair in corpus.splits[split].pairs for s in pair}
    assert not held_out & set(seen) - {s for pair in train for s in pair}
    # cached: a second prepare with the same settings trains nothing
    seen.clear()
    prepare(cfg)
    assert seen == []


def test_separate_vocabularies(data_dir, tmp_path):
    cfg = DataConfig(dir=str(data_dir), cache_dir=str(tmp_path), vocab_size=600, train_limit=1000,
                     joint_vocab=False)
    corpus = prepare(cfg)
    assert corpus.src_vocab is not corpus.tgt_vocab
    assert corpus.src_vocab.model_file.name == "src.model" and corpus.tgt_vocab.model_file.name == "tgt.model"


def test_word_level_reproduces_course_preprocessing(data_dir, tmp_path):
    assert tok.WordVocab.tokenize("Zwei Männer, am Strand!") == ["zwei", "männer", ",", "am", "strand", "!"]
    cfg = DataConfig(dir=str(data_dir), cache_dir=str(tmp_path), tokenizer="word", joint_vocab=False)
    corpus = prepare(cfg)
    de, en = corpus.src_vocab, corpus.tgt_vocab
    assert de.itos[:4] == tok.SPECIALS
    # the course's counts (which also drop each file's last line) are 7,853 and 5,893
    assert abs(len(de) - 7853) < 30 and abs(len(en) - 5893) < 30
    # min_freq 2 on train only: a word seen once in train is unknown
    counts = {}
    for s, _ in corpus.splits["train"].pairs:
        for w in tok.WordVocab.tokenize(s):
            counts[w] = counts.get(w, 0) + 1
    once = next(w for w, c in counts.items() if c == 1)
    assert de.encode(once) == [tok.UNK]
    assert en.decode(en.encode("A dog runs.")) == "a dog runs ."


def test_encoded_ids_are_cached_and_reread(data_dir, tmp_path, monkeypatch):
    from trainer import dataset

    cfg = DataConfig(dir=str(data_dir), cache_dir=str(tmp_path), vocab_size=500, train_limit=500, valid_limit=40)
    first = prepare(cfg)
    cached = list((first.vocab_dir / "encoded").glob("*.pkl"))
    assert len(cached) == 1
    calls = []
    monkeypatch.setattr(dataset, "_encode", lambda vocab, sentences: calls.append(len(sentences)) or [])
    again = prepare(cfg)  # read from the cache: nothing encoded
    assert calls == []
    for name, split in first.splits.items():
        assert again.splits[name].src_ids == split.src_ids and again.splits[name].tgt_ids == split.tgt_ids
    # other text (another limit) is another key; a torn or foreign file is encoded again, not trusted
    prepare(DataConfig(dir=str(data_dir), cache_dir=str(tmp_path), vocab_size=500, train_limit=500, valid_limit=20))
    assert calls and len(list((first.vocab_dir / "encoded").glob("*.pkl"))) == 2
    calls.clear()
    cached[0].write_bytes(b"not a pickle")
    prepare(cfg)
    assert calls  # encoded again


def test_vocab_copy_leaves_the_encoded_cache_behind(data_dir, tmp_path):
    cfg = DataConfig(dir=str(data_dir), cache_dir=str(tmp_path / "c"), vocab_size=500, train_limit=500)
    corpus = prepare(cfg)
    corpus.copy_vocab_to(tmp_path / "run" / "vocab")
    assert sorted(p.name for p in (tmp_path / "run" / "vocab").iterdir()) == ["joint.model", "joint.vocab"]
