"""The launcher's subcommands of `mindrun`: launch, ranktable (generate | merge | validate), doctor.

    mindrun launch --worker_num 2 --local_worker_num 2 train.py --lr 1e-3
    mindrun launch --cluster cluster_configs/ascend_1x8.yaml -m trainer train --config base
    mindrun launch --worker_num 16 --local_worker_num 8 --node_rank 1 --master_addr 10.0.0.1 train.py
    mindrun launch --launch_mode ranktable --visible_devices 4,5,6,7 train.py
    mpirun -n 16 mindrun launch --mpi train.py
    mindrun doctor --cluster cluster_configs/ascend_1x8.yaml

`SUBCOMMANDS` is the one dispatch table: `mindrun` (trainer/cli.py) and `python -m launcher` both
use it. msrun's options keep msrun's names and meanings; a bad option, cluster file or rank table
exits with code 2 and a one-line reason, before any process starts.
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from launcher.errors import LaunchError


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def launch_parser() -> argparse.ArgumentParser:
    """Options of `mindrun launch` (msrun's names first, then mindrun's own)."""
    p = OneLineParser(prog="mindrun launch", description="Start one worker process per device, "
                                "msrun-style, and supervise them.")
    ms = p.add_argument_group("msrun options (same names and meanings)")
    ms.add_argument("--worker_num", type=int, help="workers in the whole job (msrun default 8)")
    ms.add_argument("--local_worker_num", type=int, help="workers on this node (msrun default 8)")
    ms.add_argument("--master_addr", help="scheduler address (default 127.0.0.1)")
    ms.add_argument("--master_port", type=int, help="scheduler port (default 8118; 0 = pick a free one)")
    ms.add_argument("--node_rank", type=int, help="this node's index; rank = node_rank x local_worker_num + i")
    ms.add_argument("--log_dir", help="per-rank logs: scheduler.log, worker_{rank}.log (default mindrun_logs)")
    ms.add_argument("--join", type=_bool, default=True,
                    help="accepted for msrun scripts; mindrun always waits for and supervises its workers")
    ms.add_argument("--cluster_time_out", type=int, help="seconds for all workers to register (default 600; "
                    "-1 = wait forever)")
    ms.add_argument("--bind_core", help="True: pin each local worker to its own cores (NUMA-aware); or a dict "
                    "like '{\"device0\": [\"0-3\"], \"scheduler\": [\"8\"]}' (JSON, or a .json file)")
    ms.add_argument("--bind_numa", help="True: each local worker's CPUs and memory on one NUMA node "
                    "(memory through numactl); or a dict of NUMA nodes like '{\"device0\": [\"0\"]}'")
    ms.add_argument("--sim_level", type=int, choices=[0, 1, 2, 3], help="MindSpore's simulation (dry-run "
                    "compile without devices): exported as MS_SIMULATION_LEVEL; no scheduler is started")
    ms.add_argument("--sim_rank_id", type=int, help="with --sim_level: start only this rank (RANK_ID)")
    ms.add_argument("--rank_table_file", help="HCCL rank table (exported as RANK_TABLE_FILE)")
    ms.add_argument("--worker_log_name", help="worker log name before _<rank>.log (default worker); {ip} and "
                    "{hostname} are replaced by this node's")
    ms.add_argument("--tail_worker_log", help="ranks echoed to the console, e.g. 0,1; -1 = all (default: "
                    "this node's first rank)")
    own = p.add_argument_group("mindrun options")
    own.add_argument("--cluster", help="cluster description (cluster_configs/*.yaml); options above override it")
    own.add_argument("--launch_mode", choices=["dynamic", "ranktable", "store"],
                     help="dynamic: scheduler + workers (CPU/GPU/Ascend); ranktable: Ascend, no scheduler; store: "
                     "no scheduler, rank 0 hosts the cluster's store (scripts join with launcher.join.join_cluster; "
                     "the trainer does; ran on CPU only)")
    own.add_argument("--visible_devices", help="physical NPUs for this node's workers, e.g. 4,5,6,7: exported as "
                     "ASCEND_RT_VISIBLE_DEVICES (DEVICE_ID is then 0..n-1) and used in the rank table")
    own.add_argument("--max_restarts", type=int, default=0,
                     help="restart the whole group this many times after a failure (MINDRUN_RESTART_COUNT)")
    own.add_argument("--grace_period", type=float, help="seconds between SIGTERM and SIGKILL (default 15)")
    own.add_argument("--mpi", action="store_true", help="running under mpirun: ranks come from mpi4py "
                     "(detected automatically from OMPI_/PMI_ variables)")
    own.add_argument("--dry_run", action="store_true", help="print each process's command and environment")
    own.add_argument("--show_ms_logs", action="store_true", help="also show MindSpore's own INFO/WARNING log "
                     "lines on the console (they are always in the log files; GLOG_v set does the same)")
    own.add_argument("--progress_interval", type=float, help="seconds between progress lines when the console "
                     "is not a terminal (default 30; on a terminal the lines update in place)")
    p.add_argument("-m", dest="module", help="run a Python module (like python -m)")
    p.add_argument("script", nargs="?", help="training script (.py) or program")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    return p


def _cli_dict(ns: argparse.Namespace) -> dict:
    args = list(ns.args or [])
    script = ns.script
    if ns.module and script is not None:  # `-m trainer train --config x`: everything after is the module's
        args, script = [script] + args, None
    return {"worker_num": ns.worker_num, "local_worker_num": ns.local_worker_num, "master_addr": ns.master_addr,
            "master_port": ns.master_port, "node_rank": ns.node_rank, "log_dir": ns.log_dir,
            "cluster_time_out": ns.cluster_time_out, "bind_core": ns.bind_core, "bind_numa": ns.bind_numa,
            "sim_level": ns.sim_level, "sim_rank_id": ns.sim_rank_id, "worker_log_name": ns.worker_log_name,
            "rank_table_file": ns.rank_table_file, "launch_mode": ns.launch_mode, "cluster": ns.cluster,
            "max_restarts": ns.max_restarts, "grace_period": ns.grace_period, "dry_run": ns.dry_run,
            "tail_worker_log": ns.tail_worker_log, "show_ms_logs": ns.show_ms_logs,
            "progress_interval": ns.progress_interval, "visible_devices": ns.visible_devices, "script": script,
            "module": ns.module, "args": args}


def under_mpi(env=os.environ) -> bool:
    """True when mpirun/mpiexec started this process (Open MPI, MPICH/PMI, PMIx)."""
    return any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"))


def known_options(parser: argparse.ArgumentParser) -> set:
    """Every option string of `parser` and of its sub-commands' parsers."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        for sub in (getattr(action, "choices", None) or {}).values() if isinstance(action, argparse._SubParsersAction) \
                else ():
            found |= known_options(sub)
    return found


