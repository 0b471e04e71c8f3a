"""The label-smoothed loss with its backward written out, and fused with the output projection.

model/loss.py is the plain, autodiff form. On the CPU autodiff's LogSoftmaxGrad, mean and
sum over [tokens, vocabulary] logits cost about twice the few element-wise passes written
out here (bench/HISTORY.md, issue 5); fusing the projection in means the logits' gradient
is never built at all. Both give the same sums and gradients as the plain loss (tests).
"""
import mindspore as ms
from mindspore import nn, ops


def _row_scales(target, pad_id: int, eps: float, vocab: int, dout):
    """Per-row factors of the logits' gradient G = a * softmax - b * onehot(target) - c.

    d loss_sum / d x = keep * (p - (1 - eps) * onehot - eps / V) and d nll_sum / d x =
    keep * (p - onehot), each weighted by its incoming gradient. Returns a and c as [N, 1],
    b as [N].
    """
    d_loss, d_nll = dout[0], dout[1]
    keep = ops.not_equal(target, pad_id).astype(ms.float32)
    a = (keep * (d_loss + d_nll)).reshape(-1, 1)
    b = keep * ((1.0 - eps) * d_loss + d_nll)
    c = (keep * ((eps / vocab) * d_loss)).reshape(-1, 1)
    return a, b, c


class _SmoothedRowLoss(nn.Cell):
    """Sums over rows of logits x [N, V] with targets [N]; the backward is written out.

    Returns (loss_sum, nll_sum, n_tokens, log_z); log_z [N] (log-sum-exp per row) is an
    output only so that the backward can rebuild softmax from it in one pass instead of
    recomputing the row maxima and sums.
    """

    def __init__(self, smoothing: float, pad_id: int):
        super().__init__()
        self.eps = smoothing
        self.pad_id = pad_id

    def construct(self, x, target):
        keep = ops.not_equal(target, self.pad_id).astype(ms.float32)  # [N]
        top = x.max(-1, keepdims=True)
        log_z = ops.log(ops.exp(x - top).sum(-1)) + top.reshape(-1)
        nll = log_z - ops.gather_elements(x, 1, target.reshape(-1, 1).astype(ms.int32)).reshape(-1)
        smooth = log_z - x.mean(-1)  # mean over the vocabulary of -log p
        loss = (1.0 - self.eps) * nll + self.eps * smooth
        return (loss * keep).sum(), (nll * keep).sum(), keep.sum(), log_z

    def bprop(self, x, target, out, dout):
        # G = p * a - c everywhere and - b at the target: the target term is scattered in,
        # so no [N, V] one-hot is built
        a, b, c = _row_scales(target, self.pad_id, self.eps, x.shape[-1], dout)
        grad = ops.exp(x - out[3].reshape(-1, 1)) * a - c
        rows = ops.arange(0, x.shape[0], dtype=ms.int32)
        grad = ops.tensor_scatter_sub(grad, ops.stack([rows, target.astype(ms.int32)], 1), b)
        return grad, ops.zeros_like(target)


