"""The console scripts' memory allocator (``m3lit.cli.launch``): which library ``M3LIT_ALLOCATOR`` picks, the
re-execution that preloads it, and the installed ``m3lit-train`` saying which one runs."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import run_console

from m3lit.cli import launch
from m3lit.cli.launch import AllocatorError, choose_allocator, find_allocator


@pytest.fixture
def fake_conda(tmp_path, monkeypatch):
    """A conda-like prefix whose lib/ holds a (fake) tcmalloc and jemalloc; the virtualenv's lib/ (where
    ``make install`` may have put tcmalloc) is out of the search."""
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    lib = tmp_path / "conda" / "lib"
    lib.mkdir(parents=True)
    for name in ("libtcmalloc_minimal.so.4", "libjemalloc.so.2"):
        (lib / name).write_bytes(b"")
    return tmp_path / "conda"


def test_auto_prefers_tcmalloc_from_the_active_environment(fake_conda):
    env = {"CONDA_PREFIX": str(fake_conda)}
    assert choose_allocator(env) == str(fake_conda / "lib" / "libtcmalloc_minimal.so.4")
    assert choose_allocator({**env, "M3LIT_ALLOCATOR": "jemalloc"}) == str(fake_conda / "lib" / "libjemalloc.so.2")


def test_nothing_is_preloaded_when_asked_not_to_or_already_done(fake_conda):
    env = {"CONDA_PREFIX": str(fake_conda)}
    assert choose_allocator({**env, "M3LIT_ALLOCATOR": "system"}) is None
    assert choose_allocator({**env, launch.PRELOADED: "/x/libtcmalloc.so"}) is None  # the re-executed process
    assert choose_allocator({**env, "LD_PRELOAD": "/opt/lib/libjemalloc.so.2"}) is None  # the user's own choice


def test_auto_without_tcmalloc_keeps_glibc(monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "SEARCH_DIRS", (str(tmp_path),))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert find_allocator("tcmalloc", {}) is None
    assert choose_allocator({}) is None


def test_a_named_allocator_that_is_missing_or_a_bad_value_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "SEARCH_DIRS", (str(tmp_path),))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(AllocatorError, match=r"M3LIT_ALLOCATOR=jemalloc: no libjemalloc.so.2 / libjemalloc.so in"):
        choose_allocator({"M3LIT_ALLOCATOR": "jemalloc"})
    with pytest.raises(AllocatorError, match=r"expected auto, system, tcmalloc, jemalloc or the path"):
        choose_allocator({"M3LIT_ALLOCATOR": "/no/such/lib.so"})
    library = tmp_path / "libmine.so"
    library.write_bytes(b"")
    assert choose_allocator({"M3LIT_ALLOCATOR": str(library)}) == str(library)


def test_reexecution_preloads_the_library_and_keeps_the_arguments(tmp_path):
    """The real mechanism, with a harmless library standing in for the allocator (libm is on every Linux)."""
    libm = next(p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6",
                            "/lib64/libm.so.6", "/usr/lib64/libm.so.6", "/lib/aarch64-linux-gnu/libm.so.6")
                if os.path.isfile(p))
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        from m3lit.cli.launch import preload_allocator
        preload_allocator()
        maps = open("/proc/self/maps").read()
        print(json.dumps({"argv": sys.argv[1:], "preloaded": os.environ.get("M3LIT_ALLOCATOR_PRELOADED"),
                          "ld_preload": os.environ.get("LD_PRELOAD"), "mapped": os.path.realpath(sys.argv[1]) in maps
                          or sys.argv[1] in maps}))
    """))
    env = {**os.environ, "M3LIT_ALLOCATOR": libm, "LD_PRELOAD": ""}
    env.pop(launch.PRELOADED, None)
    out = subprocess.run([sys.executable, str(script), libm, "a=1", "b c"], capture_output=True, text=True, env=env,
                         check=True)
    result = json.loads(out.stdout)
    assert result == {"argv": [libm, "a=1", "b c"], "preloaded": libm, "ld_preload": libm, "mapped": True}


def test_installed_train_logs_the_allocator_it_runs_with(tmp_path):
    proc = run_console("m3lit-train", "trainer.max_steps=1", "callbacks=none", "logger=csv", "checkpoint=none",
                       "export_dir=null", cwd=tmp_path, env={"M3LIT_ALLOCATOR": "auto"})
    tcmalloc = find_allocator("tcmalloc")
    expected = f"memory allocator: tcmalloc ({os.path.realpath(tcmalloc)}" if tcmalloc else \
        "memory allocator: glibc malloc (tcmalloc not found)"
    assert expected in proc.stdout + proc.stderr
    proc = run_console("m3lit-train", "trainer.max_steps=1", "callbacks=none", "logger=csv", "checkpoint=none",
                       "export_dir=null", cwd=tmp_path, env={"M3LIT_ALLOCATOR": "system"})
    assert "memory allocator: glibc malloc (M3LIT_ALLOCATOR=system)" in proc.stdout + proc.stderr
    proc = run_console("m3lit-train", cwd=tmp_path, env={"M3LIT_ALLOCATOR": "mimalloc"}, check=False)
    assert proc.returncode != 0 and "M3LIT_ALLOCATOR='mimalloc': expected auto, system" in proc.stderr
