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
