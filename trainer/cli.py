"""The `mindrun` command: one subcommand per job; `python -m trainer` is the same."""
import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional


MINDSPORE_OLDEST = (2, 10)  # the oldest MindSpore the trainer is tested with (pyproject.toml's train extra)


def _trainer_needs() -> Optional[str]:
    """None when MindSpore (a tested version) and the trainer's packages import, else what to install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("mindspore")
    except PackageNotFoundError:
        return ("MindSpore is not installed: `pip install 'mindrun[train]'` on a CPU machine, or on an Ascend "
                "server the MindSpore build matched to its CANN (then `pip install 'mindrun[train]'` keeps it)")
    numbers = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    if numbers < MINDSPORE_OLDEST:
        return (f"MindSpore {found} is older than {'.'.join(map(str, MINDSPORE_OLDEST))}, the oldest the trainer is "
                f"tested with; install MindSpore {'.'.join(map(str, MINDSPORE_OLDEST))} or newer")
    from importlib.util import find_spec

    for module, package in (("yaml", "pyyaml"), ("sentencepiece", "sentencepiece"), ("safetensors", "safetensors"),
                            ("sacrebleu", "sacrebleu"), ("tqdm", "tqdm"), ("tensorboardX", "tensorboardX")):
        if find_spec(module) is None:  # found, not imported: every worker runs this at start-up, and importing
            return f"the trainer needs {package}: `pip install 'mindrun[train]'`"  # tensorboardX imports torch
    return None


_STDERR_IS_TERMINAL = [sys.stderr.isatty()]  # as it was before MindSporeLinesAside put a pipe there


def _mindspore_lines_aside(command: str):
    """Run directly (not by `mindrun launch`, whose console does the same with the workers' logs), the console
    shows MindSpore's own log lines from ERROR up only: its INFO and WARNING lines (compile-cache misses, graph
    notes) go to a log file under the cache, counted at the end (launcher.console.MindSporeLinesAside). GLOG_v
    set by the user shows them all. Must start before MindSpore is imported; returns None where it does not
    apply (launched, or MindSpore already imported: a test process)."""
    from launcher.console import MindSporeLinesAside
    from launcher.environment import RESTART_COUNT
    from trainer.data.multi30k import cache_root

    launched = RESTART_COUNT in os.environ or "MS_ROLE" in os.environ or "RANK_ID" in os.environ
    if launched or "mindspore" in sys.modules or os.environ.get("GLOG_v", "").strip():
        return None
    logs = cache_root() / "logs"
    for old in sorted(logs.glob("mindspore-*.log"))[:-19]:  # the newest 20 kept
        old.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    _STDERR_IS_TERMINAL[0] = sys.stderr.isatty()
    try:
        return MindSporeLinesAside(logs / f"mindspore-{stamp}-{os.getpid()}-{command}.log")
    except OSError:  # no pipe or no writable cache: MindSpore's lines stay on the console
        return None


def _serve_as_scheduler() -> int:
    """MindSpore's scheduler (MS_ROLE=MS_SCHED) only hosts the cluster: join it with MindSpore alone, without
    the trainer's imports, so that the workers' imports do not share the cores with a third copy of them."""
    from mindspore.communication import init

    init()
    return 0


def _train(args) -> int:
    from trainer.config import load_config
    from trainer.train import train

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    # a worker restarted by `mindrun launch --max_restarts` resumes by itself
    if args.resume or int(os.environ.get("MINDRUN_RESTART_COUNT", "0") or 0) > 0:
        overrides.append("train.resume=auto")
    summary = train(load_config(args.config, overrides))
    from trainer.loop.summary import describe

    for line in describe(summary):
        print(line, flush=True)
    signum = summary.get("interrupted_by_signal")
    return 128 + int(signum) if signum else 0


def _evaluate(args) -> int:
    from trainer.evaluate import evaluate, evaluate_lm, print_scores
    from trainer.run_dir import run_config

    data = run_config(args.checkpoint).data
    if data.objective == "causal_lm":
        result = evaluate_lm(args.checkpoint, args.split or "valid", args.data, args.average)
    else:
        split = args.split or ("valid" if data.source == "tokens" else "test")
        result = evaluate(args.checkpoint, split, args.beam, args.length_penalty, args.batch_size,
                          args.data_dir, args.output, average=args.average, data=args.data)
    print_scores(result)
    return 0


def _translate(args) -> int:
    from trainer.evaluate import translate_stream

    translate_stream(args.checkpoint, sys.stdin, sys.stdout, args.beam, args.length_penalty, args.batch_size,
                     args.average)
    return 0


def _plan(args) -> int:
    from mindspore.nn.utils import no_init_parameters

    from launcher.cluster import load_cluster
    from launcher.environment import DEVICE_TARGETS
    from launcher.errors import LaunchError
    from model.parallel.layout import TRANSFORMER_LAYOUT, semi_auto_plan
    from trainer.build import build_model
    from trainer.config import ConfigError, load_config
    from trainer.parallel.plan import make_plan
    from trainer.parallel.report import sizing_report

    cfg = load_config(args.config, args.set)
    try:
        cluster = load_cluster(args.cluster) if args.cluster else None
    except LaunchError as exc:
        raise ConfigError(str(exc)) from None
    world = args.world_size or (cluster.worker_num if cluster else 1)
    backend = args.backend or (DEVICE_TARGETS[cluster.backend] if cluster else "Ascend")
    plan = make_plan(cfg, world, backend, vocab_size=args.vocab_size, for_execution=False)
    print(f"plan: {plan.describe()}")
    if plan.caveat:
        print(f"warning: {plan.caveat}")
    vocab = args.vocab_size or cfg.data.vocab_size
    lines, problem = sizing_report(cfg, vocab, plan.data_parallel, plan.model_parallel, cluster, backend)
    for line in lines:
        print(line)
    if args.strategies:
        print("hybrid layout (model parallel, Megatron-style):")
        for pattern, kind in TRANSFORMER_LAYOUT:
            print(f"  {pattern:<14} {kind}")
        with no_init_parameters():  # shapes only: a 7B model is not allocated to list its strategies
            model = build_model(cfg, vocab, vocab, backend)
        print(f"semi_auto shard() strategies (dp={plan.data_parallel}, mp={plan.model_parallel}), "
              f"used only with parallel.mode=semi_auto:")
        for path, op, strategy in semi_auto_plan(model, plan.data_parallel, plan.model_parallel):
            print(f"  {path:<44} {op:<12} {strategy}")
    else:
        print("(the layout table and every sharded operator's semi_auto strategy: add --strategies)")
    if problem:
        print(f"mindrun plan: error: {problem}", file=sys.stderr)
        return 2
    return 0


def _recipes():
    # the directory trainer.config reads (not imported here: it imports the model, hence MindSpore, and
    # `mindrun --help` must work on a launcher-only install)
    return sorted(p.stem for p in (Path(__file__).parent / "recipes").glob("*.yaml"))


def _parallel_sizes(text: str) -> Dict[str, int]:
    sizes = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = {"dp": "dp", "data_parallel": "dp", "mp": "mp", "model_parallel": "mp"}.get(key.strip())
        if key is None or not value.strip().isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"expected dp=N,mp=M with positive integers, got {text!r}")
        sizes[key] = int(value)
    return sizes


def _ckpt(args) -> int:
    from trainer.ckpt import tools

    if args.action == "inspect":
        info = tools.inspect(args.dir)
        print(json.dumps(info, indent=1) if args.json else tools.describe(info))
        return 0 if info["verified"] else 1
    if args.action == "merge":
        print(f"wrote {tools.merge(args.dir, args.out)}")
        return 0
    if args.action == "import-hf":
        from trainer.ckpt.hf import import_hf

        sizes = args.parallel or {}
        with _progress("tensors") as bar:
            step = import_hf(args.hf_dir, args.out, args.config, sizes.get("dp", 1), sizes.get("mp", 1),
                             args.set, progress=lambda name: bar.update(1))
        print(f"wrote {args.out} (config.yaml, {step.relative_to(args.out)}); fine-tune it with "
              f"--set train.init_from={args.out}")
        return 0
    if args.action == "export-hf":
        from trainer.ckpt.hf import export_hf

        with _progress("tensors") as bar:
            out = export_hf(args.dir, args.out, args.dtype, int(args.max_shard_gb * 2 ** 30),
                            progress=lambda name: bar.update(1))
        print(f"wrote {out} (config.json, safetensors); load it with transformers' "
              f"LlamaForCausalLM.from_pretrained('{out}')")
        return 0
    sizes = args.parallel
    out = tools.reshard(args.dir, sizes.get("mp", 1), sizes.get("dp", 1), args.out)
    print(f"wrote {out}")
    return 0


def _progress(unit: str):
    """A tqdm bar on stderr for long conversions (quiet when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(unit=f" {unit}", file=sys.stderr, disable=not _STDERR_IS_TERMINAL[0], leave=False)


def _generate(args) -> int:
    from trainer.config import ConfigError

    try:
        return _generate_or_raise(args)
    except ValueError as exc:  # a bad prompt, length or checkpoint kind: one line, exit 2
        raise ConfigError(str(exc)) from None


def _generate_or_raise(args) -> int:
    from model.generate import check_ids, generate, parse_ids
    from trainer.run_dir import load_language_model

    cfg, model, vocab = load_language_model(args.checkpoint)
    if args.prompt_ids is not None:
        prompt = parse_ids(args.prompt_ids)
    elif vocab is None:
        raise FileNotFoundError(f"{args.checkpoint}: the run has no vocab/ (imported without tokenizer.model): "
                                f"give --prompt-ids")
    else:
        prompt = [vocab.sp.bos_id()] + vocab.encode(args.prompt) if hasattr(vocab, "sp") else vocab.encode(args.prompt)
    check_ids(prompt, model.vocab)
    stops = [] if vocab is None or not hasattr(vocab, "sp") or vocab.sp.eos_id() < 0 else [vocab.sp.eos_id()]
    ids = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed,
                   [] if args.prompt_ids is not None else stops)
    if args.prompt_ids is not None or vocab is None:
        print(" ".join(str(i) for i in ids))
    else:
        print(vocab.sp.decode(ids) if hasattr(vocab, "sp") else vocab.decode(ids))
    return 0


def _data(args) -> int:
    from trainer.config import ConfigError
    from trainer.data.token_files import PrepareError, prepare

    pairs = args.format in ("parallel", "tsv")
    with _progress("sentences, both sides" if pairs else "documents") as bar:
        try:
            done = prepare(args.inputs, args.out, args.tokenizer, args.vocab_size, args.format, args.field,
                           args.workers, progress=bar.update)
        except PrepareError as exc:
            raise ConfigError(str(exc)) from None
    verb = "already prepared (same sources and tokenizer)" if done.skipped else "wrote"
    print(f"{verb} {done.directory}: {done.documents:,} {'pairs' if pairs else 'documents'}, {done.tokens:,} tokens")
    return 0


def _decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a step directory, <run>/checkpoints/best or latest, <run>/checkpoints, or a merged .ckpt")
    p.add_argument("--beam", type=int, help="beam size (1 = greedy); default from the run's config")
    p.add_argument("--length-penalty", type=float, help="fairseq-style length penalty exponent")
    p.add_argument("--batch-size", type=int, help="sentences per decoding batch")
    p.add_argument("--average", type=int, default=1, metavar="N",
                   help="use the mean weights of the checkpoint and the N-1 kept before it (fairseq's checkpoint "
                        "averaging; needs train.keep_last >= N)")


