"""MultimodalPipeline: a pipeline saved by mmclf 0.1 predicts as it did; every input form gives the same
result; save -> load -> predict is identical; model cards; the push boundary; clear errors."""

import io
import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset, Features, Image, Value
from huggingface_hub import ModelCard
from PIL import Image as PILImage

from mmclf import MultimodalPipeline
from mmclf.cli import main
from mmclf.probability_tables import TableMismatchError

FIXTURE = Path(__file__).parent / "fixtures" / "pipeline_v0_1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def pipeline():
    return MultimodalPipeline.from_pretrained(FIXTURE / "pipeline")


@pytest.fixture(scope="module")
def raw():
    return pd.read_csv(FIXTURE / "X_test.csv", dtype=str, keep_default_na=False)


def image_path(row) -> Path:
    return FIXTURE / "images" / f"image_{row['imageid']}_product_{row['productid']}.jpg"


def test_pipeline_saved_by_version_0_1_predicts_as_it_did(pipeline, raw, tmp_path, capsys):
    result = pipeline.predict_details(raw, images_dir=FIXTURE / "images")
    assert result.ids == EXPECTED["ids"]
    assert result.codes == EXPECTED["predictions"]
    np.testing.assert_allclose(result.probs, EXPECTED["fused_probs"], atol=1e-6)
    assert result.counts == {"rows": 12, "empty_title": 0, "without_description": 4, "without_image": 3,
                             "unreadable_image": 0}
    # the command line takes the same path
    assert main(["predict", "--pipeline", str(FIXTURE / "pipeline"), "--input", str(FIXTURE / "X_test.csv"),
                 "--images", str(FIXTURE / "images"), "--out", str(tmp_path / "sub.csv")]) == 0
    assert ("wrote 12 predictions to" in (printed := capsys.readouterr().out) and "(one per input row); predicted "
            "without an image: 3, without a description: 4, with an empty title: 0" in printed)
    submission = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    assert submission["Unnamed: 0"].tolist() == EXPECTED["ids"]
    assert submission["prdtypecode"].tolist() == EXPECTED["predictions"]


@pytest.mark.filterwarnings("ignore:none of the")
def test_dataframe_list_of_dicts_and_dataset_give_identical_results(pipeline, raw):
    reference = pipeline.predict_proba(raw, images_dir=FIXTURE / "images")
    assert list(reference.columns) == EXPECTED["class_names"] and reference.index.tolist() == EXPECTED["ids"]
    paths = [str(image_path(r)) if image_path(r).is_file() else None for _, r in raw.iterrows()]
    as_bytes = [Path(p).read_bytes() if p else None for p in paths]
    as_pil = [PILImage.open(p) if p else None for p in paths]
    records = [{"id": r["Unnamed: 0"], "title": r["designation"], "description": r["description"]} for _, r in raw.iterrows()]
    for images in (paths, as_bytes, as_pil):
        rows = [{**record, "image": image} for record, image in zip(records, images)]
        pd.testing.assert_frame_equal(pipeline.predict_proba(rows), reference)
    dataset = Dataset.from_dict(
        {"id": [r["id"] for r in records], "title": [r["title"] for r in records],
         "description": [r["description"] for r in records], "image": paths},
        features=Features({"id": Value("string"), "title": Value("string"), "description": Value("string"),
                           "image": Image()}))
    pd.testing.assert_frame_equal(pipeline.predict_proba(dataset), reference)
    sigir = raw.rename(columns={"Unnamed: 0": "Integer_id", "designation": "Title", "description": "Description",
                                "productid": "Product_id", "imageid": "Image_id"})
    pd.testing.assert_frame_equal(pipeline.predict_proba(sigir, images_dir=FIXTURE / "images"), reference)
    # without images: all forms agree with each other, and the image expert sees blank images
    no_images = pipeline.predict_proba(records)
    pd.testing.assert_frame_equal(pipeline.predict_proba(raw), no_images)
    assert not np.allclose(no_images.to_numpy(), reference.to_numpy())


@pytest.mark.filterwarnings("ignore:none of the")
def test_every_row_gets_a_prediction_in_input_order(pipeline):
    rows = [{"title": "", "description": ""}, {"title": "piscine pompe filtre"},
            {"title": "", "description": "jeu console manette"}]
    result = pipeline.predict_details(rows)
    assert result.ids == ["0", "1", "2"] and len(result.codes) == 3
    assert result.counts == {"rows": 3, "empty_title": 2, "without_description": 2, "without_image": 3,
                             "unreadable_image": 0}
    assert pipeline.predict(rows[::-1]) == result.codes[::-1]
    assert pipeline.predict(rows, batch_size=1) == result.codes


