"""`mindrun doctor`: with fake npu-smi / hccn_tool on PATH every check passes; a DOWN link, a sick NPU or a
missing driver fails naming what to fix; exit 0 only when all pass."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fake_tools_env
from launcher import doctor
from launcher.doctor import Target

HERE = Path(__file__).parent
SCRIPTS = HERE / "launch_scripts"


@pytest.fixture
def npu_host(tmp_path):
    """Environment of an 8-NPU server: fake npu-smi and hccn_tool on PATH, a CANN version file."""
    env = fake_tools_env(tmp_path / "bin", hccn_tool="fake_hccn_tool", **{"npu-smi": "fake_npu_smi"})
    cann = tmp_path / "cann"
    cann.mkdir()
    (cann / "version.cfg").write_text("# version: 1.0\nruntime_running_version=[7.5.0.1.129:8.0.RC3]\n")
    return dict(env, ASCEND_HOME_PATH=str(cann))


def run(*args, env, entry="launcher"):
    return subprocess.run([sys.executable, "-m", entry, "doctor", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def lines(proc):
    """Check name -> its 'OK ...' or 'FAIL ...' line."""
    return {line.split(None, 1)[1].split(":", 1)[0]: line for line in proc.stdout.splitlines()
            if line.startswith(("OK ", "FAIL "))}


def ranktable_cluster(tmp_path, hosts=("127.0.0.1",)):
    path = tmp_path / "cluster.yaml"
    nodes = "".join(f"  - host: {h}\n    devices: 8\n" for h in hosts)
    path.write_text(f"backend: ascend\nlaunch_mode: ranktable\ndevice_ip_source: hccn_tool\nnodes:\n{nodes}")
    return str(path)


def test_all_checks_pass_with_fakes_through_the_mindrun_entry_point(tmp_path, npu_host):
    proc = run("--checkpoint_dir", str(tmp_path / "runs"), "--master_port", "0", env=npu_host, entry="trainer")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = lines(proc)
    assert set(found) == {"npu", "device ip", "link", "rank table", "master port", "mindspore", "cann",
                          "checkpoints"}
    assert all(line.startswith("OK") for line in found.values()), proc.stdout
    assert "8 NPUs (0-7)" in found["npu"] and "192.168.100.101 .. 192.168.100.108" in found["device ip"]
    assert "version 8.0.RC3" in found["cann"] and "all 8 checks passed" in proc.stdout


def test_cluster_file_in_rank_table_mode_checks_the_table_it_would_generate(tmp_path, npu_host):
    proc = run("--cluster", ranktable_cluster(tmp_path), "--checkpoint_dir", str(tmp_path), env=npu_host)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = lines(proc)
    assert "this machine is node 0 (127.0.0.1) of 1" in found["node"]
    assert "version 1.0, 1 server(s), 8 devices" in found["rank table"]


def test_a_down_link_fails_naming_that_npu(tmp_path, npu_host):
    proc = run("--checkpoint_dir", str(tmp_path), "--master_port", "0", env=dict(npu_host, FAKE_HCCN_LINK_DOWN="3"))
    assert proc.returncode == 1
    found = lines(proc)
    assert found["link"].startswith("FAIL") and "NPU 3" in found["link"]
    assert not any(f"NPU {n}" in found["link"] for n in (0, 1, 2, 4, 5, 6, 7))
    assert [name for name, line in found.items() if line.startswith("FAIL")] == ["link"]
    assert "1 of 8 checks failed (link)" in proc.stdout


def test_unconfigured_address_and_sick_npu_are_named(tmp_path, npu_host):
    proc = run("--cluster", ranktable_cluster(tmp_path), "--checkpoint_dir", str(tmp_path),
               env=dict(npu_host, FAKE_HCCN_BAD="6", FAKE_NPU_SICK="2"))
    assert proc.returncode == 1
    found = lines(proc)
    assert found["npu"].startswith("FAIL") and "NPU 2 health Alarm" in found["npu"]
    assert found["device ip"].startswith("FAIL") and "NPU 6" in found["device ip"] and "-.-.-.-" in found["device ip"]
    assert found["rank table"].startswith("FAIL") and "device 6" in found["rank table"]


def test_on_a_machine_without_npus_it_says_what_is_missing(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent), ASCEND_HOME_PATH=str(tmp_path / "none"))
    proc = run("--checkpoint_dir", str(tmp_path), "--master_port", "0", env=env)
    assert proc.returncode == 1
    found = lines(proc)
    assert found["npu"].startswith("FAIL") and "npu-smi is not on PATH" in found["npu"]
    assert found["link"].startswith("FAIL") and "hccn_tool is not on PATH" in found["link"]
    assert found["mindspore"].startswith("OK") and found["checkpoints"].startswith("OK")


def test_a_node_that_is_not_this_machine_and_a_bad_cluster_file(tmp_path, npu_host):
    proc = run("--cluster", ranktable_cluster(tmp_path, ("10.255.0.1", "10.255.0.2")), "--node_rank", "1",
               "--checkpoint_dir", str(tmp_path), env=npu_host)
    found = lines(proc)
    assert proc.returncode == 1 and found["node"].startswith("FAIL") and "10.255.0.2 is not an address" in found["node"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - host: a\n    devcies: 2\n")
    proc = run("--cluster", str(bad), env=npu_host)
    assert proc.returncode == 2 and "did you mean 'devices'" in proc.stderr and "Traceback" not in proc.stderr


MOUNTS = """overlay / overlay rw,relatime 0 0
/dev/sda1 /data ext4 rw 0 0
10.0.0.9:/export /data/shared nfs4 rw,vers=4.1 0 0
/dev/sdb1 /data/shared\\040space ext4 rw 0 0
"""


def test_filesystem_type_comes_from_the_longest_mount_point():
    assert doctor.filesystem(Path("/data/shared/runs"), MOUNTS) == ("nfs4", "/data/shared")
    assert doctor.filesystem(Path("/data/sharedx"), MOUNTS) == ("ext4", "/data")
    assert doctor.filesystem(Path("/data/shared space/x"), MOUNTS) == ("ext4", "/data/shared space")
    assert doctor.filesystem(Path("/tmp"), MOUNTS) == ("overlay", "/")


def test_checkpoints_must_be_shared_when_the_job_has_several_nodes(tmp_path, monkeypatch):
    local = f"/dev/sda1 {tmp_path} ext4 rw 0 0\n"
    shared = f"srv:/x {tmp_path} lustre rw 0 0\n"
    one = doctor.check_checkpoint_dir(Target(devices=[0], checkpoint_dir=tmp_path / "runs"), local)
    assert one.ok and "local to this node" in one.message and "would be created under" in one.message
    two = doctor.check_checkpoint_dir(Target(devices=[0], checkpoint_dir=tmp_path, nodes=2), local)
    assert not two.ok and "job has 2 nodes" in two.message and "shared filesystem" in two.message
    assert doctor.check_checkpoint_dir(Target(devices=[0], checkpoint_dir=tmp_path, nodes=2), shared).ok
    (tmp_path / "file").write_text("x")
    assert not doctor.check_checkpoint_dir(Target(devices=[0], checkpoint_dir=tmp_path / "file" / "runs"), local).ok


def test_npu_smi_parsing_and_cann_version_files(tmp_path):
    table = subprocess.run([str(SCRIPTS / "fake_npu_smi"), "info"], capture_output=True, text=True,
                           env=dict(os.environ, FAKE_NPU_COUNT="2", FAKE_NPU_SICK="1")).stdout
    assert doctor.parse_npu_smi(table) == {0: "OK", 1: "Alarm"}
    a3 = ("| 0     Ascend910           | OK            | 168.5       41                0    / 0             |\n"
          "| 0     0                   | 0000:9D:00.0  | 0           0    / 0          3378 / 65536         |\n"
          "| 1     1                   | 0000:9F:00.0  | 0           0    / 0          3378 / 65536         |\n"
          "| 1     Ascend910           | Warning       | 168.5       41                0    / 0             |\n"
          "| 0     2                   | 0000:99:00.0  | 0           0    / 0          3378 / 65536         |\n")
    assert doctor.parse_npu_smi(a3) == {0: "OK", 1: "OK", 2: "Warning"}  # two chips (devices) per NPU
    info = tmp_path / "aarch64-linux"
    info.mkdir()
    (info / "ascend_toolkit_install.info").write_text("package_name=Ascend-cann-toolkit\nversion=8.0.RC2\n")
    assert doctor.cann_version([str(tmp_path)]) == ("8.0.RC2", info / "ascend_toolkit_install.info")
    assert doctor.cann_version([str(tmp_path / "missing")]) is None


def test_doctor_reads_rank_table_file_as_launch_does(tmp_path):
    """`--rank_table_file` alone keeps launch's (and msrun's) dynamic cluster: a scheduler whose port is checked,
    the table validated and exported; `--launch_mode ranktable` starts the workers from it without a scheduler.
    The doctor's target follows the same rule, and so do the launch's processes (--dry_run)."""
    import socket

    from conftest import dry_run_processes, launch

    table = HERE / "golden" / "ranktable_1x8.json"
    parser = doctor.parser()
    dynamic = doctor.target_from(parser.parse_args(["--rank_table_file", str(table), "--devices", "0-7"]), {})
    ranked = doctor.target_from(parser.parse_args(["--rank_table_file", str(table), "--devices", "0-7",
                                                   "--launch_mode", "ranktable"]), {})
    assert (dynamic.launch_mode, ranked.launch_mode) == ("dynamic", "ranktable")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        dynamic.master_port = ranked.master_port = busy.getsockname()[1]
        assert not doctor.check_master_port_free(dynamic).ok  # a scheduler will need it
        assert doctor.check_master_port_free(ranked).ok  # none runs
    check = doctor.check_rank_table(dynamic)
    assert check.ok and "exported as RANK_TABLE_FILE" in check.message, check
    shown = launch("--worker_num", "1", "--local_worker_num", "1", "--master_port", "0", "--rank_table_file",
                   str(table), "--dry_run", str(SCRIPTS / "print_env.py"))
    assert shown.returncode == 0, shown.stderr
    procs = dry_run_processes(shown.stdout)
    assert "scheduler" in procs and procs["rank 0"]["RANK_TABLE_FILE"] == str(table)  # launch: the same rule


def test_store_mode_needs_the_master_port_for_rank_0s_store():
    import socket

    store = doctor.target_from(doctor.parser().parse_args(["--devices", "0-1", "--launch_mode", "store"]), {})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        store.master_port = busy.getsockname()[1]
        assert not doctor.check_master_port_free(store).ok  # rank 0 will serve the store there
    check = doctor.check_rank_table(store)
    assert check.ok and "launch_mode store: workers register with rank 0's store" in check.message, check
