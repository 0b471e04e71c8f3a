"""The end-of-run memory records (trainer/loop/host_memory.py) that bench.planner fits the CPU memory model on."""
from trainer.loop import host_memory
from trainer.loop.host_memory import HostMemory, device_peak_mib, parse_lines


def test_the_training_peak_is_taken_once_and_the_line_reads_back(monkeypatch):
    peaks = iter([1500.0, 2600.0, 2600.0, 2600.0])  # validation's graphs grow the peak after training's
    monkeypatch.setattr(host_memory, "peak_mib", lambda: next(peaks))
    memory = HostMemory()
    memory.training_done()
    memory.training_done()  # a second validation: training's peak stays the first reading
    record = memory.record()
    assert record["training"] == 1500 and record["peak"] == 2600
    assert 0 < record["before_model"] and record["end"] > 0
    line = memory.line(rank=3)
    assert "peak host memory: 2,600 MiB (rank 3; training 1,500 MiB, of it " in line
    assert parse_lines(f"noise\n[rank 3] {line}\nmore\n") == {3: {**record, "end": parse_lines(line)[3]["end"]}}


def test_device_memory_is_reported_off_the_cpu_only():
    assert device_peak_mib("CPU") is None and device_peak_mib("cpu") is None
    assert isinstance(device_peak_mib("Ascend"), int)  # MindSpore's counter (0 here, where nothing is on a device)