def test_save_load_predict_is_identical_and_writes_no_pickle(pipeline, raw, tmp_path):
    pipeline.save_pretrained(tmp_path / "saved")
    reloaded = MultimodalPipeline.from_pretrained(tmp_path / "saved", device="cpu")
    pd.testing.assert_frame_equal(reloaded.predict_proba(raw, images_dir=FIXTURE / "images"),
                                  pipeline.predict_proba(raw, images_dir=FIXTURE / "images"))
    suffixes = {p.suffix for p in (tmp_path / "saved").rglob("*") if p.is_file()}
    assert suffixes == {".json", ".safetensors", ".md"}
    spec = json.loads((tmp_path / "saved" / "pipeline.json").read_text())
    assert spec["format"] == "mmclf-pipeline" and spec["experts"] == {"text": "experts/text", "image": "experts/image"}


def test_model_cards_parse_and_carry_the_metrics(pipeline, tmp_path):
    pipeline.metadata["metrics"] = {"macro_f1": 0.8123, "weighted_f1": 0.83, "accuracy": 0.85, "split": "test",
                                    "rows": 12}
    try:
        pipeline.save_pretrained(tmp_path / "saved")
    finally:
        pipeline.metadata.pop("metrics")
    card = ModelCard.load(tmp_path / "saved" / "README.md")
    assert card.data.library_name == "mmclf" and "multimodal" in card.data.tags
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"macro_f1": 0.8123, "weighted_f1": 0.83, "accuracy": 0.85}
    assert card.data.eval_results[0].dataset_split == "test"
    assert "MultimodalPipeline.from_pretrained" in card.text and "2583" in card.text
    for folder in ("experts/text", "experts/image", "fusions/0"):
        assert ModelCard.load(tmp_path / "saved" / folder / "README.md").data.library_name == "mmclf"


def test_push_to_hub_uploads_the_saved_folder_in_one_commit(pipeline):
    uploaded = {}

    def commit(repo_id, operations, **options):
        uploaded.update({op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations})
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/1",
                         pr_url=f"https://huggingface.co/{repo_id}/discussions/1")

    with mock.patch("huggingface_hub.HfApi.create_repo") as create_repo, \
            mock.patch("huggingface_hub.HfApi.create_commit", side_effect=commit) as create_commit:
        url = pipeline.push_to_hub("me/rakuten", private=True, token="hf_x", commit_message="v1", create_pr=True)
    assert url == "https://huggingface.co/me/rakuten/discussions/1"
    create_repo.assert_called_once_with("me/rakuten", private=True, exist_ok=True)
    assert create_commit.call_args.kwargs == {"commit_message": "v1", "create_pr": True}
    fusion_files = {f"fusions/{i}/{name}" for i in (0, 1) for name in ("fusion.json", "cv_metrics.json", "README.md")}
    head_files = {f"fusions/{i}/folds/{k}/{name}" for i in (0, 1) for k in range(3)
                  for name in ("config.json", "model.safetensors", "README.md")}
    expert_files = {f"experts/text/{n}" for n in ("config.json", "model.safetensors", "tokenizer.json",
                                                  "tokenizer_config.json", "mmclf_expert.json", "README.md")}
    expert_files |= {f"experts/image/{n}" for n in ("config.json", "model.safetensors", "mmclf_expert.json", "README.md")}
    assert set(uploaded) == {"pipeline.json", "README.md"} | fusion_files | head_files | expert_files


def test_refuses_what_is_not_an_mmclf_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an mmclf pipeline .*it is an expert folder"):
        MultimodalPipeline.from_pretrained(FIXTURE / "pipeline" / "experts" / "text")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not an mmclf pipeline .*not an mmclf artifact"):
        MultimodalPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="folder not found: runs/pipline"):  # one slash, yet a typo'd path
        MultimodalPipeline.from_pretrained("runs/pipline")
    with pytest.raises(FileNotFoundError, match="folder not found: ./pipeline"):
        MultimodalPipeline.from_pretrained("./pipeline")


def copy_fixture(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE / "pipeline", tmp_path / "pipeline"))


