"""`mindrun evaluate` and `mindrun translate`: a checkpoint's scores on a split (BLEU, or a language model's
perplexity), or stdin to stdout."""
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, TextIO, Tuple

import mindspore as ms

from trainer.config import ConfigError
from trainer.data import multi30k
from trainer.run_dir import load_for_inference
from trainer.scoring import score
from trainer.translation import Translator


def _load(checkpoint_path: Path, average: int):
    """load_for_inference in graph mode, `average` checked first."""
    ms.set_context(mode=ms.GRAPH_MODE)
    if average < 1:
        raise ConfigError(f"--average must be >= 1 (checkpoints to average), got {average}")
    return load_for_inference(checkpoint_path, average)


def _translator(checkpoint_path: Path, beam: Optional[int], length_penalty: Optional[float],
                batch_size: Optional[int], average: int = 1):
    cfg, model, src_vocab, tgt_vocab = _load(checkpoint_path, average)
    ev = cfg.eval
    beam = ev.beam if beam is None else beam
    batch_size = ev.batch_size if batch_size is None else batch_size
    if beam < 1 or batch_size < 1:
        raise ConfigError(f"--beam and --batch-size must be >= 1, got {beam} and {batch_size}")
    translator = Translator(model, src_vocab, tgt_vocab, cfg.data.buckets, beam,
                            ev.length_penalty if length_penalty is None else length_penalty,
                            ev.max_len_a, ev.max_len_b, batch_size)
    return cfg, translator


def _prepared_path(cfg, split: str, data: Optional[str]) -> Tuple[str, str]:
    """(path, the key or flag naming it) of the prepared corpus to score: `data`, else the run's data.<split>."""
    if data is not None:
        return str(data), "--data"
    if split not in ("valid", "train"):
        raise ConfigError(f"a run on prepared data has data.train and data.valid, no {split!r} split: use --split "
                          f"valid, or --data DIR for another prepared corpus")
    return getattr(cfg.data, split), f"data.{split}"


def _check_tokenizer(checkpoint_path: Path, manifest: Dict, key: str, path: str) -> None:
    """A prepared corpus must have been encoded by the run's own tokenizer (its vocab/joint.model)."""
    from trainer.ckpt.manifest import sha256_of
    from trainer.run_dir import run_dir_of

    tokenizer = run_dir_of(checkpoint_path) / "vocab" / "joint.model"
    if tokenizer.is_file() and sha256_of(tokenizer) != manifest["tokenizer"]["sha256"]:
        raise ConfigError(f"{key}={path} was prepared with another tokenizer than the run's ({tokenizer}); prepare "
                          f"it with --tokenizer {tokenizer}")


def _prepared_pairs(checkpoint_path: Path, cfg, translator: Translator, split: str, data: Optional[str]):
    """(pairs as text, the split's name) of a prepared parallel corpus (`_prepared_path`)."""
    from trainer.data.token_files import open_named, open_pairs
    from trainer.dataset import pairs_as_text

    path, key = _prepared_path(cfg, split, data)
    manifest, src, tgt = open_named(open_pairs, path, key)
    _check_tokenizer(checkpoint_path, manifest, key, path)
    return pairs_as_text(translator.tgt_vocab, src, tgt), split if data is None else str(data)


