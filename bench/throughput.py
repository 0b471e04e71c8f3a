"""bench/throughput: training tokens/s of mindrun's step against the course notebook and PyTorch, same batches.

    pip install -e '.[bench]'          # torch==2.13.0 (CPU), bench only
    python -m bench.throughput --data-dir ../shared/data/multi30k    # from the repository root

Contestants, each in its own process, on identical batches (3+3 layers, d_model 256, 4 heads,
d_ff 1024, dropout 0.1, the notebook's word vocabularies of 7,853 / 5,893 entries):
  course       the notebook's step as written (PyNative), bench/throughput_course.py: the baseline
  course_jit   the same step under mindspore.jit (for reference)
  mindrun      mindrun's graph-mode TrainStep (label smoothing, clipping, Adam), untied embeddings
  mindrun_packed  the same step on the same pairs packed in rows of 64 (trainer/data/packing.py)
  torch        PyTorch eager nn.Transformer, same sizes (skipped with a note if torch is missing)
  torch_compile  the same model under torch.compile (inductor, CPU): the competitor a user would pick
Part 1 (--parts synthetic), batches of 32 random pairs padded to 32. Part 2 (--parts real),
real Multi30k pairs through the notebook's preprocessing, each contestant with its own
batching: the notebook's fixed padding, PyTorch's and mindrun's token buckets (2,048-slot
batches, the `small` recipe's buckets), mindrun packed ([32, 64] batches), and mindrun
with the notebook's padding. Tokens and FLOPs of a packed batch are counted on its padded
twin (the same pairs).

Each contestant warms up (one step per batch shape: graph compiles), then times --windows
windows of --steps steps; tokens/s is the median window (non-pad source + target tokens).
With --rounds N every part runs N times, contestants interleaved (all of them, then all of
them again), each run a fresh process: a contestant's figure is the median over rounds,
and each ratio is the median of the per-round ratios, so that one contestant's drift
between processes (PyTorch's has been 1.4k-2.2k tokens/s) does not decide a comparison.
MFU = model FLOPs of the non-pad tokens (forward + backward = 3 x forward matmul FLOPs) per
second over the best float32 GEMM rate measured in the same invocation, before and after the
contestants, of every BLAS here: NumPy's OpenBLAS (also forced to its AVX-512 kernels where
the CPU has them), MindSpore's MatMul (oneDNN) and torch.mm. Peak memory is the
worker process's maximum RSS. Results: bench/out/throughput/result.json and Markdown tables.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SELF = [sys.executable, "-m", "bench.throughput"]  # how the GEMM and contestant workers are started

SIZES = dict(d_model=256, n_heads=4, d_ff=1024, layers=3, dropout=0.1)
COURSE_VOCABS = (7853, 5893)
COURSE_PAD, MINDRUN_PAD = 1, 0
PACK_LENGTH = 64  # row length of mindrun's packed batches (data.pack_length)


# -- FLOPs and peak --------------------------------------------------------------------------
def model_flops(batch, pad: int, tgt_vocab: int) -> float:
    """Training FLOPs (3 x forward matmuls) spent on the non-pad tokens of a batch."""
    d, ff, layers = SIZES["d_model"], SIZES["d_ff"], SIZES["layers"]
    src_tokens = float((batch[0] != pad).sum())
    tgt_tokens = float((batch[2] != pad).sum())
    src_len = float((batch[0] != pad).sum(1).mean())
    tgt_len = float((batch[2] != pad).sum(1).mean())
    enc = src_tokens * layers * (2 * 4 * d * d + 2 * 2 * d * ff + 2 * 2 * src_len * d)
    dec = tgt_tokens * layers * (2 * 8 * d * d + 2 * 2 * d * ff + 2 * 2 * tgt_len * d + 2 * 2 * src_len * d)
    out = tgt_tokens * 2 * d * tgt_vocab
    return 3 * (enc + dec + out)


GEMM_SIZES = ((1024, 256, 1024), (2048, 512, 2048), (2048, 2048, 2048), (4096, 256, 8000))


def gemm_rate(library: str, repeats: int = 7) -> float:
    """Best float32 GEMM GFLOP/s of one library in this process over GEMM_SIZES (best of `repeats` x 5 calls)."""
    rng = np.random.default_rng(0)
    if library == "mindspore":
        import mindspore as ms
        from mindspore import ops

        ms.set_context(mode=ms.GRAPH_MODE)
        matmul = ms.jit(ops.matmul)
    elif library == "torch":
        import torch
    best = 0.0
    for m, k, n in GEMM_SIZES:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        if library == "mindspore":
            ta, tb = ms.Tensor(a), ms.Tensor(b)
            call = lambda: matmul(ta, tb).asnumpy()  # noqa: E731 (asnumpy waits for the result)
        elif library == "torch":
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            call = lambda: torch.mm(ta, tb)  # noqa: E731
        else:
            call = lambda: a @ b  # noqa: E731
        call(), call()
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(5):
                call()
            best = max(best, 5 * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def cpu_has_avx512() -> bool:
    try:
        return " avx512f " in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def gemm_peaks(torch_too: bool) -> dict:
    """Float32 GEMM GFLOP/s of every BLAS on this machine, each measured in a fresh process.

    NumPy's OpenBLAS picks its kernels from the CPU model it recognises; on a CPU it does not
    know (AMD Zen 5 in OpenBLAS 0.3.23) it falls back to AVX2 kernels at about half the
    machine's float32 rate, so it is also run with OPENBLAS_CORETYPE=SkylakeX (its AVX-512
    kernels) where the CPU has AVX-512. MFU is taken against the best of these rates.
    """
    runs = [("numpy", "numpy", {}), ("mindspore", "mindspore", {})]
    if cpu_has_avx512():
        runs.append(("numpy_avx512", "numpy", {"OPENBLAS_CORETYPE": "SkylakeX"}))
    if torch_too:
        runs.append(("torch", "torch", {}))
    peaks = {}
    for label, library, env in runs:
        proc = subprocess.run([*SELF, "--gemm-worker", library], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=600)
        if proc.returncode != 0:
            print(f"GEMM peak of {label} not measured:\n{proc.stderr[-1000:]}", file=sys.stderr)
            continue
        peaks[label] = round(float(proc.stdout.split()[-1]), 1)
    if not peaks:
        raise SystemExit("no GEMM peak could be measured (see the errors above)")
    return peaks


# -- batches ---------------------------------------------------------------------------------
def make_batches(kind: str, pad: int, data_dir: str, count: int, packed: bool):
    """(arrays the step runs on, padded twin the tokens and FLOPs are counted on) per batch."""
    from bench.throughput_batches import real_bucketed, real_fixed, real_packed, repack, synthetic

    if kind == "synthetic":
        batches = synthetic(count, 32, 32, *COURSE_VOCABS, pad=pad, seed=0)
        return [(repack(b, pad, PACK_LENGTH) if packed else b, b) for b in batches]
    pairs = course_pairs(data_dir)
    if kind == "real_fixed":
        return [(b, b) for b in real_fixed(pairs, 128, 32, pad, count)]
    if kind == "real_packed":
        return real_packed(pairs, 2048, PACK_LENGTH, pad, count)
    return [(b, b) for b in real_bucketed(pairs, 2048, [12, 16, 20, 24, 32, 48, 64, 128], pad, count)]


def course_pairs(data_dir: str):
    """Multi30k train pairs as the notebook prepares them: lowercase word tokens, min_freq-2 vocabularies."""
    from trainer.data.multi30k import load_splits, locate
    from trainer.data.tokenizer import WordVocab

    from trainer.data.tokenizer import UNK

    train = load_splits(locate(data_dir), "de", "en")["train"]
    src_vocab = WordVocab.build([s for s, _ in train], min_freq=2)
    tgt_vocab = WordVocab.build([t for _, t in train], min_freq=2)
    # our vocabularies come out a few entries larger than the notebook's (it drops each file's
    # last line); the few rarest words beyond the notebook's sizes become <unk>

    def clip(ids, size):
        return [i if i < size else UNK for i in ids]

    return [(clip(src_vocab.encode(s), COURSE_VOCABS[0]), clip(tgt_vocab.encode(t), COURSE_VOCABS[1]))
            for s, t in train]


# -- one contestant, in its own process ----------------------------------------------------------
def build_step(name: str, vocabs):
    """A function (src, tgt_in, tgt_out[, packed segments and positions]) -> loss for the contestant, and its pad id."""
    if name in ("torch", "torch_compile"):
        from bench.throughput_torch import make

        return make(*vocabs, SIZES["d_model"], SIZES["n_heads"], SIZES["d_ff"], SIZES["layers"],
                    SIZES["dropout"], COURSE_PAD, threads=os.cpu_count(), compiled=name == "torch_compile"), COURSE_PAD
    import mindspore as ms

    if name.startswith("course"):
        from bench.throughput_course import CourseTransformer, make_step

        ms.set_context(mode=ms.PYNATIVE_MODE)
        ms.set_seed(0)
        model = CourseTransformer(*vocabs, SIZES["d_model"], SIZES["n_heads"], SIZES["d_ff"], SIZES["layers"],
                                  SIZES["dropout"])
        step = make_step(model, jit=name == "course_jit")
        return (lambda s, i, o: step(ms.Tensor(s), ms.Tensor(i), ms.Tensor(o)).asnumpy()), COURSE_PAD
    from trainer.build import build_training
    from trainer.config import load_config
    from trainer.parallel.context import ParallelContext, select_backend
    from trainer.parallel.plan import make_plan

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    cfg = load_config("small", ["model.share_embeddings=false"])
    backend = select_backend()
    built = build_training(cfg, ParallelContext(make_plan(cfg, 1, backend), backend), *vocabs)
    built.optimizer.learning_rate.set_data(ms.Tensor(1e-4, ms.float32))
    step = built.step
    return (lambda *arrays: step(*arrays).loss_sum), MINDRUN_PAD


def worker(args) -> int:
    from bench.throughput_batches import tokens

    step, pad = build_step(args.worker, COURSE_VOCABS)
    batches = make_batches(args.batches, pad, args.data_dir, args.windows * args.steps,
                           packed=args.worker == "mindrun_packed")
    t0 = time.perf_counter()
    seen = set()
    for arrays, _ in batches:  # warm-up: one step per shape (each compiles once in graph mode)
        if arrays[0].shape not in seen:
            seen.add(arrays[0].shape)
            step(*arrays)
    warmup_s = time.perf_counter() - t0
    rates, flops = [], []
    for w in range(args.windows):
        window = batches[w * args.steps:(w + 1) * args.steps]
        t0 = time.perf_counter()
        for arrays, _ in window:
            step(*arrays)
        seconds = time.perf_counter() - t0
        rates.append(sum(tokens(twin, pad) for _, twin in window) / seconds)
        flops.append(sum(model_flops(twin, pad, COURSE_VOCABS[1]) for _, twin in window) / seconds / 1e9)
    record = {"tokens_per_s": rates, "gflops": flops, "warmup_s": round(warmup_s, 1), "shapes": len(seen),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    Path(args.out).write_text(json.dumps(record))
    return 0


def run_worker(name: str, batches: str, args, out: Path, round_: int = 0) -> dict:
    result = out / f"{name}_{batches}_r{round_}.json"
    cmd = [*SELF, "--worker", name, "--batches", batches, "--steps", str(args.steps),
           "--windows", str(args.windows), "--data-dir", args.data_dir, "--out", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{name} on {batches} batches failed:\n{proc.stderr[-3000:]}")
    record = json.loads(result.read_text())
    record["median_tokens_per_s"] = statistics.median(record["tokens_per_s"])
    record["median_gflops"] = statistics.median(record["gflops"])
    print(f"round {round_}: {name} / {batches}: {record['median_tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    return record


def run_rounds(runs, args, out: Path) -> dict:
    """Every (label, contestant, batches) of `runs`, --rounds times interleaved; one merged record per label."""
    per_round = [{label: run_worker(name, kind, args, out, r) for label, name, kind in runs}
                 for r in range(args.rounds)]
    merged = {}
    for label, _, _ in runs:
        records = [rnd[label] for rnd in per_round]
        merged[label] = {
            "rounds_tokens_per_s": [round(r["median_tokens_per_s"], 1) for r in records],
            "median_tokens_per_s": statistics.median(r["median_tokens_per_s"] for r in records),
            "median_gflops": statistics.median(r["median_gflops"] for r in records),
            "warmup_s": statistics.median(r["warmup_s"] for r in records),
            "shapes": records[0]["shapes"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
            "window_tokens_per_s": [r["tokens_per_s"] for r in records],  # per round, per window
        }
    return merged


def round_ratio(results: dict, name: str, ref) -> str:
    """Median over rounds of results[name] / ref, each round against its own reference run."""
    if not ref:
        return "-"
    pairs = zip(results[name]["rounds_tokens_per_s"], ref["rounds_tokens_per_s"])
    return f"{statistics.median(a / b for a, b in pairs):.2f}x"


def machine() -> str:
    """CPU model and count, for the record."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.machine()}"