def respell(argv: Optional[List[str]], known: set, stop: Optional[int] = None) -> List[str]:
    """`--x_y` and `--x-y` both accepted: an option spelt with the other separator than the parser's is
    rewritten to the parser's spelling (msrun's underscores are canonical for launch, dashes elsewhere). Only
    argv[:stop] is looked at (the rest belongs to the launched program), and nothing after `--`. argv None:
    this process's command line."""
    out = list(sys.argv[1:] if argv is None else argv)
    for i, token in enumerate(out[:stop]):
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name, eq, value = token.partition("=")
        if name in known:
            continue
        body = name[2:]
        for other in (body.replace("_", "-"), body.replace("-", "_")):
            if f"--{other}" in known:
                out[i] = f"--{other}{eq}{value}"
                break
    return out


def _program_index(parser: argparse.ArgumentParser, argv: List[str]) -> int:
    """Where the launched program (script or -m MODULE) starts in a launch command line."""
    flags = {o for a in parser._actions if a.nargs == 0 for o in a.option_strings}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--" or not token.startswith("-") or token.startswith("-m") and not token.startswith("--"):
            return i
        i += 1 if (token in flags or "=" in token) else 2
    return len(argv)


def split_module_args(parser: argparse.ArgumentParser, argv: List[str]):
    """(launcher argv up to and including `-m MODULE`, the module's own arguments) as msrun splits them: every
    argument after the module is the module's, even one that looks like a launcher option (`-m mymod --lr 3`,
    `-m mymod --tail_worker_log 1`). No `-m` before the script: (argv, None)."""
    i = _program_index(parser, argv)
    token = argv[i] if i < len(argv) else ""
    if token == "-m":
        return (argv[:i + 2], argv[i + 2:]) if i + 1 < len(argv) else (argv, None)
    if token.startswith("-m") and not token.startswith("--"):
        return argv[:i + 1], argv[i + 1:]  # -mMODULE
    return argv, None  # the script (or the end of options) comes first: argparse's REMAINDER keeps the rest


def launch_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `mindrun launch`; returns the job's exit code."""
    parser = launch_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = respell(argv, known_options(parser), _program_index(parser, argv))
    own, module_args = split_module_args(parser, argv)
    ns = parser.parse_args(own)
    if module_args is not None:
        ns.script, ns.args = None, module_args
    try:
        cli = _cli_dict(ns)
        if ns.mpi or under_mpi():
            from launcher.mpi import run_under_mpi

            return run_under_mpi(cli)
        from launcher import ranks
        from launcher.agent import Agent, say
        from launcher.spec import resolve

        spec = resolve(cli, probe_port=True)  # a busy master port is refused before the log directory exists
        if not ns.join:
            say("--join False is accepted for msrun scripts; mindrun still supervises its workers")
        if spec.launch_mode == "ranktable":
            from launcher import ranktable_job

            path, table = ranktable_job.prepare(spec)
            if spec.dry_run and not spec.rank_table_file:
                from launcher.ranktable import dumps

                print(f"rank table (--dry_run: not written to {path}) =")
                print(dumps(table))
            return Agent(spec, ranks.table_workers(spec, table, path), rank_table=path).run()
        return Agent(spec, ranks.dynamic_workers(spec)).run()
    except LaunchError as exc:
        print(f"mindrun launch: error: {exc}", file=sys.stderr)
        return 2


