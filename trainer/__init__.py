"""The training job each worker runs: config, data, jitted steps, evaluation, checkpoints."""
