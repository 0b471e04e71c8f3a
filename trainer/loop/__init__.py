"""The training loop's helpers: batch prefetch and signals (tools), the start-up clock, the metrics log, the
learning-rate schedule, the end-of-run summary. The loop itself is trainer/train.py."""
