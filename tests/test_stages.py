"""Stage calls from Python write the same files as the commands; every stage checks its keys like `mmclf train`;
a fusion fitted from Python is voted by `mmclf ensemble`; every artifact kind saves, loads and round-trips through
a (patched) Hub download with its revision; the run folder refuses a changed config with one message."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmclf import stages
from mmclf.cli import main
from mmclf.fusion.decision import FusionModel, fit_decision_fusion
from mmclf.hub import load_artifact
from mmclf.probability_tables import ProbabilityTable
from mmclf.rundir import RunFolder, staged_file, staged_folder
from mmclf.testing import half_expert_tables


@pytest.fixture
def tables(tmp_path):
    """Two experts' tables: validation rows to train on, test rows (labelled) to predict."""
    paths = {}
    for split, seed in (("validation", 0), ("test", 1)):
        for table in half_expert_tables(160, 6, seed=seed, split=split, id_prefix=split[0]):
            paths[(table.source, split)] = table.save(tmp_path / table.source / f"{split}.parquet")
    return paths


def fuse_args(tables) -> dict:
    return {"tables": [f"{e}={tables[(e, 'validation')]}" for e in ("expert0", "expert1")],
            "predict_tables": [f"{e}={tables[(e, 'test')]}" for e in ("expert0", "expert1")],
            "folds": 4, "epochs": 5, "seed": 3}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.suffix in (".csv", ".parquet", ".json") and p.name != "fusion.json"}


def test_stage_calls_write_the_same_files_as_the_commands(tables, tmp_path):
    args = fuse_args(tables)
    stages.fuse("fuse-default", output_dir=tmp_path / "py", **args)
    assert main(["fuse", "--tables", *args["tables"], "--predict-tables", *args["predict_tables"], "--folds", "4",
                 "--epochs", "5", "--seed", "3", "--out", str(tmp_path / "cli")]) == 0
    assert files(tmp_path / "py") == files(tmp_path / "cli")
    assert {"predictions.csv", "probs/test.parquet", "probs/oof.parquet", "cv_metrics.json"} <= set(files(tmp_path / "py"))

    stages.ensemble(inputs=[tmp_path / "py", tmp_path / "cli"], output=tmp_path / "vote_py" / "v.csv")
    assert main(["ensemble", "--inputs", str(tmp_path / "py"), str(tmp_path / "cli"), "--out",
                 str(tmp_path / "vote_cli" / "v.csv")]) == 0
    assert files(tmp_path / "vote_py") == files(tmp_path / "vote_cli")

    report = stages.evaluate(predictions=tmp_path / "vote_py" / "v.parquet", output_dir=tmp_path / "eval_py")
    assert main(["evaluate", "--predictions", str(tmp_path / "vote_py" / "v.parquet"), "--out",
                 str(tmp_path / "eval_cli")]) == 0
    assert json.loads((tmp_path / "eval_cli" / "report.json").read_text())["macro_f1"] == report["macro_f1"] > 0.5


