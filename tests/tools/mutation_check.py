"""Mutation check: plant a known bug in a scratch copy of the repository and show that the tests meant to catch it fail.

    python tests/tools/mutation_check.py [--data-dir DIR] [--only NAME ...] [--baseline]

Each mutation is one textual change to one file of a copy of the tracked files (`git ls-files`), then the
tests named for it run there (pytest, this interpreter, the copy first on PYTHONPATH so that launched workers
import it too). A mutation is caught when at least one of its tests fails; the script exits 1 if any survives.
`--baseline` first runs every selected test on the unchanged copy (they must pass). The output is a Markdown
table; the recorded run is in tests/README.md.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: Tuple[str, ...]


MUTATIONS = (
    Mutation(
        "reduction-averages",
        "the data-parallel gradient reduction averages over the ranks where the design sums (the loss is already "
        "normalised by the whole update's target tokens): every gradient is 1/dp of what it should be, which "
        "Adam's update and clipping hide",
        "trainer/parallel/seam.py",
        "        total = self.grad_sum(flat).astype(ms.float32)\n",
        "        total = self.grad_sum(flat).astype(ms.float32) / 2\n",
        ("tests/test_parallel_jobs.py::test_data_parallel_with_accumulation_matches_standalone",),
    ),
    Mutation(
        "accumulator-not-reset",
        "the gradient accumulator is not zeroed after an update: the next update adds the previous one's "
        "micro-batch gradients again",
        "trainer/step.py",
        "        _hyper_map(_zero, self.grads)\n",
        "",
        ("tests/test_precision.py::test_four_micro_batches_update_as_one_batch_of_four",),
    ),
    Mutation(
        "resume-skips-a-batch",
        "a resumed run starts one batch after the checkpoint's data position",
        "trainer/train.py",
        "        self.step, self.epoch, self.batch_index = int(meta[\"step\"]), int(meta[\"epoch\"]), "
        "int(meta[\"batch_index\"])\n",
        "        self.step, self.epoch, self.batch_index = int(meta[\"step\"]), int(meta[\"epoch\"]), "
        "int(meta[\"batch_index\"]) + 1\n",
        ("tests/test_parallel_jobs.py::test_standalone_resumes_exactly_with_dropout_and_accumulation",
         "tests/test_end_to_end.py::test_resume_of_packed_batches_continues_where_the_run_stopped"),
    ),
)


def scratch_copy(into: Path) -> Path:
    """The tracked files of the repository (as they are in the work tree) under `into`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


def run_tests(copy: Path, tests: Tuple[str, ...], data_dir: str) -> Tuple[int, str, float]:
    """(pytest's exit code, its summary and first failure lines, seconds) for `tests` in `copy`."""
    env = dict(os.environ, PYTHONPATH=f"{copy}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
               MINDRUN_DATA_DIR=data_dir)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short",
                           "-o", "addopts=", *tests], cwd=copy, env=env, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), "")
    caught_by, deepest = [], None  # per failing test, its deepest frame in tests/: the assertion that failed
    for line in lines + ["___"]:
        if line.startswith("___"):
            if deepest:
                caught_by.append(deepest)
            deepest = None
        found = re.match(r"^(tests/[\w/]+\.py):(\d+): in ", line)
        if found:
            source = (copy / found.group(1)).read_text(encoding="utf-8").splitlines()[int(found.group(2)) - 1]
            deepest = f"`{found.group(1).split('/')[-1]}:{found.group(2)}: {source.strip()}`"
    return proc.returncode, "; ".join([summary.strip("= "), *dict.fromkeys(caught_by)]), time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MINDRUN_DATA_DIR",
                                                             str(ROOT.parent / "shared" / "data" / "multi30k")))
    parser.add_argument("--only", nargs="*", help="mutation names (default: all)")
    parser.add_argument("--baseline", action="store_true", help="first run the selected tests unchanged")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    rows: List[str] = []
    survived = 0
    with tempfile.TemporaryDirectory(prefix="mindrun-mutation-") as tmp:
        copy = scratch_copy(Path(tmp) / "repo")
        if args.baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, summary, seconds = run_tests(copy, tests, args.data_dir)
            rows.append(f"| (none: baseline) | {', '.join(tests)} | {'pass' if code == 0 else 'FAIL'} | "
                        f"{seconds:.0f} s | {summary} |")
            if code != 0:
                print("\n".join(rows))
                print("baseline failed: the selected tests must pass on the unchanged copy", file=sys.stderr)
                return 1
        for m in chosen:
            path = copy / m.file
            original = path.read_text(encoding="utf-8")
            if original.count(m.old) != 1:
                raise SystemExit(f"{m.name}: the text to change is not in {m.file} exactly once (update the script)")
            path.write_text(original.replace(m.old, m.new), encoding="utf-8")
            try:
                code, summary, seconds = run_tests(copy, m.tests, args.data_dir)
            finally:
                path.write_text(original, encoding="utf-8")
            caught = code == 1  # tests ran and some failed (2-5: usage, internal error, nothing collected)
            survived += not caught
            rows.append(f"| {m.name}: {m.what} | {', '.join(t.split('::')[-1] for t in m.tests)} | "
                        f"{'caught' if caught else f'SURVIVED (pytest exit {code})'} | {seconds:.0f} s | {summary} |")
            print(rows[-1], flush=True)
    print("\n| mutation | tests | result | time | pytest's summary; the assertions that failed |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
