"""Every command line of the README's shell blocks, run as written (installed console scripts, from a temporary
working directory) with small step counts and a small evaluation; placeholders (DIR, /models/…, /data/…) become
real local paths. A README line this test does not know fails it, so new documentation gets run too."""
from __future__ import annotations

import glob
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import TINY_M3, exported_dir, run_console

from m3lit.cli.resolvers import default_assets_path

README = Path(__file__).resolve().parents[1] / "README.md"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Lines that need what CI does not have, with the test that covers their parts instead.
NOT_ON_CPU = {
    "make train": "the main job itself (CI runs make test); m3lit-train's default line runs here",
    "make test": "this suite",
    "m3lit-train trainer=gpu": "a GPU and flash-attn (composition: test_config_groups, FSDP2: test_full_stack)",
    "hydra/launcher=slurm": "a SLURM cluster (submission intercepted: test_sweeps)",
    "wandb sweep": "a W&B server (the agent's commands run: test_sweeps)",
}
# Small step counts and a small evaluation for every training line.
FAST = ["trainer.max_steps=2", "logger=csv", "callbacks.retrieval_eval.datasets=[en]",
        "callbacks.retrieval_eval.max_queries=3", "callbacks.retrieval_eval.print_table=false"]


def readme_lines() -> list[str]:
    text = README.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    # commands quoted in the text
    lines += [m for m in re.findall(r"`(m3lit-(?:train|encode|eval|compare|mine) [^`]+)`", text) if "…" not in m
              and "=abc" not in m and "temprature" not in m and "NAME" not in m]
    return list(dict.fromkeys(lines))


LINES = readme_lines()


def skipped_reason(line: str) -> str | None:
    return next((why for key, why in NOT_ON_CPU.items() if key in line), None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A working directory where README's first training line ran: its export and last checkpoint, texts."""
    work = tmp_path_factory.mktemp("readme")
    proc = run_console("m3lit-train", *FAST, cwd=work)
    export = exported_dir(proc)
    (best,) = glob.glob(str(work / "outputs" / "*" / "*" / "checkpoints" / "last.ckpt"))
    (work / "texts.jsonl").write_text('{"id": "1", "text": "a query"}\n{"id": "2", "text": "ein Dokument"}\n')
    (work / "my_conf" / "model").mkdir(parents=True)
    (work / "my_conf" / "model" / "wide.yaml").write_text("defaults: [tiny, _self_]\nencoder_config:\n"
                                                          "  hidden_size: 96\n")
    return {"work": work, "export": export, "best": best}


def substitute(line: str, ws: dict) -> list[str]:
    assets = default_assets_path("root")
    line = line.replace("model_path=DIR", f"model_path={ws['export']}").replace("beir=DIR", f"beir={assets}/dev")
    line = line.replace("MODEL_DIR", ws["export"]).replace("/models/bge-m3", str(TINY_M3))
    line = line.replace("[/data/mldr/,/data/msmarco.jsonl.gz]", f"[{assets}/train/de.jsonl,{assets}/train/en.jsonl]")
    line = line.replace("/data/miracl-dev", f"{assets}/dev").replace("outputs/…/checkpoints/last.ckpt", ws["best"])
    line = line.replace("data=/data/train.jsonl", f"data={assets}/train/en.jsonl")
    line = line.replace("../shared/data", str(DATA)).replace("device=cuda", "device=cpu")
    line = line.replace("max_length=8192", "max_length=512")  # long documents: the same protocol, shorter
    args = shlex.split(line)
    command, args = args[0], args[1:]
    if command == "m3lit-compare":
        (sweep,) = glob.glob(str(ws["work"] / "multirun" / "teacher_weighting" / "*"))
        return [command, sweep, "--wandb", "off"]
    if command == "m3lit-train":
        if any(a.startswith("--cfg") for a in args):
            return [command, *args]
        args = [a for a in args if not a.startswith("trainer.max_steps=")] + FAST
        if "-m" in args:
            args += ["+scheme=weighted,uniform"] if "sweep=teacher_weighting" in line else []
            args += ["teacher.weights.sparse=0.0,1.0"] if "sweep=sparse_weight" in line else []
            args += ["+scheme=ema,views_token_drop"] if "sweep=self_kd" in line else []
            args += ["hydra.sweeper.n_trials=2"] if "sweep=optuna_teacher" in line else []
        if "experiment=debdesc" in line:
            args += ["callbacks.retrieval_eval.at_start=false", "data.steps_per_epoch=2"]
    if command == "m3lit-eval":
        args += ["max_queries=3"] + ([] if "device=" in line else ["device=cpu"])
        args += [] if "datasets=" in line else ["datasets=[en]"]
    return [command, *args]


def test_readme_has_the_commands_this_test_runs():
    assert "m3lit-train -m +sweep=teacher_weighting" in LINES and any(l.startswith("m3lit-eval") for l in LINES)
    assert any(l.startswith("m3lit-encode") for l in LINES) and "m3lit-train experiment=debdesc" in LINES


# the sweep runs before m3lit-compare reads it
ORDERED = sorted(LINES, key=lambda l: l.startswith("m3lit-compare"))


@pytest.mark.parametrize("line", ORDERED)
def test_readme_command(line, workspace):
    reason = skipped_reason(line)
    if reason is not None:
        assert reason  # not runnable here: named above, covered elsewhere
        return
    command, *args = substitute(line, workspace)
    assert command.startswith("m3lit-"), f"README line not classified: {line!r}"
    proc = run_console(command, *args, cwd=workspace["work"], timeout=1200)
    if command == "m3lit-train" and "-m" not in args and "--cfg" not in args:
        assert re.search(r"^exported: ", proc.stdout, flags=re.M)
    if command == "m3lit-eval" and "output=results.json" in args:
        assert "average" in json.loads((workspace["work"] / "results.json").read_text())
