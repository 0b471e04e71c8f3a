"""The command-line surface is frozen here, and bad input exits 2 with a message, no traceback."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import build_parser
from trainer.loop.host_memory import parse_lines


def surface():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {name: sorted(o for a in p._actions for o in a.option_strings) for name, p in sub.choices.items()}


def test_cli_surface_does_not_drift():
    assert surface() == {
        "train": sorted(["--config", "--data-dir", "--set", "--resume", "-h", "--help"]),
        "evaluate": sorted(["--checkpoint", "--beam", "--length-penalty", "--batch-size", "--average", "--split",
                            "--data-dir", "--data", "--output", "-h", "--help"]),
        "translate": sorted(["--checkpoint", "--beam", "--length-penalty", "--batch-size", "--average", "-h", "--help"]),
        "plan": sorted(["--config", "--set", "--world-size", "--backend", "--vocab-size", "--cluster", "--strategies", "-h",
                        "--help"]),
        "ckpt": ["--help", "-h"],  # inspect | merge | reshard | import-hf | export-hf, frozen below
        "data": ["--help", "-h"],  # prepare
        "generate": sorted(["--checkpoint", "--prompt", "--prompt-ids", "--max-new-tokens", "--temperature", "--top-p",
                            "--seed", "-h", "--help"]),
        "launch": [],  # handed to launcher.cli, frozen below
        "ranktable": [],
        "doctor": [],
    }


def test_ckpt_actions_do_not_drift():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    actions = next(a for a in sub.choices["ckpt"]._actions if a.dest == "action")
    assert {name: sorted(o for a in p._actions for o in a.option_strings) for name, p in actions.choices.items()} == {
        "inspect": ["--help", "--json", "-h"], "merge": ["--help", "-h"], "reshard": ["--help", "--out", "--parallel", "-h"],
        "import-hf": ["--config", "--help", "--out", "--parallel", "--set", "-h"],
        "export-hf": ["--dtype", "--help", "--max-shard-gb", "-h"]}


def msrun_options():
    """Every option `msrun --help` lists (MindSpore's own launcher, installed with mindspore)."""
    msrun = shutil.which("msrun", path=str(Path(sys.executable).parent)) or shutil.which("msrun")
    assert msrun, "msrun (installed with mindspore) is not on PATH"
    text = subprocess.run([msrun, "--help"], capture_output=True, text=True, timeout=120).stdout
    options = text.split("options:", 1)[1]
    lines = [line.strip().split("  ")[0] for line in options.splitlines() if re.match(r"  -", line)]
    return sorted({o for line in lines for o in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line)})


def test_launch_accepts_every_msrun_option():
    """Conformance: a command line written for msrun 2.10 must not fail on an unknown option."""
    from launcher.cli import launch_parser, ranktable_parser

    ours = {o for a in launch_parser()._actions for o in a.option_strings}
    theirs = msrun_options()
    assert "--worker_num" in theirs and "--sim_level" in theirs, theirs  # the help text was read
    assert [o for o in theirs if o not in ours] == []
    own = {"--cluster", "--launch_mode", "--visible_devices", "--max_restarts", "--grace_period", "--mpi",
           "--dry_run", "--show_ms_logs", "--progress_interval", "-m"}
    assert ours - set(theirs) == own
    sub = next(a for a in ranktable_parser()._actions if a.dest == "action")
    assert sorted(sub.choices) == ["generate", "merge", "validate"]


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


def test_scheduler_process_only_joins_the_cluster(monkeypatch):
    """msrun-style launchers run `mindrun train` as MindSpore's scheduler too: it calls init() and nothing of the
    trainer (no config, data or model imports competing with the workers' for the cores)."""
    import mindspore.communication
    import trainer.config

    from trainer import cli

    joined = []
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")
    monkeypatch.setattr(mindspore.communication, "init", lambda *a, **k: joined.append(a))
    monkeypatch.setattr(trainer.config, "load_config", lambda *a, **k: pytest.fail("the scheduler loaded a config"))
    assert cli.main(["train", "--config", "no-such-recipe"]) == 0
    assert joined == [()]


