"""The Llama-class decoder-only model against Hugging Face's reference (issue 33): logits of the full forward and of
cached decoding equal `transformers`' LlamaForCausalLM on the same weights (GQA on and off), import and export of
Hugging Face safetensors directories (round trip bit-exact, into a 2 x 2 layout and merged back), fine-tuning from an
import, and generation (greedy = the uncached argmax chain = transformers' greedy generate).

The Hugging Face models are created here with random weights (nothing is downloaded)."""
import json
from pathlib import Path

import numpy as np
import mindspore as ms
import pytest

import torch  # the dev extra's CPU torch and transformers: the reference (a missing one fails, never skips)
import transformers

from model.generate import LmLogits, generate, greedy_uncached
from trainer.ckpt import manifest as mf
from trainer.ckpt.hf import export_hf, import_hf, model_config, to_hf, to_mindrun
from trainer.ckpt.safetensors_io import TensorFile
from trainer.cli import main
from trainer.config import load_config
from trainer.run_dir import load_language_model

pytestmark = pytest.mark.slow

VOCAB = 128


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def hf_model(kv_heads=2, vocab=VOCAB, seed=0, tie=False):
    """A tiny LlamaForCausalLM with every weight random (norm scales too, so that a mapping error shows)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=88, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie,
                                      attention_bias=False, mlp_bias=False)
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 + 0.1 * torch.randn_like(p)) if name.endswith("norm.weight") else 0.2 * torch.randn_like(p))
    return model


def save(model, path):
    model.save_pretrained(path, safe_serialization=True)
    return path


def ids(shape, seed=0, vocab=VOCAB):
    return np.random.default_rng(seed).integers(1, vocab, size=shape).astype(np.int32)


def imported(tmp_path, model, **kw):
    run = tmp_path / "run"
    import_hf(save(model, tmp_path / "hf"), run, **kw)
    return run


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_logits_equal_transformers_llama_full_forward_and_cached_decoding(tmp_path, kv_heads):
    reference = hf_model(kv_heads)
    run = imported(tmp_path, reference)
    cfg, model, vocab = load_language_model(run / "checkpoints" / "latest")
    assert vocab is None and cfg.model.kv_heads == kv_heads and cfg.model.positions == "rotary"
    tokens = ids((2, 12))
    with torch.no_grad():
        theirs = reference(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    ours = LmLogits(model)(ms.Tensor(tokens)).asnumpy()
    assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
    assert np.abs(theirs).max() > 1.0  # logits of real size: the comparison is not of zeros

    # step by step with the key/value cache: a 5-id prompt, then one id a step (transformers' past_key_values)
    prompt, rest = tokens[:, :5], tokens[:, 5:]
    with torch.no_grad():
        out = reference(torch.tensor(prompt, dtype=torch.long), use_cache=True)
        past, hf_steps = out.past_key_values, [out.logits[:, -1]]
        for j in range(rest.shape[1] - 1):
            out = reference(torch.tensor(rest[:, j:j + 1], dtype=torch.long), past_key_values=past, use_cache=True)
            past = out.past_key_values
            hf_steps.append(out.logits[:, -1])
    hf_logprobs = torch.log_softmax(torch.stack(hf_steps, 1), -1).numpy()  # [B, steps, V]
    bias, pk, pv, sk, sv = model.start_decoding(ms.Tensor(prompt[:, :-1]), rest.shape[1])
    token = prompt[:, -1:]
    for j in range(rest.shape[1]):
        logprobs, sk, sv = model.decode_step(ms.Tensor(token), ms.Tensor(j, ms.int32), bias, pk, pv, sk, sv)
        gap = np.abs(logprobs.asnumpy() - hf_logprobs[:, j]).max()
        assert gap < 1e-4, (j, gap)
        token = rest[:, j:j + 1]
    assert sk[0].shape[1] == kv_heads  # the cache keeps the key/value heads only


def test_export_round_trip_is_bit_exact_and_transformers_loads_it(tmp_path):
    reference = hf_model(2)
    run = imported(tmp_path, reference)
    out = export_hf(run / "checkpoints" / "latest", tmp_path / "exported")
    source, back = TensorFile(tmp_path / "hf" / "model.safetensors"), TensorFile(out / "model.safetensors")
    assert sorted(source.names()) == sorted(back.names()) and len(back.names()) == 2 + 1 + 2 * 9
    for name in source.names():
        assert source.dtype(name) == "F32" and back.dtype(name) == "F32"
        assert np.array_equal(source.read(name), back.read(name)), name
    config = json.loads((out / "config.json").read_text())
    assert model_config(config) == model_config(reference.config.to_dict())
    loaded = transformers.LlamaForCausalLM.from_pretrained(out).float().eval()
    tokens = torch.tensor(ids((1, 9)), dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, reference(tokens).logits)


def test_export_splits_into_indexed_shards_and_bfloat16(tmp_path):
    reference = hf_model(2)
    run = imported(tmp_path, reference)
    out = export_hf(run / "checkpoints" / "latest", tmp_path / "exported", dtype="bfloat16", max_shard_bytes=8192)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((out / f).is_file() for f in files)
    loaded = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.bfloat16)
    for name, p in reference.named_parameters():
        expect = p.detach().to(torch.bfloat16)  # torch's own rounding: ours must match it bit for bit
        assert torch.equal(dict(loaded.named_parameters())[name].detach(), expect), name


def test_import_into_a_2x2_layout_then_merge_gives_the_source_back(tmp_path):
    reference = hf_model(2)
    run = imported(tmp_path, reference, dp=2, mp=2)
    step = run / "checkpoints" / "step_0"
    manifest = mf.read(step)
    assert manifest["layout"]["model_parallel"] == 2 and len(manifest["files"]) == 2
    split = {n for n, e in manifest["tensors"].items() if len(e["parts"]) == 2}
    assert "layers.0.self_attn.w_k.weight" in split and "out_proj.weight" in split
    assert "layers.0.norm1.norm.gamma" not in split
    assert main(["ckpt", "merge", str(step), str(tmp_path / "merged.ckpt")]) == 0
    merged = {n: p.asnumpy() for n, p in ms.load_checkpoint(str(tmp_path / "merged.ckpt")).items()}
    source = TensorFile(tmp_path / "hf" / "model.safetensors")
    assert set(merged) == {to_mindrun(n) for n in source.names()}
    for name in source.names():
        assert np.array_equal(merged[to_mindrun(name)], source.read(name)), name
    assert all(to_hf(to_mindrun(n)) == n for n in source.names())


def test_a_config_that_contradicts_the_recipe_is_one_line_and_exit_2(tmp_path, capsys):
    hf = save(hf_model(1, vocab=400), tmp_path / "hf")  # llama_tiny has n_kv_heads 2
    assert main(["ckpt", "import-hf", str(hf), "--out", str(tmp_path / "run"), "--config", "llama_tiny"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Writing model shards" not in line]
    assert len(err) == 1 and "model.n_kv_heads=1" in err[0] and "recipe llama_tiny has model.n_kv_heads=2" in err[0]
    assert not (tmp_path / "run").exists()


def test_greedy_generation_is_the_uncached_argmax_chain_and_transformers_greedy(tmp_path):
    reference = hf_model(2)
    run = imported(tmp_path, reference)
    _, model, _ = load_language_model(run / "checkpoints" / "latest")
    prompt = [5, 17, 42, 8]
    ours = generate(model, prompt, 10)
    assert ours == greedy_uncached(model, prompt, 10)
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, min_new_tokens=10,
                                    pad_token_id=0, eos_token_id=None)
    assert ours == theirs[0, len(prompt):].tolist()
    sampled = generate(model, prompt, 10, temperature=1.0, top_p=0.9, seed=3)
    assert sampled == generate(model, prompt, 10, temperature=1.0, top_p=0.9, seed=3)  # seeded
    assert len(sampled) == 10 and all(0 <= t < VOCAB for t in sampled)


def test_generate_cli_prints_ids(tmp_path, capsys):
    run = imported(tmp_path, hf_model(2))
    assert main(["generate", "--checkpoint", str(run / "checkpoints" / "latest"), "--prompt-ids", "5 17 42 8",
                 "--max-new-tokens", "6"]) == 0
    printed = [int(t) for t in capsys.readouterr().out.split()]
    _, model, _ = load_language_model(run / "checkpoints" / "latest")
    assert printed == greedy_uncached(model, [5, 17, 42, 8], 6)
    assert main(["generate", "--checkpoint", str(run), "--prompt", "ein Hund"]) == 2  # no tokenizer.model imported
    assert "give --prompt-ids" in capsys.readouterr().err


def test_fine_tuning_starts_from_an_import_under_the_recipe(tmp_path, data_dir, capfd):
    """import-hf --config llama_tiny (config.json agrees with the recipe), then train.init_from: the run starts at
    step 0 from the imported weights (a fresh optimizer) and moves them by a few learning rates, no more."""
    from conftest import checkpoint_tensors
    from trainer.train import train

    ms.set_context(mode=ms.GRAPH_MODE)
    hf = save(hf_model(2, vocab=400), tmp_path / "hf")
    assert main(["ckpt", "import-hf", str(hf), "--out", str(tmp_path / "base"), "--config", "llama_tiny"]) == 0
    start = checkpoint_tensors(tmp_path / "base")
    cfg = load_config("llama_tiny", [f"data.dir={data_dir}", f"train.out_dir={tmp_path / 'tuned'}",
                                      f"train.init_from={tmp_path / 'base'}", "train.max_steps=2", "optim.lr=1e-4",
                                      "optim.warmup_steps=1", "train.compile_cache=false"])
    summary = train(cfg)
    assert summary["steps"] == 2 and "(train.init_from; fresh optimizer, step 0)" in capfd.readouterr().out
    tuned = checkpoint_tensors(tmp_path / "tuned")
    assert set(tuned) == set(start)
    moved = max(float(np.abs(tuned[n] - start[n]).max()) for n in start)
    assert 0 < moved < 5e-4, moved  # Adam moves each weight by about lr a step: these are the imported weights
    optimizer = checkpoint_tensors(tmp_path / "tuned", kinds=("optimizer",))
    assert any("moment1" in n for n in optimizer)


@pytest.mark.multiprocess
def test_logits_under_model_parallel_2_equal_transformers(tmp_path):
    """The same comparison as above in a launched job of 2 model-parallel ranks: each rank holds 2 of the 4 query
    heads and 1 of the 2 key/value heads, half the FFN and half of the vocabulary (embedding and untied output);
    every rank's gathered logits and cached-decoding log-probabilities equal transformers'."""
    import os
    import subprocess
    import sys

    reference = hf_model(2)
    run = imported(tmp_path, reference, mp=2)
    tokens = ids((2, 12))
    np.save(tmp_path / "tokens.npy", tokens)
    with torch.no_grad():
        theirs = reference(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    script = Path(__file__).parent / "launch_scripts" / "hf_logits_mp.py"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "launcher", "--worker_num", "2", "--local_worker_num", "2",
                           "--master_port", "0", "--log_dir", str(tmp_path / "logs"), str(script), str(run),
                           str(tmp_path / "tokens.npy"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with torch.no_grad():
        full = torch.log_softmax(reference(torch.tensor(tokens, dtype=torch.long)).logits, -1).numpy()
    for r in (0, 1):
        got = np.load(tmp_path / "out" / f"rank_{r}.npz")
        assert int(got["kv_heads"]) == 1  # the key/value heads really are split
        assert np.abs(got["logits"] - theirs).max() < 1e-4
        assert np.abs(got["steps"] - full[:, 4:11]).max() < 1e-4  # step j predicts the token after position 4 + j


def test_an_interrupted_import_leaves_no_run_directory(tmp_path):
    hf = save(hf_model(2), tmp_path / "hf")

    def interrupt(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_hf(hf, tmp_path / "runs" / "llama", progress=interrupt)
    assert list((tmp_path / "runs").iterdir()) == []  # neither the run nor its work directory
