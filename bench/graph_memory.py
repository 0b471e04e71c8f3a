"""bench/graph_memory: how much resident memory one compiled forward graph of the decoder-only model holds on the CPU.

    python -m bench.graph_memory [model.KEY=VALUE ...]      e.g. norm=rmsnorm positions=rotary

MindSpore's CPU runtime keeps each compiled graph's memory for as long as the graph lives, so every distinct
shape a run compiles (the training step, each validation bucket's loss graph, the decoding graphs) adds its own
footprint; an operator that needs more intermediate memory shows once per graph. This builds gpt_hour's width
and depth (7 x 256, 8k vocabulary) with the given model options and compiles the translation forward at two
validation shapes, printing the process's resident memory before and after each. It found the Llama block's
2.7x peak (bench/README.md, bench.llama_block): Mul with an implicit broadcast (RMSNorm's scale, rotary tables
over the heads) held ~16 MB more per call than an explicit BroadcastTo followed by Mul.
"""
import sys

import numpy as np


def main(argv) -> int:
    import mindspore as ms
    from mindspore import nn

    from model.config import ModelConfig
    from model.decoder_only import DecoderOnly
    from trainer.loop.host_memory import resident_mib

    ms.set_context(mode=ms.GRAPH_MODE)
    options = {}
    for item in argv:
        key, _, value = item.partition("=")
        options[key] = {"true": True, "false": False}.get(value, int(value) if value.isdigit() else value)
    base = dict(arch="decoder_only", decoder_layers=7, d_model=256, n_heads=4, d_ff=1024, dropout=0.0, pre_norm=True,
                max_positions=256)
    cfg = ModelConfig(**{**base, **options})
    model = DecoderOnly(cfg, 8000, 0)
    model.set_train(False)

    class Forward(nn.Cell):
        def __init__(self, model):
            super().__init__(auto_prefix=False)
            self.model = model

        def construct(self, src, tgt):
            return self.model(src, tgt)

    forward = Forward(model)
    rng = np.random.default_rng(0)
    for rows, length in ((170, 12), (128, 16)):  # two of gpt_hour's validation buckets at 2,048 tokens
        src = ms.Tensor(rng.integers(4, 8000, (rows, length)).astype(np.int32))
        tgt = ms.Tensor(rng.integers(4, 8000, (rows, length)).astype(np.int32))
        before = resident_mib()
        forward(src, tgt).asnumpy()
        print(f"{options or 'defaults'}: graph [{rows} x {length}+{length}]: {before:.0f} -> {resident_mib():.0f} MiB "
              f"(+{resident_mib() - before:.0f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
