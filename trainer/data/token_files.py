"""Own corpora as indexed token files (`mindrun data prepare`), read by global sample order.

A prepared directory (Megatron-LM's indexed dataset, in its simplest form):

    tokens.bin      every document's ids, each followed by the end-of-document id, uint16 (vocabularies up
                    to 65,536 entries) or uint32, little-endian
    index.npy       int64 offsets of the documents in tokens.bin, one more than there are documents
    manifest.json   format, source files with their SHA-256 and size, the tokenizer and its SHA-256, the
                    end-of-document id, counts, dtype, the SHA-256 of index.npy and of every 64 MiB chunk of
                    tokens.bin; written last: a directory without it is not prepared
    tokenizer.model the sentencepiece model that encoded it (given, or trained on a sample of the corpus)

Preparing streams: documents are read one at a time, encoded in batches (sentencepiece's threads on every
core), and appended to the files, so a corpus larger than memory goes through (tests/test_token_files.py
runs one under a memory cap). The output is built in a temporary directory beside the target and renamed
onto it at the end: a crash or a kill leaves no half-prepared directory, and a rerun starts over; a rerun
over a complete directory made from the same sources and tokenizer does nothing.

Reading (`TokenDataset`): the stream of all documents is cut into samples of `length + 1` ids (inputs and
their next-token targets), Megatron's GPT dataset; segment ids restart after each end-of-document id so
that attention stays inside a document. `GlobalOrder` is a seeded permutation of sample indices per epoch,
the same on every rank and across restarts; `rank_rows` gives a data-parallel rank its share of a global
batch, so no rank reads more than its rows from the file, and the global order does not depend on the
number of ranks (a resume at another dp size reads the same next batch). Opening checks index.npy and, up to
VERIFY_AT_LOAD_BYTES, all of tokens.bin against the manifest; a larger tokens.bin is checked chunk by chunk
before each chunk's first read.
"""
import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

FORMAT = "mindrun-tokens/1"
MANIFEST = "manifest.json"
INPUT_FORMATS = ("lines", "blank_lines", "jsonl")  # documents, for a language model
PAIR_FORMATS = ("parallel", "tsv")  # sentence pairs, for translation
T = TypeVar("T")
CHUNK_BYTES = 1 << 26  # tokens.bin is checksummed in 64 MiB chunks: each is verified before its first read
VERIFY_AT_LOAD_BYTES = 1 << 30  # token files up to this size are verified whole when opened


def _range_sha256(fd: int, start: int, length: int) -> Tuple[str, int]:
    """(SHA-256, bytes read) of [start, start + length) of an open file, read 4 MiB at a time (nothing more
    resident), short at the end of the file."""
    import hashlib

    digest, read = hashlib.sha256(), 0
    while read < length:
        piece = os.pread(fd, min(1 << 22, length - read), start + read)
        if not piece:
            break
        digest.update(piece)
        read += len(piece)
    return digest.hexdigest(), read


