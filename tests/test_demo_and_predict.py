"""The main job end to end on a tiny demo catalog, then the saved pipeline used as a user would."""

import json
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from datasets import load_from_disk
from huggingface_hub import ModelCard

from mmclf import MultimodalPipeline
from mmclf.cli import main
from mmclf.demo import TABLE_ROWS, run_demo

QUICK = ["epochs=1"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, rows=300, folds=2, overrides=QUICK)
    return out, report


def test_demo_writes_table_1_and_every_artifact(demo):
    out, report = demo
    saved = json.loads((out / "report.json").read_text())
    assert saved == report
    assert {key for key, _ in TABLE_ROWS} <= set(report)
    assert all(0.0 <= report[key] <= 1.0 for key, _ in TABLE_ROWS)
    assert len(report["details"]["decision_fusion_runs"]) == 5
    # the fused runs mix expert sets: tiny text + image, TF-IDF + image, all three
    assert report["details"]["decision_fusion_experts"] == [["text", "image"], ["tfidf", "image"],
                                                           ["tfidf", "text", "image"], ["tfidf", "text", "image"],
                                                           ["tfidf", "image"]]
    assert [report[k] for k in ("decision_fusion", "decision_fusion_tfidf", "decision_fusion_all")] == \
        report["details"]["decision_fusion_runs"][:3]
    table = (out / "report.md").read_text()
    assert "| Text expert only (TF-IDF + linear SVM) |" in table
    assert "| Decision-level fusion (all three experts, one run) |" in table
    assert json.loads((out / "fuse_1" / "fusion.json").read_text())["expert_names"] == ["tfidf", "image"]
    for path in ("pipeline/pipeline.json", "pipeline/README.md", "pipeline/experts/image/model.safetensors",
                 "pipeline/experts/tfidf/vocabulary.parquet", "evaluation/report.json", "evaluation/confusion_matrix.png",
                 "text/probs/oof.parquet", "tfidf/probs/oof.parquet", "image/model/mmclf_expert.json",
                 "feature_fusion/config.json", "fuse_2/fusion.json", "logs/fuse_2.log"):
        assert (out / path).is_file(), path
    evaluation = json.loads((out / "evaluation" / "report.json").read_text())
    assert evaluation["macro_f1"] == pytest.approx(report["ensemble"], abs=1e-4)


def test_demo_rerun_reuses_finished_stages(demo):
    out, report = demo
    mtime = (out / "text" / "metrics.json").stat().st_mtime
    lines = []
    again = run_demo(out, rows=300, folds=2, overrides=QUICK, echo=lines.append)
    assert {k: again[k] for k, _ in TABLE_ROWS} == {k: report[k] for k, _ in TABLE_ROWS}
    assert (out / "text" / "metrics.json").stat().st_mtime == mtime
    assert len(lines) == 15 and all(line.startswith("[skip]") for line in lines)


def test_predict_from_raw_challenge_files_matches_the_demo(demo, tmp_path):
    out, _ = demo
    catalog = out / "catalog"
    target = tmp_path / "submission.csv"
    assert main(["predict", "--pipeline", str(out / "pipeline"), "--input", str(catalog / "X_test.csv"),
                 "--images", str(catalog / "image_test"), "--out", str(target)]) == 0
    submission = pd.read_csv(target, dtype=str, keep_default_na=False)
    assert list(submission.columns) == ["Unnamed: 0", "prdtypecode"]  # the challenge's layout
    expected = pd.read_csv(out / "predict" / "submission.csv", dtype=str, keep_default_na=False)
    assert submission.equals(expected)
    x_test = pd.read_csv(catalog / "X_test.csv", dtype=str, keep_default_na=False)
    assert submission["Unnamed: 0"].tolist() == x_test["Unnamed: 0"].tolist()  # every row, rows without image too
    assert (target.with_suffix(".parquet")).is_file()
    # the submission file is a valid label file for `mmclf evaluate`
    assert main(["evaluate", "--predictions", str(target), "--labels", str(catalog / "Y_test.csv"),
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["macro_f1"] == pytest.approx(json.loads((out / "report.json").read_text())["ensemble"], abs=1e-4)


def test_predict_refuses_empty_input_and_a_missing_images_folder_that_leaves_no_image(demo, tmp_path, capsys):
    out, _ = demo
    empty = tmp_path / "X_empty.csv"
    empty.write_text("")
    assert main(["predict", "--pipeline", str(out / "pipeline"), "--input", str(empty), "--out", str(tmp_path / "p.csv")]) == 2
    assert "X_empty.csv is empty" in capsys.readouterr().err
    x_test = out / "catalog" / "X_test.csv"
    assert main(["predict", "--pipeline", str(out / "pipeline"), "--input", str(x_test), "--out",
                 str(tmp_path / "p.csv")]) == 2
    assert "none of the 45 rows has an image (is the images folder missing?)" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    assert main(["predict", "--pipeline", str(out / "pipeline"), "--input", str(x_test), "--out",
                 str(tmp_path / "p.csv"), "--allow-missing-images"]) == 0
    assert "predicted without an image: 45," in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "p.csv")) == 45


