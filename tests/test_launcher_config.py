"""Launcher inputs: cluster files, environment discovery, option precedence, process environment."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import dry_run_processes

from launcher import affinity, environment, ranks
from launcher.cluster import load_cluster, parse_cluster
from launcher.discovery import expand_hostlist, from_environment
from launcher.errors import LaunchError
from launcher.ports import check_master_port, free_port
from launcher.spec import resolve

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(__file__).parent / "launch_scripts" / "print_env.py")


def launch(*args, env=None):
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.mark.parametrize("name,workers", [("local_cpu_2.yaml", 2), ("ascend_1x8.yaml", 8), ("ascend_2x16.yaml", 32)])
def test_shipped_cluster_configs_load(name, workers):
    cfg = load_cluster(ROOT / "cluster_configs" / name)
    assert cfg.worker_num == workers
    assert (ROOT / "cluster_configs" / name).read_text().startswith("# ")  # each documented in a comment block


@pytest.mark.parametrize("raw,message", [
    ({"nodes": [{"host": "a", "devices": 2}], "backnd": "cpu"}, "unknown key 'backnd'; did you mean 'backend'"),
    ({"nodes": [{"host": "a", "device": 2}]}, "unknown key 'nodes[0].device'; did you mean 'devices'"),
    ({"nodes": [{"host": "a", "devices": "8"}]}, "'nodes[0].devices' must be int"),
    ({"nodes": [{"host": "a"}], "master_port": "x"}, "'master_port' must be int"),
    ({"nodes": [{"host": "a"}, {"host": "a"}]}, "host a appears twice"),
    ({"nodes": [{"host": "a"}], "backend": "tpu"}, "'backend' must be one of cpu, gpu, ascend"),
    ({"nodes": []}, "'nodes' must be a non-empty list"),
    ({"nodes": [{"devices": 8}]}, "'nodes[0].host' is missing"),
    ({"nodes": [{"host": "a", "devices": 2, "device_ips": ["1.2.3.4", "-.-.-.-"]}]}, "not an IP address"),
    ({"nodes": [{"host": "a", "devices": 1, "device_ips": ["1.2.3.4"]},
                {"host": "b", "devices": 1, "device_ips": ["1.2.3.4"]}]}, "device_ip 1.2.3.4 is used twice"),
    ({"nodes": [{"host": "a", "devices": 8}, {"host": "b", "devices": 4}]}, "same 'devices' count"),
    ({"nodes": [{"host": "a", "devices": 2}], "launch_mode": "ranktable"}, "needs 'device_ips' on every node"),
    (["not", "a", "mapping"], "must be a mapping"),
])
def test_cluster_schema_errors_name_the_key(raw, message):
    with pytest.raises(LaunchError, match=None) as err:
        parse_cluster(raw, "c.yaml")
    assert message in str(err.value) and str(err.value).startswith("c.yaml")


@pytest.mark.parametrize("text,message", [
    ("nodes: [{host: a, devices: 2}\n", "not valid YAML"),
    ("nodes:\n  - host: a\n    devcies: 2\n", "did you mean 'devices'"),
    ("nodes:\n  - host: 10.0.0.1\n  - host: 10.0.0.1\n", "appears twice"),
])
def test_malformed_cluster_file_exits_2_without_traceback(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = launch("--cluster", str(path), SCRIPT)
    assert proc.returncode == 2
    assert message in proc.stderr and str(path) in proc.stderr and "Traceback" not in proc.stderr


def test_hostlist_expansion():
    assert expand_hostlist("node[01-03,7],login1") == ["node01", "node02", "node03", "node7", "login1"]
    assert expand_hostlist("a1,b[9-10]") == ["a1", "b9", "b10"]


def test_slurm_environment_fills_node_rank_and_master():
    found = from_environment({"SLURM_JOB_ID": "7", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
                              "SLURM_JOB_NODELIST": "npu[07-08]"})
    assert (found.source, found.node_rank, found.nnodes, found.master_addr) == ("slurm", 1, 2, "npu07")


def test_ascend_operator_environment():
    env = {"MS_WORKER_NUM": "16", "MS_LOCAL_WORKER": "8", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "2222",
           "MS_NODE_RANK": "1", "MS_ROLE": "MS_WORKER", "MS_SERVER_NUM": "0"}
    spec = resolve({"script": SCRIPT}, env)
    assert (spec.worker_num, spec.local_worker_num, spec.node_rank, spec.master_port) == (16, 8, 1, 2222)
    assert not spec.run_scheduler and spec.run_workers  # the operator runs the scheduler in its own pod
    sched = resolve({"script": SCRIPT}, dict(env, MS_ROLE="MS_SCHED", MS_NODE_RANK="0"))
    assert sched.run_scheduler and not sched.run_workers


def test_command_line_overrides_cluster_file_and_environment():
    cfg = str(ROOT / "cluster_configs" / "local_cpu_2.yaml")
    spec = resolve({"script": SCRIPT, "cluster": cfg}, {})
    assert (spec.worker_num, spec.master_port, spec.cluster_time_out) == (2, 8118, 120)
    spec = resolve({"script": SCRIPT, "cluster": cfg, "master_port": 9000, "cluster_time_out": 30},
                   {"SLURM_JOB_ID": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost"})
    assert (spec.master_port, spec.cluster_time_out) == (9000, 30)


@pytest.mark.parametrize("cli,message", [
    ({"worker_num": 3, "local_worker_num": 2}, "not a multiple"),
    ({"worker_num": 4, "local_worker_num": 2, "node_rank": 2}, "out of range"),
    ({"worker_num": 4, "local_worker_num": 2, "node_rank": 0, "master_port": 0}, "single node only"),
    ({"worker_num": 2, "local_worker_num": 3}, "--local_worker_num must be 1..worker_num"),
    ({"worker_num": 0}, "--worker_num must be at least 1"),
])
def test_impossible_layouts_are_refused_before_spawning(cli, message):
    with pytest.raises(LaunchError) as err:
        resolve(dict(cli, script=SCRIPT), {})
    assert message in str(err.value)


def test_rank_assignment_follows_msrun():
    spec = resolve({"script": SCRIPT, "worker_num": 16, "local_worker_num": 8, "node_rank": 1,
                    "master_addr": "127.0.0.1"}, {})
    assert [w.rank for w in ranks.dynamic_workers(spec)] == list(range(8, 16)) and not spec.run_scheduler
    auto = resolve({"script": SCRIPT, "worker_num": 16, "local_worker_num": 8}, {})
    assert ranks.dynamic_workers(auto)[0].rank is None and auto.run_scheduler  # msrun: assigned at registration


def test_inherited_cluster_variables_are_cleared_and_msrun_variables_set():
    spec = resolve({"script": SCRIPT, "worker_num": 2, "local_worker_num": 2, "master_port": 8200}, {})
    base, removed = environment.clean({"MS_SCHED_PORT": "1", "MS_ROLE": "MS_SCHED", "RANK_ID": "5",
                                       "MS_DEV_KEEP": "x", "PATH": "/bin"})
    assert removed == ["MS_ROLE", "MS_SCHED_PORT", "RANK_ID"] and base == {"MS_DEV_KEEP": "x", "PATH": "/bin"}
    env = environment.worker_env(spec, ranks.dynamic_workers(spec)[1], base)
    assert {k: env[k] for k in ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID",
                                "RANK_ID", "RANK_SIZE", "DEVICE_ID", "MS_TOPO_TIMEOUT")} == {
        "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8200", "MS_WORKER_NUM": "2",
        "MS_NODE_ID": "1", "RANK_ID": "1", "RANK_SIZE": "2", "DEVICE_ID": "1", "MS_TOPO_TIMEOUT": "600"}
    assert environment.scheduler_env(spec, base)["MS_ROLE"] == "MS_SCHED"


def test_core_binding_plan_is_disjoint_and_numa_aware():
    assert affinity.parse_cpulist("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert affinity.plan(2, available={0, 1, 2, 3}, nodes={}) == [[0, 1], [2, 3]]
    numa = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    assert affinity.plan(4, available=set(range(8)), nodes=numa) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert affinity.plan(2, available=set(range(8)), nodes=numa) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert affinity.plan(3, available={0}, nodes={}) == [[0], [0], [0]]  # oversubscribed: shared, not refused


def test_busy_master_port_is_a_clear_error():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LaunchError, match=f"master port {port} on 127.0.0.1 is already in use"):
            check_master_port("127.0.0.1", port)
        proc = launch("--worker_num", "1", "--local_worker_num", "1", "--master_port", str(port), SCRIPT)
    assert proc.returncode == 2 and f"master port {port}" in proc.stderr and "--master_port 0" in proc.stderr
    assert free_port() != port


def test_dry_run_prints_each_rank_and_starts_nothing(tmp_path):
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "8300", "--log_dir",
                  str(tmp_path / "logs"), "--dry_run", SCRIPT, "--flag")
    assert proc.returncode == 0
    procs = dry_run_processes(proc.stdout)
    assert list(procs) == ["scheduler", "rank 0", "rank 1"]
    assert [p["MS_ROLE"] for p in procs.values()] == ["MS_SCHED", "MS_WORKER", "MS_WORKER"]
    assert {p["MS_SCHED_PORT"] for p in procs.values()} == {"8300"} and [p["RANK_ID"] for p in procs.values()] == \
        ["0", "0", "1"]
    assert all(p["command"].endswith(f"{SCRIPT} --flag") for p in procs.values())
    assert "every process (scheduler, rank 0, rank 1):" in proc.stdout  # what they share, once
    assert not (tmp_path / "logs").exists()


def test_missing_script_exits_2(tmp_path):
    proc = launch("--worker_num", "1", "--local_worker_num", "1", str(tmp_path / "nope.py"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_a_busy_master_port_creates_no_log_directory(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = launch("--worker_num", "1", "--local_worker_num", "1", "--master_port", str(port), "--log_dir",
                      str(tmp_path / "logs"), SCRIPT)
    assert proc.returncode == 2 and f"master port {port}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_a_log_name_that_is_a_directory_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "logs" / "worker_1.log").mkdir(parents=True)
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--log_dir",
                  str(tmp_path / "logs"), SCRIPT)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "worker_1.log is a directory" in lines[0]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["worker_1.log"]  # nothing started, nothing written


def test_simulation_of_one_rank_takes_master_port_0(tmp_path):
    """msrun's --sim_level with --sim_rank_id starts one process and no scheduler: port 0 needs nothing picked."""
    proc = launch("--worker_num", "8", "--local_worker_num", "8", "--sim_level", "1", "--sim_rank_id", "0",
                  "--master_port", "0", "--log_dir", str(tmp_path / "logs"), "--dry_run", SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert "rank 0:" in proc.stdout and "rank 1:" not in proc.stdout and "scheduler:" not in proc.stdout


def test_hccl_exec_timeout_follows_the_cluster_time_out(tmp_path):
    """A collective waiting on a rank that hashes or writes shards (a resume or save at 7B) must not time out first."""
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--cluster_time_out", "3600",
                  "--dry_run", SCRIPT)
    procs = dry_run_processes(proc.stdout)
    assert proc.returncode == 0 and [p["HCCL_EXEC_TIMEOUT"] for p in procs.values()] == ["3600"] * 3  # all three
    proc = launch("--worker_num", "1", "--local_worker_num", "1", "--master_port", "0", "--dry_run", SCRIPT)
    assert "HCCL_EXEC_TIMEOUT=1800" in proc.stdout  # never below 30 minutes