def have_torch() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def _table(title: str, results: dict, base, ref, top: float, compiled=None) -> None:
    """Markdown table of one part; ratios (median of per-round ratios) against the course notebook
    (`base`), PyTorch eager (`ref`) and PyTorch under torch.compile (`compiled`)."""
    print(f"| {title} | tokens/s | vs course | vs PyTorch | vs torch.compile | MFU | shapes | warm-up | peak RSS "
          f"| per round |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        t = r["median_tokens_per_s"]
        rounds = " / ".join(f"{x:,.0f}" for x in r["rounds_tokens_per_s"])
        print(f"| {name} | {t:.0f} | {round_ratio(results, name, base)} | {round_ratio(results, name, ref)} | "
              f"{round_ratio(results, name, compiled)} | "
              f"{100 * r['median_gflops'] / top:.0f} % | {r['shapes']} | {r['warmup_s']} s | "
              f"{r['peak_rss_mb']} MB | {rounds} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MINDRUN_DATA_DIR", "../shared/data/multi30k"))
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per contestant (median reported)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every contestant this many times, interleaved (medians over rounds)")
    parser.add_argument("--only", nargs="*", help="contestants to run (default: all)")
    parser.add_argument("--parts", nargs="*", default=["synthetic", "real"], choices=["synthetic", "real"],
                        help="which parts to run (default: both)")
    parser.add_argument("--out", default="bench/out/throughput")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="synthetic", help=argparse.SUPPRESS)
    parser.add_argument("--gemm-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not __package__:  # the bench.throughput_* siblings and the worker processes need the module form
        parser.error("run it as a module, from the repository root: python -m bench.throughput ...")
    if args.gemm_worker:
        print(gemm_rate(args.gemm_worker))
        return 0
    if args.worker:
        return worker(args)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or ["course", "course_jit", "mindrun", "mindrun_packed", "torch", "torch_compile"]
    torch_installed = have_torch()
    if not torch_installed and {"torch", "torch_compile"} & set(names):
        print("torch is not installed (pip install -e '.[bench]'): skipping the PyTorch contestants", file=sys.stderr)
        names = [n for n in names if n not in ("torch", "torch_compile")]
    peaks = gemm_peaks(torch_installed)
    synthetic = run_rounds([(name, name, "synthetic") for name in names], args, out) \
        if "synthetic" in args.parts else {}
    # real Multi30k: each contestant with the batching it would use (the notebook's fixed padding,
    # PyTorch and mindrun with token buckets, mindrun packed), plus mindrun under the notebook's batching
    real_runs = [("course", "real_fixed"), ("torch", "real_bucketed"), ("torch_compile", "real_bucketed"),
                 ("mindrun", "real_fixed"),
                 ("mindrun", "real_bucketed"), ("mindrun_packed", "real_packed")]
    real = run_rounds([(f"{name}/{kind}", name, kind) for name, kind in real_runs if name in names], args, out) \
        if "real" in args.parts else {}
    peaks_after = gemm_peaks(torch_installed)
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "gemm_gflops_before": peaks, "gemm_gflops_after": peaks_after, "sizes": SIZES, "vocabs": COURSE_VOCABS,
              "steps": args.steps, "windows": args.windows, "rounds": args.rounds, "synthetic": synthetic, "real": real}
    (out / "result.json").write_text(json.dumps(record, indent=1), encoding="utf-8")

    top = max(*peaks.values(), *peaks_after.values())
    print(f"{record['machine']}")
    print("float32 GEMM GFLOP/s before / after the contestants: " + ", ".join(
        f"{k} {peaks.get(k, '-')} / {peaks_after.get(k, '-')}" for k in peaks_after))
    print(f"MFU below is against the best of these: {top:.0f} GFLOP/s\n")
    if synthetic:
        _table("step (synthetic 32 x 32)", synthetic, synthetic.get("course"), synthetic.get("torch"), top,
               synthetic.get("torch_compile"))
    if real:
        print()
        _table("Multi30k (word-level, as the notebook)", real, real.get("course/real_fixed"),
               real.get("torch/real_bucketed"), top, real.get("torch_compile/real_bucketed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
