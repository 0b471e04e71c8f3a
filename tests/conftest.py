"""Shared fixtures: the local Multi30k directory (never downloaded in tests) and a scratch cache."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# An xdist worker's sys.argv[0] is "-c"; MindSpore's compile cache (on in trainer runs) parses the entry script
# named there at import, so name a real file before mindspore is imported.
if os.environ.get("PYTEST_XDIST_WORKER") and sys.argv and not os.path.isfile(sys.argv[0]):
    sys.argv[0] = __file__

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's executables: msrun, mpirun, this python
DEFAULT_DATA = REPO.parent / "shared" / "data" / "multi30k"


# Files in order of their measured time (tests/README.md, "Suite time"), run first: the two pytest-xdist workers
# (setup.cfg: -n 2 --dist loadfile) each start on a long file and fill in with the short ones. Unlisted files follow.
LONGEST_FIRST = ["test_parallel_jobs.py", "test_precision.py", "test_end_to_end.py", "test_launcher_jobs.py",
                 "test_decoding.py", "test_llama.py", "test_lm_training.py", "test_cpu_backward.py",
                 "test_kill_trials.py", "test_packing.py", "test_prepared_pairs.py", "test_launcher_hardening.py",
                 "test_parallel_plan.py", "test_compile_once.py"]


def pytest_collection_modifyitems(items):
    """Longest files first, the order inside each file kept."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$MINDRUN_DATA_DIR or ../shared/data/multi30k; a missing directory fails the test (not skips)."""
    path = Path(os.environ.get("MINDRUN_DATA_DIR") or DEFAULT_DATA).resolve()
    assert path.is_dir(), f"Multi30k not found at {path}: set MINDRUN_DATA_DIR"
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets one session-wide scratch cache, never the user's ~/.cache."""
    monkeypatch.setenv("MINDRUN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def fake_tools_env(bin_dir: Path, **tools: str) -> dict:
    """An environment whose PATH starts with `bin_dir`, holding tests/launch_scripts' fakes under real
    names: fake_tools_env(dir, hccn_tool="fake_hccn_tool", **{"npu-smi": "fake_npu_smi"})."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, script in tools.items():
        shutil.copy(REPO / "tests" / "launch_scripts" / script, bin_dir / name)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def fake_hccn(tmp_path):
    """A PATH whose hccn_tool answers like an NPU server's."""
    return fake_tools_env(tmp_path / "bin", hccn_tool="fake_hccn_tool")


def env_with_venv(**extra):
    """msrun and mpirun start `python` from PATH: the venv's must come first."""
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra)


def launch(*args, timeout=180, cwd=None, env=None):
    """`python -m launcher ARGS`, run to its end."""
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env or env_with_venv())


def envs(log_dir):
    """log file stem (role/rank) -> the environment print_env.py printed in that log."""
    out = {}
    for f in sorted(Path(log_dir).glob("*.log")):
        for line in f.read_text().splitlines():
            if line.startswith("ENV "):
                out[f.stem] = json.loads(line[4:])
    return out


def checkpoint_tensors(out, kinds=("weight",), step=None):
    """name -> full array of a run's latest checkpoint (or its step_<step>), of the given kinds
    ("weight", "optimizer": Adam's moments, step count and beta powers, the learning rate)."""
    from trainer.ckpt.tools import _full_weights, open_verified

    root = Path(out) / "checkpoints"
    return _full_weights(*open_verified(root / (f"step_{step}" if step else "latest")), kinds)


def step_worker():
    """tests/launch_scripts/step_worker.py imported as the module `step_worker` (its helpers build the small models
    and micro-batches the in-process step tests share); graph mode resolves the module of a Cell it compiles by
    name, so it must be registered under that name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_worker", Path(__file__).parent / "launch_scripts" /
                                                  "step_worker.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_worker"] = module
    spec.loader.exec_module(module)
    return module


def dry_run_processes(stdout: str) -> dict:
    """`mindrun launch --dry_run` output -> process name -> what it shows of it: "command", "cwd", "log", "cpus",
    "device", "unset" and the environment variables by name (launcher.agent.process_table: one process as a block;
    several as a block of what they share and a table of what differs, "-" where a process lacks a setting)."""
    import re

    out, common, names, mode, header = {}, {}, [], None, None
    for line in stdout.splitlines():
        shared = re.match(r"^every process \((.*)\):$", line)
        single = re.match(r"^(scheduler|rank \d+):$", line)
        if shared:
            names, common, mode = shared.group(1).split(", "), {}, "common"
            out.update({name: common for name in names})
        elif line == "each process (what differs):":
            mode, header = "table", None
        elif single:
            mode, common = "block", {}
            out[single.group(1)] = common
        elif mode in ("common", "block") and line.startswith("  "):
            env = re.match(r"^  ([A-Z_][A-Z0-9_]*)=(.*)$", line)
            key, value = env.groups() if env else line.strip().split(": ", 1)
            common[key] = value
        elif mode == "table" and line.startswith("  "):
            cells = re.split(r" {2,}", line.strip())
            if header is None:
                header = cells[1:]
            else:
                out[cells[0]] = {**out[cells[0]], **{k: v for k, v in zip(header, cells[1:]) if v != "-"}}
        else:
            mode = None
    return out
