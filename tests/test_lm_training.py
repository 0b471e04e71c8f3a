"""Causal language modelling on prepared token files (issue 34): per-rank reading, exact resume, perplexity.

The corpus is the English side of Multi30k, a sentence a document, prepared with a tokenizer trained on it
(`mindrun data prepare`). The launched jobs train the Llama block (recipe llama_tiny) with dropout 0.1 and an
update linear in the gradient (tests/test_parallel_jobs.py's LINEAR: a wrong gradient scale moves the weights),
so equal losses, gradient norms and weights mean equal global batches, equal dropout masks and an equal scale.

    job                          compared with
    dp 2 (each rank reads its    standalone (one process reads the whole global batch): losses, norms,
    half of every batch)         validation, weights
    dp 2 resumed at step 3       the dp 2 run (exact)
    dp 2 checkpoint resumed      the dp 2 run: the same global order at another dp size
    in one process (dp 1)
"""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import checkpoint_tensors
from test_parallel_jobs import LINEAR, grad_norms, losses, records, stopped_at_the_checkpoint

STEPS, SAVED = 6, 3
LENGTH, ROWS = 32, 8
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def corpus(data_dir, tmp_path_factory):
    """(train dir, valid dir) prepared from Multi30k's English sentences (2,000 train, 200 valid)."""
    from trainer.data.token_files import prepare

    root = tmp_path_factory.mktemp("lm_corpus")
    for split, name, count in (("train", "train", 2000), ("val", "valid", 200)):
        with gzip.open(data_dir / f"{split}.en.gz", "rt", encoding="utf-8") as f:
            lines = [next(f).rstrip("\n") for _ in range(count)]
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    train = prepare([root / "train.txt"], root / "train", vocab_size=200, workers=1).directory
    valid = prepare([root / "valid.txt"], root / "valid", tokenizer=train / "tokenizer.model", workers=1).directory
    return train, valid


def lm_sets(corpus, out, *extra):
    train, valid = corpus
    return [f"train.out_dir={out}", f"data.train={train}", f"data.valid={valid}", f"data.pack_length={LENGTH}", f"data.max_tokens={LENGTH * ROWS}",
            "data.valid_limit=24", f"train.max_steps={STEPS}", "train.log_every=1",
            f"train.save_every_steps={SAVED}", "train.keep_last=5", "model.dropout=0.1", *LINEAR, *extra]


def train_here(corpus, out, *extra):
    from trainer.config import load_config
    from trainer.train import train

    return train(load_config("llama_tiny", lm_sets(corpus, out, *extra)))


def launch_lm(corpus, out, run, *extra):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("GLOG_v", None)
    args = [sys.executable, "-m", "launcher", "--worker_num", "2", "--local_worker_num", "2", "--master_port", "0",
            "--log_dir", str(out / "logs"), "-m", "trainer", "train", "--config", "llama_tiny"]
    for s in lm_sets(corpus, run, "parallel.mode=data_parallel", *extra):
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return run


# -- in one process -----------------------------------------------------------------------------------------

