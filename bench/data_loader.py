"""bench/data_loader: own-corpus data at scale (issue 34): `mindrun data prepare` throughput, the causal-LM
loader's cost per step against the step itself, and the resident memory of a worker reading a corpus 10x larger
than its memory budget.

    python -m bench.data_loader [--mb 40] [--repeats 3] [--big-gb 2.5] [--parts prepare,loader,memory]

prepare  a generated corpus of --mb MB of text (one document a line), tokenized with a given 8k BPE model
         (trained once on a sample, not timed) with 1 and with 2 encoding threads (sentencepiece's own;
         `--workers`), --repeats times each, alternating; MB of text per second, median.
loader   LmBatcher.collate (the rows a rank reads from tokens.bin, as the step's 7 arrays) against a training
         step of the same rows: gpt_hour_lm's rows (32 x 256) and gpt_125m-width rows (2,048 ids; the step
         trains gpt_125m's model on 1 row, the loader is timed at 1 and at 4 rows, a dp-8 rank's share of
         gpt_125m's 32-row batch). The step time is the median of the run's logged steps after the first
         (metrics.jsonl); the trainer reads batches in a background thread (loop_tools.prefetch), so this is the
         loader's cost if nothing overlapped.
memory   a synthetic prepared corpus of --big-gb GB read batch by batch (gpt_hour_lm's rows) by a process whose
         budget is a tenth of it: peak resident set (ru_maxrss) and its anonymous / file-backed parts, for
         TokenDataset's positional reads and, as the baseline, the same reads through a numpy memory map.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = None


def _words(n: int = 20000, seed: int = 0):
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(n)]


def make_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """Lines of Zipf-distributed words until `megabytes` MB; returns the bytes written."""
    words = np.array(_words())
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes * 1e6:
            ids = np.minimum(rng.zipf(1.2, 200_000), len(words)) - 1
            lengths = rng.integers(10, 120, 4000)
            at = 0
            lines = []
            for n in lengths:
                if at + n > len(ids):
                    break
                lines.append(" ".join(words[ids[at:at + n]]))
                at += n
            text = "\n".join(lines) + "\n"
            f.write(text)
            written += len(text.encode())
    return written


def bench_prepare(root: Path, mb: float, repeats: int):
    from trainer.data.token_files import prepare

    text = root / "corpus.txt"
    size = make_corpus(text, mb)
    sample = root / "sample.txt"
    with open(text, encoding="utf-8") as f, open(sample, "w", encoding="utf-8") as g:
        for _, line in zip(range(20000), f):
            g.write(line)
    model = prepare([sample], root / "tok", vocab_size=8000, workers=2).directory / "tokenizer.model"
    rates = {1: [], 2: []}
    for r in range(repeats):
        for workers in (1, 2):
            out = root / f"p{workers}_{r}"
            t0 = time.perf_counter()
            done = prepare([text], out, tokenizer=model, workers=workers)
            rates[workers].append(size / 1e6 / (time.perf_counter() - t0))
    print(f"prepare: {size / 1e6:.1f} MB of text, {done.documents:,} documents, {done.tokens:,} tokens")
    for workers, values in rates.items():
        print(f"  {workers} thread(s): {statistics.median(values):.2f} MB/s median of "
              f"{', '.join(f'{v:.2f}' for v in values)}")
    print(f"  2 vs 1: {statistics.median(rates[2]) / statistics.median(rates[1]):.2f}x")
    return out, model


def _loader_ms(directory: Path, length: int, rows: int, batches: int = 200) -> float:
    from trainer.data.lm import LmBatch, LmBatcher
    from trainer.data.token_files import TokenDataset

    data = TokenDataset(directory, length)
    batcher = LmBatcher(data, rows, seed=1)
    times = []
    for i in range(min(batches, len(batcher))):
        t0 = time.perf_counter()
        batcher.collate(LmBatch(0, i))
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _step_ms(run: Path, tokens_per_step: int) -> float:
    """Median step time of a run logged every step (its first step, which compiles, left out)."""
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    rates = [r["tokens_per_s"] for r in records if r.get("kind") == "train"][1:]
    return 1000 * tokens_per_step / statistics.median(rates)


def bench_loader(root: Path, prepared: Path):
    from trainer.data.token_files import prepare

    valid = prepare([root / "sample.txt"], root / "valid", tokenizer=prepared / "tokenizer.model", workers=1).directory
    cases = (("gpt_hour_lm", 256, 32, 32, ["model.dropout=0.0"]),
             ("gpt_125m", 2048, 1, 4, ["precision.level=O0", "data.max_tokens=2048"]))
    for recipe, length, step_rows, dp8_rows, extra in cases:
        run = root / f"run_{recipe}"
        sets = [f"data.train={prepared}", f"data.valid={valid}", f"data.pack_length={length}",
                f"train.out_dir={run}", "train.max_steps=6", "train.log_every=1", "train.eval_every=0",
                "data.valid_limit=1", "train.progress=false", "train.compile_cache=false", "train.time_budget_minutes=null",
                *extra]
        args = [sys.executable, "-m", "trainer", "train", "--config", recipe]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode:
            print(f"loader {recipe}: the training run failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
            continue
        step = _step_ms(run, step_rows * length)
        at_step = _loader_ms(prepared, length, step_rows)
        line = (f"loader {recipe} ({step_rows} x {length}): collate {at_step:.2f} ms per batch, step {step:.0f} ms "
                f"-> {100 * at_step / step:.2f} % of a step")
        if dp8_rows != step_rows:
            line += f"; {dp8_rows} x {length} (a dp-8 rank's share): collate {_loader_ms(prepared, length, dp8_rows):.2f} ms"
        print(line, flush=True)


def make_big(root: Path, gigabytes: float, vocab: int = 8000) -> Path:
    """A prepared directory of random ids (documents of ~500 ids) of `gigabytes` GB, with its manifest."""
    from trainer.ckpt.manifest import sha256_of
    from trainer.data.token_files import CHUNK_BYTES, FORMAT, chunk_hashes

    out = root / "big"
    out.mkdir()
    count = int(gigabytes * 1e9 / 2)
    rng = np.random.default_rng(0)
    piece = 1 << 24
    with open(out / "tokens.bin", "wb") as f:
        for start in range(0, count, piece):
            ids = rng.integers(4, vocab, min(piece, count - start), dtype=np.uint16)
            ids[rng.integers(0, len(ids), len(ids) // 500)] = 3
            f.write(ids.astype("<u2").tobytes())
    np.save(out / "index.npy", np.array([0, count], np.int64))
    (out / "tokenizer.model").write_bytes(b"")
    manifest = {"format": FORMAT, "kind": "documents", "sources": [], "input_format": "lines", "field": None,
                "tokenizer": {"file": "tokenizer.model", "sha256": "", "vocab_size": vocab}, "eod_id": 3,
                "dtype": "uint16", "documents": 1, "tokens": count, "index_sha256": sha256_of(out / "index.npy"),
                "chunk_bytes": CHUNK_BYTES, "tokens_sha256_chunks": chunk_hashes(out / "tokens.bin", CHUNK_BYTES)}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


READER = r"""
import resource, sys, time
import numpy as np
from trainer.data.lm import LmBatch, LmBatcher
from trainer.data.token_files import TokenDataset