def evaluate(checkpoint_path: Path, split: str = "test", beam: Optional[int] = None,
             length_penalty: Optional[float] = None, batch_size: Optional[int] = None,
             data_dir: Optional[str] = None, output: Optional[Path] = None,
             progress: bool = True, average: int = 1, data: Optional[str] = None) -> Dict[str, object]:
    """Translate a Multi30k split (or, for a run on prepared pairs, its data.valid / data.train, or the prepared
    pairs `data`) with the checkpoint (or the mean of it and the `average` - 1 kept before it) and score it
    with sacreBLEU."""
    cfg, translator = _translator(checkpoint_path, beam, length_penalty, batch_size, average)
    if cfg.data.source == "tokens" or data:  # prepared parallel text
        pairs, split = _prepared_pairs(checkpoint_path, cfg, translator, split, data)
    else:
        root = multi30k.locate(data_dir or cfg.data.dir, cfg.data.cache_dir)
        pairs = multi30k.read_split(root, split, cfg.data.src_lang, cfg.data.tgt_lang)
    t0 = time.time()
    hyps = translator.translate([s for s, _ in pairs], progress=progress)
    seconds = time.time() - t0
    if output:
        Path(output).write_text("\n".join(hyps) + "\n", encoding="utf-8")
    result = score(hyps, [t for _, t in pairs])
    result.update({"split": split, "checkpoint": str(checkpoint_path), "averaged": average,
                   "beam": translator.generator.beam,
                   "length_penalty": translator.generator.length_penalty,
                   "decode_seconds": round(seconds, 1),
                   "sentences_per_s": round(len(pairs) / max(seconds, 1e-9), 1)})
    return result


def evaluate_lm(checkpoint_path: Path, split: str = "valid", data: Optional[str] = None,
                average: int = 1) -> Dict[str, object]:
    """Loss and perplexity of a causal_lm checkpoint on its run's data.valid (or data.train), or on the
    prepared corpus `data` (made with the run's tokenizer)."""
    from trainer.data.token_files import TokenDataset, open_named
    from trainer.validation import LmValidator

    cfg, model, _, _ = _load(checkpoint_path, average)
    path, key = _prepared_path(cfg, split, data)
    dataset = open_named(lambda p: TokenDataset(p, cfg.data.pack_length), path, key)
    _check_tokenizer(checkpoint_path, dataset.manifest, key, path)
    t0 = time.time()
    result = LmValidator(cfg, model, dataset).run()
    seconds = time.time() - t0
    result.update({"split": split if data is None else str(data), "checkpoint": str(checkpoint_path),
                   "averaged": average, "seconds": round(seconds, 1),
                   "tokens_per_s": round(result["tokens"] / max(seconds, 1e-9))})
    return result


def translate_stream(checkpoint_path: Path, stdin: TextIO, stdout: TextIO, beam: Optional[int] = None,
                     length_penalty: Optional[float] = None, batch_size: Optional[int] = None,
                     average: int = 1) -> int:
    """Read source lines from `stdin`, write one translation per line to `stdout`; return the count.

    Lines are read in chunks of the batch size, so output starts before input ends.
    """
    _, translator = _translator(checkpoint_path, beam, length_penalty, batch_size, average)
    count, chunk = 0, []
    for line in stdin:
        chunk.append(line.rstrip("\n"))
        if len(chunk) == translator.batch_size:
            count += _flush(translator, chunk, stdout)
            chunk = []
    if chunk:
        count += _flush(translator, chunk, stdout)
    return count


def _flush(translator: Translator, lines, stdout: TextIO) -> int:
    for hyp in translator.translate(lines):
        stdout.write(hyp + "\n")
    stdout.flush()
    return len(lines)


def print_scores(result: Dict[str, object], stream: Optional[TextIO] = None) -> None:
    """Human-readable lines followed by the JSON record (on `stream`, default: sys.stdout as it is now)."""
    stream = stream or sys.stdout
    if "bleu" not in result:  # a language model's
        stream.write(f"{result['split']}: perplexity {result['ppl']:.2f}, loss {result['loss']:.4f} "
                     f"({result['tokens']:,} tokens)\n")
        stream.write(json.dumps(result) + "\n")
        return
    stream.write(f"{result['split']}: BLEU {result['bleu']:.2f} (cased, {result['bleu_signature']})\n")
    stream.write(f"{result['split']}: BLEU {result['bleu_lowercase']:.2f} (lowercased)  chrF {result['chrf']:.2f}\n")
    stream.write(json.dumps(result) + "\n")