def test_each_rank_reads_its_rows_and_the_shares_are_the_global_batch(corpus):
    from trainer.data.lm import LmBatch, LmBatcher
    from trainer.data.token_files import TokenDataset

    data = TokenDataset(corpus[0], LENGTH)
    whole = LmBatcher(data, ROWS, seed=3)
    halves = [LmBatcher(data, ROWS, seed=3, shares=2, share=r) for r in range(2)]
    assert len(whole) == len(halves[0]) == len(data) // ROWS
    for batch in (LmBatch(0, 0), LmBatch(0, 5), LmBatch(1, 5)):
        full = whole.collate(batch)
        parts = [h.collate(batch) for h in halves]
        assert full.global_targets == parts[0].global_targets == ROWS * LENGTH
        assert parts[0][1].shape == (ROWS // 2, LENGTH)  # a rank reads its rows only
        for k in range(7):
            assert np.array_equal(np.concatenate([p[k] for p in parts]), full[k])
        assert np.array_equal(np.concatenate([h.rows(batch) for h in halves]), whole.order.global_batch(
            batch.epoch, batch.index, ROWS))
    assert not np.array_equal(whole.rows(LmBatch(0, 5)), whole.rows(LmBatch(1, 5)))  # reshuffled per epoch
    with pytest.raises(ValueError, match="does not split over 3"):
        LmBatcher(data, ROWS, seed=3, shares=3)


def test_a_packed_row_never_attends_across_a_document_boundary(corpus):
    """The logits of each document in a packed sample are those of the document alone (and not those of a row
    that lets it see the documents before it)."""
    import mindspore as ms

    from model.decoder_only import DecoderOnly
    from trainer.config import load_config
    from trainer.data.lm import as_packed
    from trainer.data.token_files import TokenDataset

    cfg = load_config("llama_tiny", [])
    data = TokenDataset(corpus[0], LENGTH)
    model = DecoderOnly(cfg.model, 200, 0)
    model.set_train(False)
    read = data.rows([4])
    segments = read["segments"][0]
    assert len(set(segments.tolist())) >= 2  # the sample spans a document boundary
    src, tgt_in, _, src_seg, tgt_seg, src_pos, tgt_pos = map(ms.Tensor, as_packed(read))
    packed = model(src, tgt_in, src_seg, tgt_seg, src_pos, tgt_pos).asnumpy()[0]
    seen_across = model.lm_logits(ms.Tensor(read["inputs"])).asnumpy()[0]
    for seg in sorted(set(segments.tolist()))[1:]:
        cols = np.flatnonzero(segments == seg)
        alone = model.lm_logits(ms.Tensor(read["inputs"][:, cols])).asnumpy()[0]
        np.testing.assert_allclose(packed[cols], alone, rtol=1e-4, atol=1e-4)
        assert np.abs(seen_across[cols] - alone).max() > 1e-3  # the check would see a mask that leaks


def test_config_errors_name_the_key_and_the_fix():
    from trainer.config import ConfigError, load_config
    from trainer.data.lm import prepare_lm
    from trainer.data.token_files import PrepareError
    from trainer.parallel.plan import make_plan

    base = ["data.train=a", "data.valid=b"]  # data.source and data.objective: auto
    with pytest.raises(ConfigError, match="model.arch=decoder_only"):
        load_config("tiny", base)
    cfg = load_config("llama_tiny", base[:1])
    assert (cfg.data.source, cfg.data.objective) == ("tokens", "causal_lm")
    with pytest.raises(PrepareError, match="needs data.valid"):
        prepare_lm(cfg.data)
    with pytest.raises(ConfigError, match="set data.train and data.valid"):
        load_config("llama_tiny", ["data.objective=causal_lm"])
    assert load_config("llama_tiny", [*base, "data.objective=translation"]).data.source == "tokens"  # pairs
    assert load_config("llama_tiny", []).data.objective == "translation"
    with pytest.raises(ConfigError, match="train.best_metric=ppl"):
        load_config("llama_tiny", [*base, "train.best_metric=bleu"])
    with pytest.raises(ConfigError, match="data.pack_length"):
        load_config("llama_tiny", [*base, "data.pack_length=512"])
    cfg = load_config("llama_tiny", [*base, "data.pack_length=32", "data.max_tokens=96"])  # 3 rows
    assert cfg.best_metric() == "ppl"
    with pytest.raises(ConfigError, match="multiple of 64"):
        make_plan(cfg, 2, "CPU")


def test_a_missing_or_foreign_corpus_is_one_line(corpus, tmp_path, capsys):
    from trainer.cli import main

    train, valid = corpus
    args = ["train", "--config", "llama_tiny"]
    for s in lm_sets(corpus, tmp_path / "run")[:3] + [f"data.train={tmp_path / 'nowhere'}"]:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.train=" in err[0] and "mindrun data prepare" in err[0], err


# -- launched jobs ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def standalone_lm(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_standalone")
    train_here(corpus, out)
    return out


@pytest.fixture(scope="module")
def dp2_lm(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_dp2")
    return launch_lm(corpus, out, out / "run")


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_dp2_language_model_job_trains_like_one_process(standalone_lm, dp2_lm):
    want, got = losses(standalone_lm), losses(dp2_lm)
    assert len(got) == STEPS and got[-1] < got[0]  # it learns
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(grad_norms(dp2_lm), grad_norms(standalone_lm), rtol=1e-4)
    (ref,), (val,) = records(standalone_lm, "valid"), records(dp2_lm, "valid")
    np.testing.assert_allclose([val["loss"], val["ppl"]], [ref["loss"], ref["ppl"]], rtol=1e-4)
    assert "bleu" not in val and val["tokens"] == ref["tokens"] == 24 * LENGTH
    a, b = checkpoint_tensors(standalone_lm), checkpoint_tensors(dp2_lm)
    assert set(a) == set(b) and a
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)
    best = json.loads((dp2_lm / "summary.json").read_text())["best"]
    assert best["step"] == STEPS and "ppl" in best
    log = (dp2_lm.parent / "logs" / "worker_1.log").read_text()
    assert "tokens per update: data.max_tokens 256" in (dp2_lm.parent / "logs" / "worker_0.log").read_text()
    assert "Traceback" not in log


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_dp2_language_model_job_resumes_exactly(dp2_lm, corpus, tmp_path):
    crashed = stopped_at_the_checkpoint(dp2_lm, tmp_path / "run")
    resumed = launch_lm(corpus, tmp_path, crashed, "train.resume=auto")
    assert losses(resumed)[:SAVED] == losses(dp2_lm)[:SAVED]
    assert losses(resumed, SAVED + 1) == losses(dp2_lm, SAVED + 1)  # exact: the same rows, masks and sums
    assert grad_norms(resumed, SAVED + 1) == grad_norms(dp2_lm, SAVED + 1)


@pytest.mark.slow
def test_a_dp2_language_model_checkpoint_resumes_at_dp1_in_the_same_order(dp2_lm, corpus, tmp_path):
    crashed = stopped_at_the_checkpoint(dp2_lm, tmp_path / "run")
    train_here(corpus, crashed, "train.resume=auto")
    got, want = losses(crashed, SAVED + 1), losses(dp2_lm, SAVED + 1)
    assert len(got) == STEPS - SAVED
    np.testing.assert_allclose(got, want, rtol=1e-5)  # the next batches are the dp 2 run's (another order: ~1)
    np.testing.assert_allclose(grad_norms(crashed, SAVED + 1), grad_norms(dp2_lm, SAVED + 1), rtol=1e-4)


@pytest.mark.slow
def test_evaluate_reports_the_perplexity_of_a_language_model(standalone_lm, corpus, capfd):
    from trainer.cli import main

    assert main(["evaluate", "--checkpoint", str(standalone_lm / "checkpoints" / "best")]) == 0
    out = capfd.readouterr().out.strip().splitlines()
    assert out[0].startswith("valid: perplexity ")
    result = json.loads(out[-1])
    n_valid = len(np.fromfile(corpus[1] / "tokens.bin", "<u2"))
    assert result["split"] == "valid" and result["tokens"] == (n_valid - 1) // LENGTH * LENGTH
    assert 1.0 < result["ppl"] < 200 and abs(np.log(result["ppl"]) - result["nll"]) < 1e-9
    assert main(["evaluate", "--checkpoint", str(standalone_lm), "--split", "test"]) == 2
    assert "no 'test' split" in capfd.readouterr().err


def test_fine_tuning_an_imported_hugging_face_llama_on_prepared_text(corpus, tmp_path):
    """import-hf, then a causal_lm run with train.init_from on the prepared corpus: its first update's loss is the
    Hugging Face model's own next-token loss on those rows, each document read alone (segments)."""
    import torch

    from test_llama import hf_model, save
    from trainer.ckpt.hf import import_hf
    from trainer.config import load_config
    from trainer.data.lm import LmBatch, LmBatcher
    from trainer.data.token_files import TokenDataset

    data = TokenDataset(corpus[0], LENGTH)
    hf = hf_model(2, vocab=data.vocab_size)
    import_hf(save(hf, tmp_path / "hf"), tmp_path / "base", recipe="llama_tiny",
              overrides=[f"data.vocab_size={data.vocab_size}"])
    out = tmp_path / "tuned"
    train_here(corpus, out, f"train.init_from={tmp_path / 'base'}", "model.dropout=0.0", "train.max_steps=1")
    first = records(out, "train")[0]
    cfg = load_config("llama_tiny", lm_sets(corpus, out))
    rows = data.rows(LmBatcher(data, ROWS, cfg.train.seed, limit=cfg.data.train_limit).rows(LmBatch(0, 0)))
    nll = 0.0
    with torch.no_grad():
        for inputs, targets, segments in zip(rows["inputs"], rows["targets"], rows["segments"]):
            for seg in np.unique(segments):
                cols = np.flatnonzero(segments == seg)
                logits = hf(torch.tensor(inputs[cols][None].astype(np.int64))).logits[0]
                nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(targets[cols].astype(np.int64)),
                                                               reduction="sum"))
    np.testing.assert_allclose(first["nll"], nll / (ROWS * LENGTH), rtol=1e-4)