def versions() -> str:
    """mindrun's, MindSpore's and Python's versions, and the device MindSpore would use here."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        mindrun = version("mindrun")
    except PackageNotFoundError:
        mindrun = "unknown (not installed)"
    try:
        import mindspore

        ms_version = mindspore.__version__
        from trainer.parallel.context import select_backend

        device = select_backend()
    except Exception as exc:  # a broken MindSpore install is exactly what --version should reveal
        ms_version, device = f"not importable ({type(exc).__name__}: {exc})", "unknown"
    return (f"mindrun {mindrun}\nMindSpore {ms_version}\nPython {platform.python_version()} "
            f"({platform.python_implementation()}, {platform.machine()})\ndevice target: {device}")


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print mindrun's, MindSpore's and Python's versions "
                         "and the device MindSpore would use, then exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(versions())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """The full command-line surface (frozen by a test)."""
    parser = argparse.ArgumentParser(prog="mindrun", description="Transformer training on MindSpore.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a recipe")
    p.add_argument("--config", default="small", help=f"recipe name ({', '.join(_recipes())}) or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=5e-4 (repeatable)")
    p.add_argument("--data-dir", help="directory with the Multi30k .gz files (else $MINDRUN_DATA_DIR or download)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in <run>/checkpoints if there is one "
                        "(same as --set train.resume=auto)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="BLEU/chrF of a checkpoint on a Multi30k split, or a language model's "
                                        "perplexity")
    _decoding_options(p)
    p.add_argument("--split", choices=["train", "valid", "test"],
                   help="default: test on Multi30k; valid for runs on prepared data (their data.valid; train: "
                        "data.train)")
    p.add_argument("--data", help="a prepared corpus to score instead (`mindrun data prepare` with the run's "
                                  "tokenizer): documents for a causal_lm run, pairs for translation")
    p.add_argument("--data-dir", help="directory with the Multi30k .gz files")
    p.add_argument("--output", type=Path, help="also write the translations here")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("translate", help="translate source lines from stdin to stdout")
    _decoding_options(p)
    p.set_defaults(func=_translate)

    p = sub.add_parser("plan", help="check a parallel layout: parameters, memory per device, the layouts that fit")
    p.add_argument("--config", default="small", help=f"recipe name ({', '.join(_recipes())}) or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--world-size", type=int, help="workers in the job (default: the cluster file's, else 1)")
    p.add_argument("--cluster", help="cluster file (cluster_configs/*.yaml): check the memory fit against its "
                   "device_memory_gib and rank every layout for its devices")
    p.add_argument("--backend", choices=["CPU", "GPU", "Ascend"], help="where it would run, which picks the memory "
                   "model (default: the cluster file's backend, else Ascend)")
    p.add_argument("--vocab-size", type=int, help="the real vocabulary size (default: data.vocab_size)")
    p.add_argument("--strategies", action="store_true", help="also print the layout table and every sharded "
                   "operator's shard() strategy (parallel.mode=semi_auto)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("ckpt", help="inspect, merge or reshard a sharded checkpoint")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("inspect", help="what a checkpoint holds, its layout and sizes, and whether its files verify")
    a.add_argument("dir", type=Path, help="a step directory, a pointer (best, latest) or <run>/checkpoints")
    a.add_argument("--json", action="store_true", help="print JSON")
    a = actions.add_parser("merge", help="one full MindSpore checkpoint (weights) for inference")
    a.add_argument("dir", type=Path)
    a.add_argument("out", type=Path, help="the .ckpt file to write")
    a = actions.add_parser("reshard", help="a copy split for another layout (resume also reshards on load)")
    a.add_argument("dir", type=Path)
    a.add_argument("--parallel", type=_parallel_sizes, required=True, metavar="dp=N,mp=M")
    a.add_argument("--out", type=Path, help="where (default: beside it, <step>-dp<N>-mp<M>)")
    a = actions.add_parser("import-hf", help="a run directory from a Hugging Face Llama directory (config.json + "
                           "safetensors [+ tokenizer.model])")
    a.add_argument("hf_dir", type=Path)
    a.add_argument("--out", type=Path, required=True, help="the run directory to write")
    a.add_argument("--config", help="a recipe to check config.json against and take the other sections from "
                   "(default: llama2_7b's)")
    a.add_argument("--parallel", type=_parallel_sizes, metavar="dp=N,mp=M", help="the layout to split for")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    a = actions.add_parser("export-hf", help="a Hugging Face Llama directory (config.json + safetensors + index) "
                           "from a step directory")
    a.add_argument("dir", type=Path, help="a step directory, a pointer (best, latest) or <run>/checkpoints")
    a.add_argument("out", type=Path, help="the directory to write")
    a.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    a.add_argument("--max-shard-gb", type=float, default=2.0, help="largest safetensors file (GiB)")
    p.set_defaults(func=_ckpt)

    p = sub.add_parser("data", help="prepare your own corpus: tokenize it once into indexed token files")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("prepare", help="tokenize text files into DIR (tokens.bin, index.npy, manifest.json)")
    a.add_argument("inputs", nargs="+", type=Path, help="text or JSONL files; parallel: SOURCE TARGET")
    a.add_argument("--out", type=Path, required=True, help="the prepared directory to write")
    a.add_argument("--tokenizer", type=Path, help="a sentencepiece .model to encode with")
    a.add_argument("--vocab-size", type=int, help="instead of --tokenizer: train a BPE model of this size on a "
                   "sample of the corpus")
    a.add_argument("--format", default="lines", choices=["lines", "blank_lines", "jsonl", "parallel", "tsv"],
                   help="documents (a language model): one per line (default), blank-line separated, or JSON "
                        "lines; sentence pairs (translation): two line-aligned files (parallel) or "
                        "source<TAB>target lines (tsv)")
    a.add_argument("--field", default="text", help="the JSONL field holding the text (default: text)")
    a.add_argument("--workers", type=int, help="encoding threads (default: the CPU count)")
    p.set_defaults(func=_data)

    p = sub.add_parser("generate", help="continue a prompt with a decoder-only model (key/value cache)")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a run directory's step directory, pointer (best, latest) or <run>/checkpoints")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text, encoded with the run's tokenizer (BOS first)")
    prompt.add_argument("--prompt-ids", help='token ids, e.g. "1 17 42"; the output is ids too')
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's probability mass")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_generate)

    # Handed to the launcher package before parsing (see main); listed here for --help.
    from launcher.cli import SUBCOMMANDS

    for name, command in SUBCOMMANDS.items():
        sub.add_parser(name, add_help=False, help=command.help)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `mindrun` console script."""
    from launcher.console import closed_pipe_safe

    return closed_pipe_safe(_main, argv)


