"""The console scripts' entry: the memory allocator is chosen before anything else is imported.

Training steps of varying shapes (length buckets, packed batches) fragment glibc's heap: freed activations leave
holes that the next step's tensors do not fit, so the resident set grows step after step. tcmalloc's size classes
do not fragment this way (``benchmarks/vs_flagembedding.py``: peak RSS 2.7 → 1.9 GB on the same batches, at the
same or better speed). ``m3lit-train``, ``m3lit-eval``, ``m3lit-encode`` and ``m3lit-mine`` therefore re-execute
themselves once with the allocator in ``LD_PRELOAD`` (Linux only), chosen by the environment variable
``M3LIT_ALLOCATOR``:

- ``auto`` (default): tcmalloc when the system has it (Debian / Ubuntu ``libtcmalloc-minimal4``, conda
  ``gperftools``), else glibc's malloc;
- ``system``: glibc's malloc, no re-execution;
- ``tcmalloc`` / ``jemalloc``: that allocator, an error when it is not installed;
- a path to an allocator's shared library.

Nothing happens when ``LD_PRELOAD`` already names an allocator. ``allocator_in_use()`` says which one runs (logged
at the start of training).
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

ENV = "M3LIT_ALLOCATOR"
PRELOADED = "M3LIT_ALLOCATOR_PRELOADED"  # set in the re-executed process: the library it preloaded
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
KNOWN = (*LIBRARIES, "mimalloc")  # allocators recognised in LD_PRELOAD and in the process's mapped libraries
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


class AllocatorError(RuntimeError):
    pass


def find_allocator(kind: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """Absolute path of ``kind``'s shared library (``tcmalloc`` / ``jemalloc``) in this Python's prefix, the active
    conda environment or the system's library folders; None when absent."""
    prefixes = [os.path.join(p, "lib") for p in (sys.prefix, environ.get("CONDA_PREFIX")) if p]
    for folder in (*prefixes, *SEARCH_DIRS):
        for name in LIBRARIES[kind]:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def choose_allocator(environ: Mapping[str, str] = os.environ) -> str | None:
    """The library to preload per ``M3LIT_ALLOCATOR``, or None to keep the running allocator."""
    choice = environ.get(ENV, "auto").strip() or "auto"
    preload = environ.get("LD_PRELOAD", "")
    if not sys.platform.startswith("linux") or choice == "system" or environ.get(PRELOADED):
        return None
    if any(name in preload for name in KNOWN):
        return None
    if choice == "auto":
        return find_allocator("tcmalloc", environ)
    if choice in LIBRARIES:
        path = find_allocator(choice, environ)
        if path is None:
            raise AllocatorError(f"{ENV}={choice}: no {' / '.join(LIBRARIES[choice])} in {', '.join(SEARCH_DIRS)} or "
                                 f"{sys.prefix}/lib (install it, e.g. `apt install libtcmalloc-minimal4`, or set "
                                 f"{ENV}=auto / system)")
        return path
    if os.path.isfile(choice):
        return os.path.abspath(choice)
    raise AllocatorError(f"{ENV}={choice!r}: expected auto, system, tcmalloc, jemalloc or the path of a shared library "
                         "(no such file)")


def preload_allocator(argv: list[str] | None = None) -> None:
    """Re-execute this console script with the chosen allocator preloaded (returns only when none is chosen)."""
    library = choose_allocator()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    env[PRELOADED] = library
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 50))  # no "large alloc" lines for 8k batches
    argv = list(sys.argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)


def allocator_in_use() -> str:
    """``tcmalloc (/usr/lib/.../libtcmalloc_minimal.so.4)``, ``glibc malloc``, ... for the log."""
    if not sys.platform.startswith("linux"):
        return "the platform's malloc"
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return "unknown"
    for kind in KNOWN:
        found = sorted(p for p in loaded if f"lib{kind}" in os.path.basename(p))
        if found:
            return f"{kind} ({found[0]})"
    how = "M3LIT_ALLOCATOR=system" if os.environ.get(ENV, "auto") == "system" else "tcmalloc not found"
    return f"glibc malloc ({how})"


def _run(command: str) -> Any:
    try:
        preload_allocator()
    except AllocatorError as error:
        sys.exit(f"error: {error}")
    return importlib.import_module(f"m3lit.cli.{command}").main()


def train() -> Any:
    return _run("train")


def evaluate() -> Any:
    return _run("evaluate")


def encode() -> Any:
    return _run("encode")


def mine() -> Any:
    return _run("mine")
