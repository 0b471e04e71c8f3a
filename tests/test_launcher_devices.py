"""Devices as the workers see them: MINDRUN_DEVICE_TARGET from the cluster file's backend, DEVICE_ID as the
logical index within ASCEND_RT_VISIBLE_DEVICES while rank tables keep physical ids, and rank-table workers
without the MPI variables that would make MindSpore bypass the table."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from conftest import dry_run_processes

from launcher import devices, environment, ranks
from launcher.agent import Agent
from launcher.errors import LaunchError
from launcher.spec import resolve

HERE = Path(__file__).parent
SCRIPT = str(HERE / "launch_scripts" / "print_env.py")
GOLDEN = HERE / "golden"


def launch(*args, env=None):
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def dry_run_table(stdout: str) -> Dict:
    """The rank table a --dry_run prints (it writes none)."""
    text = stdout.split("rank table (--dry_run: not written to ", 1)[1].split(") =\n", 1)[1]
    return json.JSONDecoder().raw_decode(text)[0]


def blocks(dry_run: str) -> Dict[str, Dict[str, str]]:
    """--dry_run output -> process name -> its printed variables (and 'device', 'unset')."""
    return dry_run_processes(dry_run)


def cluster_file(tmp_path, backend, **extra):
    lines = [f"backend: {backend}", "master_port: 0", "nodes:", "  - host: 127.0.0.1", "    devices: 2"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / f"{backend}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("backend,target", [("ascend", "Ascend"), ("gpu", "GPU"), ("cpu", "CPU")])
def test_cluster_backend_reaches_every_process_as_device_target(tmp_path, backend, target):
    proc = launch("--cluster", cluster_file(tmp_path, backend), "--log_dir", str(tmp_path / "logs"), "--dry_run",
                  SCRIPT)
    assert proc.returncode == 0, proc.stderr
    seen = blocks(proc.stdout)
    assert set(seen) == {"scheduler", "rank 0", "rank 1"}
    assert {name: env.get("MINDRUN_DEVICE_TARGET") for name, env in seen.items()} == dict.fromkeys(seen, target)


def test_without_a_cluster_file_no_device_target_is_invented():
    spec = resolve({"script": SCRIPT, "worker_num": 1, "local_worker_num": 1}, {})
    assert spec.backend is None
    assert "MINDRUN_DEVICE_TARGET" not in environment.worker_env(spec, ranks.dynamic_workers(spec)[0], {})


def test_visible_devices_give_logical_device_ids_while_the_rank_table_keeps_physical_ones(tmp_path, fake_hccn):
    logs = tmp_path / "logs"
    proc = launch("--launch_mode", "ranktable", "--visible_devices", "4,5,6,7", "--log_dir", str(logs), "--dry_run",
                  SCRIPT, env=fake_hccn)
    assert proc.returncode == 0, proc.stderr
    seen = blocks(proc.stdout)
    assert sorted(seen) == ["rank 0", "rank 1", "rank 2", "rank 3"]  # one worker per visible device
    assert [seen[f"rank {r}"]["DEVICE_ID"] for r in range(4)] == ["0", "1", "2", "3"]
    assert {env["ASCEND_RT_VISIBLE_DEVICES"] for env in seen.values()} == {"4,5,6,7"}
    assert [seen[f"rank {r}"]["device"] for r in range(4)] == [f"{d} (physical)" for d in (4, 5, 6, 7)]
    assert {env["MINDRUN_DEVICE_TARGET"] for env in seen.values()} == {"Ascend"}  # rank tables are HCCL's
    assert not logs.exists()
    table = dry_run_table(proc.stdout)
    assert [(d["device_id"], d["device_ip"], d["rank_id"]) for d in table["server_list"][0]["device"]] == [
        (str(d), f"192.168.100.{101 + d}", str(r)) for r, d in enumerate((4, 5, 6, 7))]


def test_inherited_visible_devices_are_respected_in_dynamic_mode(tmp_path):
    env = dict(os.environ, ASCEND_RT_VISIBLE_DEVICES="7,6,5,4")
    proc = launch("--master_port", "0", "--log_dir", str(tmp_path), "--dry_run", SCRIPT, env=env)
    assert proc.returncode == 0, proc.stderr
    seen = blocks(proc.stdout)
    workers = [seen[f"rank {r}"] for r in range(4)]
    assert [w["DEVICE_ID"] for w in workers] == ["0", "1", "2", "3"]  # shown although inherited unchanged
    assert {w["ASCEND_RT_VISIBLE_DEVICES"] for w in workers} == {"4,5,6,7"}  # sorted, as MindSpore reads it
    assert [w["device"] for w in workers] == [f"{d} (physical)" for d in (4, 5, 6, 7)]


def test_cluster_device_ids_outside_the_visible_devices_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("nodes:\n  - host: 127.0.0.1\n    devices: 2\n    device_ids: [0, 1]\nmaster_port: 0\n")
    proc = launch("--cluster", str(path), "--dry_run", SCRIPT, env=dict(os.environ, ASCEND_RT_VISIBLE_DEVICES="4,5"))
    assert proc.returncode == 2 and "device 0 is not among the visible devices 4,5" in proc.stderr
    proc = launch("--visible_devices", "4,5", "--local_worker_num", "4", "--worker_num", "4", "--dry_run", SCRIPT)
    assert proc.returncode == 2 and "--visible_devices lists 2 devices (4,5) but --local_worker_num is 4" in proc.stderr


def test_logical_device_is_the_index_in_the_sorted_visible_list():
    assert [devices.logical_id(d, [7, 5, 6, 4]) for d in (4, 5, 6, 7)] == [0, 1, 2, 3]
    assert devices.logical_id(3, None) == 3
    with pytest.raises(LaunchError, match="device 1 is not among the visible devices 4,5"):
        devices.logical_id(1, [5, 4])


FAKE_MPI = {"OMPI_COMMAND": "python", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "0",
            "OMPI_MCA_orte_ess_num_procs": "8", "PMIX_RANK": "0", "PMIX_NAMESPACE": "job1", "PMI_SIZE": "8",
            "PATH": "/usr/bin", "KEEP_ME": "1"}


def test_rank_table_workers_get_no_mpi_variables(capsys):
    spec = resolve({"script": SCRIPT, "launch_mode": "ranktable", "rank_table_file": str(GOLDEN / "ranktable_1x8.json"),
                    "worker_num": 8, "local_worker_num": 8, "node_rank": 0}, {})
    from launcher import ranktable

    table = ranktable.load(spec.rank_table_file)
    agent = Agent(spec, ranks.table_workers(spec, table, spec.rank_table_file), spec.rank_table_file,
                  env=dict(FAKE_MPI))
    planned = agent.plan()
    assert len(planned) == 8
    for proc in planned:
        assert not [k for k in proc.env if k.startswith(("OMPI_", "PMIX_", "PMI_"))], proc.name
        assert proc.env["KEEP_ME"] == "1" and proc.env["RANK_TABLE_FILE"] == spec.rank_table_file
    agent.dry_run()
    shown = blocks(capsys.readouterr().out)
    assert shown["rank 0"]["unset"].split() == sorted(k for k in FAKE_MPI if k.startswith(("OMPI_", "PMI")))
    # dynamic mode leaves them alone: only the rank table is bypassed by MindSpore's MPI detection
    dyn = resolve({"script": SCRIPT, "worker_num": 1, "local_worker_num": 1}, {})
    env = Agent(dyn, ranks.dynamic_workers(dyn), env=dict(FAKE_MPI)).plan()[-1].env
    assert env["OMPI_COMMAND"] == "python" and env["PMIX_RANK"] == "0"


def test_visible_devices_narrow_a_cluster_files_node(tmp_path, fake_hccn):
    path = tmp_path / "c.yaml"
    path.write_text("backend: ascend\nlaunch_mode: ranktable\ndevice_ip_source: hccn_tool\n"
                    "nodes:\n  - host: 127.0.0.1\n    devices: 8\n")
    proc = launch("--cluster", str(path), "--visible_devices", "6,7", "--log_dir", str(tmp_path / "logs"), "--dry_run",
                  SCRIPT, env=fake_hccn)
    assert proc.returncode == 0, proc.stderr
    seen = blocks(proc.stdout)
    assert sorted(seen) == ["rank 0", "rank 1"] and {e["RANK_SIZE"] for e in seen.values()} == {"2"}
    assert [seen[f"rank {r}"]["DEVICE_ID"] for r in (0, 1)] == ["0", "1"]
    table = dry_run_table(proc.stdout)
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["6", "7"]


def test_device_ip_source_auto_in_a_cluster_file_reads_hccn_conf_without_hccn_tool(tmp_path):
    """What the shipped ascend_1x8.yaml says: hccn_tool when on PATH, else the hccn.conf file."""
    conf = tmp_path / "hccn.conf"
    conf.write_text("".join(f"address_{i}=192.168.100.{101 + i}\nnetmask_{i}=255.255.255.0\n" for i in range(2)))
    path = tmp_path / "c.yaml"
    path.write_text(f"backend: ascend\nlaunch_mode: ranktable\ndevice_ip_source: auto\nhccn_conf: {conf}\n"
                    "nodes:\n  - host: 127.0.0.1\n    devices: 2\n")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no hccn_tool on this PATH
    proc = launch("--cluster", str(path), "--log_dir", str(tmp_path / "logs"), "--dry_run", SCRIPT, env=env)
    assert proc.returncode == 0, proc.stderr
    table = dry_run_table(proc.stdout)
    assert [d["device_ip"] for d in table["server_list"][0]["device"]] == ["192.168.100.101", "192.168.100.102"]
    from launcher.cluster import load_cluster

    assert load_cluster("cluster_configs/ascend_1x8.yaml").device_ip_source == "auto"
