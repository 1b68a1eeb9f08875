"""Pretrained checkpoints through the real code paths: local BERT- and RoBERTa-style folders as text experts, image
state dicts with other tensor names, the frozen-backbone option, training.max_steps, and the prepared GPU check."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file, save_file

from mmclf import stages
from mmclf.experts import load_expert
from mmclf.experts.image import ImageClassifier, ImageExpert
from mmclf.experts.text import TextExpert
from mmclf.inference import expert_probabilities
from mmclf.probability_tables import ProbabilityTable
from mmclf.testing import CLASS_NAMES, make_dataset_dict, save_dataset_dict
from mmclf.training.config import load_config
from mmclf.training.train import train_expert

REPO = Path(__file__).parent.parent
TEXTS = ["le livre rouge est neuf", "jeu de console avec manette", "piscine tubulaire pour le jardin",
         "coussin bleu pour la maison", "figurine de collection", "lot de cartes neuves"] * 10
QUICK = ["model.max_length=32", "training.log_with=none", "training.epochs=2", "training.batch_size=16",
         "training.lr=1e-3", "training.warmup_ratio=0"]


def bert_folder(path: Path) -> Path:
    """A tiny BERT encoder (no classification head) and its WordPiece tokenizer, as sentence-transformers ship."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True)
    words = BertWordPieceTokenizer(lowercase=True)
    words.train_from_iterator(TEXTS, vocab_size=200, show_progress=False)
    words.save_model(str(path))
    tokenizer = BertTokenizerFast.from_pretrained(path)  # reads vocab.txt
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def roberta_folder(path: Path) -> Path:
    """A tiny RoBERTa encoder and its byte-level BPE tokenizer (<s> A </s></s> B </s>, no token types)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    path.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    bpe.save_model(str(path))
    tokenizer = RobertaTokenizerFast.from_pretrained(path)  # reads vocab.json, merges.txt
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
                 ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    return {"bert": bert_folder(root / "bert"), "roberta": roberta_folder(root / "roberta"),
            "dataset": save_dataset_dict(root / "ds"), "root": root}


def text_config(folder, encoder: Path, out: Path, *extra):
    return load_config("text-tiny", [f"dataset={folder['dataset']}", f"output_dir={out}", f"model.name={encoder}",
                                     *QUICK, *extra])


# --- text: any local encoder folder -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_a_local_encoder_gets_its_own_special_tokens_token_types_and_a_new_head(folders, kind):
    expert = TextExpert.build({"name": str(folders[kind]), "max_length": 32}, CLASS_NAMES, None)
    assert len(expert.tokenizer) > 100  # the folder's own vocabulary
    report = expert.metadata["pretrained_load"]
    assert report["loaded"] == report["encoder_tensors"] > 20 and report["missing"] == 0
    assert "classifier new" in report["summary"]
    encoded = expert.encode_batch({"title": ["livre rouge"], "description": ["jeu de console"]}, train=False)
    ids = encoded["input_ids"][0]
    if kind == "bert":  # [CLS] A [SEP] B [SEP], the description's tokens of type 1
        tokens = expert.tokenizer.convert_ids_to_tokens(ids)
        assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
        types = encoded["token_type_ids"][0]
        assert types[0] == 0 and types[-1] == 1 and sorted(set(types)) == [0, 1]
    else:  # <s> A </s></s> B </s>, no token types
        assert "token_type_ids" not in encoded
        assert ids[0] == expert.tokenizer.bos_token_id and ids.count(expert.tokenizer.eos_token_id) == 3
    batch = expert.collate([{k: v[0] for k, v in encoded.items()}])["inputs"]
    assert ("token_type_ids" in batch) == (kind == "bert")
    assert expert.predict_batch({"title": ["livre"], "description": [""]}).shape == (1, len(CLASS_NAMES))


def test_a_max_length_beyond_the_encoders_positions_is_refused(folders):
    with pytest.raises(ValueError, match=r"max_length=80 is longer than .* \(64 tokens\)"):
        TextExpert.build({"name": str(folders["roberta"]), "max_length": 80}, CLASS_NAMES, None)


def test_an_encoder_folder_of_other_tensor_names_is_refused(folders, tmp_path):
    import shutil

    broken = tmp_path / "renamed"
    shutil.copytree(folders["bert"], broken)
    weights = load_file(str(broken / "model.safetensors"))
    save_file({f"other.{name}": tensor for name, tensor in weights.items()}, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match=r"0 of \d+ encoder tensors loaded.*refused"):
        TextExpert.build({"name": str(broken), "max_length": 32}, CLASS_NAMES, None)


@pytest.mark.slow  # fine-tunes, fuses and assembles (~10 s)
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_a_local_encoder_fine_tunes_reloads_offline_and_predicts_in_a_pipeline(folders, kind):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    out = folders["root"] / f"run_{kind}"
    train_expert(text_config(folders, folders[kind], out))
    history = json.loads((out / "metrics.json").read_text())
    first, last = history["epochs"][0]["train_loss"], history["epochs"][-1]["train_loss"]
    assert last < first
    expert = load_expert(out / "model")
    assert isinstance(expert, TextExpert) and expert.metadata["pretrained_load"]["missing"] == 0
    pretrained = load_file(str(folders[kind] / "model.safetensors"))
    tuned = load_file(str(out / "model" / "model.safetensors"))
    name = next(n for n in tuned if n.endswith("embeddings.word_embeddings.weight"))
    assert not torch.equal(tuned[name], pretrained[name.split(".", 1)[1]])  # the encoder itself was fine-tuned
    dataset = load_from_disk(str(folders["dataset"]))
    saved = ProbabilityTable.load(out / "probs" / "test.parquet")
    np.testing.assert_allclose(expert_probabilities(expert, dataset["test"], 8), saved.probs, atol=1e-5)

    fusion = folders["root"] / f"fusion_{kind}"
    stages.fuse("fuse-default", tables=[f"{out.name}={out}/probs/validation.parquet"], train_splits=["validation"], folds=3,
                epochs=5, output_dir=fusion)
    pipeline = stages.assemble(experts={out.name: str(out / "model")}, fusions=[str(fusion)],
                               output_dir=folders["root"] / f"pipeline_{kind}")
    rows = [{"id": "a", "title": "livre rouge", "description": "", "image": None}]
    codes = pipeline.predict(rows)
    assert len(codes) == 1 and codes[0] in CLASS_NAMES


# --- image: state dicts with other tensor names -----------------------------------------------------------------

def image_config(**extra) -> dict:
    return {"name": "test_resnet", "image_size": 32, "resize_size": 36, **extra}


@pytest.fixture(scope="module")
def source_image_model():
    torch.manual_seed(1)
    return ImageClassifier("test_resnet", ["a", "b", "c"], 32, 36).eval()


def renamed_state(model: ImageClassifier) -> dict:
    """The backbone's tensors under other names, as another library would save them."""
    return {"encoder." + name.replace("layer", "stage_").replace(".bn", ".norm"): tensor
            for name, tensor in model.backbone.state_dict().items()}


