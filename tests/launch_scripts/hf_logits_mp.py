"""One rank of a hybrid model-parallel job that loads an imported Hugging Face Llama run and writes its logits
and cached-decoding log-probabilities, for tests/test_llama.py to compare with transformers' on the same weights.

    python hf_logits_mp.py RUN_DIR TOKENS.npy OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a plain script run

import mindspore as ms  # noqa: E402


def main(run: Path, tokens_file: Path, out: Path) -> None:
    import yaml

    from model.api import build
    from model.generate import LmLogits
    from model.parallel.layout import split_axes
    from trainer.ckpt.layout import ShardLayout
    from trainer.ckpt.store import load_tensors
    from trainer.ckpt.tools import open_verified
    from trainer.config import config_from_dict
    from trainer.parallel.context import init_parallel, is_scheduler, select_backend, world_size_from_env
    from trainer.parallel.plan import make_plan
    from trainer.parallel.seam import parallelize

    ms.set_context(mode=ms.GRAPH_MODE)
    if is_scheduler():
        from mindspore.communication import init

        init()
        return
    backend = select_backend()
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    directory, manifest = open_verified(run / "checkpoints" / "latest")
    vocab = manifest["tensors"]["embed.embedding_table"]["shape"][0]
    ctx = init_parallel(make_plan(cfg, world_size_from_env(), backend, vocab_size=vocab), backend)
    model = build(cfg.model, vocab, vocab, 0)
    axes = split_axes(model)
    parallelize(model, ctx)  # the hybrid layout: this rank's heads, key/value heads, FFN columns, vocabulary rows
    layout = ShardLayout(ctx.mp_rank, ctx.plan.model_parallel, ctx.dp_rank, ctx.plan.data_parallel, axes)
    load_tensors(list(model.trainable_params()), layout, directory, manifest, kinds=("weight",))
    model.set_train(False)
    tokens = np.load(tokens_file)
    logits = LmLogits(model)(ms.Tensor(tokens)).asnumpy()
    prompt, rest = tokens[:, :5], tokens[:, 5:]
    bias, pk, pv, sk, sv = model.start_decoding(ms.Tensor(prompt[:, :-1]), rest.shape[1])
    token, steps = prompt[:, -1:], []
    for j in range(rest.shape[1]):
        logprobs, sk, sv = model.decode_step(ms.Tensor(token), ms.Tensor(j, ms.int32), bias, pk, pv, sk, sv)
        steps.append(logprobs.asnumpy())
        token = rest[:, j:j + 1]
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"rank_{ctx.rank}.npz", logits=logits, steps=np.stack(steps, 1),
             kv_heads=np.array(model.layers[0].self_attn.n_kv_heads))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
