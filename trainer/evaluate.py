"""`mindrun evaluate` and `mindrun translate`: a checkpoint's scores on a split, or stdin to stdout."""
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, TextIO

import mindspore as ms

from trainer.config import ConfigError
from trainer.data import multi30k
from trainer.run_dir import load_for_inference
from trainer.scoring import score
from trainer.translation import Translator


def _translator(checkpoint_path: Path, beam: Optional[int], length_penalty: Optional[float],
                batch_size: Optional[int], average: int = 1):
    ms.set_context(mode=ms.GRAPH_MODE)
    if average < 1:
        raise ConfigError(f"--average must be >= 1 (checkpoints to average), got {average}")
    cfg, model, src_vocab, tgt_vocab = load_for_inference(checkpoint_path, average)
    ev = cfg.eval
    beam = ev.beam if beam is None else beam
    batch_size = ev.batch_size if batch_size is None else batch_size
    if beam < 1 or batch_size < 1:
        raise ConfigError(f"--beam and --batch-size must be >= 1, got {beam} and {batch_size}")
    translator = Translator(model, src_vocab, tgt_vocab, cfg.data.buckets, beam,
                            ev.length_penalty if length_penalty is None else length_penalty,
                            ev.max_len_a, ev.max_len_b, batch_size)
    return cfg, translator


def evaluate(checkpoint_path: Path, split: str = "test", beam: Optional[int] = None,
             length_penalty: Optional[float] = None, batch_size: Optional[int] = None,
             data_dir: Optional[str] = None, output: Optional[Path] = None,
             progress: bool = True, average: int = 1) -> Dict[str, object]:
    """Translate a Multi30k split with the checkpoint (or the mean of it and the `average` - 1 kept
    before it) and score it with sacreBLEU."""
    cfg, translator = _translator(checkpoint_path, beam, length_penalty, batch_size, average)
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


def print_scores(result: Dict[str, object], stream: TextIO = sys.stdout) -> None:
    """Human-readable lines followed by the JSON record."""
    stream.write(f"{result['split']}: BLEU {result['bleu']:.2f} (cased, {result['bleu_signature']})\n")
    stream.write(f"{result['split']}: BLEU {result['bleu_lowercase']:.2f} (lowercased)  chrF {result['chrf']:.2f}\n")
    stream.write(json.dumps(result) + "\n")