def chunk_hashes(path: Path, chunk_bytes: int) -> List[str]:
    """SHA-256 of each `chunk_bytes` piece of a file, in order."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return [_range_sha256(fd, start, chunk_bytes)[0] for start in range(0, os.fstat(fd).st_size, chunk_bytes)]
    finally:
        os.close(fd)


def _check_index(directory: Path, want: str, manifest: Path) -> None:
    """directory/index.npy against its SHA-256 in `manifest`."""
    from trainer.ckpt.manifest import sha256_of

    if sha256_of(directory / "index.npy") != want:
        raise PrepareError(f"{directory / 'index.npy'} does not match its checksum in {manifest} (corrupted or "
                           f"replaced): prepare the corpus again")


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


class _Encoder:
    """Texts -> (lengths, flat ids) with sentencepiece's own threads (its batch encode runs on `threads` cores:
    1.8x on 2 cores measured, bench.data_loader; a process pool on top bought nothing)."""

    def __init__(self, model_file: Path, eod: Optional[int], dtype, threads: int):
        import sentencepiece as spm

        self.sp, self.eod, self.dtype, self.threads = spm.SentencePieceProcessor(model_file=str(model_file)), eod, \
            np.dtype(dtype), threads

    def __call__(self, batch: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        ids = self.sp.encode(batch, num_threads=self.threads)
        if self.eod is not None:
            tail = [self.eod]
            ids = [x + tail for x in ids]
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), self.dtype, int(lengths.sum()))
        return lengths, flat


def read_pairs(paths: Sequence[Path], input_format: str) -> Iterator[Tuple[str, str]]:
    """Sentence pairs (source, target) of parallel text: two files line by line (parallel: source file, then
    target file) or `source<TAB>target` lines (tsv). Pairs with an empty side are skipped."""
    if input_format == "parallel":
        if len(paths) != 2:
            raise PrepareError(f"--format parallel takes two files, the source side then the target side (line i of "
                               f"one translates line i of the other); got {len(paths)}")
        with open(paths[0], encoding="utf-8") as src, open(paths[1], encoding="utf-8") as tgt:
            for number, (s, t) in enumerate(itertools.zip_longest(src, tgt), 1):
                if s is None or t is None:
                    longer, shorter = (paths[1], paths[0]) if s is None else (paths[0], paths[1])
                    raise PrepareError(f"{longer} has more lines than {shorter} (line {number} has no partner)")
                s, t = s.rstrip("\n"), t.rstrip("\n")
                if s.strip() and t.strip():
                    yield s, t
        return
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 2:
                    raise PrepareError(f"{path}:{number}: expected source<TAB>target, found {len(fields)} field(s)")
                if fields[0].strip() and fields[1].strip():
                    yield fields[0], fields[1]


def _texts(paths: Sequence[Path], input_format: str, field: str) -> Iterator[str]:
    """Every text the tokenizer sees: the documents, or both sides of each pair."""
    if input_format in PAIR_FORMATS:
        for s, t in read_pairs(paths, input_format):
            yield s
            yield t
    else:
        yield from read_documents(paths, input_format, field)


def train_tokenizer(paths: Sequence[Path], input_format: str, field: str, vocab_size: int, out: Path,
                    sample_documents: int = 200_000) -> Path:
    """A sentencepiece BPE model trained on the first `sample_documents` documents (pairs: both sides), with
    mindrun's special ids (pad 0, unk 1, bos 2, eos 3: the end-of-document id)."""
    from trainer.data.tokenizer import _train_sentencepiece

    sample = []
    for doc in _texts(paths, input_format, field):
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
    documents: int  # pairs, for parallel text
    tokens: int
    skipped: bool  # already prepared from the same sources and tokenizer