def test_push_uploads_exactly_the_self_contained_pipeline(demo):
    out, _ = demo
    uploaded = {}

    def commit(repo_id, operations, **options):  # the files live in a temporary folder until the call returns
        uploaded.update({op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations})
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/1", pr_url=None)

    with mock.patch("huggingface_hub.HfApi.create_repo") as create_repo, \
            mock.patch("huggingface_hub.HfApi.create_commit", side_effect=commit) as create_commit:
        assert main(["push", str(out / "pipeline"), "--repo-id", "user/demo", "--private"]) == 0
    create_repo.assert_called_once_with("user/demo", private=True, exist_ok=True)
    assert create_commit.call_args.kwargs["create_pr"] is False
    on_disk = {p.relative_to(out / "pipeline").as_posix(): p.read_bytes()
               for p in (out / "pipeline").rglob("*") if p.is_file()}
    on_disk.pop(".mmclf_done.json")  # the workflow's done marker stays local
    assert uploaded == on_disk  # the saved folder, file for file and byte for byte
    assert {"pipeline.json", "README.md", "experts/text/mmclf_expert.json", "experts/image/model.safetensors",
            "experts/tfidf/vocabulary.parquet", "experts/tfidf/model.safetensors",
            "fusions/2/fusion.json", "fusions/2/folds/0/model.safetensors"} <= set(uploaded)
    assert not any(p.endswith((".pkl", ".pickle", ".bin")) or "checkpoints" in p for p in uploaded)
    spec = json.loads(uploaded["pipeline.json"])
    assert spec["experts"] == {"text": "experts/text", "tfidf": "experts/tfidf", "image": "experts/image"}
    assert spec["fusions"] == [f"fusions/{i}" for i in range(5)]
    assert len(spec["class_names"]) == 27


def test_pipeline_command_assembles_a_working_pipeline(demo, tmp_path, capsys):
    out, _ = demo
    target = tmp_path / "pipe"
    assert main(["pipeline", "--experts", f"text={out}/text/model", f"image={out}/image/model",
                 "--fusions", str(out / "fuse_0"), "--out", str(target)]) == 0
    test = load_from_disk(str(out / "dataset"))["test"]
    result = MultimodalPipeline.from_pretrained(target).predict_details(test)
    assert len(result.codes) == len(test) and result.votes.max() == 1  # one fused run: one vote per row
    assert result.ids == test["id"][:]
    assert main(["pipeline", "--experts", "textonly", "--fusions", str(out / "fuse_0"),
                 "--out", str(target)]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    # the expert folders swapped under the names: refused, since each folder knows the name it was trained as
    assert main(["pipeline", "--experts", f"image={out}/text/model", f"text={out}/image/model",
                 "--fusions", str(out / "fuse_0"), "--out", str(tmp_path / "swapped")]) == 2
    assert "was trained as 'text' but is given as 'image'" in capsys.readouterr().err
    assert not (tmp_path / "swapped").exists()


def test_model_cards_carry_each_artifacts_own_evaluation(demo):
    out, report = demo
    card = ModelCard.load(out / "pipeline" / "README.md")
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["macro_f1"] == pytest.approx(report["ensemble"], abs=1e-4)
    assert card.data.eval_results[0].dataset_split == "test" and card.data.library_name == "mmclf"
    expert_card = ModelCard.load(out / "text" / "model" / "README.md")
    validation = json.loads((out / "text" / "metrics.json").read_text())["validation"]
    assert {r.metric_type: r.metric_value for r in expert_card.data.eval_results} == {
        key: round(validation[key], 4) for key in ("macro_f1", "weighted_f1", "accuracy")}
    fusion_card = ModelCard.load(out / "fuse_0" / "README.md")
    oof = json.loads((out / "fuse_0" / "cv_metrics.json").read_text())["oof"]
    assert {r.metric_type: r.metric_value for r in fusion_card.data.eval_results}["macro_f1"] == round(
        oof["macro_f1"], 4)
    assert ModelCard.load(out / "feature_fusion" / "README.md").data.eval_results[0].dataset_split == "test"


def test_feature_level_fusion_command(demo, tmp_path, capsys):
    out, report = demo
    target = tmp_path / "feature"
    assert main(["fuse", "--level", "feature", "--experts", f"text={out}/text/model",
                 f"image={out}/image/model", "--dataset", str(out / "dataset"), "--out", str(target)]) == 0
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["test_macro_f1"] == pytest.approx(report["feature_fusion"], abs=1e-4)  # same seed, same head
    assert {p.name for p in (target / "probs").iterdir()} == {"train.parquet", "validation.parquet", "test.parquet"}
    assert main(["fuse", "--level", "feature", "--out", str(target)]) == 2
    assert "needs --experts" in capsys.readouterr().err