def test_experts_are_matched_by_name_and_mismatches_refused(pipeline, raw, tmp_path):
    folder = copy_fixture(tmp_path)
    spec = json.loads((folder / "pipeline.json").read_text())
    spec["experts"] = {"image": "experts/image", "text": "experts/text"}  # listed in the other order
    (folder / "pipeline.json").write_text(json.dumps(spec))
    swapped = MultimodalPipeline.from_pretrained(folder)
    pd.testing.assert_frame_equal(swapped.predict_proba(raw, images_dir=FIXTURE / "images"),
                                  pipeline.predict_proba(raw, images_dir=FIXTURE / "images"))
    spec["experts"] = {"text": "experts/text", "photo": "experts/image"}
    (folder / "pipeline.json").write_text(json.dumps(spec))
    with pytest.raises(TableMismatchError, match=r"trained on experts \['text', 'image'\]; missing \['image'\]"):
        MultimodalPipeline.from_pretrained(folder)


def test_experts_disagreeing_on_classes_are_refused(tmp_path):
    folder = copy_fixture(tmp_path)
    info_file = folder / "experts" / "image" / "mmclf_expert.json"
    config_file = folder / "experts" / "image" / "config.json"
    config = json.loads(config_file.read_text())
    config["class_names"] = ["10", "40", "2583", "1160"]
    config_file.write_text(json.dumps(config))
    info = json.loads(info_file.read_text())
    info["class_names"] = config["class_names"]
    info_file.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="expert 'image' predicts classes .*disagree on classes"):
        MultimodalPipeline.from_pretrained(folder)


def test_pipeline_command_matches_experts_by_name(tmp_path, capsys):
    experts = FIXTURE / "pipeline" / "experts"
    fusions = [str(FIXTURE / "pipeline" / "fusions" / str(i)) for i in (0, 1)]
    assert main(["pipeline", "--experts", f"image={experts / 'image'}", f"text={experts / 'text'}",
                 "--fusions", *fusions, "--out", str(tmp_path / "p")]) == 0
    assert main(["pipeline", "--experts", f"txt={experts / 'text'}", f"image={experts / 'image'}",
                 "--fusions", *fusions, "--out", str(tmp_path / "q")]) == 2
    assert "missing ['text']" in capsys.readouterr().err


def test_title_only_file_predicts_and_keeps_its_ids(pipeline, raw, tmp_path, capsys):
    title_only = raw.drop(columns=["description", "Unnamed: 0"])
    title_only.index = pd.Index([f"x{i}" for i in range(len(raw))], name="")  # the ENS unnamed id column
    title_only.to_csv(tmp_path / "X.csv")
    assert main(["predict", "--pipeline", str(FIXTURE / "pipeline"), "--input", str(tmp_path / "X.csv"),
                 "--images", str(FIXTURE / "images"), "--out", str(tmp_path / "sub.csv")]) == 0
    assert "without a description: 12," in capsys.readouterr().out
    submission = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    assert submission["Unnamed: 0"].tolist() == [f"x{i}" for i in range(len(raw))]


@pytest.mark.filterwarnings("ignore:none of the")
def test_bad_listings_get_clear_errors(pipeline):
    with pytest.raises(ValueError, match="no title column"):
        pipeline.predict(pd.DataFrame({"name": ["a"]}))
    with pytest.raises(ValueError, match="duplicate id 'a': rows 1 and 2"):
        pipeline.predict([{"id": "a", "title": "x"}, {"id": "a", "title": "y"}])
    with pytest.raises(ValueError, match=r"row 2 \(id '1'\), field 'image': cannot read the image"):
        pipeline.predict([{"title": "x"}, {"title": "y", "image": b"not an image"}])
    with pytest.raises(ValueError, match="row 1 .*field 'image'.*not found"):
        pipeline.predict([{"title": "x", "image": "/nonexistent/a.jpg"}])
    with pytest.raises(ValueError, match="row 2: each listing must be a dict"):
        pipeline.predict([{"title": "x"}, "y"])
    buffer = io.BytesIO()
    PILImage.new("L", (20, 20), 128).save(buffer, format="PNG")  # grayscale works: decoded as RGB
    assert len(pipeline.predict([{"title": "x", "image": buffer.getvalue()}])) == 1


def test_no_image_at_all_warns_for_a_pipeline_with_an_image_expert(pipeline):
    with pytest.warns(UserWarning, match="none of the 2 rows has an image"):
        pipeline.predict([{"title": "x"}, {"title": "y"}])
