"""bench/llama_block: the Llama block against the GPT-style decoder-only block at equal parameters, on this CPU.

    python -m bench.llama_block --data-dir ../shared/data/multi30k [--rounds 3]

Two decoder-only models of gpt_hour's width and depth (7 x 256, 4 heads, joint 8k vocabulary, tied embeddings):
  gpt     gpt_hour's block: LayerNorm, learned positions, ReLU FFN of 1,024, biases, embeddings x sqrt(d)
  llama   RMSNorm, rotary positions, SwiGLU of 684 (2/3 of 1,024: about the same FFN parameters), no biases,
          unscaled embeddings (model.share_embeddings stays true so the parameter counts match)
Training: `mindrun train` for --steps updates in a fresh process per round, tokens/s = the median of the
run's logged rates (bench.memory_levers.run). Generation: the trained checkpoint, a 16-id prompt, 64 new ids
greedy with the key/value cache (model/generate.py), tokens/s = new ids / seconds after a warm-up call, median
of 5. Rounds interleave the contestants; each ratio is the median of the per-round ratios. Results:
bench/out/llama_block/result.json and a Markdown table for bench/README.md.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.memory_levers import run

COMMON = ["train.max_steps={steps}", "train.eval_every=100000", "data.valid_limit=8", "eval.max_len_b=2",
          "model.dropout=0.0", "model.attention_dropout=0.0",
          "model.activation_dropout=0.0"]
CONTESTANTS = {
    "gpt": [],
    "llama": ["model.norm=rmsnorm", "model.positions=rotary", "model.ffn=swiglu", "model.d_ff=684",
              "model.bias=false", "model.scale_embeddings=false"],
}


def generation_rate(run_dir: Path, new_tokens: int = 64, repeats: int = 5) -> float:
    """Greedy new ids per second with the cache, after one warm-up call (the compile)."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    from model.generate import generate
    from trainer.run_dir import load_language_model

    _, model, _ = load_language_model(run_dir / "checkpoints" / "latest")
    prompt = list(range(10, 26))
    generate(model, prompt, new_tokens)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(model, prompt, new_tokens)
        rates.append(len(out) / (time.perf_counter() - start))
    return statistics.median(rates)


def parameters(sets) -> int:
    from model.size import parameter_count
    from trainer.config import load_config

    cfg = load_config("gpt_hour", sets)
    return parameter_count(cfg.model, 8000, 8000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="bench/out/llama_block")
    args = parser.parse_args()
    out = Path(args.out)
    records = {name: [] for name in CONTESTANTS}
    for r in range(args.rounds):
        for name, sets in CONTESTANTS.items():
            fixed = [s.format(steps=args.steps) for s in COMMON]
            where = out / f"{name}_{r}"
            record = run("gpt_hour", 1, [*fixed, *sets], args.data_dir, where)
            record["generate_tokens_per_s"] = generation_rate(where / "run")
            records[name].append(record)
            print(json.dumps({"contestant": name, "round": r, **record}), flush=True)
    rows = []
    for name, sets in CONTESTANTS.items():
        train = [x["tokens_per_s"] for x in records[name]]
        gen = [x["generate_tokens_per_s"] for x in records[name]]
        rows.append({"contestant": name, "parameters": parameters(sets), "train_tokens_per_s": statistics.median(train),
                     "generate_tokens_per_s": statistics.median(gen), "peak_mib": statistics.median(
                         x["peak_mib"] for x in records[name]),
                     "train_ratio": statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in
                                                      zip(records[name], records["gpt"])),
                     "generate_ratio": statistics.median(a["generate_tokens_per_s"] / b["generate_tokens_per_s"]
                                                         for a, b in zip(records[name], records["gpt"]))})
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"rows": rows, "runs": records}, indent=1))
    print("\n| block | parameters | training tokens/s | vs gpt | generation tokens/s | vs gpt | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['contestant']} | {r['parameters']:,} | {r['train_tokens_per_s']:,.0f} | {r['train_ratio']:.2f} | "
              f"{r['generate_tokens_per_s']:,.1f} | {r['generate_ratio']:.2f} | {r['peak_mib']:,.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
