"""Packaging for real servers (issue 35): `pip install mindrun` is the launcher alone and never touches MindSpore;
the trainer's needs, MindSpore as a range (never a pin that would replace a server's CANN-matched build), come
with the `train` extra.

Nothing is downloaded: the wheel is built from this checkout with the dev extra's setuptools (no build
isolation), and "installed" into a fresh virtual environment without pip by unpacking it, beside copies of
the launcher's two dependencies taken from this environment; MindSpore is absent there."""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    shutil.copytree(REPO, build / "src", ignore=shutil.ignore_patterns(".venv", ".git", "runs", "bench", "*.egg-info",
                                                                        "__pycache__", "rank_*", "build"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(build / "src")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("mindrun-*.whl")
    return found


def requirements(wheel: Path):
    """(plain requirements, {extra: requirements}) from the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    plain, extras = [], {}
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            marker = re.search(r'extra\s*==\s*"([^"]+)"', spec)
            (extras.setdefault(marker.group(1), []) if marker else plain).append(spec.split(";")[0].strip())
    return plain, extras


def test_the_plain_install_is_the_launcher_and_mindspore_is_a_range_in_the_train_extra(wheel):
    plain, extras = requirements(wheel)
    names = {re.split(r"[<>=!~ \[]", r)[0].lower() for r in plain}
    assert names == {"pyyaml", "psutil"}, plain
    mindspore = [r for r in extras["train"] if r.lower().startswith("mindspore")]
    assert mindspore and "==" not in mindspore[0] and ">=" in mindspore[0], mindspore
    assert any(r.startswith("mindrun[train]") for r in extras["dev"])  # the README's test command gets the trainer


def test_the_launcher_runs_from_the_plain_install_without_mindspore(wheel, tmp_path):
    import psutil
    import yaml

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # what pip does with a pure-Python wheel, less the scripts
    for module in (yaml, psutil):  # the launcher's two requirements, copied from this environment
        source = Path(module.__file__).parent
        shutil.copytree(source, site / source.name)
        for extra in source.parent.glob(f"_{source.name}*"):  # yaml's C extension module lives beside it
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, site / extra.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    run = lambda code: subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,  # noqa
                                      cwd=tmp_path, env=env)
    assert "No module named 'mindspore'" in run("import mindspore").stderr
    launch = run("import sys; from trainer.cli import main; sys.exit(main(['launch', '--worker_num', '2', "
                 "'--local_worker_num', '2', '--master_port', '0', '--dry_run', '-m', 'trainer', 'train']))")
    assert launch.returncode == 0, launch.stderr[-2000:]
    assert "worker_num        2" in launch.stdout and "mindspore" not in launch.stderr.lower()
    conf = tmp_path / "hccn.conf"
    conf.write_text("".join(f"address_{i}=192.168.100.{101 + i}\nnetmask_{i}=255.255.255.0\n" for i in range(2)))
    table = run("import sys; from trainer.cli import main; sys.exit(main(['ranktable', 'generate', '--devices', "
                f"'0-1', '--server_id', '10.0.0.1', '--device_ip_source', 'hccn_conf', '--hccn_conf', '{conf}', "
                f"'-o', '{tmp_path / 'rt.json'}']))")
    assert table.returncode == 0, table.stderr[-2000:]
    assert '"device_ip": "192.168.100.102"' in (tmp_path / "rt.json").read_text()
    assert run("import sys; from trainer.cli import main; sys.exit(main(['--help']))").returncode == 0
    train = run("import sys; from trainer.cli import main; sys.exit(main(['train', '--config', 'tiny']))")
    assert train.returncode == 2 and "MindSpore is not installed: `pip install 'mindrun[train]'`" in train.stderr
    assert "Traceback" not in train.stderr
