"""Own corpora as memory-mapped token files (`mindrun data prepare`), read by global sample order.

A prepared directory (Megatron-LM's indexed dataset, in its simplest form):

    tokens.bin      every document's ids, each followed by the end-of-document id, uint16 (vocabularies up
                    to 65,536 entries) or uint32, little-endian
    index.npy       int64 offsets of the documents in tokens.bin, one more than there are documents
    manifest.json   format, source files with their SHA-256 and size, the tokenizer and its SHA-256, the
                    end-of-document id, counts, dtype; written last: a directory without it is not prepared
    tokenizer.model the sentencepiece model that encoded it (given, or trained on a sample of the corpus)

Preparing streams: documents are read one at a time, encoded in batches by a pool of worker processes
(ordered), and appended to the files, so a corpus larger than memory goes through (tests/test_token_files.py
runs one under a memory cap). The output is built in a temporary directory beside the target and renamed
onto it at the end: a crash or a kill leaves no half-prepared directory, and a rerun starts over; a rerun
over a complete directory made from the same sources and tokenizer does nothing.

Reading (`TokenDataset`): the stream of all documents is cut into samples of `length + 1` ids (inputs and
their next-token targets), Megatron's GPT dataset; segment ids restart after each end-of-document id so
that attention stays inside a document. `GlobalOrder` is a seeded permutation of sample indices per epoch,
the same on every rank and across restarts; `rank_rows` gives a data-parallel rank its share of a global
batch, so no rank reads more than its rows from the memory map, and the global order does not depend on the
number of ranks (a resume at another dp size reads the same next batch).
"""
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

FORMAT = "mindrun-tokens/1"
MANIFEST = "manifest.json"
INPUT_FORMATS = ("lines", "blank_lines", "jsonl")


class PrepareError(ValueError):
    """Bad input to `mindrun data prepare`: a missing file, a bad JSONL line (file:line), a tokenizer problem."""


def read_documents(paths: Sequence[Path], input_format: str, field: str = "text") -> Iterator[str]:
    """Documents of the files, one at a time: a line each (lines), runs of non-blank lines (blank_lines), or
    the `field` of each JSON line (jsonl). Empty documents are skipped."""
    if input_format not in INPUT_FORMATS:
        raise PrepareError(f"--format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
    for path in paths:
        with open(path, encoding="utf-8") as f:
            if input_format == "lines":
                for line in f:
                    if line.strip():
                        yield line.rstrip("\n")
            elif input_format == "blank_lines":
                block: List[str] = []
                for line in f:
                    if line.strip():
                        block.append(line.rstrip("\n"))
                    elif block:
                        yield "\n".join(block)
                        block = []
                if block:
                    yield "\n".join(block)
            else:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise PrepareError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(field), str):
                        raise PrepareError(f"{path}:{number}: no string field {field!r} (choose it with --field)")
                    if record[field].strip():
                        yield record[field]


def _batches(documents: Iterable[str], size: int) -> Iterator[List[str]]:
    batch: List[str] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_WORKER_SP = None


def _init_worker(model_file: str) -> None:
    global _WORKER_SP
    import sentencepiece as spm

    _WORKER_SP = spm.SentencePieceProcessor(model_file=model_file)


def _encode_batch(batch: List[str]) -> List[List[int]]:
    return _WORKER_SP.encode(batch)


def train_tokenizer(paths: Sequence[Path], input_format: str, field: str, vocab_size: int, out: Path,
                    sample_documents: int = 200_000) -> Path:
    """A sentencepiece BPE model trained on the first `sample_documents` documents, with mindrun's special ids
    (pad 0, unk 1, bos 2, eos 3: the end-of-document id)."""
    from trainer.data.tokenizer import _train_sentencepiece

    sample = []
    for doc in read_documents(paths, input_format, field):
        sample.append(doc.replace("\n", " "))
        if len(sample) >= sample_documents:
            break
    if not sample:
        raise PrepareError("the corpus has no documents to train a tokenizer on")
    made = _train_sentencepiece(sample, out.parent, out.stem, vocab_size, "bpe")
    return made


