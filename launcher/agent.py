"""The agent: start the scheduler and workers of this node, watch them, stop them all together.

States of a worker group, as in torchrun's elastic agent:

    INIT -> RUNNING -> SUCCEEDED
                    -> FAILED -> (restart: RUNNING again, up to --max_restarts) | exit with its code
                    -> INTERRUPTED (SIGINT/SIGTERM to the launcher) -> exit 128 + signal

Every child runs in its own session (so its whole process tree can be signalled) and gets
SIGKILL from the kernel if the launcher itself dies (PR_SET_PDEATHSIG); the reaper
(`launcher.watchdog`) kills what they started, whatever the depth: no orphans.

Registration backstop: a local worker that has not connected to the scheduler within
--cluster_time_out (+ start-up allowance) fails the job; "connected" is read from the worker's
sockets (`launcher.registration`), never from MindSpore's log text, whose level the user sets.
"""
import contextlib
import ctypes
import enum
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from launcher import affinity, environment, watchdog
from launcher.console import Console, hidden_summary
from launcher.join import server_of
from launcher.ranks import Worker
from launcher.registration import NO_CLUSTER_MARK, ConnectionWatch, describe_missing, no_cluster_mark
from launcher.spec import LaunchSpec, hosts_store

POLL_S = 0.05
REGISTRATION_CHECK_S = 0.5
SCHEDULER_EXIT_WAIT_S = 30.0
LAST_LINES = 20
# MindSpore's own MS_TOPO_TIMEOUT counts from init(); the launcher's backstop also allows for
# interpreter start-up and imports before init() (up to this, and no more than the timeout itself),
# and catches workers that hang before it.
STARTUP_ALLOWANCE_S = 20.0
MIN_ALLOWANCE_S = 5.0
TOPOLOGY_FAILURES = ("Topology build timed out", "Failed to initialize distributed job cluster")
PLAIN_INIT = "call 'mindspore.communication.init()' without"  # MindSpore's init() with no cluster variables

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


class State(enum.Enum):
    INIT = "init"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Process:
    """One process to start: the scheduler (key -1) or a worker (key = its rank, or local index)."""

    name: str
    key: int
    command: List[str]
    env: Dict[str, str]
    cwd: Optional[Path]  # None: the launcher's working directory
    log: Path
    cpus: Optional[List[int]]  # --bind_core/--bind_numa: the CPUs it may run on
    worker: Optional[Worker] = None  # None for the scheduler
    prefix: tuple = ()  # --bind_numa: numactl --membind=N before the command


@dataclass
class Child:
    """One process of the group: a worker (key = its rank) or the scheduler (key = -1)."""

    name: str
    key: int
    popen: subprocess.Popen
    log: Path


@dataclass
class Outcome:
    state: State
    code: int = 0
    child: Optional[Child] = None
    how: str = ""
    advice: str = ""  # said after the child's last log lines


_console: Optional[Console] = None  # the running agent's console, so messages do not break its status lines


def say(message: str) -> None:
    """A launcher message on stderr, marked as ours."""
    if _console is not None:
        _console.say(f"[mindrun] {message}")
    else:
        print(f"[mindrun] {message}", file=sys.stderr, flush=True)


def exit_code(returncode: int) -> int:
    """Popen's returncode as a shell would report it (a signal N becomes 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def last_lines(path: Path, count: int = LAST_LINES) -> List[str]:
    """The last `count` lines of a log file (empty if unreadable)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            return handle.read().decode("utf-8", "replace").splitlines()[-count:]
    except OSError:
        return []


