"""m3lit-compare and m3lit.runs: offline W&B run files, run summaries, W&B online (a fake API), labels, tables."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from m3lit.cli.compare import main as compare_main
from m3lit.runs import (
    RunRecord,
    collect_runs,
    compare,
    format_comparison,
    label_name,
    read_summary,
    read_wandb_run,
    run_labels,
)
from m3lit.runs.collect import local_runs, parse_wandb_target, wandb_runs
from m3lit.runs.record import write_summary
from m3lit.runs.wandb_file import BLOCK, iter_record_bytes

MODES = ("dense", "sparse", "colbert", "dense+sparse", "all")


def eval_metrics(base: float, datasets=("en", "de")) -> dict[str, float]:
    out = {}
    for i, mode in enumerate(MODES):
        for metric, shift in (("ndcg@10", 0.0), ("recall@100", 0.2)):
            values = [base + 0.01 * i + shift + 0.02 * j for j, _ in enumerate(datasets)]
            for dataset, v in zip(datasets, values):
                out[f"eval/{dataset}/{mode}/{metric}"] = v
            out[f"eval/average/{mode}/{metric}"] = sum(values) / len(values)
    out["trainer/global_step"] = 300.0
    return out


def summary(scheme: str, base: float, job_num: int) -> dict:
    return {"status": "finished", "name": f"tiny-{scheme}", "group": "teacher_weighting", "run_id": f"id{job_num}",
            "config": {"teacher": {"weights": {"sparse": base}}, "logger": {"project": "m3lit"},
                       "hydra": {"choices": {"scheme": scheme}, "job_num": job_num,
                                 "overrides": ["+sweep=teacher_weighting", f"+scheme={scheme}"]}},
            "metrics": eval_metrics(base)}


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    # job 1 is found first on disk; job numbers decide the order
    for num, (scheme, base) in enumerate([("weighted", 0.5), ("uniform", 0.4), ("learned", 0.6)]):
        write_summary(str(tmp_path / f"{num}" / "m3lit_run.json"), summary(scheme, base, num))
    return tmp_path


def test_compare_prints_scheme_by_head_tables_and_writes_files(sweep_dir, capsys):
    assert compare_main([str(sweep_dir), "--wandb", "off"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("ndcg@10 (dev eval/…, average over 2 datasets, final evaluation; no paired test: run "
                          "tiny-weighted kept no per-query values)"):].split("\n\n")[0].splitlines()
    assert block[1].split() == ["scheme", *MODES]
    assert [line.split()[0] for line in block[3:]] == ["weighted", "uniform", "learned"]
    assert [float(v) for v in block[3].split()[1:]] == pytest.approx([0.51, 0.52, 0.53, 0.54, 0.55])
    assert out.index("ndcg@10 (") < out.index("recall@100 (")
    assert (sweep_dir / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| learned | 0.6100 |" in (sweep_dir / "compare.md").read_text()


def test_compare_one_dataset_and_a_config_key_as_label(sweep_dir, capsys, tmp_path):
    out_dir = tmp_path / "report"
    assert compare_main([str(sweep_dir), "--dataset", "de", "--by", "teacher.weights.sparse", "--metrics", "ndcg@10",
                         "--output", str(out_dir), "--wandb", "off"]) == 0
    out = capsys.readouterr().out
    assert "ndcg@10 (dev eval/…, dataset de, final evaluation" in out and "recall@100" not in out.split("wrote")[0]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:3] in ("0.5", "0.4", "0.6")}
    assert float(rows["0.4"][0]) == pytest.approx(0.42)


def test_compare_errors_are_clear(tmp_path, capsys):
    assert compare_main([str(tmp_path), "--wandb", "off"]) == 2
    assert "no runs found" in capsys.readouterr().err
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "m3lit_run.json").write_text('{"format": 1,\n "config": {}, "metrics": [}')
    assert compare_main([str(tmp_path), "--wandb", "off"]) == 2
    assert "m3lit_run.json: line 2" in capsys.readouterr().err
    write_summary(str(tmp_path / "0" / "m3lit_run.json"), summary("weighted", 0.5, 0))
    assert compare_main([str(tmp_path), "--dataset", "fr", "--wandb", "off"]) == 2
    assert "datasets found: average, de, en" in capsys.readouterr().err
    assert compare_main(["not-a-folder", "--wandb", "off"]) == 2
    assert "W&B [entity/]project/group" in capsys.readouterr().err


def rec(overrides, run_id="x", metrics=None):
    return RunRecord(run_id=run_id, name=f"n-{run_id}", source="", config={"hydra": {"overrides": overrides}},
                     metrics=metrics or {})


def test_labels_are_the_overrides_that_differ_seeds_aside():
    runs = [rec(["+sweep=s", "teacher.weights.sparse=0.1", "seed=1"], "a"),
            rec(["+sweep=s", "teacher.weights.sparse=0.3", "seed=1"], "b")]
    assert run_labels(runs) == ["0.1", "0.3"] and label_name(runs) == "teacher.weights.sparse"
    runs.append(rec(["+sweep=s", "teacher.weights.sparse=0.3", "seed=2"], "c"))
    assert run_labels(runs) == ["0.1", "0.3", "0.3"]
    assert run_labels(runs, average_over=()) == ["seed=1,teacher.weights.sparse=0.1",
                                                 "seed=1,teacher.weights.sparse=0.3",
                                                 "seed=2,teacher.weights.sparse=0.3"]
    assert label_name(runs, average_over=()) == "run" and label_name(runs, by="choices.scheme") == "scheme"
    assert run_labels([rec(["a=1"], "a"), rec(["a=1"], "b")]) == ["n-a", "n-b"]
    assert run_labels([rec(["a=1"], "a")], by="choices.scheme") == ["None"]


def test_replicates_are_averaged_with_their_spread(tmp_path):
    runs = [rec([f"+scheme={scheme}", f"seed={seed}"], f"{scheme}{seed}", {"eval/average/dense/ndcg@10": value})
            for scheme, seed, value in [("a", 1, 0.5), ("a", 2, 0.7), ("b", 1, 0.4)]]
    comparison = compare(runs, run_labels(runs))
    assert comparison.labels == ["a", "b"] and comparison.runs == {"a": 2, "b": 1}
    assert comparison.value("a", "ndcg@10", "dense") == pytest.approx(0.6)
    assert comparison.std("a", "ndcg@10", "dense") == pytest.approx(0.1414, abs=1e-4)
    table = format_comparison(comparison).splitlines()
    assert "mean±std [95 % t-interval] over runs" in table[0] and table[1].split() == ["scheme", "dense", "runs"]
    # 95 % t-interval of (0.5, 0.7): 0.6 ± t(0.975, 1) · 0.1414 / √2 = 0.6 ± 12.706 · 0.1
    assert table[3].split() == ["a", "0.6000±0.1414", "[-0.671,1.871]", "2"]
    assert table[4].split() == ["b", "0.4000±0.0000", "1"]
    from m3lit.runs import plot, write_csv

    assert ",eval,average,a,2,dense,ndcg@10,0.6,0.141421,-0.67062,1.87062,,,,,,,\n" in Path(
        write_csv(comparison, str(tmp_path / "c.csv"))).read_text()
    assert Path(plot(comparison, str(tmp_path / "p.png"))).stat().st_size > 1000


def test_missing_values_show_as_dashes():
    runs = [RunRecord("a", "a", "", metrics={"eval/average/dense/ndcg@10": 0.5}),
            RunRecord("b", "b", "", metrics={"eval/average/sparse/ndcg@10": 0.25})]
    comparison = compare(runs, ["a", "b"])
    assert comparison.modes == ["dense", "sparse"] and math.isnan(comparison.value("a", "ndcg@10", "sparse"))
    assert format_comparison(comparison).splitlines()[3].split() == ["a", "0.5000", "-"]


def test_offline_wandb_run_file_is_read_back(tmp_path, caplog):
    import wandb

    big = {f"key_{i}": "x" * 200 for i in range(400)}  # > 32 KiB: records split over blocks
    run = wandb.init(project="m3lit-test", group="g1", name="run-a", dir=str(tmp_path), mode="offline",
                     config={"teacher": {"weights": {"sparse": 0.3}}, "big": big})
    run.config.update({"extra": 7})
    for step in range(3):
        run.log({"eval/average/all/ndcg@10": 0.1 * step, "teacher/w_sparse": 0.3, "eval/table": wandb.Table(
            columns=["a"], data=[[1]])})
    run.summary["late"] = 5
    run_id = run.id
    run.finish()
    wandb.teardown()  # the W&B service writes the run file asynchronously; stopping it flushes the file
    (run_dir,) = list((tmp_path / "wandb").glob("offline-run-*"))
    record = read_wandb_run(str(run_dir))
    assert (record.run_id, record.name, record.group, record.status) == (run_id, "run-a", "g1", "finished")
    assert record.config["teacher"] == {"weights": {"sparse": 0.3}} and record.config["extra"] == 7
    assert record.config["big"] == big
    assert record.metrics["eval/average/all/ndcg@10"] == pytest.approx(0.2) and record.metrics["late"] == 5
    assert not any(k.startswith("eval/table") for k in record.metrics)
    (wandb_file,) = run_dir.glob("*.wandb")
    assert wandb_file.stat().st_size > BLOCK
    # the same run found by collect_runs; a corrupted byte is reported with the file name
    assert [r.run_id for r in collect_runs(str(tmp_path))] == [run_id]
    data = bytearray(wandb_file.read_bytes())
    data[200] ^= 0xFF
    wandb_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"\.wandb: corrupt record"):
        list(iter_record_bytes(str(wandb_file)))
    wandb_file.write_bytes(b"not a run file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        read_wandb_run(str(wandb_file))
    # a run that has just started (its file empty so far) next to a finished run's summary: `auto` compares the
    # summary and skips the unreadable file with a warning; `wandb` stops with the file's error
    wandb_file.write_bytes(b"")
    write_summary(str(tmp_path / "job0" / "m3lit_run.json"),
                  {"run_id": "done", "config": {}, "metrics": {"eval/average/all/ndcg@10": 0.5}})
    with caplog.at_level("WARNING", logger="m3lit.runs.collect"):
        assert [r.run_id for r in collect_runs(str(tmp_path))] == ["done"]
    assert "shorter than its header" in caplog.text and str(wandb_file) in caplog.text
    with pytest.raises(ValueError, match="shorter than its header"):
        local_runs(str(tmp_path), source="wandb")


class FakeRun(SimpleNamespace):
    pass


class FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append(("runs", path, filters))
        return self._runs

    def sweep(self, path):
        self.calls.append(("sweep", path))
        return SimpleNamespace(runs=self._runs)


def test_online_group_and_sweep_targets(capsys):
    runs = [FakeRun(id=f"r{i}", name=f"tiny-{s}", group="tw", state="finished",
                    config={"hydra": {"overrides": [f"+scheme={s}"], "job_num": i}, "_wandb": {}},
                    summary=SimpleNamespace(_json_dict={**eval_metrics(0.1 * (i + 1)), "eval/table": {"_type": "t"}}))
            for i, s in enumerate(["weighted", "uniform"])]
    api = FakeApi(runs)
    found = wandb_runs("me/m3lit/tw", api=api)
    assert api.calls == [("runs", "me/m3lit", {"group": "tw"})]
    assert [r.run_id for r in found] == ["r0", "r1"] and run_labels(found) == ["weighted", "uniform"]
    assert found[1].metrics["eval/average/dense/ndcg@10"] == pytest.approx(0.21)
    wandb_runs("m3lit/sweeps/abc123", api=api)
    assert api.calls[-1] == ("sweep", "m3lit/abc123")
    assert parse_wandb_target("m3lit/tw") == ("m3lit", None, "tw")
    with pytest.raises(ValueError, match="no W&B runs"):
        wandb_runs("m3lit/empty", api=FakeApi([]))


def test_online_runs_bring_their_per_query_values_for_the_paired_tests(tmp_path):
    per_query = {"format": 1, "steps": {"eval": 3}, "values": {"eval": {"en": {"all": {"ndcg@10": {"q1": 0.5}}}}}}

    class SavedFile:
        def __init__(self, name):
            self.name = name

        def download(self, root, replace=False):  # what W&B's File.download does: root/<name>
            if self.name != "eval_per_query.json":
                raise ValueError("file not found")  # the histories were not saved with this run
            Path(root).mkdir(parents=True, exist_ok=True)
            (Path(root) / self.name).write_text(json.dumps(per_query))

    run = FakeRun(id="r0", name="tiny-weighted", group="tw", state="finished", config={}, file=SavedFile,
                  summary=SimpleNamespace(_json_dict=eval_metrics(0.5)))
    (found,) = wandb_runs("me/m3lit/tw", api=FakeApi([run]), files_dir=str(tmp_path))
    assert found.folder == str(tmp_path / "r0")
    assert found.per_query("eval") == per_query["values"]["eval"] and found.history("train") == []


def test_summary_file_round_trip(tmp_path):
    path = write_summary(str(tmp_path / "run" / "m3lit_run.json"), summary("uniform", 0.4, 3))
    record = read_summary(path)
    assert record.choices == {"scheme": "uniform"} and record.job_num == 3 and record.group == "teacher_weighting"
    assert record.config_value("teacher.weights.sparse") == 0.4 and record.config_value("nope.x") is None
    assert json.loads(Path(path).read_text())["format"] == 1


def test_online_comparison_is_a_wandb_run_and_a_report(sweep_dir, monkeypatch, capsys):
    import wandb
    import wandb_workspaces.reports.v2 as wr

    calls = {}

    class FakeWandbRun:
        url, dir = "https://wandb.example/run", str(sweep_dir / "wandb" / "run" / "files")

        def __init__(self):
            self.summary = {}

        def log(self, data):
            calls["log"] = data

        def save(self, path, base_path=None, policy=None):
            calls["saved"] = Path(path).read_text()

        def finish(self):
            calls["finished"] = True

    def fake_init(**kwargs):
        calls["init"] = kwargs
        calls["run"] = FakeWandbRun()
        return calls["run"]

    def fake_save(report, draft=False, clone=False):  # no W&B server: keep what would be uploaded
        calls["report"] = report
        calls["report_model"] = report._to_model()  # the report serialises as W&B's API expects
        return report

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wr.Report, "save", fake_save)
    assert compare_main([str(sweep_dir), "--wandb", "on", "--metrics", "ndcg@10"]) == 0
    out = capsys.readouterr().out
    assert "comparison logged to W&B (online): https://wandb.example/run" in out
    assert "W&B report:" in out
    assert calls["finished"] and calls["init"]["group"] == "teacher_weighting"
    assert (calls["init"]["project"], calls["init"]["job_type"], calls["init"]["mode"]) == ("m3lit", "compare",
                                                                                            "online")
    table, image = calls["log"]["compare/table"], calls["log"]["compare/bars"]
    assert isinstance(table, wandb.Table) and isinstance(image, wandb.Image)
    assert table.columns[:7] == ["setup", "prefix", "dataset", "label", "runs", "mode", "metric"]
    assert {row[3] for row in table.data} == {"weighted", "uniform", "learned"}
    assert calls["run"].summary["compare/eval/average/all/ndcg@10/learned/mean"] == pytest.approx(0.65)
    assert "# Comparison: teacher_weighting" in calls["saved"]
    report = calls["report"]
    assert (report.project, report.title) == ("m3lit", "m3lit comparison: teacher_weighting")
    markdown = [b for b in report.blocks if isinstance(b, wr.MarkdownBlock)][0].text
    assert "| learned | 0.6100 |" in markdown
    (grid,) = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert grid.runsets[0].filters == "Group = 'teacher_weighting'"
    assert any(isinstance(p, wr.WeavePanelSummaryTable) and p.table_name == "compare/table" for p in grid.panels)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    calls.clear()
    assert compare_main([str(sweep_dir)]) == 0 and "init" not in calls  # auto: these runs were not W&B-tracked


def test_runs_of_several_sweeps_with_other_seeds_are_averaged(sweep_dir, tmp_path_factory, capsys):
    other, out_dir = tmp_path_factory.mktemp("seed1"), tmp_path_factory.mktemp("report")
    for num, (scheme, base) in enumerate([("weighted", 0.7), ("uniform", 0.6)]):
        record = summary(scheme, base, num)
        record["config"]["hydra"]["overrides"].append("seed=1")
        write_summary(str(other / f"{num}" / "m3lit_run.json"), record)
    assert compare_main([str(sweep_dir), str(other), "--metrics", "ndcg@10", "--output", str(out_dir),
                         "--wandb", "off"]) == 0
    out = capsys.readouterr().out
    assert "5 runs from" in out and "mean±std [95 % t-interval] over runs" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith(("weighted ", "learned "))}
    assert rows["weighted"][0] == "0.6100±0.1414" and rows["weighted"][1] == "[-0.661,1.881]"
    assert rows["weighted"][-1] == "2"
    assert rows["learned"][0] == "0.6100±0.0000" and rows["learned"][-1] == "1"