def ranktable_parser() -> argparse.ArgumentParser:
    """Options of `mindrun ranktable`."""
    p = argparse.ArgumentParser(prog="mindrun ranktable", description="HCCL rank tables: generates version 1.0, "
                                "reads and validates 1.0 and 1.2 (Atlas A3 SuperPoD).")
    sub = p.add_subparsers(dest="action", required=True)
    g = sub.add_parser("generate", help="write a rank table for this node or for a cluster file")
    g.add_argument("--cluster", help="cluster file: one server per node, device IPs from it or from hccn")
    g.add_argument("--devices", help="this node's devices, e.g. 0-7 or 0,1,2,3 (no --cluster; default: the NPUs "
                   "'npu-smi info' lists, else those with an address in the hccn.conf file)")
    g.add_argument("--server_id", help="this node's address (default: its hostname's address, unless loopback)")
    g.add_argument("--device_ip_source", choices=["auto", "hccn_tool", "hccn_conf"],
                   help="auto (default; a cluster file's own setting with --cluster): hccn_tool when on PATH, "
                   "else the hccn.conf file")
    g.add_argument("--hccn_conf", help="default /etc/hccn.conf (or the cluster file's hccn_conf)")
    g.add_argument("-o", "--output", required=True, help="file to write (atomically, mode 0640)")
    m = sub.add_parser("merge", help="merge per-node tables (one version), order servers by server_id, "
                       "renumber ranks")
    m.add_argument("tables", nargs="+")
    m.add_argument("-o", "--output", required=True)
    v = sub.add_parser("validate", help="check a rank table; exit 2 naming the server and device at fault")
    v.add_argument("table")
    v.add_argument("--world_size", type=int, help="also check the table has this many devices")
    return p


def ranktable_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `mindrun ranktable`."""
    from launcher import devices, ranktable, ranktable_job
    from launcher.cluster import load_cluster

    parser = ranktable_parser()
    ns = parser.parse_args(respell(argv, known_options(parser)))
    try:
        if ns.action == "generate":
            if ns.cluster:
                servers = ranktable_job.cluster_servers(load_cluster(ns.cluster), source=ns.device_ip_source,
                                                        hccn_conf=ns.hccn_conf)
            else:
                hccn_conf = ns.hccn_conf or devices.HCCN_CONF
                if ns.devices:
                    ids = devices.parse_device_list(ns.devices, "--devices")
                else:
                    ids, found_in = ranktable_job.default_devices(hccn_conf)
                    print(f"[mindrun] devices {devices.format_device_list(ids)} from {found_in}; "
                          f"pass --devices to choose", file=sys.stderr, flush=True)
                servers = ranktable_job.this_host_servers(ids, ns.server_id, ns.device_ip_source or "auto",
                                                          hccn_conf, loopback_ok=False)
            table = ranktable.build(servers)
            ranktable.write(table, ns.output)
            print(f"wrote {ns.output}: {len(table['server_list'])} server(s), {ranktable.world_size(table)} devices")
        elif ns.action == "merge":
            tables = [ranktable.load(t) for t in ns.tables]
            table = ranktable.merge(tables, ns.tables)
            ranktable.write(table, ns.output)
            print(f"wrote {ns.output}: {len(table['server_list'])} servers, {ranktable.world_size(table)} devices")
        else:
            table = ranktable.load(ns.table)
            ranktable.validate(table, ns.table, world_size=ns.world_size)
            ranktable_job.warn(ranktable.order_warning(table, ns.table))
            print(json.dumps({"file": str(Path(ns.table)), "version": table["version"],
                              "servers": len(table["server_list"]), "devices": ranktable.world_size(table),
                              "valid": True}))
        return 0
    except LaunchError as exc:
        print(f"mindrun ranktable: error: {exc}", file=sys.stderr)
        return 2


def doctor_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `mindrun doctor`."""
    from launcher.doctor import main as doctor

    return doctor(argv)


@dataclass(frozen=True)
class Subcommand:
    """A `mindrun` subcommand the launcher package owns."""

    main: Callable[[Optional[List[str]]], int]  # takes the arguments after the subcommand's name
    help: str


SUBCOMMANDS: Dict[str, Subcommand] = {
    "launch": Subcommand(launch_main, "start workers msrun-style: mindrun launch --help"),
    "ranktable": Subcommand(ranktable_main, "HCCL rank tables: mindrun ranktable --help"),
    "doctor": Subcommand(doctor_main, "preflight checks of NPUs, network, rank table, ports, versions, storage"),
}


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m launcher [launch options] SCRIPT`, or `python -m launcher launch|ranktable|doctor ...`."""
    from launcher.console import closed_pipe_safe

    return closed_pipe_safe(_main, argv)


def _main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]].main(argv[1:])
    return launch_main(argv)
