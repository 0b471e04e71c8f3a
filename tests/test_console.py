"""The launched job's console: worker lines, progress frames, MindSpore's chatter, the end of training."""
import io
import json
import subprocess
import sys
from pathlib import Path

from launcher.agent import _Tail
from launcher.console import MAX_LINE, Console, count_levels, hidden_summary, ms_level

REPO = Path(__file__).resolve().parent.parent

WARNING_CPP = ("[WARNING] DEVICE(1234,7f20795e4b80,python):2026-11-30-14:08:10.061.198 [mindspore/ccsrc/x.cc:94] "
               "Init] group mccl_world_group has already existed")
WARNING_PY = ("[WARNING] ME(16521:139978331937664,MainProcess):2026-11-30-14:18:20.640.000 "
              "[mindspore/common/_decorator.py:69] 'FusedSparseAdam' is deprecated")
INFO_CPP = "[INFO] DISTRIBUTED(12152,7fbe4529b6c0,python):2026-11-30 [tcp_server.cc:314] Start] Event base dispatch success!"
ERROR_CPP = "[ERROR] DISTRIBUTED(12034,7ff237a1db80,python):2026-11-30 [init.cc:114] InitializeCluster] Failed"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_mindspore_lines_are_recognised_by_their_head_only():
    assert [ms_level(x) for x in (WARNING_CPP, WARNING_PY, INFO_CPP, ERROR_CPP)] == ["WARNING", "WARNING", "INFO",
                                                                                     "ERROR"]
    assert ms_level("[WARNING] my own message") is None and ms_level("step 3 [INFO] x") is None


def test_chatter_is_hidden_errors_and_the_jobs_lines_are_shown():
    stream = io.StringIO()
    console = Console(stream, terminal=False)
    for line in (WARNING_CPP, "epoch 1 done", INFO_CPP, ERROR_CPP, WARNING_PY):
        console.line("[rank 0]", line)
    assert stream.getvalue().splitlines() == ["[rank 0] epoch 1 done", f"[rank 0] {ERROR_CPP}"]
    loud = io.StringIO()
    console = Console(loud, show_ms_logs=True, terminal=False)
    console.line("[rank 0]", WARNING_CPP)
    assert WARNING_CPP in loud.getvalue()


def test_a_mindspore_line_written_after_a_bars_frame_is_split_off(tmp_path):
    stream = io.StringIO()
    console = Console(stream, terminal=False, interval=0)
    log = tmp_path / "worker_0.log"
    log.write_text("\repoch 0:   0%|          | 0/19 [00:00<?, ?it/s]" + WARNING_CPP + "\n"
                   "result 1" + ERROR_CPP + "\n")
    _Tail(log, "[rank 0]", 0, console).pump(final=True)
    console.tick()
    assert stream.getvalue().splitlines() == ["[rank 0] result 1", f"[rank 0] {ERROR_CPP}",
                                              "[rank 0] epoch 0:   0%|          | 0/19 [00:00<?, ?it/s]"]


def test_long_lines_are_cut_and_say_where_the_rest_is():
    stream = io.StringIO()
    Console(stream, terminal=False).line("[rank 0]", "x" * 5000, "worker_0.log")
    (line,) = stream.getvalue().splitlines()
    assert len(line) < MAX_LINE + 80 and line.endswith("(4600 more characters in worker_0.log)")