def _write_stream(directory: Path, encoded: Iterable[Tuple[np.ndarray, np.ndarray]], dtype,
                  progress: Optional[Callable[[int], None]]) -> Dict[str, object]:
    """Append encoded batches ((lengths, flat ids), as `_encode_batch` makes them) to directory/tokens.bin with
    their offsets in directory/index.npy; returns counts and checksums for the manifest."""
    from trainer.ckpt.manifest import sha256_of

    directory.mkdir(parents=True, exist_ok=True)
    documents = tokens = 0
    with open(directory / "tokens.bin", "wb") as data, open(directory / "offsets.tmp", "wb") as offsets:
        offsets.write(np.zeros(1, np.int64).tobytes())
        for lengths, flat in encoded:
            data.write(flat.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
            offsets.write((tokens + np.cumsum(lengths)).astype("<i8").tobytes())
            documents += len(lengths)
            tokens += int(lengths.sum())
            if progress is not None:
                progress(len(lengths))
        for f in (data, offsets):
            f.flush()
            os.fsync(f.fileno())
    index = np.lib.format.open_memmap(directory / "index.npy", "w+", np.int64, (documents + 1,))
    index[:] = np.fromfile(directory / "offsets.tmp", "<i8")
    index.flush()
    del index
    os.unlink(directory / "offsets.tmp")
    return {"documents": documents, "tokens": tokens, "index_sha256": sha256_of(directory / "index.npy"),
            "tokens_sha256_chunks": chunk_hashes(directory / "tokens.bin", CHUNK_BYTES)}


def prepare(paths: Sequence[Path], out: Path, tokenizer: Optional[Path] = None, vocab_size: Optional[int] = None,
            input_format: str = "lines", field: str = "text", workers: Optional[int] = None, batch_size: int = 512,
            progress: Optional[Callable[[int], None]] = None) -> Prepared:
    """Tokenize `paths` into the prepared directory `out` (module docstring). Give a sentencepiece `tokenizer`
    model, or `vocab_size` to train one on a sample. Parallel text (`input_format` parallel or tsv) is written
    as two streams, source/ and target/, without end ids (the trainer adds BOS and EOS as for Multi30k)."""
    import sentencepiece as spm

    from trainer.ckpt.manifest import sha256_of

    paths = [Path(p) for p in paths]
    if not paths:
        raise PrepareError("no input files")
    if input_format not in INPUT_FORMATS + PAIR_FORMATS:
        raise PrepareError(f"--format must be one of {', '.join(INPUT_FORMATS + PAIR_FORMATS)}, got {input_format!r}")
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

    pairs = input_format in PAIR_FORMATS
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
        specials = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        if pairs and specials != (0, 1, 2, 3):
            raise PrepareError(f"{tokenizer}: translation needs mindrun's special ids (pad 0, unk 1, bos 2, eos 3), "
                               f"this tokenizer has {specials}; train one with --vocab-size N")
        dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
        started = time.time()
        encoder = _Encoder(model, None if pairs else eod, dtype, max(1, workers or os.cpu_count() or 1))

        def encoded(texts: Iterable[str]):
            return map(encoder, _batches(texts, batch_size))

        if pairs:  # two passes over the files, one a side: both stream
            streams = {side: _write_stream(work / side, encoded(p[k] for p in read_pairs(paths, input_format)),
                                           dtype, progress)
                       for k, side in enumerate(("source", "target"))}
            documents = streams["source"]["documents"]
            tokens = streams["source"]["tokens"] + streams["target"]["tokens"]
            body = {"kind": "pairs", "pairs": documents, **streams}
        else:
            stream = _write_stream(work, encoded(read_documents(paths, input_format, field)), dtype, progress)
            documents, tokens = stream["documents"], stream["tokens"]
            body = {"kind": "documents", "eod_id": eod, **stream}
        if documents == 0:
            raise PrepareError(f"no {'pairs' if pairs else 'documents'} in {', '.join(map(str, paths))} (format "
                               f"{input_format})")
        manifest = {"format": FORMAT, "sources": sources, "input_format": input_format,
                    "field": field if input_format == "jsonl" else None,
                    "tokenizer": {"file": "tokenizer.model", "sha256": sha256_of(model), "vocab_size": vocab,
                                  "given": str(Path(tokenizer).resolve()) if tokenizer else None,
                                  "trained_vocab_size": vocab_size},
                    "dtype": np.dtype(dtype).name, "chunk_bytes": CHUNK_BYTES, **body, "documents": documents,
                    "tokens": tokens, "seconds": round(time.time() - started, 1)}
        write_text(work / MANIFEST, json.dumps(manifest, indent=1) + "\n", mode=0o644)
    return Prepared(out, documents, tokens, skipped=False)


class TokenDataset:
    """A prepared directory as samples of `length` inputs with their next-token targets, read on demand (a
    sample is one positional read of `length + 1` ids; nothing is loaded whole)."""

    def __init__(self, directory: Path, length: int):
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise PrepareError(f"{self.dir}: no {MANIFEST} (not a prepared corpus; run `mindrun data prepare`)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise PrepareError(f"{path}: not a {FORMAT} manifest")
        if "kind" not in self.manifest:
            raise PrepareError(f"{path} was written by an earlier mindrun, without checksums of its token files: "
                               f"run `mindrun data prepare` again")
        if self.manifest.get("kind") != "documents":
            raise PrepareError(f"{self.dir} holds sentence pairs (prepared with --format "
                               f"{self.manifest.get('input_format')}), which train translation, not a language model")
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        path = self.dir / "tokens.bin"
        self.count = path.stat().st_size // self.dtype.itemsize  # ids in the file
        if self.count * self.dtype.itemsize != path.stat().st_size or self.count != self.manifest["tokens"]:
            raise PrepareError(f"{path} has {path.stat().st_size:,} bytes, the manifest says {self.manifest['tokens']:,} "
                               f"ids of {self.dtype.itemsize} bytes (truncated or replaced)")
        # positional reads, not a memory map: the pages a rank reads stay the kernel's page cache instead of
        # growing the worker's resident set over an epoch (bench/README.md, bench.data_loader)
        self._fd = os.open(path, os.O_RDONLY)
        _check_index(self.dir, self.manifest["index_sha256"], self.dir / MANIFEST)
        self.chunk_bytes = int(self.manifest["chunk_bytes"])
        self.chunk_sums: List[str] = list(self.manifest["tokens_sha256_chunks"])
        self.verified = np.zeros(len(self.chunk_sums), bool)
        self.eod = int(self.manifest["eod_id"])
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.length = int(length)
        if self.length < 1:
            raise ValueError(f"sample length must be >= 1, got {length}")
        self.samples = (self.count - 1) // self.length
        if self.count * self.dtype.itemsize <= VERIFY_AT_LOAD_BYTES:
            self._verify(0, len(self.chunk_sums))

    def _verify(self, first: int, end: int) -> None:
        """Check chunks [first, end) of tokens.bin against the manifest (each once)."""
        for c in range(first, end):
            if self.verified[c]:
                continue
            start = c * self.chunk_bytes
            digest, read = _range_sha256(self._fd, start, self.chunk_bytes)
            if digest != self.chunk_sums[c]:
                raise PrepareError(f"{self.dir / 'tokens.bin'}: bytes {start:,}-{start + read:,} do not match their "
                                   f"checksum in {self.dir / MANIFEST} (corrupted on disk or in transfer): prepare "
                                   f"the corpus again or copy it afresh")
            self.verified[c] = True

    def __len__(self) -> int:
        return self.samples

    def read(self, start: int, end: int) -> np.ndarray:
        """Ids [start, end) of the stream, as stored (unverified: `sample` checks their chunks first)."""
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self._fd, (end - start) * size, start * size), self.dtype)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def window(self, i: int) -> np.ndarray:
        """The `length + 1` ids of sample i (its inputs, then the last target), checked against the manifest."""
        if not 0 <= i < self.samples:
            raise IndexError(f"sample {i} of {self.samples}")
        start, end = i * self.length, (i + 1) * self.length + 1
        size = self.dtype.itemsize
        self._verify(start * size // self.chunk_bytes, -(-end * size // self.chunk_bytes))
        return self.read(start, end)

    def rows(self, indices: Sequence[int]) -> Dict[str, np.ndarray]:
        """Samples `indices` as inputs, targets, segment ids (from 1) and positions, each [rows, length] int32."""
        windows = np.stack([self.window(int(i)) for i in indices]).astype(np.int32)
        inputs, targets = windows[:, :-1], windows[:, 1:]
        rows, length = inputs.shape
        ends = inputs == self.eod  # a document's last input is its end-of-document id: the next one starts after
        seg = 1 + np.concatenate([np.zeros((rows, 1), np.int32), np.cumsum(ends[:, :-1], 1, dtype=np.int32)], 1)
        starts = np.concatenate([np.ones((rows, 1), bool), seg[:, 1:] != seg[:, :-1]], 1)
        column = np.arange(length, dtype=np.int32)
        pos = column - np.maximum.accumulate(np.where(starts, column, 0), axis=1)
        return {"inputs": np.ascontiguousarray(inputs), "targets": np.ascontiguousarray(targets), "segments": seg,
                "positions": pos.astype(np.int32)}

    def sample(self, i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, segment ids from 1, positions), each [length] int32, of sample i."""
        one = self.rows([i])
        return one["inputs"][0], one["targets"][0], one["segments"][0], one["positions"][0]


class IndexedIds:
    """One side of a prepared pairs corpus as a sequence: item i is sentence i's ids (a read-only array view of
    the memory-mapped file; the trainer's batchers read lengths, and ids only for a batch's members)."""

    def __init__(self, directory: Path, dtype: str):
        self.tokens = np.memmap(directory / "tokens.bin", np.dtype(dtype).newbyteorder("<"), "r")
        self.index = np.load(directory / "index.npy")

    def __len__(self) -> int:
        return len(self.index) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.index[i]:self.index[i + 1]]


def open_pairs(directory: Path) -> Tuple[Dict, IndexedIds, IndexedIds]:
    """(manifest, source side, target side) of a directory prepared from parallel text, its files checked
    whole against the manifest."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise PrepareError(f"{directory}: no {MANIFEST} (not a prepared corpus; run `mindrun data prepare`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("kind") != "pairs":
        raise PrepareError(f"{directory} is not a corpus of sentence pairs (prepare parallel text with --format "
                           f"parallel SRC TGT, or --format tsv)")
    for side in ("source", "target"):
        record, where = manifest[side], directory / side
        _check_index(where, record["index_sha256"], path)
        sums = chunk_hashes(where / "tokens.bin", int(manifest["chunk_bytes"]))
        bad = [c for c, (got, want) in enumerate(itertools.zip_longest(sums, record["tokens_sha256_chunks"]))
               if got != want]
        if bad:
            c = int(manifest["chunk_bytes"])
            raise PrepareError(f"{where / 'tokens.bin'}: bytes from {bad[0] * c:,} do not match their checksum in "
                               f"{path} (corrupted or replaced): prepare it again")
    return manifest, IndexedIds(directory / "source", manifest["dtype"]), IndexedIds(directory / "target",
                                                                                   manifest["dtype"])


def open_named(opener: Callable[[Path], T], path: str, key: str) -> T:
    """`opener(path)` (TokenDataset, open_pairs), its errors naming the config key or flag that gave `path`."""
    try:
        return opener(Path(path).expanduser())
    except (PrepareError, OSError, KeyError) as exc:
        raise PrepareError(f"{key}={path}: {exc}") from None


def open_train_and_valid(train: Optional[str], valid: Optional[str], opener: Callable[[Path], T],
                         manifest_of: Callable[[T], Dict]) -> Tuple[T, T]:
    """data.train and data.valid opened (`open_named`); both must have been prepared with one tokenizer."""
    for key, path in (("train", train), ("valid", valid)):
        if not path:
            raise PrepareError(f"data.source=tokens needs data.{key}: a directory made by `mindrun data prepare` "
                               f"(--set data.{key}=PATH)")
    opened = [open_named(opener, path, f"data.{key}") for key, path in (("train", train), ("valid", valid))]
    if manifest_of(opened[0])["tokenizer"]["sha256"] != manifest_of(opened[1])["tokenizer"]["sha256"]:
        raise PrepareError(f"data.train ({train}) and data.valid ({valid}) were prepared with different tokenizers; "
                           f"prepare the validation data with --tokenizer {Path(train) / 'tokenizer.model'}")
    return opened[0], opened[1]


class GlobalOrder:
    """The samples of every epoch in a seeded order that every rank and every restart computes alike."""

    def __init__(self, samples: int, seed: int):
        self.samples, self.seed = samples, seed
        self._cached: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def epoch(self, epoch: int) -> np.ndarray:
        """The permutation of sample indices of `epoch` (the last one asked for is kept)."""
        if self._cached[0] != epoch:
            self._cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.samples))
        return self._cached[1]

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

