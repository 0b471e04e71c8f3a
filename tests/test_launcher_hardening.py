"""The launcher under conditions a cluster user meets: quiet MindSpore logs, a hard-killed launcher,
bad input, leftover job variables, rank-table working directories, msrun 2.10's options, dry runs."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import dry_run_processes, env_with_venv, envs, launch
from launcher.cli import main as launcher_main
from launcher.ports import free_port
from launcher.registration import ConnectionWatch

SCRIPTS = Path(__file__).parent / "launch_scripts"
def one_line_error(capsys, argv):
    """Run `python -m launcher ARGV` in-process; return its stderr, checking exit 2 and one line."""
    try:
        code = launcher_main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# ---- 1. registration is read from sockets, not from MindSpore's log --------------------------------
@pytest.mark.multiprocess
@pytest.mark.slow
def test_quiet_healthy_job_outlives_a_short_cluster_time_out(tmp_path):
    """GLOG_v=3 hides MindSpore's "Cluster is successfully initialized"; the job must still live."""
    start = time.monotonic()
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--cluster_time_out", "8",
                  "--log_dir", str(tmp_path), str(SCRIPTS / "init_sleep.py"), "14",
                  env=env_with_venv(GLOG_v="3"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start > 8 + 8  # it ran past the backstop (timeout + allowance)
    assert "Cluster is successfully initialized" not in (tmp_path / "scheduler.log").read_text()
    assert all("DONE" in (tmp_path / f"worker_{r}.log").read_text() for r in (0, 1))
    assert "registered" not in proc.stderr and "connected" not in proc.stderr


def test_connection_watch_sees_workers_that_hold_a_connection_to_the_scheduler():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    dial = (f"import socket, time; s = socket.create_connection(('127.0.0.1', {port})); "
            f"print('up', flush=True); time.sleep(30)")
    connected = subprocess.Popen([sys.executable, "-c", dial], stdout=subprocess.PIPE)
    # the connecting process is a grandchild: a shell wrapper around the real worker still counts
    wrapped = subprocess.Popen(["sh", "-c", f'{sys.executable} -c "{dial}"; true'], stdout=subprocess.PIPE)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        connected.stdout.readline(), wrapped.stdout.readline()

        class W:
            def __init__(self, key, popen):
                self.key, self.popen = key, popen

        workers = [W(0, connected), W(1, wrapped), W(2, idle)]
        watch = ConnectionWatch("127.0.0.1", port)
        watch.update(workers)
        assert watch.missing(workers) == [2]
        assert ConnectionWatch("127.0.0.1", free_port()).missing(workers) == [0, 1, 2]
    finally:
        for p in (connected, wrapped, idle):
            p.kill()
            p.wait()
        server.close()


def test_a_worker_that_declares_it_runs_without_the_cluster_counts_as_arrived(tmp_path, monkeypatch):
    """mindrun's trainer skips MindSpore's cluster on a one-host CPU job in store mode (trainer/parallel/context.py);
    it says so through the file MINDRUN_NO_CLUSTER_MARK names, or the backstop would end a healthy job after
    --cluster_time_out. The agent names that file after the worker's log and removes a stale one at spawn."""
    from launcher.registration import NO_CLUSTER_MARK, declare_no_cluster, no_cluster_mark

    idle = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        class W:
            def __init__(self, key, popen):
                self.key, self.popen, self.log = key, popen, tmp_path / f"worker_{key}.log"

        workers = [W(0, idle[0]), W(1, idle[1])]
        watch = ConnectionWatch("127.0.0.1", free_port())
        watch.update(workers)
        assert watch.missing(workers) == [0, 1]
        declare_no_cluster({NO_CLUSTER_MARK: str(no_cluster_mark(workers[1].log))})
        declare_no_cluster({})  # outside the launcher: nothing
        watch.update(workers)
        assert watch.missing(workers) == [0]
    finally:
        for p in idle:
            p.kill()
            p.wait()


def test_hidden_sockets_turn_the_backstop_off_instead_of_failing_a_job(monkeypatch):
    def hidden(self, kind="inet"):
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "net_connections", hidden)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        class W:
            key, popen = 0, idle

        watch = ConnectionWatch("127.0.0.1", free_port())
        watch.update([W()])
        assert watch.unreadable and watch.missing([W()]) == [0]  # the agent then drops the watch (agent.py)
    finally:
        idle.kill()
        idle.wait()


# ---- 2. no orphans after the launcher is SIGKILLed ---------------------------------------------------
@pytest.mark.multiprocess
def test_sigkilled_launcher_leaves_no_process_at_any_depth(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-m", "launcher", "--worker_num", "2", "--local_worker_num", "2",
                                 "--master_port", "0", "--log_dir", str(tmp_path),
                                 str(SCRIPTS / "fork_tree.py"), "3"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_with_venv())
    pids = []
    deadline = time.monotonic() + 60
    while len(pids) < 12 and time.monotonic() < deadline:  # scheduler + 2 workers, each with 3 descendants
        time.sleep(0.2)
        pids = [int(line.split()[1]) for f in tmp_path.glob("*.log") for line in f.read_text().splitlines()
                if line.startswith("PIDS ")]
    assert len(pids) == 12, pids
    assert any(os.getsid(p) == p for p in pids if psutil.pid_exists(p))  # one escaped into its own session
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"survived the launcher's SIGKILL by 5 s: {alive}"


