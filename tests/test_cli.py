"""The command-line surface is frozen here, and bad input exits 2 with a message, no traceback."""
import subprocess
import sys

from trainer.cli import build_parser


def surface():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {name: sorted(o for a in p._actions for o in a.option_strings) for name, p in sub.choices.items()}


def test_cli_surface_does_not_drift():
    assert surface() == {
        "train": sorted(["--config", "--data-dir", "--set", "--resume", "-h", "--help"]),
        "evaluate": sorted(["--checkpoint", "--beam", "--length-penalty", "--batch-size", "--split", "--data-dir",
                            "--output", "-h", "--help"]),
        "translate": sorted(["--checkpoint", "--beam", "--length-penalty", "--batch-size", "-h", "--help"]),
    }


def run(*args):
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True, timeout=300)


def test_bad_config_key_exits_2_without_traceback():
    proc = run("train", "--config", "small", "--set", "optim.lrr=1")
    assert proc.returncode == 2
    assert "did you mean 'optim.lr'" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_checkpoint_exits_2(tmp_path):
    proc = run("evaluate", "--checkpoint", str(tmp_path / "none.ckpt"))
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_data_dir_exits_2(tmp_path):
    proc = run("train", "--config", "tiny", "--data-dir", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr
