"""The product as a user installs it: a wheel built from the tracked files, installed non-editable into a fresh
virtualenv, and every console script run from a temporary working directory (configs come from the package)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import exported_dir, run_console

REPO = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh virtualenv holding m3lit from its wheel (no editable link, no source tree on sys.path).

    The third-party dependencies are the test environment's (a path entry, not an install, so no network is
    needed); m3lit itself is only the wheel's copy."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for rel in _tracked_files():
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("m3lit-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "test_environment_dependencies.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    shutil.rmtree(src)
    return venv / "bin"


def test_wheel_is_a_non_editable_install_with_its_configs(installed, tmp_path):
    code = ("import m3lit, m3lit.cli.resolvers as r; "
            "print(m3lit.__file__); print(r.CONFIG_DIR); print(r.SWEEPS_DIR)")
    out = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    venv = str(installed.parent)
    assert all(p.startswith(venv) for p in out), out  # the wheel's copy, not the checkout
    assert Path(out[1], "train.yaml").is_file() and Path(out[1], "model", "tiny.yaml").is_file()
    assert Path(out[1], "mine", "mine.yaml").is_file()
    assert Path(out[2], "sweep", "teacher_weighting.yaml").is_file()


def test_train_eval_encode_from_the_wheel(installed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    train = run_console("m3lit-train", "trainer.max_steps=2", "logger=csv", "callbacks.retrieval_eval.at_start=false",
                        "callbacks.retrieval_eval.max_queries=5", "callbacks.retrieval_eval.print_table=false",
                        cwd=work, bin_dir=installed)
    export = exported_dir(train)
    assert export.startswith(str(work / "outputs"))  # relative run dir, under the user's working directory
    assert {"config.json", "colbert_linear.pt", "sparse_linear.pt", "tokenizer.json"} <= set(os.listdir(export))

    from m3lit.cli.resolvers import default_assets_path

    run_console("m3lit-eval", f"model_path={export}", f"beir={default_assets_path('dev_dir')}", "max_queries=5",
                "datasets=[en,de]", "output=results.json", "device=cpu", cwd=work, bin_dir=installed)
    results = json.loads((work / "results.json").read_text())
    assert set(results) == {"en", "de", "average"} and 0.0 <= results["average"]["all"]["ndcg@10"] <= 1.0

    (work / "texts.jsonl").write_text('{"id": "a", "text": "hello world"}\n{"id": "b", "text": "grüß gott"}\n')
    run_console("m3lit-encode", export, "texts.jsonl", "vectors.npz", cwd=work, bin_dir=installed)
    data = np.load(work / "vectors.npz")
    assert list(data["ids"]) == ["a", "b"] and data["dense"].shape[0] == 2

    mined = run_console("m3lit-mine", f"model_path={export}", f"data={default_assets_path('train_dir')}/de.jsonl",
                        "output=mined.jsonl", "negatives=3", cwd=work, bin_dir=installed)
    assert "mined 400 lines" in mined.stdout
    lines = [json.loads(line) for line in (work / "mined.jsonl").read_text().splitlines()]
    assert len(lines) == 400 and all(len(line["neg"]) == 3 for line in lines)


def test_user_config_dir_adds_groups(installed, tmp_path):
    """A user's own config folder (Hydra's --config-dir) adds options to the packaged groups."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "wide.yaml").write_text("defaults:\n  - tiny\n  - _self_\nencoder_config:\n"
                                                   "  hidden_size: 96\n  num_attention_heads: 4\n")
    proc = run_console("m3lit-train", "--config-dir", str(tmp_path), "model=wide", "--cfg", "job", "--resolve",
                       cwd=tmp_path, bin_dir=installed)
    assert "hidden_size: 96" in proc.stdout and "num_hidden_layers: 2" in proc.stdout
