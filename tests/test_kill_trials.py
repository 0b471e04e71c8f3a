"""kill -9 during a save, then `resume: auto` (the short version of bench/kill_trials.py)."""
import pytest

from bench.kill_trials import trial

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_a_worker_killed_during_a_save_resumes_from_the_last_complete_checkpoint(data_dir, tmp_path):
    record = trial(0, data_dir, tmp_path, victim="worker", layout="dp2", at_save=True, delay=0.0)
    assert record["ok"] and record["killed"], record
    assert record["killed_in_save"], record  # a step directory without its manifest when the kill landed
    assert record["complete_checkpoints"], record  # it had saved before the kill
