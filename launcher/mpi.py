"""mpirun mode: `mpirun -n N mindrun launch [options] SCRIPT`; each MPI process runs one worker.

Rank, size and local rank come from mpi4py. MPI rank 0 picks the scheduler's address and port
and broadcasts them; in rank-table mode every process reports its node and NPU address, rank 0
builds the HCCL rank table and broadcasts it, and each node writes it once.
"""
import socket
from typing import Dict, Tuple

from launcher import devices, ranks, ranktable
from launcher.errors import LaunchError


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise LaunchError("mpirun mode needs mpi4py: pip install 'mindrun[mpi]'") from None
    return MPI


def _shape(comm, MPI) -> Dict:
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    host = socket.gethostname()
    hosts = comm.allgather(host)
    order = list(dict.fromkeys(hosts))  # nodes in order of their first MPI rank
    local_sizes = {h: hosts.count(h) for h in order}
    if len(set(local_sizes.values())) > 1:
        raise LaunchError(f"mpirun placed different process counts on the nodes ({local_sizes}); "
                          f"use the same count per node (e.g. mpirun --map-by ppr:8:node)")
    return {"rank": comm.Get_rank(), "size": comm.Get_size(), "local_rank": node_comm.Get_rank(),
            "local_size": node_comm.Get_size(), "node_rank": order.index(host), "nodes": len(order),
            "host": host, "single_host": len(order) == 1, "node_comm": node_comm}


def run_under_mpi(cli: Dict) -> int:
    """Resolve this process's worker from MPI, then supervise it like the agent does."""
    MPI = _mpi()
    comm = MPI.COMM_WORLD
    from launcher.agent import Agent
    from launcher.discovery import resolve
    from launcher.ports import free_port
    from launcher.spec import resolve as resolve_spec

    shape = _shape(comm, MPI)
    if cli.get("max_restarts"):
        raise LaunchError("--max_restarts is not available under mpirun: mpirun owns the processes")
    error = None
    endpoint = None
    if shape["rank"] == 0:
        try:
            addr = cli.get("master_addr") or ("127.0.0.1" if shape["single_host"] else resolve(shape["host"]))
            port = cli.get("master_port") or free_port(addr if shape["single_host"] else "0.0.0.0")
            endpoint = (addr, port)
        except LaunchError as exc:
            error = str(exc)
    endpoint, error = comm.bcast((endpoint, error), root=0)
    if error:
        raise LaunchError(error)
    cli = dict(cli, worker_num=shape["size"], local_worker_num=shape["local_size"], node_rank=shape["node_rank"],
               master_addr=endpoint[0], master_port=endpoint[1])
    spec = resolve_spec(cli)
    spec.only_local = shape["local_rank"]
    spec.fixed_rank = shape["rank"]
    spec.run_scheduler = spec.launch_mode == "dynamic" and shape["rank"] == 0
    spec.tail_ranks = [0]
    if spec.launch_mode == "ranktable":
        if spec.rank_table_file:
            path, table, server = _given_rank_table(spec, shape)
        else:
            path, table, server = _rank_table(comm, shape, spec)
        return Agent(spec, ranks.table_workers(spec, table, path, server), rank_table=path).run()
    return Agent(spec, ranks.dynamic_workers(spec)).run()


def _given_rank_table(spec, shape: Dict) -> Tuple[str, Dict, str]:
    """--rank_table_file under mpirun: that table as written (validated against the MPI world size), this node's
    server in it, and this node's devices as the table lists them (MPI local rank i takes the server's i-th)."""
    from launcher import ranktable_job

    path, table = ranktable_job.prepare(spec)  # world_size is the MPI world's here
    server = ranks.this_server(table, spec)
    pairs = ranktable.server_devices(table, server)
    if len(pairs) != shape["local_size"]:
        raise LaunchError(f"{path}: server {server} has {len(pairs)} devices but mpirun started "
                          f"{shape['local_size']} processes on this node")
    spec.device_ids = [device for _, device in pairs]
    return path, table, server


def _rank_table(comm, shape: Dict, spec) -> Tuple[str, Dict, str]:
    """Gather every process's (server, device, device IP); rank 0 builds the table; each node writes it once."""
    device = spec.device_ids[shape["local_rank"]]
    mine, error = None, None
    try:
        node = spec.cluster.nodes[shape["node_rank"]] if spec.cluster else None
        server = node.host if node is not None else (
            "127.0.0.1" if shape["single_host"] else socket.gethostbyname(shape["host"]))
        configured = dict(zip(node.ids(), node.device_ips)) if node is not None and node.device_ips else None
        mine = (server, device, devices.lookup_ips([device], configured)[device])
    except LaunchError as exc:
        error = f"MPI rank {shape['rank']}: {exc}"
    gathered = comm.gather((mine, error), root=0)
    table, failure = None, None
    if shape["rank"] == 0:
        failure = next((e for _, e in gathered if e), None)
        if failure is None:
            servers: Dict[str, list] = {}
            for server, dev, ip in (m for m, _ in gathered):
                servers.setdefault(server, []).append((dev, ip))
            try:
                table = ranktable.build([(s, sorted(d)) for s, d in servers.items()])
            except LaunchError as exc:
                failure = str(exc)
    table, failure = comm.bcast((table, failure), root=0)
    if failure:
        raise LaunchError(failure)
    path = spec.log_dir / "rank_table.json"
    if shape["local_rank"] == 0:
        ranktable.write(table, path)
    shape["node_comm"].Barrier()
    return str(path.resolve()), table, mine[0]
