"""HCCL rank tables: generation from (fake) hccn_tool and hccn.conf, merge order, validation errors."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import ranktable
from launcher.errors import LaunchError

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"


@pytest.fixture
def fake_hccn(tmp_path):
    """A PATH whose hccn_tool answers like an NPU server's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(HERE / "launch_scripts" / "fake_hccn_tool", bin_dir / "hccn_tool")
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def mindrun(*args, env=None):
    return subprocess.run([sys.executable, "-m", "trainer", "ranktable", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_one_node_of_eight_matches_golden(tmp_path, fake_hccn):
    out = tmp_path / "rt.json"
    proc = mindrun("generate", "--devices", "0-7", "--server_id", "10.0.0.1", "-o", str(out), env=fake_hccn)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == json.loads((GOLDEN / "ranktable_1x8.json").read_text())
    assert stat.S_IMODE(out.stat().st_mode) & 0o007 == 0  # not world-readable


def test_two_nodes_of_eight_merge_in_server_id_order(tmp_path, fake_hccn):
    a, b, merged = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "all.json"
    assert mindrun("generate", "--server_id", "10.0.0.2", "-o", str(a), env=dict(fake_hccn, FAKE_HCCN_NET="102")
                   ).returncode == 0
    assert mindrun("generate", "--server_id", "10.0.0.10", "-o", str(b), env=dict(fake_hccn, FAKE_HCCN_NET="110")
                   ).returncode == 0
    proc = mindrun("merge", str(a), str(b), "-o", str(merged))
    assert proc.returncode == 0, proc.stderr
    table = json.loads(merged.read_text())
    assert table == json.loads((GOLDEN / "ranktable_2x8.json").read_text())
    # dictionary order of server_id ("10.0.0.10" < "10.0.0.2"), ranks renumbered across servers, all strings
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.10", "10.0.0.2"]
    assert [d["rank_id"] for s in table["server_list"] for d in s["device"]] == [str(i) for i in range(16)]


def test_hccn_conf_fallback_when_no_hccn_tool(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("".join(f"address_{i}=192.168.100.{101 + i}\nnetmask_{i}=255.255.255.0\n" for i in range(8)))
    out = tmp_path / "rt.json"
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no hccn_tool anywhere
    proc = mindrun("generate", "--server_id", "10.0.0.1", "--hccn_conf", str(conf), "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == json.loads((GOLDEN / "ranktable_1x8.json").read_text())


def test_hccn_conf_without_an_address_names_the_device(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.100.101\n")
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    proc = mindrun("generate", "--devices", "0-1", "--hccn_conf", str(conf), "-o", str(tmp_path / "x.json"), env=env)
    assert proc.returncode == 2 and "address_1" in proc.stderr and "Traceback" not in proc.stderr


def test_unconfigured_npu_address_is_refused(tmp_path, fake_hccn):
    proc = mindrun("generate", "--devices", "0-7", "--server_id", "10.0.0.1", "-o", str(tmp_path / "x.json"),
                   env=dict(fake_hccn, FAKE_HCCN_BAD="3"))
    assert proc.returncode == 2 and "-.-.-.-" in proc.stderr and "device 3" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def golden(name="ranktable_2x8.json"):
    return json.loads((GOLDEN / name).read_text())


def _set(table, server, device, key, value):
    table["server_list"][server]["device"][device][key] = value
    return table


@pytest.mark.parametrize("mutate,message", [
    (lambda t: _set(t, 1, 2, "device_ip", "-.-.-.-"), "server 10.0.0.2 device 2: device_ip '-.-.-.-'"),
    (lambda t: _set(t, 1, 2, "device_ip", "192.168.110.101"), "also used by server 10.0.0.10 device 0"),
    (lambda t: _set(t, 0, 1, "device_id", "0"), "server 10.0.0.10 device 0: device_id 0 appears twice"),
    (lambda t: _set(t, 0, 1, "rank_id", 1), "must be a string"),
    (lambda t: _set(t, 0, 1, "rank_id", "0"), "rank_id 0 is also given to"),
    (lambda t: t["server_list"][0]["device"][3].pop("device_ip") and t,
     "server 10.0.0.10 device 3: 'device_ip' is missing"),
    (lambda t: dict(t, server_count="3"), "server_count is \"3\""),
    (lambda t: dict(t, version="1.2"), "only \"1.0\""),
    (lambda t: dict(t, server_list=list(reversed(t["server_list"]))), "dictionary order of server_id"),
])
def test_validation_names_server_and_device(tmp_path, mutate, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(mutate(golden())))
    with pytest.raises(LaunchError) as err:
        ranktable.load(path)
    assert message in str(err.value)
    proc = mindrun("validate", str(path))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_json_and_wrong_device_count_exit_2(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"version": "1.0", ')
    proc = mindrun("validate", str(path))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    proc = mindrun("validate", str(GOLDEN / "ranktable_2x8.json"), "--world_size", "8")
    assert proc.returncode == 2 and "16 devices but the job has 8 workers" in proc.stderr
    assert mindrun("validate", str(GOLDEN / "ranktable_2x8.json"), "--world_size", "16").returncode == 0


def test_rank_table_mode_dry_run_gives_each_worker_its_table_rank_and_device(tmp_path, fake_hccn):
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "launcher", "--launch_mode", "ranktable", "--worker_num", "2",
                           "--local_worker_num", "2", "--log_dir", str(logs), "--dry_run",
                           str(HERE / "launch_scripts" / "print_env.py")], capture_output=True, text=True,
                          timeout=60, env=fake_hccn)
    assert proc.returncode == 0, proc.stderr
    assert "scheduler" not in proc.stdout and "MS_ROLE" not in proc.stdout
    table = ranktable.load(logs / "rank_table.json")
    assert [d["device_ip"] for d in table["server_list"][0]["device"]] == ["192.168.100.101", "192.168.100.102"]
    assert f"RANK_TABLE_FILE={(logs / 'rank_table.json').resolve()}" in proc.stdout
    assert "DEVICE_ID=1" in proc.stdout and "RANK_ID=1" in proc.stdout
    assert f"cwd: {logs / 'rank_1'}" in proc.stdout


def test_rank_table_mode_takes_a_given_table_and_finds_this_node(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launcher", "--launch_mode", "ranktable", "--worker_num", "16",
                           "--local_worker_num", "8", "--node_rank", "1", "--rank_table_file",
                           str(GOLDEN / "ranktable_2x8.json"), "--log_dir", str(tmp_path), "--dry_run",
                           str(HERE / "launch_scripts" / "print_env.py")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # node_rank 1 is the second server in server_id order ("10.0.0.2"), which holds ranks 8..15
    assert [f"rank {r}:" in proc.stdout for r in range(8, 16)] == [True] * 8 and "rank 0:" not in proc.stdout
    assert "RANK_ID=15" in proc.stdout and "DEVICE_ID=7" in proc.stdout and "RANK_SIZE=16" in proc.stdout
    wrong = subprocess.run([sys.executable, "-m", "launcher", "--launch_mode", "ranktable", "--worker_num", "8",
                            "--local_worker_num", "8", "--rank_table_file", str(GOLDEN / "ranktable_2x8.json"),
                            "--dry_run", str(HERE / "launch_scripts" / "print_env.py")], capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode == 2 and "16 devices but the job has 8 workers" in wrong.stderr