def rss():
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss"))
    return int(status["RssAnon"].split()[0]) // 1024, int(status["RssFile"].split()[0]) // 1024

directory, how, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = TokenDataset(directory, 256)
if how == "memmap":  # the baseline: the same reads (and checks) through a memory map of the file
    tokens = np.memmap(f"{directory}/tokens.bin", "<u2", "r")
    data.read = lambda start, end: tokens[start:end]
batcher = LmBatcher(data, 32, seed=1)
batcher.collate(LmBatch(0, 0))
before = rss()
t0 = time.time()
for i in range(batches):
    batcher.collate(LmBatch(0, i))
print(how, batches, round(time.time() - t0, 1), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
      *before, *rss())
"""


def bench_memory(root: Path, gigabytes: float):
    big = make_big(root, gigabytes)
    size_mib = (big / "tokens.bin").stat().st_size / 2 ** 20
    budget = size_mib / 10
    batches = int(size_mib * 2 ** 20 / (32 * 257 * 2))  # about the file's size in rows read
    print(f"memory: corpus {size_mib:,.0f} MiB of ids, a worker budget of {budget:,.0f} MiB (a tenth), "
          f"{batches:,} batches of 32 x 256 read in the global order")
    for how in ("pread", "memmap"):
        out = subprocess.run([sys.executable, "-c", READER, str(big), how, str(batches)], capture_output=True,
                             text=True)
        if out.returncode:
            print(out.stderr[-2000:])
            continue
        _, n, seconds, peak, anon0, file0, anon, file_ = out.stdout.split()
        print(f"  {how:<7} {n} batches in {seconds} s ({1000 * float(seconds) / int(n):.2f} ms each): resident "
              f"anonymous {anon0} -> {anon} MiB, file-backed {file0} -> {file_} MiB (after the first batch -> "
              f"after the last); peak RSS {int(peak):,} MiB = {int(peak) / budget:.2f}x the budget")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-gb", type=float, default=2.5)
    parser.add_argument("--parts", default="prepare,loader,memory")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    print(f"bench.data_loader {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp)
        os.environ.setdefault("MINDRUN_CACHE_DIR", str(root / "cache"))
        prepared = model = None
        if parts & {"prepare", "loader"}:
            prepared, model = bench_prepare(root, args.mb if "prepare" in parts else 5, args.repeats
                                            if "prepare" in parts else 1)
        if "loader" in parts:
            bench_loader(root, prepared)
        if "memory" in parts:
            bench_memory(root, args.big_gb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
