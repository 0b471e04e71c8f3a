"""bench/generation: sentences per second translating test2016, mindrun's search against the course's loop.

    python -m bench.generation --checkpoint RUN_A/checkpoints/best --checkpoint RUN_B/checkpoints/best \\
        --data-dir ../shared/data/multi30k

For each checkpoint (either architecture, model/api.py), in --rounds interleaved rounds:
- mindrun: `mindrun evaluate`'s path (graph mode, batches of eval.batch_size in length order, incremental
  decoding with key/value caches) over test2016 (or its first --sentences), beam 1 and beam 5;
- the course notebook's loop (../shared/reference/course-notebook.md) on the same weights: greedy, batch
  size 1, PyNative as the notebook runs, the whole model re-run over the growing prefix for every new token
  (the encoder-decoder's source encoded once per sentence; the decoder-only model has no encoder, so its
  whole sequence is re-run), on the first --course-sentences sentences, stopping at EOS or at the same
  length cap as mindrun's search.
Rates are sentences per second, so a subset compares with the whole set; the round that compiles counts
(the median of 3 rounds leaves it out). The course loop's greedy outputs are compared with mindrun's greedy
outputs for the same sentences: equal outputs show that both do the same work (same model, same stopping rule).
Results: printed, and written to <out> and bench/results/generation-<date>.json.
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import mindspore as ms
from mindspore import ops

from model.search import SequenceGenerator
from model.tokens import BOS, EOS
from trainer.data import multi30k
from trainer.data.batching import bucket_of
from trainer.evaluate import _translator


def course_loop(model, ids: List[int], cap: int) -> List[int]:
    """Greedy, one sentence, the whole model re-run over the prefix for each token (PyNative)."""
    src = ms.Tensor(np.array([ids + [EOS]], np.int32))
    encode = getattr(model, "encode", None)
    memory = encode(src) if encode is not None else None
    out = [BOS]
    for _ in range(cap):
        prefix = ms.Tensor(np.array([out], np.int32))
        logits = model.decode(prefix, *memory) if memory is not None else model(src, prefix)
        nxt = int(ops.argmax(logits[0, -1]).asnumpy())
        if nxt == EOS:
            break
        out.append(nxt)
    return out[1:]


def cap_of(translator, n_ids: int) -> int:
    """The output length mindrun's search allows a source of `n_ids` ids (EOS included)."""
    width = bucket_of(n_ids, translator.buckets)
    return min(translator.max_output(n_ids), translator.cache_len(width) - 1)


def measure(checkpoint: Path, data_dir, rounds: int, course_sentences: int, limit: int = 0) -> Dict[str, object]:
    """One checkpoint's rates (median over rounds) and the course loop's agreement with greedy search."""
    cfg, translator = _translator(checkpoint, 1, None, None)
    generators = {beam: SequenceGenerator(translator.model, beam, cfg.eval.length_penalty) for beam in (1, 5)}
    root = multi30k.locate(data_dir or cfg.data.dir, cfg.data.cache_dir)
    pairs = multi30k.read_split(root, "test", cfg.data.src_lang, cfg.data.tgt_lang)
    sources = [translator.src_vocab.encode(s) for s, _ in pairs][:limit or None]
    rates: Dict[str, List[float]] = {"beam1": [], "beam5": [], "course": []}
    greedy: List[List[int]] = []
    course: List[List[int]] = []
    for _ in range(rounds):
        for beam in (1, 5):
            ms.set_context(mode=ms.GRAPH_MODE)
            translator.generator = generators[beam]  # a generator compiles for its beam width
            t0 = time.perf_counter()
            outputs = translator.translate_ids(sources)
            rates[f"beam{beam}"].append(len(sources) / (time.perf_counter() - t0))
            print(f"{cfg.model.arch} beam {beam}: {rates[f'beam{beam}'][-1]:.1f} sentences/s", file=sys.stderr, flush=True)
            if beam == 1:
                greedy = outputs
        ms.set_context(mode=ms.PYNATIVE_MODE)
        subset = sources[:course_sentences]
        t0 = time.perf_counter()
        course = [course_loop(translator.model, list(ids), cap_of(translator, len(ids) + 1)) for ids in subset]
        rates["course"].append(len(subset) / (time.perf_counter() - t0))
        print(f"{cfg.model.arch} course loop: {rates['course'][-1]:.2f} sentences/s", file=sys.stderr, flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    same = sum(a == b for a, b in zip(course, greedy))
    return {"checkpoint": str(checkpoint), "arch": cfg.model.arch,
            "parameters": int(sum(np.prod(p.shape) for p in translator.model.trainable_params())),
            "sentences": len(sources), "course_sentences": len(course), "batch_size": translator.batch_size,
            "rounds": {k: [round(x, 2) for x in v] for k, v in rates.items()},
            "sentences_per_s": {k: round(v, 2) for k, v in medians.items()},
            "speedup_vs_course": {k: round(medians[k] / medians["course"], 1) for k in ("beam1", "beam5")},
            "course_equals_greedy": f"{same} of {len(course)}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="repeat for several models")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--course-sentences", type=int, default=50)
    parser.add_argument("--sentences", type=int, default=0, help="the first N of test2016 (0: all 1,000)")
    parser.add_argument("--out", default="bench/out/generation/result.json")
    args = parser.parse_args()
    results = [measure(Path(c), args.data_dir, args.rounds, args.course_sentences, args.sentences)
               for c in args.checkpoint]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu, "commit": commit, "results": results}
    for path in (Path(args.out), Path("bench/results") / f"generation-{time.strftime('%Y%m%d-%H%M')}.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    print("| model | parameters | beam 1 sent/s | beam 5 sent/s | course loop sent/s | beam 1 / course | "
          "beam 5 / course | course = greedy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        s, x = r["sentences_per_s"], r["speedup_vs_course"]
        print(f"| {r['arch']} | {r['parameters']:,} | {s['beam1']} | {s['beam5']} | {s['course']} | "
              f"{x['beam1']}x | {x['beam5']}x | {r['course_equals_greedy']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
