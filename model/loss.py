"""Label-smoothed cross-entropy that ignores padding (Szegedy et al. 2016; fairseq's form)."""
import mindspore as ms
from mindspore import nn, ops


class LabelSmoothedCrossEntropy(nn.Cell):
    """Sum over non-pad targets of (1 - eps) * NLL + eps * mean over the vocabulary of -log p.

    Returns (loss_sum, nll_sum, n_tokens) so callers can normalise per token across
    batches and ranks; padding positions contribute nothing. The gradient is autodiff's.
    """

    def __init__(self, smoothing: float, pad_id: int):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.eps = smoothing
        self.pad_id = pad_id
        self.log_softmax = ops.LogSoftmax()

    def construct(self, logits, target):
        """logits [B, L, V], target [B, L] ids."""
        vocab = logits.shape[-1]
        log_p = self.log_softmax(logits.reshape(-1, vocab).astype(ms.float32))
        target = target.reshape(-1)
        keep = ops.not_equal(target, self.pad_id).astype(ms.float32)
        nll = -ops.gather_elements(log_p, 1, target.reshape(-1, 1).astype(ms.int32)).reshape(-1)
        smooth = -log_p.mean(-1)  # mean over the vocabulary of -log p
        loss = (1.0 - self.eps) * nll + self.eps * smooth
        return (loss * keep).sum(), (nll * keep).sum(), keep.sum()
