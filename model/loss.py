"""Label-smoothed cross-entropy that ignores padding (Szegedy et al. 2016; fairseq's form)."""
import mindspore as ms
from mindspore import nn, ops


class LabelSmoothedCrossEntropy(nn.Cell):
    """Sum over non-pad targets of (1 - eps) * NLL + eps * mean over the vocabulary of -log p.

    Returns (loss_sum, nll_sum, n_tokens) so callers can normalise per token across
    batches and ranks; padding positions contribute nothing.

    The backward is written out (softmax minus the smoothed target, per kept row) instead
    of differentiating log_softmax: over [tokens, vocabulary] logits that is a few
    elementwise passes where autodiff's LogSoftmaxGrad, mean and sum cost about twice as
    much on CPU (bench/README.md, issue 5).
    """

    def __init__(self, smoothing: float, pad_id: int):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.eps = smoothing
        self.pad_id = pad_id

    def _rows(self, logits, target):
        vocab = logits.shape[-1]
        flat = target.reshape(-1)
        keep = ops.not_equal(flat, self.pad_id).astype(ms.float32)  # [N]
        return logits.reshape(-1, vocab).astype(ms.float32), flat, keep

    def construct(self, logits, target):
        """logits [B, L, V], target [B, L] ids."""
        x, flat, keep = self._rows(logits, target)
        top = x.max(-1, keepdims=True)
        log_z = ops.log(ops.exp(x - top).sum(-1)) + top.reshape(-1)  # log-sum-exp per row
        nll = log_z - ops.gather_elements(x, 1, flat.reshape(-1, 1).astype(ms.int32)).reshape(-1)
        smooth = log_z - x.mean(-1)  # mean over the vocabulary of -log p
        loss = (1.0 - self.eps) * nll + self.eps * smooth
        return (loss * keep).sum(), (nll * keep).sum(), keep.sum()

    def bprop(self, logits, target, out, dout):
        # d loss_sum / d x = keep * (p - (1 - eps) * onehot - eps / V); d nll_sum / d x = keep * (p - onehot)
        x, flat, keep = self._rows(logits, target)
        vocab = x.shape[-1]
        d_loss, d_nll = dout[0], dout[1]
        e = ops.exp(x - x.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
        onehot = ops.one_hot(flat, vocab, ops.ones((), ms.float32), ops.zeros((), ms.float32))
        grad = p * (d_loss + d_nll) - onehot * ((1.0 - self.eps) * d_loss + d_nll) - (self.eps / vocab) * d_loss
        grad = grad * keep.reshape(-1, 1)
        return grad.reshape(logits.shape).astype(logits.dtype), ops.zeros_like(target)
