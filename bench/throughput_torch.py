"""PyTorch `nn.Transformer` with the same sizes, batches and step as the others (bench-only contestants):
eager, or the model under `torch.compile` (TorchInductor, CPU: C++/OpenMP kernels built with the system's
compiler; the first step of each new shape compiles, and a second shape makes the graph dynamic)."""
import math

import torch
from torch import nn


class TorchTransformer(nn.Module):
    def __init__(self, src_vocab, tgt_vocab, d_model, n_heads, d_ff, layers, dropout, pad):
        super().__init__()
        self.pad, self.scale = pad, math.sqrt(d_model)
        self.src_embed = nn.Embedding(src_vocab, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model)
        pos = torch.arange(512).unsqueeze(1)
        angle = pos / torch.pow(10000, torch.arange(0, d_model, 2) / d_model)
        table = torch.zeros(512, d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle)
        self.register_buffer("pe", table)
        self.dropout = nn.Dropout(dropout)
        self.core = nn.Transformer(d_model, n_heads, layers, layers, d_ff, dropout, batch_first=True)
        self.out = nn.Linear(d_model, tgt_vocab)

    def forward(self, src, tgt):
        s = self.dropout(self.src_embed(src) * self.scale + self.pe[:src.shape[1]])
        t = self.dropout(self.tgt_embed(tgt) * self.scale + self.pe[:tgt.shape[1]])
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        h = self.core(s, t, tgt_mask=causal, src_key_padding_mask=src == self.pad,
                      tgt_key_padding_mask=tgt == self.pad, memory_key_padding_mask=src == self.pad)
        return self.out(h)


def make(src_vocab, tgt_vocab, d_model, n_heads, d_ff, layers, dropout, pad, threads, compiled=False):
    """Model and a step function taking numpy (src, tgt_in, tgt_out); `compiled`: the model's forward (and
    with it the backward, through AOTAutograd) compiled by torch.compile's default backend, inductor."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = TorchTransformer(src_vocab, tgt_vocab, d_model, n_heads, d_ff, layers, dropout, pad).train()
    forward = torch.compile(model) if compiled else model
    loss_fn = nn.CrossEntropyLoss(ignore_index=pad)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(src, tin, tout):
        src, tin, tout = (torch.from_numpy(a).long() for a in (src, tin, tout))
        optimizer.zero_grad(set_to_none=True)
        logits = forward(src, tin)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tout.reshape(-1))
        loss.backward()
        optimizer.step()
        return float(loss)

    return step
