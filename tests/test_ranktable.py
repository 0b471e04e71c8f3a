"""HCCL rank tables: generation from (fake) hccn_tool and hccn.conf, merge order, validation errors."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import dry_run_processes

from launcher import ranktable
from launcher.errors import LaunchError

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"


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
    assert mindrun("generate", "--devices", "0-7", "--server_id", "10.0.0.2", "-o", str(a), env=dict(fake_hccn, FAKE_HCCN_NET="102")
                   ).returncode == 0
    assert mindrun("generate", "--devices", "0-7", "--server_id", "10.0.0.10", "-o", str(b), env=dict(fake_hccn, FAKE_HCCN_NET="110")
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
    (lambda t: dict(t, version="1.1"), "only \"1.0\" and \"1.2\""),
    (lambda t: dict(t, version="1.2"), "server 10.0.0.10 device 0: 'super_device_id' is missing"),
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
    logs, work = tmp_path / "logs", tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "launcher", "--launch_mode", "ranktable", "--worker_num", "2",
                           "--local_worker_num", "2", "--log_dir", str(logs), "--dry_run",
                           str(HERE / "launch_scripts" / "print_env.py")], capture_output=True, text=True,
                          timeout=60, env=fake_hccn, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "scheduler" not in proc.stdout and "MS_ROLE" not in proc.stdout
    assert not logs.exists() and not any(work.iterdir())  # --dry_run writes nothing
    shown = proc.stdout.split(f"rank table (--dry_run: not written to {logs / 'rank_table.json'}) =\n")[1]
    table = json.JSONDecoder().raw_decode(shown)[0]
    assert [d["device_ip"] for d in table["server_list"][0]["device"]] == ["192.168.100.101", "192.168.100.102"]
    assert f"RANK_TABLE_FILE={logs / 'rank_table.json'}" in proc.stdout
    procs = dry_run_processes(proc.stdout)
    assert (procs["rank 1"]["DEVICE_ID"], procs["rank 1"]["RANK_ID"]) == ("1", "1")
    assert f"cwd: {work}" in proc.stdout  # like msrun: the launcher's directory, not <log_dir>/rank_N


def test_rank_table_mode_takes_a_given_table_and_finds_this_node(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launcher", "--launch_mode", "ranktable", "--worker_num", "16",
                           "--local_worker_num", "8", "--node_rank", "1", "--rank_table_file",
                           str(GOLDEN / "ranktable_2x8.json"), "--log_dir", str(tmp_path), "--dry_run",
                           str(HERE / "launch_scripts" / "print_env.py")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # node_rank 1 is the second server in server_id order ("10.0.0.2"), which holds ranks 8..15
    procs = dry_run_processes(proc.stdout)
    assert list(procs) == [f"rank {r}" for r in range(8, 16)]
    assert (procs["rank 15"]["RANK_ID"], procs["rank 15"]["DEVICE_ID"], procs["rank 15"]["RANK_SIZE"]) == \
        ("15", "7", "16")
    wrong = subprocess.run([sys.executable, "-m", "launcher", "--launch_mode", "ranktable", "--worker_num", "8",
                            "--local_worker_num", "8", "--rank_table_file", str(GOLDEN / "ranktable_2x8.json"),
                            "--dry_run", str(HERE / "launch_scripts" / "print_env.py")], capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode == 2 and "16 devices but the job has 8 workers" in wrong.stderr


# ---- version 1.2 (Atlas A3 SuperPoD), server order, optional device_ip ------------------------------------------

V12 = GOLDEN / "ranktable_v1.2_2x4.json"


def test_v12_table_validates_and_is_passed_through_as_written(tmp_path):
    proc = mindrun("validate", str(V12), "--world_size", "8")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == "1.2"
    # node_rank 1 is the second server as written ("node_1", host_ip 10.0.0.2): ranks 4..7, the file untouched
    before = V12.read_bytes()
    launch = subprocess.run([sys.executable, "-m", "launcher", "--launch_mode", "ranktable", "--worker_num", "8",
                             "--local_worker_num", "4", "--node_rank", "1", "--rank_table_file", str(V12),
                             "--log_dir", str(tmp_path), "--dry_run", str(HERE / "launch_scripts" / "print_env.py")],
                            capture_output=True, text=True, timeout=60)
    assert launch.returncode == 0, launch.stderr
    assert f"RANK_TABLE_FILE={V12.resolve()}" in launch.stdout
    assert list(dry_run_processes(launch.stdout)) == [f"rank {r}" for r in range(4, 8)]
    assert V12.read_bytes() == before and not (tmp_path / "rank_table.json").exists()


def _pod(table, members):
    table["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": m} for m in members]}]
    return table


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t["server_list"][1]["device"][2].pop("super_device_id") and t,
     "server node_1 device 2: 'super_device_id' is missing"),
    (lambda t: _set(t, 1, 0, "super_device_id", "0"), "super_device_id 0 is also used by server node_0 device 0"),
    (lambda t: _pod(t, ["node_0"]), "server node_1 is in server_list but in no super pod"),
    (lambda t: _pod(t, ["node_0", "node_1", "node_9"]), "lists server node_9, which is not in server_list"),
    (lambda t: dict(t, super_pod_list=[]), "version 1.2 needs a non-empty 'super_pod_list'"),
    (lambda t: dict(t, server_list=[dict(t["server_list"][0], host_ip="10.0.0"), t["server_list"][1]]),
     "server node_0: host_ip '10.0.0' is not a valid address"),
    (lambda t: _set(t, 0, 1, "device_port", 16666), "'device_port' must be a string"),
])
def test_v12_validation_names_server_and_device(tmp_path, mutate, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(mutate(json.loads(V12.read_text()))))
    proc = mindrun("validate", str(path))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_servers_out_of_dictionary_order_are_accepted_with_a_warning_and_used_as_written(tmp_path):
    table = golden()
    table["server_list"].reverse()  # "10.0.0.2" (ranks 8..15) first, then "10.0.0.10" (ranks 0..7)
    path = tmp_path / "reordered.json"
    path.write_text(json.dumps(table))
    proc = mindrun("validate", str(path), "--world_size", "16")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "dictionary order of server_id" in proc.stderr
    # node_rank 0 is the first server as written, with the ranks the table gives it
    launch = subprocess.run([sys.executable, "-m", "launcher", "--launch_mode", "ranktable", "--worker_num", "16",
                             "--local_worker_num", "8", "--node_rank", "0", "--rank_table_file", str(path),
                             "--log_dir", str(tmp_path / "logs"), "--dry_run",
                             str(HERE / "launch_scripts" / "print_env.py")], capture_output=True, text=True, timeout=60)
    assert launch.returncode == 0, launch.stderr
    assert "dictionary order of server_id" in launch.stderr
    procs = dry_run_processes(launch.stdout)
    assert list(procs)[0] == "rank 8" and "rank 0" not in procs and procs["rank 15"]["RANK_ID"] == "15"


def test_device_ip_is_optional_for_one_server_only(tmp_path):
    one = golden("ranktable_1x8.json")
    for device in one["server_list"][0]["device"]:
        del device["device_ip"]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(one))
    assert ranktable.load(path)["server_list"][0]["device"][0] == {"device_id": "0", "rank_id": "0"}
    two = golden()
    del two["server_list"][1]["device"][0]["device_ip"]
    path.write_text(json.dumps(two))
    with pytest.raises(LaunchError, match="server 10.0.0.2 device 0: 'device_ip' is missing"):
        ranktable.load(path)


def test_merge_keeps_v12_fields_and_super_pods_and_refuses_mixed_versions(tmp_path):
    full = json.loads(V12.read_text())
    parts = []
    for server in reversed(full["server_list"]):  # merged back in server_id order whatever the input order
        part = {"status": "completed", "version": "1.2", "server_count": "1", "server_list": [server],
                "super_pod_list": [{"super_pod_id": "0", "server_list": [{"server_id": server["server_id"]}]}]}
        for i, device in enumerate(server["device"]):
            device["rank_id"] = str(i)
        path = tmp_path / f"{server['server_id']}.json"
        path.write_text(json.dumps(part))
        parts.append(str(path))
    out = tmp_path / "merged.json"
    proc = mindrun("merge", *parts, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(out.read_text())
    assert merged["server_list"] == json.loads(V12.read_text())["server_list"]
    assert [m["server_id"] for m in merged["super_pod_list"][0]["server_list"]] == ["node_1", "node_0"]
    mixed = mindrun("merge", parts[0], str(GOLDEN / "ranktable_1x8.json"), "-o", str(tmp_path / "x.json"))
    assert mixed.returncode == 2 and "versions 1.0 and 1.2" in mixed.stderr
