"""Tokenizers: sentencepiece subwords (default) or the course's word-level vocabulary.

Both share the special ids below and are trained on the training split only.
Trained tokenizers are cached under a key made of the data checksums and the settings.
"""
import collections
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Protocol, Sequence

import sentencepiece as spm

from launcher import atomic

from model.tokens import BOS, EOS, PAD, SPECIALS, UNK  # noqa: F401 (re-exported for the data pipeline)

_WORD_RE = re.compile(r"\w+|[^\w\s]")


class Vocab(Protocol):
    """Encodes text to ids and decodes ids to text for one language."""

    def encode(self, text: str) -> List[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def __len__(self) -> int: ...


class SentencePieceVocab:
    """A trained sentencepiece model; decode gives detokenized plain text."""

    def __init__(self, model_file: Path):
        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))

    def encode(self, text: str) -> List[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Many sentences at once (sentencepiece runs them in C++)."""
        return self.sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i for i in ids if i > EOS])

    def __len__(self) -> int:
        return self.sp.get_piece_size()


class WordVocab:
    """The course's preprocessing: lowercase, `\\w+|[^\\w\\s]` tokens, frequency cut-off."""

    def __init__(self, tokens: List[str]):
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @staticmethod
    def tokenize(text: str) -> List[str]:
        return _WORD_RE.findall(text.lower())

    @classmethod
    def build(cls, sentences: Sequence[str], min_freq: int) -> "WordVocab":
        counts = collections.Counter(t for s in sentences for t in cls.tokenize(s))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + words)

    def encode(self, text: str) -> List[int]:
        return [self.stoi.get(t, UNK) for t in self.tokenize(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i > EOS)

    def __len__(self) -> int:
        return len(self.itos)


def cache_key(data_checksums: Dict[str, str], settings: Dict) -> str:
    """Stable hash of what a tokenizer depends on."""
    blob = json.dumps({"data": data_checksums, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train_sentencepiece(sentences: Sequence[str], out_dir: Path, prefix: str, vocab_size: int,
                         model_type: str) -> Path:
    """Train a sentencepiece model into out_dir/prefix.model atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(tmp / prefix), vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            pad_piece=SPECIALS[PAD], unk_piece=SPECIALS[UNK], bos_piece=SPECIALS[BOS], eos_piece=SPECIALS[EOS],
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=os.cpu_count() or 1,
            hard_vocab_limit=False,  # a small corpus may not support the requested size
            minloglevel=2)
        for suffix in (".model", ".vocab"):
            atomic.write_bytes(out_dir / (prefix + suffix), (tmp / (prefix + suffix)).read_bytes())
    return out_dir / f"{prefix}.model"


def build_vocabs(train_pairs: Sequence[tuple], kind: str, joint: bool, vocab_size: int, min_freq: int,
                 cache_dir: Path, key: str) -> Path:
    """Train (or find cached) vocabularies on the training pairs only; return their directory."""
    src_sents = [s for s, _ in train_pairs]
    tgt_sents = [t for _, t in train_pairs]
    out_dir = Path(cache_dir) / "tokenizers" / key
    out_dir.mkdir(parents=True, exist_ok=True)
    sides = [("joint", src_sents + tgt_sents)] if joint else [("src", src_sents), ("tgt", tgt_sents)]
    for side, sents in sides:
        if kind == "word":
            path = out_dir / f"{side}.words.json"
            if not path.is_file():
                atomic.write_text(path, json.dumps(WordVocab.build(sents, min_freq).itos))
        elif not (out_dir / f"{side}.model").is_file():
            _train_sentencepiece(sents, out_dir, side, vocab_size, kind)
    return out_dir


def load_vocabs(directory: Path):
    """(source vocab, target vocab) from a directory written by `build_vocabs`."""
    directory = Path(directory)

    def one(side: str):
        if (directory / f"{side}.model").is_file():
            return SentencePieceVocab(directory / f"{side}.model")
        if (directory / f"{side}.words.json").is_file():
            return WordVocab(json.loads((directory / f"{side}.words.json").read_text(encoding="utf-8")))
        return None

    joint = one("joint")
    if joint is not None:
        return joint, joint
    src, tgt = one("src"), one("tgt")
    if src is None or tgt is None:
        raise FileNotFoundError(f"no vocabulary files (joint.model, src.model/tgt.model, *.words.json) in {directory}")
    return src, tgt