def test_a_renamed_state_dict_loads_through_the_key_map_and_gives_the_same_features(source_image_model, tmp_path):
    torch.save(renamed_state(source_image_model), tmp_path / "weights.pth")
    key_map = {r"^encoder\.": "", r"stage_": "layer", r"\.norm": ".bn"}
    expert = ImageExpert.build(image_config(pretrained_file=str(tmp_path / "weights.pth"), key_map=key_map),
                               CLASS_NAMES)
    report = expert.metadata["pretrained_load"]
    assert report["loaded"] == report["backbone_tensors"] and report["missing"] == report["unexpected"] == 0
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expert.model.eval()
        np.testing.assert_allclose(expert.model.pooled_features(pixels), source_image_model.pooled_features(pixels),
                                   atol=1e-6)
    assert expert.model.backbone.get_classifier().out_features == len(CLASS_NAMES)  # a new head of this dataset


def test_key_map_order_matches_tensors_by_position(source_image_model, tmp_path):
    state = {f"t{i:03d}": tensor for i, tensor in enumerate(source_image_model.backbone.state_dict().values())}
    torch.save(state, tmp_path / "weights.pth")
    expert = ImageExpert.build(image_config(pretrained_file=str(tmp_path / "weights.pth"), key_map="order"),
                               CLASS_NAMES)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expert.model.eval()
        np.testing.assert_allclose(expert.model.pooled_features(pixels), source_image_model.pooled_features(pixels),
                                   atol=1e-6)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="stored sorted"):
        ImageExpert.build(image_config(pretrained_file=str(tmp_path / "weights.safetensors"), key_map="order"),
                          CLASS_NAMES)


def test_a_mostly_unmatched_state_dict_is_refused_with_the_counts(source_image_model, tmp_path):
    torch.save(renamed_state(source_image_model), tmp_path / "weights.pth")
    total = sum(1 for name in source_image_model.backbone.state_dict() if not name.startswith("fc."))
    with pytest.raises(ValueError, match=rf"0 of {total} backbone tensors loaded, {total} missing, \d+ unexpected.*"
                                         r"refused.*missing: conv1\.0\.weight.*unexpected: encoder\.conv1\.0\.weight"):
        ImageExpert.build(image_config(pretrained_file=str(tmp_path / "weights.pth")), CLASS_NAMES)
    with pytest.raises(ValueError, match="file has 3 tensors"):
        torch.save({f"x{i}": torch.zeros(1) for i in range(3)}, tmp_path / "small.pth")
        ImageExpert.build(image_config(pretrained_file=str(tmp_path / "small.pth"), key_map="order"), CLASS_NAMES)