def test_progress_frames_become_one_line_per_interval_off_a_terminal(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr("launcher.console.time.monotonic", clock)
    stream = io.StringIO()
    console = Console(stream, interval=30, terminal=False)
    log = tmp_path / "worker_0.log"
    tail = _Tail(log, "[rank 0]", 0, console)
    with open(log, "w") as handle:
        handle.write("compiling\n")
        for step in range(1, 301):  # 300 frames in 60 s, as tqdm draws them
            handle.write(f"\repoch 1:  {step // 3}%|#    | {step}/900 [00:{step // 5:02d}<01:00, 5.0it/s]")
            handle.flush()
            clock.now += 0.2
            tail.pump()
            console.tick()  # the launcher's loop
        handle.write("\r" + " " * 40 + "\rstep 300 epoch 1: valid loss 3.1 bleu 12.0\n")
    tail.pump(final=True)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[rank 0] compiling" and lines[-1] == "[rank 0] step 300 epoch 1: valid loss 3.1 bleu 12.0"
    progress = lines[1:-1]
    assert len(progress) == 2  # 60 s at one line per 30 s, not one per frame
    assert all(p.startswith("[rank 0] epoch 1: ") and "\r" not in p for p in progress)


def test_a_terminal_redraws_one_status_line_per_rank_in_place(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("launcher.console.time.monotonic", clock)
    stream = io.StringIO()
    console = Console(stream, terminal=True)
    console.progress("[rank 0]", "epoch 1:  10%")
    console.progress("[rank 1]", "epoch 1:  11%")
    console.tick()
    assert stream.getvalue() == "[rank 0] epoch 1:  10%\n[rank 1] epoch 1:  11%\n"
    console.line("[rank 0]", "a line of output")  # goes above the status lines: erase, print, redraw
    assert stream.getvalue().endswith("\x1b[2F\x1b[J[rank 0] a line of output\n[rank 0] epoch 1:  10%\n"
                                      "[rank 1] epoch 1:  11%\n")
    console.close()
    assert stream.getvalue().endswith("\x1b[2F\x1b[J")


def test_the_end_counts_what_each_log_holds(tmp_path):
    (tmp_path / "worker_0.log").write_text("\n".join([WARNING_CPP, WARNING_PY, INFO_CPP, "mine"]) + "\n")
    (tmp_path / "scheduler.log").write_text(WARNING_CPP + "\n")
    (tmp_path / "worker_1.log").write_text("nothing of MindSpore's\n")
    assert count_levels(tmp_path / "worker_0.log") == {"WARNING": 2, "INFO": 1}
    paths = [tmp_path / n for n in ("scheduler.log", "worker_0.log", "worker_1.log")]
    assert hidden_summary(paths) == "scheduler.log 1 warning; worker_0.log 2 warnings, 1 info"


def test_training_ends_with_a_human_summary(tmp_path):
    from trainer.loop.summary import describe

    run = tmp_path / "run"
    (run / "checkpoints" / "step_40").mkdir(parents=True)
    (run / "checkpoints" / "best").symlink_to("step_40")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "step": s, "tokens_per_s": r}) + "\n"
                                               for s, r in ((20, 10.0), (40, 5000.0), (60, 5200.0))))
    lines = describe({"steps": 60, "epochs": 1.5, "train_seconds": 754.2, "interrupted_by_signal": None,
                      "best": {"step": 40, "bleu": 31.234, "loss": 2.5}, "run_dir": str(run),
                      "best_checkpoint": str(run / "checkpoints" / "best"),
                      "last_checkpoint": str(run / "checkpoints" / "step_60")})
    assert lines[0] == "training finished: 60 steps, 1.5 epochs in 12m 34s, 5,100 tokens/s (median)"
    assert lines[1] == "best validation: bleu 31.23, loss 2.50 at step 40"
    assert lines[2].endswith("checkpoints/best -> step_40")
    assert "tensorboard --logdir" in lines[-1]


def test_version_names_every_part():
    proc = subprocess.run([sys.executable, "-m", "trainer", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mindrun 0.") and lines[1].startswith("MindSpore 2.")
    assert lines[2].startswith("Python 3.") and lines[3] in ("device target: CPU", "device target: GPU",
                                                            "device target: Ascend")


ASIDE_SCRIPT = r"""
import os, sys, time
from pathlib import Path
from launcher.console import MindSporeLinesAside

aside = MindSporeLinesAside(Path(sys.argv[1]))
writes = [b"job: starting\n", b"\rtrain:  10%|#         | 1/10 [00:01<00:09,  1.2it/s]",
          b"[WARNING] PIPELINE(12,7f00,python):2026-12-05 compile cache miss\n",
          b"\rtrain:  20%|##        | 2/10 [00:02<00:08,  1.2it/s]", b"[WARN", b"ING] ME(12:34,MainProcess):",
          b"2026 deprecated thing\n", b"[INFO] DEVICE(12,7f,python):2026 info line\n",
          b"[ERROR] ME(12:34,MainProcess):2026 a real error\n", b"job: [not MindSpore] brackets\n",
          b"\rtrain: 100%|##########| 10/10 [00:05<00:00,  2.0it/s]\n"]
for w in writes:
    os.write(2, w)
    time.sleep(0.02)
print("python's own stderr", file=sys.stderr, flush=True)
print(aside.close(), flush=True)
"""


def test_a_direct_run_sets_mindsporess_lines_aside_and_counts_them(tmp_path):
    """`mindrun train` run directly: fd 2 through a filter; the job's lines, tqdm's frames and MindSpore's errors
    reach the terminal as written, MindSpore's warnings and info go to a log (even split over two writes or
    written right after a frame), and the end-of-run line counts them."""
    log = tmp_path / "logs" / "ms.log"
    proc = subprocess.run([sys.executable, "-c", ASIDE_SCRIPT, str(log)], capture_output=True, timeout=60,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert err == ("job: starting\n\rtrain:  10%|#         | 1/10 [00:01<00:09,  1.2it/s]"
                   "\rtrain:  20%|##        | 2/10 [00:02<00:08,  1.2it/s]"
                   "[ERROR] ME(12:34,MainProcess):2026 a real error\njob: [not MindSpore] brackets\n"
                   "\rtrain: 100%|##########| 10/10 [00:05<00:00,  2.0it/s]\npython's own stderr\n"), err
    kept = log.read_text().splitlines()
    assert kept == ["[WARNING] PIPELINE(12,7f00,python):2026-12-05 compile cache miss",
                    "[WARNING] ME(12:34,MainProcess):2026 deprecated thing",
                    "[INFO] DEVICE(12,7f,python):2026 info line"]
    assert proc.stdout.decode().strip() == (f"MindSpore's own log lines stay in {log} (2 warnings, 1 info); "
                                            f"GLOG_v shows them")
