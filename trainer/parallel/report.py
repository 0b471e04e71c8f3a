"""What `mindrun plan` prints about size: parameters, FLOPs, memory per device, fit, ranked layouts."""
from typing import List, Optional, Tuple

from model.size import parameter_count
from trainer.config import RunConfig
from trainer.parallel.sizing import (GIB, HEADROOM, Fit, flops_per_token, memory, memory_model, rank,
                                     rows_per_device, sequence_length)

ASSUMED_TFLOPS, ASSUMED_LINK = 100.0, 10.0  # when the cluster file gives no figures: the ranking's order only


def _gib(n: float) -> str:
    return f"{n / GIB:,.2f} GiB"


def host_share_gib(devices_per_node: int) -> Optional[float]:
    """This host's memory over its workers (a CPU "device"), from /proc/meminfo; None where that is missing."""
    try:
        with open("/proc/meminfo") as f:
            total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return round(total_kib / 1024 ** 2 / max(devices_per_node, 1), 1)


def sizing_report(cfg: RunConfig, vocab: int, dp: int, mp: int, cluster=None,
                  backend: str = "Ascend") -> Tuple[List[str], Optional[str]]:
    """(lines to print, an error naming the shortfall when the layout cannot fit the cluster's devices).
    `backend` picks the memory model (sizing.memory_model); a CPU cluster without device_memory_gib gets this
    host's memory over its busiest node's workers."""
    model, seq = cfg.model, sequence_length(cfg)
    runtime = memory_model(backend)
    params = parameter_count(model, vocab, vocab)
    mem = memory(cfg, vocab, dp, mp)
    act = "16-bit" if cfg.precision.level in ("O1", "O2", "O3") else "float32"
    rows = rows_per_device(cfg, dp)
    shard, recompute = cfg.parallel.optimizer_shard and dp > 1, cfg.model.recompute
    lines = [f"model: {model.arch}, {params:,} parameters (vocabulary {vocab:,}); "
             f"{flops_per_token(model, vocab, seq) / 1e9:,.2f} GFLOPs per training token (3 x forward matmuls)",
             f"memory per device at dp {dp} x mp {mp} (micro-batch {rows} x {seq} tokens, {act} activations):",
             f"  weights (float32)     {_gib(mem.weights):>14}",
             f"  gradients (float32)   {_gib(mem.gradients):>14}",
             f"  Adam moments          {_gib(mem.optimizer):>14}   sharded over dp {dp}: {_gib(mem.optimizer_sharded)} "
             f"(parallel.optimizer_shard=true)",
             f"  activations           {_gib(mem.activations):>14}   recompute selective: "
             f"{_gib(mem.activations_selective)}, full: {_gib(mem.activations_recompute)} (model.recompute)",
             f"  total                 {_gib(mem.total(shard, recompute)):>14}   with this config's levers "
             f"(optimizer_shard {str(shard).lower()}, recompute {recompute}), as the formula counts"]
    if runtime.is_formula:
        lines.append(f"  {runtime.describe()}")
    else:
        lines.append(f"  as {runtime.backend} holds it       {_gib(mem.total(shard, recompute, runtime)):>14}   "
                     f"{runtime.describe()}")
    device = cluster.device_memory_gib if cluster is not None else None
    if cluster is not None and not device and runtime.backend == "cpu":
        workers = max(n.devices for n in cluster.nodes)
        device = host_share_gib(workers)
        if device:
            lines.append(f"  (cpu: a device is this host's memory over its {workers} workers, {device:.1f} GiB)")
    if not device:
        lines.append("  (give --cluster with device_memory_gib to check the fit and rank layouts)")
        return lines, None
    here = Fit(dp, mp, mem, device * GIB, shard, recompute, runtime)
    verdict = "fits" if here.fits else "does NOT fit"
    lines.append(f"  of {device:g} GiB per device ({_gib(here.usable)} usable with {HEADROOM:.0%} headroom): "
                 f"{verdict}")
    peak = (cluster.device_peak_tflops or ASSUMED_TFLOPS) * 1e12
    link = (cluster.link_gbytes_s or ASSUMED_LINK) * 1e9
    assumed = "" if cluster.device_peak_tflops and cluster.link_gbytes_s else " (assumed peak and bandwidth)"
    ranked = rank(cfg, vocab, cluster.worker_num, device, peak, link, runtime)
    lines.append(f"layouts for {cluster.worker_num} devices of {device:g} GiB ({cluster.name}), fitting ones by "
                 f"estimated step time{assumed}:")
    lines.append("     dp   mp   per device  est. step  note")
    fastest = next((r for r in ranked if r.seconds is not None), None)
    for r in ranked:
        if r.seconds is not None:
            note, when = "fits" + _levers(r.fit), f"{r.seconds:.3f} s"
        else:
            note, when = ("does not fit, even with optimizer sharding and full recompute" if runtime.levers_free
                          else f"does not fit (the levers free no memory on {runtime.backend})"), "-"
        marks = [m for m, on in (("this config", (r.fit.dp, r.fit.mp) == (dp, mp)), ("fastest", r is fastest)) if on]
        note += f"  <- {', '.join(marks)}" if marks else ""
        lines.append(f"  {r.fit.dp:>5} {r.fit.mp:>4}  {r.fit.needed / GIB:>8.1f} GiB  {when:>9}  {note}")
    if fastest is not None:
        lines.append("select the fastest: " + " ".join(f"--set {s}" for s in fastest.settings()))
    problem = None
    if not here.fits:
        mine = next(r for r in ranked if (r.fit.dp, r.fit.mp) == (dp, mp))
        rescue = (f"it fits with {' '.join('--set ' + s for s in mine.settings()[2:])}; "
                  if mine.seconds is not None else "")
        fitting = [f"dp {r.fit.dp} x mp {r.fit.mp}" for r in ranked if r.seconds is not None]
        problem = (f"dp {dp} x mp {mp} of {cfg.name} {here.shortfall()}; {rescue}layouts that fit: "
                   f"{', '.join(fitting) or 'none'} (set parallel.model_parallel, see the table)")
    return lines, problem


def _levers(fit: Fit) -> str:
    """' with optimizer sharding + selective recompute' (the levers a fitting layout needs), or ''."""
    used = [n for n, on in (("optimizer sharding", fit.optimizer_shard),
                            (f"{fit.recompute} recompute", fit.recompute != "none")) if on]
    return f" with {' + '.join(used)}" if used else ""