def test_every_stage_checks_its_keys_and_takes_recipes_and_overrides(tables, tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key 'hiden_size' in overrides\. Did you mean hidden_size"):
        stages.fuse("fuse-default", ["hiden_size=6"], output_dir=tmp_path / "x", **fuse_args(tables))
    with pytest.raises(ValueError, match="unknown config key 'splt'"):
        stages.ensemble(splt="test", output=tmp_path / "v.csv")
    with pytest.raises(ValueError, match="the fuse stage needs output_dir"):
        stages.fuse(**fuse_args(tables))
    with pytest.raises(FileNotFoundError, match="no recipe file 'fuse-paperr'"):
        stages.fuse("fuse-paperr", output_dir=tmp_path / "x", **fuse_args(tables))
    model = stages.fuse("fuse-paper", ["hidden_size=6"], output_dir=tmp_path / "paper", **fuse_args(tables))
    assert (model.options["start"], model.options["class_weight"], model.options["hidden_size"]) == ("random", None, 6)


def test_a_fusion_fitted_from_python_is_voted_by_mmclf_ensemble(tables, tmp_path):
    train = [ProbabilityTable.load(tables[(e, "validation")]) for e in ("expert0", "expert1")]
    test = [ProbabilityTable.load(tables[(e, "test")]) for e in ("expert0", "expert1")]
    model = fit_decision_fusion(train, folds=4, epochs=5, progress=False)
    model.save_pretrained(tmp_path / "fusion", predict_tables=test)
    assert main(["ensemble", "--inputs", str(tmp_path / "fusion"), "--split", "test", "--out",
                 str(tmp_path / "vote.csv")]) == 0
    winners, _, _ = model.predict(test)
    vote = pd.read_csv(tmp_path / "vote.csv", dtype=str)
    assert vote["prediction"].tolist() == [model.class_names[w] for w in winners]


def fake_hub(monkeypatch, tmp_path):
    """create_commit copies the uploaded files into a local 'repository'; snapshot_download returns it and
    records the revision asked for."""
    import huggingface_hub

    repos, asked = {}, []

    def create_commit(self, repo_id, operations, **kwargs):
        root = tmp_path / "hub" / repo_id.replace("/", "--")
        for op in operations:
            target = root / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(op.path_or_fileobj).read_bytes())
        repos[repo_id] = root
        return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1", "pr_url": None})()

    def snapshot_download(repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return asked


def test_every_artifact_kind_round_trips_through_the_hub_with_its_revision(tables, tmp_path, monkeypatch):
    from mmclf import MultimodalPipeline

    asked = fake_hub(monkeypatch, tmp_path)
    pipeline = MultimodalPipeline.from_pretrained(Path(__file__).parent / "fixtures" / "pipeline_v0_1" / "pipeline")
    pipeline_dir = pipeline.save_pretrained(tmp_path / "pipeline")
    expert_dir = pipeline_dir / "experts" / next(iter(pipeline.experts))
    fusion_dir = pipeline_dir / "fusions" / "0"
    for kind, folder in (("pipeline", pipeline_dir), ("expert", expert_dir), ("fusion", fusion_dir)):
        assert main(["push", str(folder), "--repo-id", f"me/{kind}"]) == 0
        loaded = load_artifact(f"me/{kind}", revision="v1")
        assert asked[-1] == (f"me/{kind}", "v1")
        assert loaded.artifact == kind and loaded.class_names == pipeline.class_names
    rows = [{"title": "Piscine tubulaire 3 m", "description": "", "image": None}]
    assert load_artifact("me/pipeline").predict(rows) == pipeline.predict(rows)
    assert type(load_artifact("me/fusion")) is FusionModel
    assert isinstance(MultimodalPipeline.from_pretrained("me/pipeline", revision="abc"), MultimodalPipeline)
    assert asked[-1] == ("me/pipeline", "abc")
    pipeline.push_to_hub("me/pushed")  # the artifact's own push: saved, then one commit
    assert load_artifact("me/pushed").class_names == pipeline.class_names
    with pytest.raises(ValueError, match="is not an mmclf artifact"):
        load_artifact(tmp_path)


def test_the_run_folder_refuses_a_changed_config_with_one_message(tmp_path):
    folder = RunFolder(tmp_path / "run", resume_free=("resume", "denoise.*"))
    config = {"seed": 1, "training": {"lr": 0.1}, "denoise": {"cut": 10}, "resume": False}
    assert folder.open(config) is False
    assert (tmp_path / "run" / "config.yaml").is_file()
    with pytest.raises(ValueError, match=r"already holds a run .*pass --resume"):
        folder.open(config)
    assert folder.open({**config, "resume": True, "denoise": {"cut": 5}}, resume=True) is True
    with pytest.raises(ValueError, match=r"^cannot resume .*differs from this config in seed: 1 -> 2; "
                                         r"training\.lr: 0\.1 -> 0\.2; choose another output folder$"):
        folder.open({**config, "seed": 2, "training": {"lr": 0.2}}, resume=True)


def test_staged_writes_appear_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), staged_file(target) as staged:
        staged.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    folder = tmp_path / "folder"
    with staged_folder(folder) as staged:
        (staged / "a").write_text("1")
        assert not folder.exists()
    with pytest.raises(FileExistsError), staged_folder(folder):
        pass
    with pytest.raises(RuntimeError), staged_folder(folder, replace=True) as staged:
        raise RuntimeError("killed")
    assert (folder / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out.csv"]
    np.testing.assert_equal(sorted(p.name for p in folder.iterdir()), ["a"])
