"""C++ kernels for MindSpore's `ops.Custom(func_type="aot")` on the CPU, compiled on first use and cached.

`library(name, cache_dir)` compiles `<name>.cc` of this package with the machine's C++
compiler ($CXX, else g++ or c++) for this CPU (-march=native) into
`<cache_dir>/<name>-<key>.so`, where the key hashes the source, the compile command, the
compiler's version and the CPU's flags, so a changed source, compiler or machine never
loads a stale or foreign library. The library is written under a temporary name and
renamed, so ranks compiling at once never load half a file. Without a compiler, or when
compiling fails, it warns once and returns None: callers fall back to MindSpore ops.
"""
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import List, Optional

from launcher.atomic import atomic_path

SOURCES = Path(__file__).resolve().parent
# -fassociative-math (with the flags it needs) lets row sums vectorise; no -ffinite-math-only:
# NaN and inf must come through as they do from MindSpore's own kernels
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
         "-fassociative-math", "-shared", "-fPIC"]


def compiler() -> Optional[str]:
    """The C++ compiler to use: $CXX, else g++ or c++ on PATH; None if there is none."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


@functools.lru_cache(maxsize=None)
def _machine_key(cxx: str) -> str:
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()}\n{version}\n{flags}"


def _command(cxx: str, source: Path, output: Path) -> List[str]:
    return [cxx, *FLAGS, "-o", str(output), str(source)]


@functools.lru_cache(maxsize=None)
def library(name: str, cache_dir: str) -> Optional[str]:
    """Path of the compiled `<name>.cc` under cache_dir (compiling it if needed), or None with a warning."""
    source = SOURCES / f"{name}.cc"
    cxx = compiler()
    if cxx is None:
        warnings.warn(f"mindrun: no C++ compiler (set $CXX or install g++): {source.name} not compiled, "
                      f"falling back to MindSpore ops (slower steps on the CPU)", RuntimeWarning, stacklevel=2)
        return None
    key = hashlib.sha256()
    key.update(source.read_bytes())
    key.update(" ".join(_command(cxx, Path("SRC"), Path("OUT"))).encode())
    key.update(_machine_key(cxx).encode())
    out_dir = Path(cache_dir)
    target = out_dir / f"{name}-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return str(target)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as partial:  # ranks compiling at once never load half a file
            result = subprocess.run(_command(cxx, source, partial), capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                raise RuntimeError(result.stderr.strip()[-2000:] or f"exit status {result.returncode}")
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        warnings.warn(f"mindrun: compiling {source} with {cxx} failed, falling back to MindSpore ops "
                      f"(slower steps on the CPU): {exc}", RuntimeWarning, stacklevel=2)
        return None
    return str(target)