def test_store_mode_starts_no_scheduler_and_tells_each_rank_where_rank_0_serves(tmp_path):
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "8301", "--launch_mode", "store",
                  "--cluster_time_out", "45", "--log_dir", str(tmp_path / "logs"), "--dry_run", SCRIPT)
    assert proc.returncode == 0, proc.stderr
    procs = dry_run_processes(proc.stdout)
    assert list(procs) == ["rank 0", "rank 1"]  # no scheduler process
    assert [p["RANK_ID"] for p in procs.values()] == ["0", "1"] and {p["RANK_SIZE"] for p in procs.values()} == {"2"}
    assert {p["MINDRUN_STORE"] for p in procs.values()} == {"127.0.0.1:8301"}
    assert {p["MINDRUN_STORE_TIMEOUT"] for p in procs.values()} == {"45"}
    assert not any(key in p for p in procs.values() for key in ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT"))


def test_store_mode_env_and_its_refusals():
    spec = resolve({"script": SCRIPT, "worker_num": 4, "local_worker_num": 2, "node_rank": 1, "launch_mode": "store",
                    "master_addr": "127.0.0.1", "master_port": 8302}, {})
    workers = ranks.dynamic_workers(spec)
    env = environment.store_env(spec, workers[1], {"MS_ROLE": "MS_SCHED", "PATH": "/bin"})
    assert (env["RANK_ID"], env["RANK_SIZE"], env["MINDRUN_STORE"], env["DEVICE_ID"]) == ("3", "4", "127.0.0.1:8302",
                                                                                         "1")
    assert not spec.run_scheduler
    # a store-mode worker inherits no earlier job's store
    assert environment.clean({"MINDRUN_STORE": "h:1", "MINDRUN_STORE_TIMEOUT": "5"})[1] == [
        "MINDRUN_STORE", "MINDRUN_STORE_TIMEOUT"]
    with pytest.raises(LaunchError, match="--launch_mode store needs each worker's rank"):
        resolve({"script": SCRIPT, "worker_num": 4, "local_worker_num": 2, "launch_mode": "store"}, {})
    with pytest.raises(LaunchError, match="--sim_level starts no cluster"):
        resolve({"script": SCRIPT, "worker_num": 2, "local_worker_num": 2, "launch_mode": "store", "sim_level": 1},
                {})
    with pytest.raises(LaunchError, match="--launch_mode must be one of dynamic, ranktable, store"):
        resolve({"script": SCRIPT, "worker_num": 2, "local_worker_num": 2, "launch_mode": "stor"}, {})


def test_store_address_and_timeout_are_read_with_context():
    from launcher.join import JoinError, store_address

    assert store_address({}) is None
    assert store_address({"MINDRUN_STORE": "10.0.0.1:8118"}) == ("10.0.0.1", 8118)
    assert store_address({"MINDRUN_STORE": "[fe80::1]:8118"}) == ("fe80::1", 8118)
    with pytest.raises(JoinError, match="MINDRUN_STORE='10.0.0.1': expected host:port"):
        store_address({"MINDRUN_STORE": "10.0.0.1"})