class _ProjectedRowLoss(nn.Cell):
    """`_SmoothedRowLoss` of logits = states @ weight^T, the projection's backward written out with it.

    states [N, d], weight [V, d], target [N]. Returns (loss_sum, nll_sum, n_tokens, log_p);
    log_p [N, V] is an output only so that the backward can take softmax from it.

    The gradient of the logits, G = a * softmax - b * onehot - c (a, b, c per row), is never
    formed: the row scales move onto the [N, d] side of each GEMM (G W = a * (P W) - b * W[t]
    - c * sum_v W[v]; G^T S = P^T (a * S) - scatter(b * S) - sum_n c S), so the backward reads
    the [N, V] tensor twice (one Exp, which the GEMMs then read) where the unfused loss and
    MatMul's autodiff make six passes over it.
    """

    def __init__(self, smoothing: float, pad_id: int):
        super().__init__()
        self.eps = smoothing
        self.pad_id = pad_id
        self.logits = ops.MatMul(transpose_b=True)
        self.log_softmax = ops.LogSoftmax()
        self.times_weight = ops.MatMul()
        self.transposed_times = ops.MatMul(transpose_a=True)

    def construct(self, states, weight, target):
        keep = ops.not_equal(target, self.pad_id).astype(ms.float32)  # [N]
        log_p = self.log_softmax(self.logits(states, weight).astype(ms.float32))
        nll = -ops.gather_elements(log_p, 1, target.reshape(-1, 1).astype(ms.int32)).reshape(-1)
        smooth = -log_p.mean(-1)  # mean over the vocabulary of -log p
        loss = (1.0 - self.eps) * nll + self.eps * smooth
        return (loss * keep).sum(), (nll * keep).sum(), keep.sum(), log_p

    def bprop(self, states, weight, target, out, dout):
        vocab = weight.shape[0]
        a, b, c = _row_scales(target, self.pad_id, self.eps, vocab, dout)
        b = b.reshape(-1, 1)
        p = ops.exp(out[3]).astype(states.dtype)  # softmax [N, V]
        ids = target.astype(ms.int32)
        s32, w32 = states.astype(ms.float32), weight.astype(ms.float32)
        d_states = (self.times_weight(p, weight).astype(ms.float32) * a - b * ops.gather(w32, ids, 0)
                    - c * w32.sum(0, keepdims=True))
        d_weight = (self.transposed_times(p, (s32 * a).astype(states.dtype)).astype(ms.float32)
                    - ops.unsorted_segment_sum(b * s32, ids, vocab) - (c * s32).sum(0, keepdims=True))
        return d_states.astype(states.dtype), d_weight.astype(weight.dtype), ops.zeros_like(target)


class WrittenOutCrossEntropy(nn.Cell):
    """`model.loss.LabelSmoothedCrossEntropy` (same inputs and sums) with the backward written out."""

    def __init__(self, smoothing: float, pad_id: int):
        super().__init__()
        self.eps, self.pad_id = smoothing, pad_id
        self.rows = _SmoothedRowLoss(smoothing, pad_id)

    def construct(self, logits, target):
        """logits [B, L, V], target [B, L] ids -> (loss_sum, nll_sum, n_tokens)."""
        vocab = logits.shape[-1]
        loss_sum, nll_sum, n_tokens, _ = self.rows(logits.reshape(-1, vocab).astype(ms.float32), target.reshape(-1))
        return loss_sum, nll_sum, n_tokens


class FusedProjectionLoss(nn.Cell):
    """The teacher-forced loss of `model` with its output projection and the loss as one Cell.

    Called like trainer.step.TeacherForcedLoss: (src, tgt_in, tgt_out, packed...) -> (loss_sum,
    nll_sum, n_tokens). Needs the model's target states and output weight (`target_states`,
    `output_weight`, model/api.py), so it applies only where no parallel layout splits the projection. With
    skip_padding the positions whose target is padding are dropped before the projection (a
    gather with a data-dependent row count, a dynamic shape inside the graph: worth it on the
    CPU, where a padded batch's projection is a fifth of the step).
    """

    def __init__(self, model, smoothing: float, pad_id: int, skip_padding: bool = True):
        super().__init__(auto_prefix=False)
        self.model = model
        self.pad_id = pad_id
        self.skip_padding = skip_padding
        self.projected_rows = _ProjectedRowLoss(smoothing, pad_id)

    def from_states(self, states, weight, target):
        """Sums for logits = states @ weight^T: states [B, L, d], weight [V, d], target [B, L]."""
        d = states.shape[-1]
        rows, target = states.reshape(-1, d), target.reshape(-1)
        if self.skip_padding:
            # position 0 always stays (padding or not: the loss ignores it), so no batch yields zero rows
            kept = ops.logical_or(ops.not_equal(target, self.pad_id), ops.arange(target.shape[0]) == 0)
            index = ops.nonzero(kept)  # [K, 1]
            rows, target = ops.gather_nd(rows, index), ops.gather_nd(target, index)
        loss_sum, nll_sum, n_tokens, _ = self.projected_rows(rows, weight, target)
        return loss_sum, nll_sum, n_tokens

    def construct(self, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        states = self.model.target_states(src, tgt_in, src_seg, tgt_seg, src_pos, tgt_pos)
        return self.from_states(states, self.model.output_weight(), tgt_out)