def _main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from launcher.cli import SUBCOMMANDS  # launch, ranktable, doctor: dispatched by the launcher's own table

    if argv[:1] and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]].main(argv[1:])
    aside = None
    if argv[:1] and not argv[0].startswith("-") and os.environ.get("MS_ROLE") != "MS_SCHED":
        missing = _trainer_needs()  # before the parser: listing the recipes imports the model, hence MindSpore
        if missing:
            print(f"mindrun {argv[0]}: error: {missing}", file=sys.stderr)
            return 2
        aside = _mindspore_lines_aside(argv[0])
    try:
        return _run(argv)
    finally:
        line = aside.close() if aside is not None else None
        if line:
            print(line, file=sys.stderr)


def _run(argv: List[str]) -> int:
    from launcher.cli import known_options, respell

    parser = build_parser()
    args = parser.parse_args(respell(argv, known_options(parser)))
    if args.command == "train" and os.environ.get("MS_ROLE") == "MS_SCHED":  # msrun-style launchers run the
        return _serve_as_scheduler()                                          # worker command there too
    from trainer.ckpt.single_file import CheckpointError  # imports MindSpore: not needed by the launcher's subcommands
    from trainer.config import ConfigError
    from trainer.data.multi30k import DataError
    from trainer.data.token_files import PrepareError
    from trainer.precision import ScaleCollapsed

    try:
        return args.func(args)
    except (ConfigError, DataError, PrepareError, CheckpointError, FileNotFoundError, FileExistsError) as exc:
        print(f"mindrun {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ScaleCollapsed as exc:  # the run itself failed: not a usage error
        print(f"mindrun {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mindrun {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
