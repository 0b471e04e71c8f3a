"""The course notebook's Transformer and training step, re-implemented from its description.

The baseline of bench/throughput (see ../shared/reference/course-notebook.md): PyNative mode,
every batch padded to 32, masks built with `equal` + `broadcast_to` and tiled over heads,
`masked_fill(-1e9)`, post-LN AddNorm, no dropout inside decoder layers, CrossEntropyLoss
ignoring <pad>, Adam(1e-4), `value_and_grad` then `optimizer(grads)` each step, no jit.
Written from the description, not copied; it exists to be timed, not used.
"""
import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops

PAD = 1  # the notebook's specials: <unk>=0, <pad>=1, <bos>=2, <eos>=3


class ScaledDotProductAttention(nn.Cell):
    def __init__(self, dropout):
        super().__init__()
        self.softmax = nn.Softmax()
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, q, k, v, mask):
        d_k = q.shape[-1]
        scores = ops.matmul(q, k.swapaxes(-2, -1) / ops.sqrt(ms.Tensor(d_k, ms.float32)))
        scores = scores.masked_fill(mask, -1e9)
        attn = self.dropout(self.softmax(scores))
        return ops.matmul(attn, v), attn


class MultiHeadAttention(nn.Cell):
    def __init__(self, d_model, d_k, n_heads, dropout):
        super().__init__()
        self.n_heads, self.d_k = n_heads, d_k
        self.w_q = nn.Dense(d_model, d_k * n_heads)
        self.w_k = nn.Dense(d_model, d_k * n_heads)
        self.w_v = nn.Dense(d_model, d_k * n_heads)
        self.w_o = nn.Dense(n_heads * d_k, d_model)
        self.attention = ScaledDotProductAttention(dropout)

    def construct(self, q, k, v, mask):
        b = q.shape[0]
        q = self.w_q(q).view(b, -1, self.n_heads, self.d_k).swapaxes(1, 2)
        k = self.w_k(k).view(b, -1, self.n_heads, self.d_k).swapaxes(1, 2)
        v = self.w_v(v).view(b, -1, self.n_heads, self.d_k).swapaxes(1, 2)
        mask = mask.expand_dims(1)
        mask = ops.tile(mask, (1, self.n_heads, 1, 1))
        out, attn = self.attention(q, k, v, mask)
        out = out.swapaxes(1, 2).view(b, -1, self.n_heads * self.d_k)
        return self.w_o(out), attn


class PositionalEncoding(nn.Cell):
    def __init__(self, d_model, dropout, max_len=100):
        super().__init__()
        pos = np.arange(max_len)[:, None]
        angle = pos / np.power(10000, np.arange(0, d_model, 2) / d_model)
        table = np.zeros((max_len, d_model), np.float32)
        table[:, 0::2], table[:, 1::2] = np.sin(angle), np.cos(angle)
        self.pe = ms.Tensor(table[None])
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, x):
        pe = self.pe[:, :x.shape[1], :]
        pe = ops.broadcast_to(pe, x.shape)
        return self.dropout(x + pe)


class PoswiseFeedForward(nn.Cell):
    def __init__(self, d_model, d_ff, dropout):
        super().__init__()
        self.linear1 = nn.Dense(d_model, d_ff)
        self.linear2 = nn.Dense(d_ff, d_model)
        self.dropout = nn.Dropout(p=dropout)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.linear2(self.dropout(self.relu(self.linear1(x))))


class AddNorm(nn.Cell):
    def __init__(self, d_model, dropout):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.norm = nn.LayerNorm((d_model,), epsilon=1e-5)

    def construct(self, x, residual):
        return self.norm(self.dropout(x) + residual)


class EncoderLayer(nn.Cell):
    def __init__(self, d_model, n_heads, d_ff, dropout):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, d_model // n_heads, n_heads, dropout)
        self.ffn = PoswiseFeedForward(d_model, d_ff, dropout)
        self.add_norm1 = AddNorm(d_model, dropout)
        self.add_norm2 = AddNorm(d_model, dropout)

    def construct(self, x, mask):
        residual = x
        x, _ = self.attn(x, x, x, mask)
        x = self.add_norm1(x, residual)
        return self.add_norm2(self.ffn(x), x)


class DecoderLayer(nn.Cell):
    def __init__(self, d_model, n_heads, d_ff, dropout=0.0):  # the notebook builds these without dropout
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, d_model // n_heads, n_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, d_model // n_heads, n_heads, dropout)
        self.ffn = PoswiseFeedForward(d_model, d_ff, dropout)
        self.add_norm1 = AddNorm(d_model, dropout)
        self.add_norm2 = AddNorm(d_model, dropout)
        self.add_norm3 = AddNorm(d_model, dropout)

    def construct(self, x, memory, self_mask, cross_mask):
        residual = x
        x, _ = self.self_attn(x, x, x, self_mask)
        x = self.add_norm1(x, residual)
        residual = x
        x, _ = self.cross_attn(x, memory, memory, cross_mask)
        x = self.add_norm2(x, residual)
        return self.add_norm3(self.ffn(x), x)


def pad_mask(q, k, pad):
    """[B, Lq, Lk]: True where the key is padding, built as the notebook does."""
    b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    mask = ops.equal(k, pad).expand_dims(1)
    return ops.broadcast_to(mask, (b, lq, lk))


def subsequent_mask(x):
    b, length = x.shape
    upper = np.triu(np.ones((b, length, length)), k=1)
    return ms.Tensor(upper, ms.bool_)


class Encoder(nn.Cell):
    def __init__(self, vocab, d_model, n_heads, d_ff, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = PositionalEncoding(d_model, dropout)
        self.layers = nn.CellList([EncoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(layers)])
        self.scale = math.sqrt(d_model)

    def construct(self, src):
        x = self.pos(self.embed(src) * self.scale)
        mask = pad_mask(src, src, PAD)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class Decoder(nn.Cell):
    def __init__(self, vocab, d_model, n_heads, d_ff, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = PositionalEncoding(d_model, dropout)
        self.layers = nn.CellList([DecoderLayer(d_model, n_heads, d_ff) for _ in range(layers)])
        self.scale = math.sqrt(d_model)

    def construct(self, tgt, src, memory):
        x = self.pos(self.embed(tgt) * self.scale)
        self_mask = ops.logical_or(pad_mask(tgt, tgt, PAD), subsequent_mask(tgt))
        cross_mask = pad_mask(tgt, src, PAD)
        for layer in self.layers:
            x = layer(x, memory, self_mask, cross_mask)
        return x


class CourseTransformer(nn.Cell):
    def __init__(self, src_vocab, tgt_vocab, d_model=512, n_heads=8, d_ff=2048, layers=6, dropout=0.1):
        super().__init__()
        self.encoder = Encoder(src_vocab, d_model, n_heads, d_ff, layers, dropout)
        self.decoder = Decoder(tgt_vocab, d_model, n_heads, d_ff, layers, dropout)
        self.projection = nn.Dense(d_model, tgt_vocab)

    def construct(self, src, tgt):
        memory = self.encoder(src)
        return self.projection(self.decoder(tgt, src, memory))


def make_step(model, jit: bool = False):
    """The notebook's step: value_and_grad of the forward loss, then optimizer(grads)."""
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=1e-4)

    def forward(src, tgt_in, tgt_out):
        logits = model(src, tgt_in)
        return loss_fn(logits.view(-1, logits.shape[-1]), tgt_out.view(-1))

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)

    def step(src, tgt_in, tgt_out):
        loss, grads = grad_fn(src, tgt_in, tgt_out)
        optimizer(grads)
        return loss

    return ms.jit(step) if jit else step
