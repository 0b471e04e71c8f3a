"""Language-model generation for decoder-only models: the prompt once into the key/value cache, then one jitted
step per new token (greedy, or sampling with temperature and nucleus top-p).

The prompt's last id is fed as the first step's token, so each step's input is the previous output, as in
Hugging Face's `generate`: prompt[:-1] fills the prompt cache (`start_decoding`), and step j at target
position j sees sequence position len(prompt) - 1 + j. Greedy output is the argmax chain of the uncached
forward (tests/test_llama.py), and equals `transformers`' greedy generate on imported weights.
"""
from typing import List, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn


class _Start(nn.Cell):
    def __init__(self, model, max_len: int):
        super().__init__(auto_prefix=False)
        self.model, self.max_len = model, max_len

    def construct(self, prompt):
        return self.model.start_decoding(prompt, self.max_len)


class _Step(nn.Cell):
    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, token, position, bias, pk, pv, sk, sv):
        return self.model.decode_step(token, position, bias, pk, pv, sk, sv)


def _cells(model, max_len: int):
    """The compiled prompt and step Cells of `model` for caches of `max_len` slots, made once: a new Cell would
    compile its graph again on every call."""
    cache = model.__dict__.setdefault("_generation_cells", {})
    if max_len not in cache:
        cache[max_len] = (_Start(model, max_len), _Step(model))
    return cache[max_len]


def _sample(logprobs: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One id from log-probabilities [V]: argmax at temperature 0, else softmax(logprobs / T) cut to the
    smallest set of ids whose probability reaches top_p."""
    if temperature <= 0:
        return int(np.argmax(logprobs))
    z = logprobs.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = order[:int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(len(p), p=p))


def generate(model, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, stop_ids: Sequence[int] = ()) -> List[int]:
    """The ids `model` (a DecoderOnly) continues `prompt` with: up to max_new_tokens, ending early after an id
    in `stop_ids` (included). temperature 0 is greedy."""
    prompt = [int(i) for i in prompt]
    if len(prompt) < 2:
        raise ValueError("generation needs a prompt of at least two ids (a text prompt starts with BOS)")
    room = model.cfg.max_positions - (len(prompt) - 1)
    if max_new_tokens < 1 or max_new_tokens > room:
        raise ValueError(f"--max-new-tokens must be in [1, {room}] for a {len(prompt)}-id prompt "
                         f"(model.max_positions {model.cfg.max_positions})")
    model.set_train(False)
    rng = np.random.default_rng(seed)
    start, step = _cells(model, max_new_tokens)
    pad_id, model.pad_id = model.pad_id, -1  # one unpadded row: every prompt id is a token (Llama's id 0 is <unk>)
    try:
        bias, pk, pv, sk, sv = start(ms.Tensor([prompt[:-1]], ms.int32))
    finally:
        model.pad_id = pad_id
    pk, pv = ms.mutable(tuple(pk)), ms.mutable(tuple(pv))
    token, out = prompt[-1], []
    for position in range(max_new_tokens):
        logprobs, sk, sv = step(ms.Tensor([[token]], ms.int32), ms.Tensor(position, ms.int32), bias, pk, pv,
                                ms.mutable(tuple(sk)), ms.mutable(tuple(sv)))
        token = _sample(logprobs.asnumpy()[0], temperature, top_p, rng)
        out.append(token)
        if token in stop_ids:
            break
    return out


class LmLogits(nn.Cell):
    """`model.lm_logits` as a Cell of its own, so that graph mode compiles it once per input shape."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, tokens):
        return self.model.lm_logits(tokens)


def greedy_uncached(model, prompt: Sequence[int], max_new_tokens: int) -> List[int]:
    """The argmax chain of the full forward over the growing sequence (no cache): generate's reference."""
    ids = [int(i) for i in prompt]
    out: List[int] = []
    forward = LmLogits(model)
    for _ in range(max_new_tokens):
        logits = forward(ms.Tensor([ids], ms.int32)).asnumpy()[0, -1]
        out.append(int(np.argmax(logits)))
        ids.append(out[-1])
    return out


def parse_ids(text: str) -> List[int]:
    """'1 17 42' or '1,17,42' -> [1, 17, 42]."""
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--prompt-ids {text!r}: expected integers separated by spaces") from None


def check_ids(ids: Sequence[int], vocab: int) -> None:
    """ValueError for an id outside the vocabulary."""
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"prompt ids {bad[:5]} are outside the model's vocabulary [0, {vocab})")