def test_a_pickled_object_is_not_loaded(tmp_path):
    torch.save({"weights": object()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights-only"):
        ImageExpert.build(image_config(pretrained_file=str(tmp_path / "pickled.pth")), CLASS_NAMES)


# --- the frozen backbone ----------------------------------------------------------------------------------------

def test_a_frozen_backbone_leaves_gradients_to_the_head_only(folders):
    for expert in (ImageExpert.build(image_config(), CLASS_NAMES),
                   TextExpert.build({"name": str(folders["bert"]), "max_length": 32}, CLASS_NAMES, None),
                   TextExpert.build({"name": str(folders["roberta"]), "max_length": 32}, CLASS_NAMES, None)):
        head = expert.freeze_backbone()
        rows = make_dataset_dict(train_rows=4, validation_rows=0, test_rows=0)["train"][:4]
        inputs = expert._inputs(rows)
        expert.model.train()
        loss = expert.loss(expert.model(**inputs), {"labels": torch.as_tensor(rows["label"])})
        loss.backward()
        heads = {id(p) for p in head.parameters()}
        assert heads and all(p.grad is not None for p in head.parameters())
        assert all(p.grad is None for p in expert.model.parameters() if id(p) not in heads)
        expert.model.eval()
        with torch.no_grad():  # the head over the frozen features is the model
            np.testing.assert_allclose(head(expert.frozen_features(inputs)), expert.logits(expert.model(**inputs)),
                                       atol=1e-5)


@pytest.mark.slow  # two trainings (~8 s)
def test_frozen_backbone_trains_the_head_on_features_computed_once_and_round_trips(folders, source_image_model):
    weights = folders["root"] / "image_weights.safetensors"
    save_file({k: v.contiguous() for k, v in source_image_model.backbone.state_dict().items()}, str(weights))
    out = folders["root"] / "frozen_image"
    train_expert(load_config("image-tiny", [f"dataset={folders['dataset']}", f"output_dir={out}",
                                            "model.image_size=32", "model.resize_size=36",
                                            f"model.pretrained_file={weights}", "training.frozen_backbone=true",
                                            "training.log_with=none", "training.epochs=3", "training.lr=1e-2"]))
    saved = load_file(str(out / "model" / "model.safetensors"))
    source = source_image_model.backbone.state_dict()
    for name, tensor in source.items():
        if name.startswith("fc."):
            assert tensor.shape != saved[f"backbone.{name}"].shape  # 3 classes there, 4 here: trained anew
        else:
            assert torch.equal(saved[f"backbone.{name}"], tensor), name  # the backbone is untouched, BN stats too
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 3 and metrics["best_eval_macro_f1"] > 0.25
    dataset = load_from_disk(str(folders["dataset"]))
    table = ProbabilityTable.load(out / "probs" / "validation.parquet")
    np.testing.assert_allclose(expert_probabilities(load_expert(out / "model"), dataset["validation"], 16), table.probs,
                               atol=1e-5)

    text_out = folders["root"] / "frozen_text"
    train_expert(text_config(folders, folders["bert"], text_out, "training.frozen_backbone=true", "training.lr=1e-2"))
    tuned = load_file(str(text_out / "model" / "model.safetensors"))
    pretrained = load_file(str(folders["bert"] / "model.safetensors"))
    assert all(torch.equal(tuned[f"bert.{name}"], tensor) for name, tensor in pretrained.items())
    assert (text_out / "probs" / "test.parquet").is_file()


@pytest.mark.slow  # a training (~10 s)
def test_max_steps_stops_after_that_many_optimizer_steps(tmp_path):
    dataset = save_dataset_dict(tmp_path / "ds", train_rows=64, validation_rows=16, test_rows=0)
    out = tmp_path / "run"
    train_expert(load_config("image-tiny", [f"dataset={dataset}", f"output_dir={out}", "model.image_size=32",
                                            "model.resize_size=36", "training.log_with=none", "training.epochs=5",
                                            "training.batch_size=16", "training.max_steps=6"]))
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["train_batches"] for e in epochs] == [4, 2]
    assert (out / "checkpoints" / "last").is_dir()


# --- the prepared GPU check -------------------------------------------------------------------------------------

@pytest.mark.slow  # every section at tiny sizes on the CPU (~90 s)
def test_gpu_check_dry_run_writes_every_section(tmp_path):
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run", "--out", str(tmp_path)],
                            capture_output=True, text=True, check=False, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report) >= {"environment", "throughput", "optimizer", "workflow", "predict", "mode"}
    assert report["mode"] == "cpu-dry-run" and report["environment"]["torch"] == torch.__version__
    assert {r["recipe"] for r in report["throughput"]} == {"text-camembert-large", "image-resnet152-224",
                                                           "image-resnet152-dcl-448"}
    assert {r["mode"] for r in report["throughput"]} == {"synthetic", "real"}
    assert all(r["samples_per_s"] > 0 for r in report["throughput"])
    assert report["optimizer"]["fused_s"] > 0 and report["optimizer"]["unfused_s"] > 0
    assert report["workflow"]["returncode"] == 0
    trained = report["workflow"]["trainings"]
    assert {"text_base", "text_large", "image_224", "image"} <= set(trained)
    assert all(t["checkpoint_reloads"] for t in trained.values())
    assert report["predict"]["rows_per_s"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| recipe |" in table and "rows/s" in table
