"""The prepared corpus: verified Multi30k splits, trained vocabularies, sentences as token ids.

The ids are cached beside the tokenizer (tokenizers/<key>/encoded/): a restart reads them instead of encoding
31k pairs again while its ranks share the cores.
"""
import hashlib
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from launcher import atomic

from trainer.config import DataConfig
from trainer.data import multi30k
from trainer.data.batching import pair_length
from trainer.data.tokenizer import build_vocabs, cache_key, load_vocabs


@dataclass
class Split:
    """One split as raw text and as ids."""

    pairs: List[Tuple[str, str]]
    src_ids: List[List[int]]
    tgt_ids: List[List[int]]

    def lengths(self) -> List[int]:
        """Padded length each pair needs (see batching.pair_length)."""
        return [pair_length(s, t) for s, t in zip(self.src_ids, self.tgt_ids)]


@dataclass
class Corpus:
    """Splits plus the vocabularies that encoded them."""

    splits: Dict[str, Split]
    src_vocab: object
    tgt_vocab: object
    vocab_dir: Path

    def copy_vocab_to(self, dest: Path) -> None:
        """Put the tokenizer files into a run directory so its checkpoints stand alone."""
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.vocab_dir.iterdir():
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, dest / f.name)


@dataclass
class PreparedPairs(Corpus):
    """Parallel text prepared by `mindrun data prepare --format parallel|tsv`: its one tokenizer is vocab_dir's
    tokenizer.model (the training corpus directory)."""

    def copy_vocab_to(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.vocab_dir / "tokenizer.model", dest / "joint.model")


def pairs_as_text(vocab, src, tgt) -> List[Tuple[str, str]]:
    """Prepared pairs decoded back to text (references for BLEU, input for the translator)."""
    return [(vocab.decode(list(map(int, s))), vocab.decode(list(map(int, t)))) for s, t in zip(src, tgt)]


def prepare_pairs(cfg: DataConfig) -> PreparedPairs:
    """The prepared parallel corpora data.train and data.valid (one tokenizer); the training side is read from
    its memory-mapped files on demand, the validation side held as lists with its text decoded."""
    from trainer.data.token_files import open_pairs, open_train_and_valid
    from trainer.data.tokenizer import SentencePieceVocab

    (_, src, tgt), (_, vsrc, vtgt) = open_train_and_valid(cfg.train, cfg.valid, open_pairs, lambda o: o[0])
    train_dir = Path(cfg.train).expanduser()
    vocab = SentencePieceVocab(train_dir / "tokenizer.model")
    if cfg.train_limit and cfg.train_limit < len(src):
        src, tgt = [src[i] for i in range(cfg.train_limit)], [tgt[i] for i in range(cfg.train_limit)]
    count = min(len(vsrc), cfg.valid_limit) if cfg.valid_limit else len(vsrc)
    vsrc = [list(map(int, vsrc[i])) for i in range(count)]
    vtgt = [list(map(int, vtgt[i])) for i in range(count)]
    splits = {"train": Split([], src, tgt), "valid": Split(pairs_as_text(vocab, vsrc, vtgt), vsrc, vtgt)}
    return PreparedPairs(splits, vocab, vocab, train_dir)


def _encode(vocab, sentences: Sequence[str]) -> List[List[int]]:
    if hasattr(vocab, "encode_batch"):
        return vocab.encode_batch(sentences)
    return [vocab.encode(s) for s in sentences]


def prepare(cfg: DataConfig) -> Corpus:
    """Locate/verify the data, train or load the tokenizer (train split only), encode everything."""
    root = multi30k.locate(cfg.dir, cfg.cache_dir)
    raw = multi30k.load_splits(root, cfg.src_lang, cfg.tgt_lang)
    if cfg.train_limit:
        raw["train"] = raw["train"][:cfg.train_limit]
    if cfg.valid_limit:
        raw["valid"] = raw["valid"][:cfg.valid_limit]
    settings = {"kind": cfg.tokenizer, "joint": cfg.joint_vocab, "vocab_size": cfg.vocab_size,
                "min_freq": cfg.min_freq, "src": cfg.src_lang, "tgt": cfg.tgt_lang,
                "train_pairs": len(raw["train"])}
    key = cache_key(multi30k.SHA256, settings)
    vocab_dir = build_vocabs(raw["train"], cfg.tokenizer, cfg.joint_vocab, cfg.vocab_size, cfg.min_freq,
                             multi30k.cache_root(cfg.cache_dir), key)
    src_vocab, tgt_vocab = load_vocabs(vocab_dir)
    ids_path = vocab_dir / "encoded" / f"{_ids_key(raw, vocab_dir)}.pkl"
    ids = _read_ids(ids_path, raw)
    if ids is None:
        ids = {name: (_encode(src_vocab, [s for s, _ in pairs]), _encode(tgt_vocab, [t for _, t in pairs]))
               for name, pairs in raw.items()}
        with atomic.atomic_path(ids_path) as tmp:
            tmp.write_bytes(pickle.dumps(ids, protocol=pickle.HIGHEST_PROTOCOL))
    splits = {name: Split(pairs, *ids[name]) for name, pairs in raw.items()}
    return Corpus(splits, src_vocab, tgt_vocab, vocab_dir)


def _ids_key(raw: Dict[str, List[Tuple[str, str]]], vocab_dir: Path) -> str:
    """Hash of the text to encode and of the vocabulary files that encode it."""
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode())
    for path in sorted(p for p in vocab_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _read_ids(path: Path, raw: Dict[str, List[Tuple[str, str]]]) -> Optional[Dict]:
    """Cached ids for `raw`, or None when absent, unreadable or not matching the splits' sizes."""
    try:
        ids = pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError):
        return None
    if not isinstance(ids, dict) or set(ids) != set(raw):
        return None
    if any(len(ids[n][0]) != len(p) or len(ids[n][1]) != len(p) for n, p in raw.items()):
        return None
    return ids
