"""Small pieces the training loop uses: background batches, throughput windows, signals, seeding."""
import contextlib
import queue
import random
import signal
import threading
import time
from typing import Dict, Iterable, Iterator

import numpy as np


def prefetch(items: Iterable, depth: int = 4) -> Iterator:
    """Produce `items` in a background thread, `depth` ahead of the consumer.

    The producer stops when the consumer stops early (break, exception, close()).
    """
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    done, stopped = object(), threading.Event()

    def put(item) -> bool:
        while not stopped.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # surface producer errors in the consumer
            put(exc)
        put(done)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()


def seed_everything(seed: int) -> None:
    """Python, NumPy and MindSpore RNGs from one seed."""
    import mindspore as ms

    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


class ThroughputWindow:
    """Running sums between two log lines: tokens/s and per-token losses."""

    def __init__(self):
        self.tokens, self.loss, self.nll, self.targets = 0, 0.0, 0.0, 0.0
        self.t0 = time.time()

    def add(self, tokens: int, loss_sum: float, nll_sum: float, targets: float, skipped: bool = False) -> None:
        """Count one step's tokens (source + target) and loss sums (a skipped step's tokens only:
        its loss may be what overflowed)."""
        self.tokens += tokens
        if skipped:
            return
        self.loss += loss_sum
        self.nll += nll_sum
        self.targets += targets

    @contextlib.contextmanager
    def paused(self):
        """Leave the time spent inside out of tokens/s (the tokens before it still count)."""
        start = time.time()
        try:
            yield
        finally:
            self.t0 += time.time() - start

    def flush(self) -> Dict[str, float]:
        """Per-token loss and nll and tokens/s since the last flush; starts a new window."""
        n = max(self.targets, 1.0)
        out = {"loss": self.loss / n, "nll": self.nll / n, "tokens_per_s": self.tokens / (time.time() - self.t0)}
        self.__init__()
        return out


def catch_signals(handler, previous=None):
    """Route SIGTERM/SIGINT to `handler` (or restore `previous`); a no-op outside the main thread."""
    signals = (signal.SIGTERM, signal.SIGINT)
    try:
        if previous is not None:
            for sig, old in previous.items():
                signal.signal(sig, old)
            return None
        return {sig: signal.signal(sig, handler) for sig in signals}
    except ValueError:  # not the main thread: signals stay with whoever owns them
        return None
