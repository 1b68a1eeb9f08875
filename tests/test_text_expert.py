import numpy as np
import pytest
import torch
from datasets import DatasetDict, load_from_disk

from mmclf.cli import main
from mmclf.experts import load_expert
from mmclf.experts.text import TextExpert, train_tiny_tokenizer
from mmclf.inference import expert_features, probability_table
from mmclf.probability_tables import ProbabilityTable
from mmclf.rundir import folder_digest
from mmclf.testing import CLASS_NAMES, make_dataset_dict, save_dataset_dict
from mmclf.training.config import load_config
from mmclf.training.train import train_expert

TINY = ["model.max_length=32", "model.tiny_vocab_size=300", "training.log_with=none", "training.epochs=2",
        "training.batch_size=16", "training.lr=5e-3"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    dataset_dir = save_dataset_dict(root / "ds")
    run_dir = train_expert(load_config("text-tiny", [f"dataset={dataset_dir}", f"output_dir={root / 'run'}"] + TINY))
    return run_dir, load_from_disk(str(dataset_dir))


def test_tiny_tokenizer_encodes_pairs_with_longest_first_truncation():
    tokenizer = train_tiny_tokenizer(["le livre rouge est neuf", "jeu de console avec manette"] * 20, 60)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    pair = tokenizer("livre " * 30, "jeu console", truncation="longest_first", max_length=16)["input_ids"]
    assert len(pair) == 16
    assert pair[0] == tokenizer.cls_token_id and pair[-1] == tokenizer.sep_token_id
    assert pair.count(tokenizer.sep_token_id) == 3  # <s> A </s></s> B </s>: the description survived truncation


def test_tiny_tokenizer_gives_the_same_ids_in_every_training():
    # the Unigram trainer iterates hash sets: without canonical_vocab the rare characters it adds change ids between runs
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyzéèàùûçôABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    texts = [" ".join("".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(8)) for _ in range(300)]
    vocabs = {train_tiny_tokenizer(texts, 400).backend_tokenizer.to_str() for _ in range(5)}
    assert len(vocabs) == 1


@pytest.mark.slow  # the text_run fixture trains through the CLI (~14 s)
def test_run_directory_and_tables(text_run):
    run_dir, dataset = text_run
    for name in ("config.yaml", "metrics.json", "model/config.json", "model/tokenizer.json", "model/mmclf_expert.json",
                 "checkpoints/best/model.safetensors", "checkpoints/last/optimizer.bin"):
        assert (run_dir / name).is_file(), name
    for split in ("validation", "test"):
        table = ProbabilityTable.load(run_dir / "probs" / f"{split}.parquet")
        assert table.ids == list(dataset[split]["id"])
        assert table.splits == [split] * len(dataset[split])
        assert table.labels.tolist() == list(dataset[split]["label"])
        assert table.class_names == CLASS_NAMES
        assert table.probs.shape == (len(dataset[split]), len(CLASS_NAMES))
        assert np.allclose(table.probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_reload_gives_the_same_probabilities(text_run):
    run_dir, dataset = text_run
    expert = load_expert(run_dir / "model")
    assert isinstance(expert, TextExpert)
    assert expert.class_names == CLASS_NAMES and expert.config["max_length"] == 32
    saved = ProbabilityTable.load(run_dir / "probs" / "validation.parquet")
    again = probability_table(expert, dataset["validation"], "validation", source="run", batch_size=7)
    assert again.ids == saved.ids
    assert np.allclose(again.probs, saved.probs, atol=1e-5)


@pytest.mark.slow
def test_a_reloaded_expert_saves_the_same_files(text_run, tmp_path):
    # a resumed run re-saves the expert it reloaded: its folder, and so the steps that read it, must not change
    run_dir, _ = text_run
    load_expert(run_dir / "model").save_pretrained(tmp_path / "again")
    assert folder_digest(tmp_path / "again") == folder_digest(run_dir / "model")


@pytest.mark.slow
def test_features_are_first_token_states_in_dataset_order(text_run):
    run_dir, dataset = text_run
    expert = load_expert(run_dir / "model")
    features = expert_features(expert, dataset["test"], batch_size=8)
    assert features.shape == (len(dataset["test"]), 64)
    subset = expert_features(expert, dataset["test"].select([5, 2]), batch_size=8)
    assert np.allclose(subset, features[[5, 2]], atol=1e-5)
    batch = expert.collate([expert.encode(dataset["test"].select([0]), train=False)[0]])["inputs"]
    hidden = expert.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert np.allclose(hidden.last_hidden_state[0, 0].detach().numpy(), features[0], atol=1e-5)


@pytest.mark.slow
def test_predict_expert_refuses_datasets_without_text_columns_or_with_other_classes(text_run, tmp_path, capsys):
    run_dir, dataset = text_run
    DatasetDict(test=dataset["test"].remove_columns("description")).save_to_disk(str(tmp_path / "no_description"))
    other = make_dataset_dict(train_rows=8, validation_rows=0, test_rows=8, class_names=["10", "40", "50", "60"])
    other.save_to_disk(str(tmp_path / "other"))
    for name, message in (("no_description", "lacks column(s) ['description']"),
                          ("other", "class names differ from the model's (only in the data: ['50', '60']")):
        assert main(["predict-expert", "--model", str(run_dir / "model"), "--dataset", str(tmp_path / name),
                     "--out", str(tmp_path / "t.parquet")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "t.parquet").exists()


@pytest.mark.slow
def test_unlabelled_rows_are_predicted(text_run):
    run_dir, dataset = text_run
    unlabelled = dataset["test"].map(lambda row: {"label": -1})
    table = probability_table(load_expert(run_dir / "model"), unlabelled, "test", source="run")
    assert (table.labels == -1).all() and len(table) == len(dataset["test"])


def test_collate_pads_per_batch():
    dataset = make_dataset_dict(train_rows=40, validation_rows=0, test_rows=0)["train"]
    config = load_config("text-tiny", TINY)
    expert = TextExpert.build(config["model"], CLASS_NAMES, dataset)
    encoded = expert.encode(dataset, train=True)
    rows = [encoded[i] for i in range(4)]
    batch = expert.collate(rows)
    assert batch["inputs"]["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows) <= 32
    assert set(batch["inputs"]) == {"input_ids", "attention_mask"}  # targets never reach forward
    assert torch.equal(batch["targets"]["labels"], torch.tensor(dataset["label"][:4]))