class _Tail:
    """Feeds new lines of one log file to the console: finished lines, and progress-bar frames
    (text after a carriage return in the line being written)."""

    def __init__(self, path: Path, prefix: str, start: int, console: Console):
        self.path, self.prefix, self.offset, self.partial = path, prefix, start, b""
        self.console = console

    def pump(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(4 << 20)
        except OSError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        for raw in lines:
            self.console.finished(self.prefix, _frames(raw), self.path.name, b"\r" in raw)
        if b"\r" in self.partial:
            frames = _frames(self.partial)
            if frames:
                self.console.progress(self.prefix, frames[-1])
            self.partial = self.partial[self.partial.rfind(b"\r"):]  # keep the frame being written only


def _frames(raw: bytes) -> List[str]:
    """A log line split at its carriage returns (a progress bar's redraws), blank pieces dropped."""
    return [f for f in raw.decode("utf-8", "replace").split("\r") if f.strip()]


class Agent:
    """Runs one node's share of a job described by a LaunchSpec; `run()` returns the exit code.

    `workers` are this node's workers (`launcher.ranks`); `rank_table` is the table's path in rank-table mode.
    """

    def __init__(self, spec: LaunchSpec, workers: List[Worker], rank_table: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None):
        self.spec = spec
        self.workers = workers
        self.rank_table = rank_table
        self.base_env, self.cleared = environment.clean(dict(os.environ if env is None else env))
        self.children: List[Child] = []
        self.tails: List[_Tail] = []
        self.signal_received: Optional[int] = None
        self.places = affinity.placements(spec.local_worker_num, spec.bind_core, spec.bind_numa)
        self.console = Console(show_ms_logs=spec.show_ms_logs, interval=spec.progress_interval)
        self.watchdog: Optional[watchdog.Watchdog] = None

    # ---- what to start -------------------------------------------------------------------
    def plan(self, restart: int = 0) -> List[Process]:
        """Each process to start on this node, in order: the scheduler (if any), then the workers."""
        spec, out = self.spec, []
        command = list(spec.command)
        if spec.launch_mode == "dynamic" and spec.run_scheduler:
            place = self.places["scheduler"]
            out.append(Process("scheduler", -1, command, environment.scheduler_env(spec, self.base_env, restart),
                               None, spec.log_dir / "scheduler.log", place.cpus, prefix=place.prefix))
        if spec.launch_mode == "dynamic" and not spec.run_workers:
            return out
        for w in self.workers:
            place = self.places[f"device{w.local_rank}"]
            if spec.launch_mode == "dynamic":
                env = environment.worker_env(spec, w, self.base_env, restart)
            elif spec.launch_mode == "store":
                env = environment.store_env(spec, w, self.base_env, restart)
                env[NO_CLUSTER_MARK] = str(no_cluster_mark(spec.log_name(w.key)))  # (registration.py)
            else:
                env = environment.ranktable_env(spec, w, self.rank_table, self.base_env, restart)
            # Like msrun, workers run in the launcher's directory, so relative paths mean the same in both modes.
            out.append(Process(w.name, w.key, command, env, None, spec.log_name(w.key), place.cpus, w,
                               place.prefix))
        return out

    def sources_table(self) -> List[str]:
        """Each setting of the launch, its value and where it came from (--dry_run)."""
        spec = self.spec
        rows = [(name, getattr(spec, name), where) for name, where in spec.sources.items()]
        width = max((len(r[0]) for r in rows), default=0)
        vwidth = max((len(str(r[1])) for r in rows), default=0)
        return [f"  {n:<{width}}  {str(v):<{vwidth}}  {w}" for n, v, w in rows]

    def dry_run(self) -> int:
        """Print the settings, then what every process shares (one block) and what differs between them (a
        table, a row per process); start nothing."""
        for note in self.spec.notes:
            say(note)
        if self.cleared:
            say(f"would clear inherited variables: {', '.join(self.cleared)}")
        print("settings (value and where it came from)")
        for line in self.sources_table():
            print(line)
        for line in process_table({proc.name: self._described(proc) for proc in self.plan()}):
            print(line)
        return 0

    def _described(self, proc: Process) -> Dict[str, str]:
        """What --dry_run shows of a process: command, cwd, log, cpus, device, the environment the launcher sets
        (KEY=VALUE keys) and what it unsets."""
        out = {"command": " ".join(proc.prefix + tuple(proc.command)), "cwd": str(proc.cwd or os.getcwd()),
               "log": str(proc.log)}
        if proc.cpus is not None:
            out["cpus"] = str(proc.cpus)
        if proc.worker is not None:
            out["device"] = f"{proc.worker.device_id} (physical)"
        shown = {k: v for k, v in proc.env.items() if self.base_env.get(k) != v or k in environment.SHOWN}
        out.update({f"{k}=": str(shown[k]) for k in sorted(shown)})
        unset = sorted(k for k in self.base_env if k not in proc.env)
        if unset:
            out["unset"] = " ".join(unset)
        return out

    # ---- running -------------------------------------------------------------------------
    def _spawn(self, proc: Process, restart: int) -> Child:
        proc.log.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # an earlier start's word is not this one's
            os.unlink(no_cluster_mark(proc.log))
        if proc.cwd is not None:
            proc.cwd.mkdir(parents=True, exist_ok=True)
        mode = "ab" if restart else "wb"
        with open(proc.log, mode) as log:
            if restart:
                log.write(f"\n---- mindrun: restart {restart} ----\n".encode())
                log.flush()
            start = log.tell()
            cpus = proc.cpus

            def child_setup():  # runs in the child between fork and exec: keep it to syscalls
                _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                if cpus:
                    os.sched_setaffinity(0, cpus)

            popen = subprocess.Popen(list(proc.prefix) + proc.command, env=proc.env, cwd=proc.cwd,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=child_setup)
        child = Child(proc.name, proc.key, popen, proc.log)
        if self.watchdog is not None:
            self.watchdog.watch(popen.pid)
        tail = self.spec.tail_ranks
        if proc.key >= 0 and (tail is None or proc.key in tail):
            self.tails.append(_Tail(proc.log, f"[{proc.name}]", start, self.console))
        return child

    def _start(self, restart: int) -> None:
        self.children, self.tails = [], []
        for proc in self.plan(restart):
            self.children.append(self._spawn(proc, restart))
        names = ", ".join(f"{c.name} (pid {c.popen.pid})" for c in self.children)
        say(f"started {names}; logs in {self.spec.log_dir}")

    def _on_signal(self, signum, _frame) -> None:
        if self.signal_received is not None:  # a second Ctrl-C: no more grace
            self._kill_all(signal.SIGKILL)
        self.signal_received = signum

    def _kill_all(self, sig: int) -> None:
        for child in self.children:
            try:
                os.killpg(child.popen.pid, sig)  # the child's whole session: its own children too
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace: float) -> None:
        """SIGTERM every process group, wait up to `grace` seconds, then SIGKILL what is left."""
        alive = [c for c in self.children if c.popen.poll() is None]
        if alive:
            self._kill_all(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(c.popen.poll() is None for c in alive):
                self._pump()
                time.sleep(POLL_S)
        self._kill_all(signal.SIGKILL)  # also reaches grandchildren of children that already exited
        for child in self.children:
            child.popen.wait()
        self._pump(final=True)

    def _pump(self, final: bool = False) -> None:
        for tail in self.tails:
            tail.pump(final)
        self.console.tick()

    def _hidden_counts(self) -> None:
        """How many MindSpore lines each log holds that the console did not show."""
        if self.spec.show_ms_logs:
            return
        logs = [c.log for c in self.children]
        summary = hidden_summary(logs)
        if summary:
            say(f"MindSpore's own log lines stay in the logs ({summary}); --show_ms_logs or GLOG_v shows them")

    def _not_formed(self) -> str:
        server = server_of(self.spec.launch_mode)
        return (f"MindSpore's cluster did not form within --cluster_time_out {self.spec.cluster_time_out} s: not "
                f"all {self.spec.worker_num} workers reached {server} at {self.spec.master_addr}:"
                f"{self.spec.master_port}. Start the other nodes' launchers with the same --master_addr/"
                f"--master_port and --worker_num, or raise --cluster_time_out")

    def monitor(self) -> Outcome:
        """Watch the group until it succeeds, one process fails, time runs out or a signal arrives."""
        started = time.monotonic()
        scheduler = next((c for c in self.children if c.key == -1), None)
        workers = [c for c in self.children if c.key >= 0]
        # only beside a scheduler of ours (dynamic mode, no simulation), or in store mode (rank 0 serves the
        # store at the master address): they tell a MindSpore cluster job (the server lives as long as the
        # workers) from a script that never joins one; elsewhere, or with --cluster_time_out -1, MindSpore's
        # own MS_TOPO_TIMEOUT decides
        store = self.spec.launch_mode == "store"
        watch = (ConnectionWatch(self.spec.master_addr, self.spec.master_port)
                 if workers and (scheduler is not None or store) and self.spec.cluster_time_out >= 0 else None)
        allowance = min(STARTUP_ALLOWANCE_S, max(MIN_ALLOWANCE_S, float(self.spec.cluster_time_out)))
        next_check = 0.0
        while True:
            self._pump()
            if self.signal_received is not None:
                return Outcome(State.INTERRUPTED, 128 + self.signal_received,
                               how=signal.Signals(self.signal_received).name)
            for child in self.children:
                code = child.popen.poll()
                if code not in (None, 0):
                    return Outcome(State.FAILED, exit_code(code), child, describe(code))
            if workers and all(c.popen.poll() == 0 for c in workers):
                if scheduler is not None and scheduler.popen.poll() is None:
                    try:
                        scheduler.popen.wait(SCHEDULER_EXIT_WAIT_S)
                    except subprocess.TimeoutExpired:
                        say(f"scheduler still running {SCHEDULER_EXIT_WAIT_S:.0f} s after all workers exited; "
                            f"stopping it")
                        return Outcome(State.SUCCEEDED)
                    if scheduler.popen.returncode:
                        return Outcome(State.FAILED, exit_code(scheduler.popen.returncode), scheduler,
                                       describe(scheduler.popen.returncode))
                return Outcome(State.SUCCEEDED)
            if not workers and scheduler is not None and scheduler.popen.poll() == 0:
                return Outcome(State.SUCCEEDED)
            now = time.monotonic()
            if watch is not None and scheduler is not None and scheduler.popen.poll() is not None:
                watch = None  # MindSpore's scheduler lives as long as its workers: this script is no cluster job
            if watch is not None and now >= next_check:
                next_check = now + REGISTRATION_CHECK_S
                watch.update(workers)
                missing = watch.missing(workers)
                if watch.unreadable:  # never fail a job on what we cannot see
                    say("cannot read the workers' sockets (the kernel hides them); the registration backstop is "
                        "off and MindSpore's own MS_TOPO_TIMEOUT ends a cluster that never forms")
                    watch = None
                elif not missing:
                    watch = None  # every local worker reached the scheduler: nothing more to check
                elif now - started > self.spec.cluster_time_out + allowance:
                    names = [c.name for c in workers if c.key in missing]
                    late = next(c for c in workers if c.key in missing)
                    server = server_of(self.spec.launch_mode)
                    return Outcome(State.FAILED, 1, late, f"never connected to {server}", describe_missing(
                        names, len(workers), self.spec.master_addr, self.spec.master_port,
                        self.spec.cluster_time_out, server))
            time.sleep(POLL_S)

    def report(self, outcome: Outcome) -> None:
        child = outcome.child
        if outcome.state is State.FAILED and child is not None:
            say(f"{child.name} (pid {child.popen.pid}) failed: {outcome.how}")
            lines = last_lines(child.log)
            if lines:
                say(f"last {len(lines)} lines of {child.log}:")
                for line in lines:
                    print(f"    {line}", file=sys.stderr)
            if outcome.advice:
                say(outcome.advice)
            elif any(t in line for t in TOPOLOGY_FAILURES for line in lines):
                say(self._not_formed())
            elif self.spec.launch_mode == "store" and any(PLAIN_INIT in line for line in lines):
                say("--launch_mode store starts no scheduler, so MindSpore's init() finds no cluster: join with "
                    "`from launcher.join import join_cluster; join_cluster()` (mindrun's trainer does), or launch "
                    "with --launch_mode dynamic")
        elif outcome.state is State.INTERRUPTED:
            say(f"received {outcome.how}: stopped all processes (exit {outcome.code})")

    def run(self) -> int:
        """Start, supervise and (up to --max_restarts times) restart the group; return the exit code."""
        if self.spec.dry_run:
            return self.dry_run()
        for note in self.spec.notes:
            say(note)
        if self.cleared:
            say(f"cleared inherited variables: {', '.join(self.cleared)}")
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        self.watchdog = watchdog.Watchdog()
        global _console
        _console = self.console
        try:
            restart = 0
            while True:
                if (self.spec.run_scheduler and self.spec.launch_mode == "dynamic") or hosts_store(self.spec):
                    from launcher.ports import check_master_port

                    check_master_port(self.spec.master_addr, self.spec.master_port)
                self._start(restart)
                outcome = self.monitor()
                succeeded = outcome.state is State.SUCCEEDED
                self.stop(0 if succeeded else self.spec.grace_period)
                self.console.close()
                self._hidden_counts()
                if succeeded:
                    say("all processes exited successfully")
                    return 0
                self.report(outcome)
                if outcome.state is State.FAILED and restart < self.spec.max_restarts:
                    restart += 1
                    say(f"restarting the whole group ({restart} of {self.spec.max_restarts})")
                    continue
                return outcome.code
        finally:
            self.console.close()
            _console = None
            self.watchdog.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def process_table(processes: Dict[str, Dict[str, str]]) -> List[str]:
    """--dry_run's view of the processes to start (name -> `Agent._described`): one process as a block of lines;
    several as one block of what they all share, then a table of what differs (a row per process, "-" where a
    process lacks the setting), so 8 or 16 ranks stay readable. Keys ending in "=" are environment variables."""
    def line(key: str, value: str) -> str:
        return f"  {key}{value}" if key.endswith("=") else f"  {key}: {value}"

    names = list(processes)
    if len(names) == 1:
        return [f"{names[0]}:"] + [line(k, v) for k, v in processes[names[0]].items()]
    keys = list(dict.fromkeys(k for described in processes.values() for k in described))
    first = processes[names[0]]
    common = [k for k in keys if all(d.get(k, None) == first.get(k) and k in d for d in processes.values())]
    differ = [k for k in keys if k not in common]
    out = [f"every process ({', '.join(names)}):"] + [line(k, first[k]) for k in common]
    if differ:
        header = ["process"] + [k.rstrip("=") for k in differ]
        rows = [[name] + [processes[name].get(k, "-") for k in differ] for name in names]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        out.append("each process (what differs):")
        out += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return out