# ---- 3. bad input: one line, exit 2, nothing spawned --------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["--master_addr", "no-such-host.invalid", "--master_port", "0"], "cannot resolve host 'no-such-host.invalid'"),
    (["--master_addr", "192.0.2.7", "--master_port", "0"], "192.0.2.7"),
    (["--grace_period", "-1"], "--grace_period must be 0 or more"),
    (["--cluster_time_out", "0"], "--cluster_time_out must be at least 1"),
    (["--sim_rank_id", "1"], "--sim_rank_id needs --sim_level"),
    (["--bind_core", "{device0: 1}"], "--bind_core must be True, False or a JSON object"),
    (["--bind_core", '{"gpu0": ["1"]}'], "key 'gpu0'"),
    (["--worker_num", "two"], "--worker_num: invalid int value"),
])
def test_bad_options_are_one_line(tmp_path, capsys, args, expected):
    logs = tmp_path / "logs"
    err = one_line_error(capsys, ["--worker_num", "2", "--local_worker_num", "2", "--log_dir", str(logs), *args,
                                  str(SCRIPTS / "print_env.py")])
    assert expected in err
    assert not logs.exists()  # checked before anything was created or spawned


def test_non_local_master_addr_with_port_0_says_why(tmp_path, capsys):
    err = one_line_error(capsys, ["--worker_num", "1", "--local_worker_num", "1", "--master_addr", "192.0.2.7",
                                  "--master_port", "0", "--log_dir", str(tmp_path), str(SCRIPTS / "print_env.py")])
    assert "is not this machine" in err and "--master_port 0" in err


def test_bad_scripts_are_one_line(tmp_path, capsys):
    assert "is a directory" in one_line_error(capsys, ["--worker_num", "1", "--local_worker_num", "1",
                                                       "--log_dir", str(tmp_path / "l"), str(tmp_path)])
    for shebang, named in (("#!/nonexistent/python9\n", "/nonexistent/python9"),
                           ("#!/usr/bin/env python9-not-installed\n", "python9-not-installed")):
        script = tmp_path / "run_me"
        script.write_text(shebang + "print('hi')\n")
        script.chmod(0o755)
        err = one_line_error(capsys, ["--worker_num", "1", "--local_worker_num", "1", "--log_dir",
                                      str(tmp_path / "l"), str(script)])
        assert named in err and "interpreter" in err
    assert not (tmp_path / "l").exists()


def test_bad_log_dirs_are_one_line(tmp_path, capsys, monkeypatch):
    script = str(SCRIPTS / "print_env.py")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    base = ["--worker_num", "1", "--local_worker_num", "1", "--dry_run"]
    assert "is a file, not a directory" in one_line_error(capsys, base + ["--log_dir", str(a_file), script])
    assert "is a file" in one_line_error(capsys, base + ["--log_dir", str(a_file / "logs"), script])
    assert "kernel filesystem" in one_line_error(capsys, base + ["--log_dir", "/proc/mindrun_logs", script])
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == locked else real_access(p, m, **k))
    assert "not writable" in one_line_error(capsys, base + ["--log_dir", str(locked / "logs"), script])


# ---- 5. leftover Ascend Operator variables ----------------------------------------------------------
LEFTOVERS = {"MS_NODE_RANK": "1", "MS_LOCAL_WORKER": "2", "MS_SCHED_HOST": "10.9.9.9", "MS_WORKER_NUM": "4"}


def test_a_complete_command_line_wins_over_leftover_operator_variables(tmp_path):
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--log_dir", str(tmp_path / "l"), "--dry_run",
                  str(SCRIPTS / "print_env.py"), env=env_with_venv(**LEFTOVERS))
    assert proc.returncode == 0, proc.stderr
    procs = dry_run_processes(proc.stdout)
    assert list(procs) == ["scheduler", "rank 0", "rank 1"]
    assert {p["MS_SCHED_HOST"] for p in procs.values()} == {"127.0.0.1"} and "10.9.9.9" not in proc.stdout
    assert "ignored MS_LOCAL_WORKER, MS_NODE_RANK, MS_SCHED_HOST, MS_WORKER_NUM from the environment" in proc.stderr