def test_a_misspelt_set_key_is_blamed_on_the_command_line_with_the_sections_names(capsys):
    from trainer.cli import main

    assert main(["plan", "--config", "small", "--set", "model.layers=12"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mindrun plan: error: --set model.layers=12: unknown config key 'model.layers'")
    assert "did you mean 'model.decoder_layers' or 'model.encoder_layers'" in line and "small.yaml" not in line


def test_ckpt_inspect_of_a_missing_path_says_it_is_missing(tmp_path, capsys):
    from trainer.cli import main

    assert main(["ckpt", "inspect", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "save did not complete" not in err


def test_a_closed_pipe_ends_plan_and_dry_run_quietly():
    """`mindrun plan ... | head -3`: no BrokenPipeError traceback, the shell's SIGPIPE code."""
    for args in (["-m", "trainer", "plan", "--config", "gpt_125m", "--strategies"],
                 ["-m", "launcher", "--worker_num", "64", "--local_worker_num", "64", "--dry_run", "--master_port",
                  "0", "-m", "trainer", "train"]):  # 64 ranks: ~10 KB of plan, more than the pipe holds
        import fcntl

        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: a one-page pipe, so the output cannot all fit in it
        proc = subprocess.Popen([sys.executable, *args], stdout=write_end, stderr=subprocess.PIPE)
        os.close(write_end)
        assert os.read(read_end, 200)
        os.close(read_end)  # what head does after its lines
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("argv, module, script, args", [
    (["--worker_num", "2", "-m", "mymod", "--lr", "3"], "mymod", None, ["--lr", "3"]),
    (["--worker_num", "2", "--join", "False", "-m", "mymod", "--tail_worker_log", "1"], "mymod", None,
     ["--tail_worker_log", "1"]),
    (["--dry_run", "-mtrainer", "train", "--config", "x"], "trainer", None, ["train", "--config", "x"]),
    (["--worker_num", "2", "train.py", "--lr", "3", "--tail_worker_log", "1"], None, "train.py",
     ["--lr", "3", "--tail_worker_log", "1"]),
])
def test_launch_passes_everything_after_the_module_or_script_to_it(argv, module, script, args):
    """As msrun: arguments after `-m MODULE` (or the script) are the program's, even launcher-looking ones."""
    from launcher.cli import _cli_dict, launch_parser, split_module_args

    parser = launch_parser()
    own, rest = split_module_args(parser, argv)
    ns = parser.parse_args(own)
    if rest is not None:
        ns.script, ns.args = None, rest
    cli = _cli_dict(ns)
    assert (cli["module"], cli["script"], cli["args"], cli["tail_worker_log"]) == (module, script, args, None)
    assert cli["worker_num"] == (None if argv[0] == "--dry_run" else 2)


def test_every_subcommand_takes_both_spellings_of_an_option():
    """`--x_y` and `--x-y` alike (msrun's underscores are canonical for launch, dashes elsewhere); the launched
    program's own arguments are left as they are."""
    from launcher.cli import _program_index, known_options, launch_parser, respell

    known = known_options(build_parser())
    assert respell(["plan", "--world_size", "2", "--vocab_size=8000"], known) == \
        ["plan", "--world-size", "2", "--vocab-size=8000"]
    assert respell(["ckpt", "export-hf", "a", "b", "--max_shard_gb", "1"], known)[-2] == "--max-shard-gb"
    parser = launch_parser()
    for argv, want in ((["--worker-num", "2", "--log-dir=x", "train.py", "--log-dir", "y"],
                        ["--worker_num", "2", "--log_dir=x", "train.py", "--log-dir", "y"]),
                       (["--local-worker-num", "2", "-m", "trainer", "train", "--data_dir", "x"],
                        ["--local_worker_num", "2", "-m", "trainer", "train", "--data_dir", "x"])):
        assert respell(argv, known_options(parser), _program_index(parser, argv)) == want
    proc = run("plan", "--config", "tiny", "--world_size", "2", "--set", "parallel.mode=data_parallel")
    assert proc.returncode == 0 and "data_parallel 2" in proc.stdout, proc.stderr[-500:]


@pytest.mark.slow
def test_a_direct_train_run_keeps_mindsporess_warnings_off_the_console(data_dir, tmp_path):
    """`mindrun train` run directly (not launched) shows the job's output, not MindSpore's INFO/WARNING lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLOG_v", "MINDRUN_RESTART_COUNT", "MS_ROLE", "RANK_ID")}
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", "--config", "tiny", "--data-dir", str(data_dir),
                           "--set", f"train.out_dir={tmp_path / 'run'}", "--set", "train.max_steps=2",
                           "--set", "data.valid_limit=4", "--set", "eval.max_len_b=2"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    noise = [line for line in (proc.stdout + proc.stderr).splitlines() if "[WARNING]" in line or "[INFO]" in line]
    assert noise == [], noise[:3]
    assert "time: training updates " in proc.stdout
    (memory,) = parse_lines(proc.stdout).values()  # the end-of-run line, as benchmarks read it
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["host_mib"] == {**memory, "end": summary["host_mib"]["end"]}
    assert 0 < memory["before_model"] < memory["training"] <= memory["peak"]  # the model and its step took memory
    last = proc.stderr.strip().splitlines()[-1]  # as a launched job ends: where they are, how many
    assert last.startswith("MindSpore's own log lines stay in ") and "warning" in last, proc.stderr[-500:]
    kept = Path(last.split(" stay in ", 1)[1].split(" (", 1)[0]).read_text()
    assert kept.startswith("[WARNING]") or kept.startswith("[INFO]")