def test_the_run_accounts_for_its_time_and_skips_a_validation_right_after_one(corpus, tmp_path):
    """summary.json splits the wall time into start-up, updates, validation, checkpoints and the rest; an end of
    the run less than a tenth of an epoch after a validation saves without validating again (issue 37)."""
    limit = ["data.train_limit=320", "train.max_epochs=3", "train.save_every_steps=0"]  # 40 batches an epoch
    summary = train_here(corpus, tmp_path / "near", *limit, "train.max_steps=42")
    assert [r["step"] for r in records(tmp_path / "near", "valid")] == [40]  # not again at 42
    assert (tmp_path / "near" / "checkpoints" / "latest").resolve().name == "step_42"
    spent = summary["time_s"]
    assert set(spent) == {"start-up", "updates", "validation", "checkpoints", "other", "wall"}
    assert spent["updates"] > 0 and spent["validation"] > 0 and spent["start-up"] > 0
    assert abs(sum(v for k, v in spent.items() if k != "wall") - spent["wall"]) < 0.5
    far = train_here(corpus, tmp_path / "far", *limit, "train.max_steps=45")
    assert [r["step"] for r in records(tmp_path / "far", "valid")] == [40, 45] and far["steps"] == 45


def test_a_run_without_epoch_validations_validates_once_at_its_end(corpus, tmp_path):
    """train.validate_epochs=false (the `quick` recipe): no pass at the end of each epoch (a checkpoint only), one
    pass at the end of the run, whether max_epochs or max_steps ends it."""
    limit = ["data.train_limit=320", "train.save_every_steps=0", "train.validate_epochs=false"]  # 40 an epoch
    summary = train_here(corpus, tmp_path / "epochs", *limit, "train.max_epochs=3", "train.max_steps=1000")
    assert [r["step"] for r in records(tmp_path / "epochs", "valid")] == [120] and summary["steps"] == 120
    saved = sorted(int(p.name[5:]) for p in (tmp_path / "epochs" / "checkpoints").glob("step_*"))
    assert saved == [40, 80, 120]  # the ends of epochs still save (nothing lost to a crash)
    assert (tmp_path / "epochs" / "checkpoints" / "latest").resolve().name == "step_120"
    train_here(corpus, tmp_path / "steps", *limit, "train.max_epochs=3", "train.max_steps=50")
    assert [r["step"] for r in records(tmp_path / "steps", "valid")] == [50]