def test_settings_taken_from_the_environment_are_shown_with_their_source(tmp_path):
    env = env_with_venv(MS_NODE_RANK="1", MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT="29999", MS_WORKER_NUM="4")
    proc = launch("--local_worker_num", "2", "--log_dir", str(tmp_path / "l"), "--dry_run",
                  str(SCRIPTS / "print_env.py"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "node_rank = 1 from environment MS_NODE_RANK (ascend-operator)" in proc.stderr
    table = proc.stdout.split("settings (value and where it came from)\n", 1)[1]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in table.splitlines() if line.startswith("  ")
            and not line.startswith("   ")}
    assert rows["master_port"] == ["29999", "environment MS_SCHED_PORT (ascend-operator)"]
    assert rows["local_worker_num"] == ["2", "command line"]
    assert rows["log_dir"][1] == "command line" and rows["cluster_time_out"] == ["600", "default"]
    assert list(dry_run_processes(proc.stdout)) == ["rank 2", "rank 3"]  # node 1 of 2 runs ranks 2 and 3


# ---- 6. rank-table workers run in the launcher's directory --------------------------------------------
@pytest.mark.multiprocess
def test_rank_table_workers_run_in_the_launchers_directory_with_local_modules(tmp_path, fake_hccn):
    work = tmp_path / "work"
    (work / "local_job").mkdir(parents=True)
    (work / "data.txt").write_text("relative paths work\n")
    (work / "local_job" / "__init__.py").write_text("")
    (work / "local_job" / "__main__.py").write_text(
        "import os\nprint('CWD', os.getcwd(), open('data.txt').read().strip(), os.environ['RANK_ID'], flush=True)\n")
    proc = launch("--launch_mode", "ranktable", "--worker_num", "2", "--local_worker_num", "2", "--log_dir", "logs",
                  "-m", "local_job", cwd=work, env=fake_hccn)
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        assert f"CWD {work} relative paths work {rank}" in (work / "logs" / f"worker_{rank}.log").read_text()
    assert not list((work / "logs").glob("rank_[0-9]*"))


# ---- 7. msrun 2.10's options -----------------------------------------------------------------------
@pytest.mark.multiprocess
def test_sim_level_with_sim_rank_id_runs_one_rank_without_a_scheduler(tmp_path):
    proc = launch("--worker_num", "8", "--local_worker_num", "8", "--sim_level", "1", "--sim_rank_id", "3",
                  "--log_dir", str(tmp_path), str(SCRIPTS / "print_env.py"))
    assert proc.returncode == 0, proc.stderr
    seen = envs(tmp_path)
    assert list(seen) == ["worker_3"]
    env = seen["worker_3"]
    assert env["MS_SIMULATION_LEVEL"] == "1" and env["RANK_ID"] == "3" and env["MS_WORKER_NUM"] == "8"
    assert "MS_ROLE" not in env and "MS_SCHED_HOST" not in env
    assert not (tmp_path / "scheduler.log").exists()


@pytest.mark.multiprocess
def test_worker_log_name_bind_core_dict_and_endless_cluster_time_out(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    binding = {"device0": [str(cpus[0])], "device1": [str(cpus[-1])], "scheduler": [str(cpus[0])]}
    proc = launch("--worker_num", "2", "--local_worker_num", "2", "--master_port", "0", "--cluster_time_out", "-1",
                  "--worker_log_name", "w_{hostname}", "--bind_core", json.dumps(binding), "--log_dir",
                  str(tmp_path), str(SCRIPTS / "print_env.py"))
    assert proc.returncode == 0, proc.stderr
    seen = envs(tmp_path)
    host = socket.gethostname()
    assert sorted(seen) == sorted(["scheduler", f"w_{host}_0", f"w_{host}_1"])
    assert seen[f"w_{host}_0"]["_cpus"] == [cpus[0]] and seen[f"w_{host}_1"]["_cpus"] == [cpus[-1]]
    assert seen["scheduler"]["_cpus"] == [cpus[0]]
    assert seen[f"w_{host}_0"]["MS_TOPO_TIMEOUT"] == "-1"


def test_bind_numa_places_workers_on_numa_nodes():
    from launcher.affinity import parse_binding, placements

    nodes = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    auto = placements(2, False, True, nodes=nodes, available=set(range(8)), numactl="/usr/bin/numactl")
    assert auto["device0"].cpus == [0, 1, 2, 3] and auto["device1"].cpus == [4, 5, 6, 7]
    assert auto["device1"].prefix == ("/usr/bin/numactl", "--membind=1")
    both = placements(4, True, True, nodes=nodes, available=set(range(8)), numactl="")
    assert [both[f"device{i}"].cpus for i in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert both["device0"].prefix == ()  # no numactl: CPUs only
    given = placements(1, False, parse_binding('{"device0": ["1"]}', "--bind_numa"), nodes=nodes,
                       available=set(range(8)), numactl="/usr/bin/numactl")
    assert given["device0"].cpus == [4, 5, 6, 7] and given["device0"].prefix[1] == "--membind=1"


# ---- 9. --dry_run writes nothing ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dynamic", "ranktable"])
def test_dry_run_writes_nothing(tmp_path, fake_hccn, mode):
    proc = launch("--launch_mode", mode, "--worker_num", "2", "--local_worker_num", "2", "--dry_run",
                  str(SCRIPTS / "print_env.py"), cwd=tmp_path, env=fake_hccn)
    assert proc.returncode == 0, proc.stderr
    assert "rank 1" in dry_run_processes(proc.stdout)
    assert list(tmp_path.iterdir()) == [tmp_path / "bin"]  # the fake hccn_tool's directory only
