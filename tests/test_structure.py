"""The package boundaries the layout promises: model/ is the maths, launcher/ knows nothing of models."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_packages(path: Path):
    """Top-level package of every import in a file (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package, forbidden", [("model", {"trainer", "launcher"}),
                                                ("launcher", {"trainer", "model"})])
def test_no_module_imports_across_the_boundary(package, forbidden):
    files = sorted((REPO / package).rglob("*.py"))
    assert len(files) > 5
    crossing = {f"{f.relative_to(REPO)} imports {p}" for f in files for p in imported_packages(f) if p in forbidden}
    assert not crossing


def test_only_the_seam_reads_the_parallel_mode():
    readers = sorted(str(f.relative_to(REPO)) for f in (REPO / "trainer").rglob("*.py")
                     if ".mode ==" in f.read_text(encoding="utf-8") or ".mode !=" in f.read_text(encoding="utf-8"))
    assert readers == ["trainer/parallel/plan.py", "trainer/parallel/seam.py"]


COLLECTIVES = {"AllReduce", "AllGather", "ReduceScatter", "Broadcast", "AlltoAll"}
CELL_BASES = {"Cell", "Optimizer"}  # nn.Cell, nn.Optimizer (a Cell)
# factories whose collective is handed to a Cell and runs in its compiled graph
HANDED_TO_A_CELL = {("trainer/parallel/seam.py", "mp_sum"): "GradNorm (trainer/step.py) calls it in construct"}


def collective_sites(path: Path):
    """(class, its bases, function, whether a group is named) of every collective primitive made in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name not in COLLECTIVES:
            continue
        positional_group = {"AllGather": 1, "AllReduce": 2, "ReduceScatter": 2, "Broadcast": 2, "AlltoAll": 4}[name]
        grouped = len(node.args) >= positional_group or any(k.arg == "group" for k in node.keywords)
        cls = func = None
        up = parents.get(node)
        while up is not None:
            if isinstance(up, ast.FunctionDef) and func is None:
                func = up.name
            if isinstance(up, ast.ClassDef):
                cls = up
                break
            up = parents.get(up)
        bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in cls.bases} if cls else set()
        yield (cls.name if cls else None), bases, func, grouped


def test_collectives_over_a_sub_group_run_inside_compiled_cells():
    """Issue 35: a collective called from host code runs in PyNative, where MindSpore supports only the world group
    (unless started by mpirun): one over a sub-group (data- or model-parallel) must be a Cell's, run in its
    compiled graph (validation's sums: trainer/parallel/host_sum.py). World-group ones may stay host-side."""
    files = sorted([*(REPO / "trainer").rglob("*.py"), *(REPO / "model").rglob("*.py")])
    host_side, seen = [], 0
    for path in files:
        rel = str(path.relative_to(REPO))
        for cls, bases, func, grouped in collective_sites(path):
            seen += 1
            if grouped and not (bases & CELL_BASES) and (rel, func) not in HANDED_TO_A_CELL:
                host_side.append(f"{rel}: {cls or '<module>'}.{func}")
    assert seen >= 10  # the scan finds the step's, the seam's, the layout's and the host-side ones
    assert not host_side, host_side