@dataclass
class Prepared:
    directory: Path
    documents: int
    tokens: int
    skipped: bool  # already prepared from the same sources and tokenizer


def prepare(paths: Sequence[Path], out: Path, tokenizer: Optional[Path] = None, vocab_size: Optional[int] = None,
            input_format: str = "lines", field: str = "text", workers: Optional[int] = None, batch_size: int = 512,
            progress: Optional[Callable[[int], None]] = None) -> Prepared:
    """Tokenize `paths` into the prepared directory `out` (module docstring). Give a sentencepiece `tokenizer`
    model, or `vocab_size` to train one on a sample."""
    import sentencepiece as spm

    from trainer.ckpt.manifest import sha256_of

    paths = [Path(p) for p in paths]
    if not paths:
        raise PrepareError("no input files")
    for path in paths:
        if not path.is_file():
            raise PrepareError(f"{path}: no such file")
    if (tokenizer is None) == (vocab_size is None):
        raise PrepareError("give --tokenizer MODEL (a sentencepiece .model) or --vocab-size N (train one on a "
                           "sample of the corpus), not both")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise PrepareError(f"{tokenizer}: no such tokenizer model")
    out = Path(out)
    sources = [{"path": str(p.resolve()), "sha256": sha256_of(p), "bytes": p.stat().st_size} for p in paths]
    if (out / MANIFEST).is_file():
        done = json.loads((out / MANIFEST).read_text())
        same_tokenizer = tokenizer is None or done.get("tokenizer", {}).get("sha256") == sha256_of(Path(tokenizer))
        if done.get("sources") == sources and same_tokenizer and done.get("input_format") == input_format:
            return Prepared(out, done["documents"], done["tokens"], skipped=True)
        raise FileExistsError(f"{out} holds a prepared corpus of other sources or another tokenizer; remove it or "
                              f"choose another --out")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a prepared corpus; remove it or choose another --out")
    from launcher.atomic import atomic_directory, write_text

    with atomic_directory(out) as work:  # a crash or a kill leaves no half-prepared directory
        model = work / "tokenizer.model"
        if tokenizer is not None:
            shutil.copyfile(tokenizer, model)
        else:
            train_tokenizer(paths, input_format, field, int(vocab_size), model)
        sp = spm.SentencePieceProcessor(model_file=str(model))
        vocab = sp.get_piece_size()
        eod = sp.eos_id()
        if eod < 0:
            raise PrepareError(f"{tokenizer}: the tokenizer has no end-of-sentence id to end documents with")
        dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
        documents = tokens = 0
        started = time.time()
        with open(work / "tokens.bin", "wb") as data, open(work / "offsets.tmp", "wb") as offsets:
            offsets.write(np.zeros(1, np.int64).tobytes())
            count = workers or os.cpu_count() or 1
            pool = multiprocessing.get_context("spawn").Pool(count, _init_worker, (str(model),)) if count > 1 else None
            try:
                if pool is None:
                    _init_worker(str(model))
                    encoded = map(_encode_batch, _batches(read_documents(paths, input_format, field), batch_size))
                else:
                    encoded = pool.imap(_encode_batch, _batches(read_documents(paths, input_format, field),
                                                                batch_size), chunksize=1)
                for batch in encoded:
                    lengths = np.fromiter((len(ids) + 1 for ids in batch), np.int64, len(batch))
                    flat = np.fromiter((t for ids in batch for t in (*ids, eod)), dtype, int(lengths.sum()))
                    data.write(flat.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
                    offsets.write((tokens + np.cumsum(lengths)).astype("<i8").tobytes())
                    documents += len(batch)
                    tokens += int(lengths.sum())
                    if progress is not None:
                        progress(len(batch))
            finally:
                if pool is not None:
                    pool.terminate()
            for f in (data, offsets):
                f.flush()
                os.fsync(f.fileno())
        if documents == 0:
            raise PrepareError(f"no documents in {', '.join(map(str, paths))} (format {input_format})")
        index = np.lib.format.open_memmap(work / "index.npy", "w+", np.int64, (documents + 1,))
        index[:] = np.fromfile(work / "offsets.tmp", "<i8")
        index.flush()
        del index
        os.unlink(work / "offsets.tmp")
        manifest = {"format": FORMAT, "sources": sources, "input_format": input_format,
                    "field": field if input_format == "jsonl" else None,
                    "tokenizer": {"file": "tokenizer.model", "sha256": sha256_of(model), "vocab_size": vocab,
                                  "given": str(Path(tokenizer).resolve()) if tokenizer else None,
                                  "trained_vocab_size": vocab_size},
                    "eod_id": eod, "dtype": np.dtype(dtype).name, "documents": documents, "tokens": tokens,
                    "seconds": round(time.time() - started, 1)}
        write_text(work / MANIFEST, json.dumps(manifest, indent=1) + "\n", mode=0o644)
    return Prepared(out, documents, tokens, skipped=False)


class TokenDataset:
    """A prepared directory, memory-mapped, as samples of `length` inputs with their next-token targets."""

    def __init__(self, directory: Path, length: int):
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise PrepareError(f"{self.dir}: no {MANIFEST} (not a prepared corpus; run `mindrun data prepare`)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise PrepareError(f"{path}: not a {FORMAT} manifest")
        self.tokens = np.memmap(self.dir / "tokens.bin", np.dtype(self.manifest["dtype"]).newbyteorder("<"), "r")
        if len(self.tokens) != self.manifest["tokens"]:
            raise PrepareError(f"{self.dir / 'tokens.bin'} has {len(self.tokens)} ids, the manifest says "
                               f"{self.manifest['tokens']} (truncated or replaced)")
        self.eod = int(self.manifest["eod_id"])
        self.length = int(length)
        self.samples = (len(self.tokens) - 1) // self.length

    def __len__(self) -> int:
        return self.samples

    def sample(self, i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, segment ids from 1, positions), each [length] int32, of sample i."""
        if not 0 <= i < self.samples:
            raise IndexError(f"sample {i} of {self.samples}")
        window = np.asarray(self.tokens[i * self.length:(i + 1) * self.length + 1], np.int64)
        inputs, targets = window[:-1], window[1:]
        ends = inputs == self.eod  # a document's last input is its end-of-document id: the next one starts after
        seg = 1 + np.concatenate([[0], np.cumsum(ends[:-1])])
        starts = np.flatnonzero(np.concatenate([[True], seg[1:] != seg[:-1]]))
        pos = np.arange(self.length) - np.repeat(starts, np.diff(np.append(starts, self.length)))
        return (inputs.astype(np.int32), targets.astype(np.int32), seg.astype(np.int32), pos.astype(np.int32))


class GlobalOrder:
    """The samples of every epoch in a seeded order that every rank and every restart computes alike."""

    def __init__(self, samples: int, seed: int):
        self.samples, self.seed = samples, seed

    def epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.samples)

    def batches(self, global_rows: int) -> int:
        """Full global batches an epoch holds (a last partial batch is dropped, as every rank must agree)."""
        return self.samples // global_rows

    def global_batch(self, epoch: int, batch_index: int, global_rows: int) -> np.ndarray:
        return self.epoch(epoch)[batch_index * global_rows:(batch_index + 1) * global_rows]


def rank_rows(order: GlobalOrder, epoch: int, batch_index: int, global_rows: int, dp: int, dp_rank: int) -> np.ndarray:
    """The sample indices data-parallel rank `dp_rank` of `dp` reads for global batch (epoch, batch_index): its
    contiguous share, so the ranks' shares in rank order are the global batch whatever dp is."""
    if global_rows % dp:
        raise ValueError(f"a global batch of {global_rows} rows does not split over data_parallel {dp}")
    rows = global_rows // dp
    return order.global_batch(epoch, batch_index, global_rows)[dp_rank * rows:(dp_rank + 1) * rows]


def read_batch(dataset: TokenDataset, indices: Sequence[int]) -> Dict[str, np.ndarray]:
    """The rows of the given samples: inputs, targets, segments, positions, each [rows, length] int32."""
    parts = [dataset.sample(int(i)) for i in indices]
    return {name: np.stack([p[k] for p in parts]) for k, name in enumerate(("inputs", "targets", "segments",
                                                                             "positions"))}
