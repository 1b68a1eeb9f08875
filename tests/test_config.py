import pytest
import yaml

from mmclf.training.config import (
    RECIPES_DIR,
    config_differences,
    flatten,
    load_config,
    recipe_names,
    resolve,
    schema_for,
    write_config,
)

SHIPPED = ["image-resnet152-224", "image-resnet152-dcl-448", "image-tiny", "image-tiny-dcl", "text-camembert-base",
           "text-camembert-base-short", "text-camembert-large", "text-camembert-large-short", "text-tfidf", "text-tiny"]


def test_shipped_recipes_are_complete_and_valid():
    assert set(SHIPPED) <= set(recipe_names())
    for name in SHIPPED:
        recipe = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
        config = load_config(name)
        # every schema key is spelled out in the shipped file itself, not filled from defaults
        assert set(flatten(recipe)) == set(flatten(schema_for(config["expert"]))), name
    # the recipes named after the paper hold its settings; the practical variants have names of their own
    for name, lr, batch in (("text-camembert-base", 5e-5, 128), ("text-camembert-large", 3e-5, 64)):
        training = load_config(name)["training"]
        assert (training["optimizer"], training["scheduler"], training["epochs"], training["batch_size"],
                training["early_stopping_patience"]) == ("adamw", "linear", 40, batch, 0)
        assert training["lr"] == pytest.approx(lr) and training["warmup_ratio"] > 0
        short = load_config(f"{name}-short")
        assert (short["training"]["epochs"], short["training"]["early_stopping_patience"]) == (4, 1)
        assert short["model"] == load_config(name)["model"]
    assert load_config("text-camembert-large")["model"]["name"] == "camembert/camembert-large"
    paper = load_config("image-resnet152-224")["training"]
    assert (paper["optimizer"], paper["lr"], paper["momentum"], paper["scheduler"], paper["step_epochs"],
            paper["epochs"]) == ("sgd", 0.01, 0.9, "step", 12, 60)


def test_overrides_are_dotted_and_parsed_as_yaml():
    config = load_config("text-tiny", ["training.lr=1e-4", "training.epochs=7", "predict_splits=[test]",
                                       "dataset=/data/ds", "model.name=camembert-base", "training.mixed_precision=bf16"])
    assert config["training"]["lr"] == pytest.approx(1e-4)
    assert config["training"]["epochs"] == 7
    assert config["predict_splits"] == ["test"]
    assert config["dataset"] == "/data/ds"
    assert config["model"]["name"] == "camembert-base"
    assert config["training"]["mixed_precision"] == "bf16"
    assert config["training"]["batch_size"] == load_config("text-tiny")["training"]["batch_size"]


def test_unknown_override_key_names_the_close_one():
    with pytest.raises(ValueError, match=r"unknown config key 'training.lrr'.*Did you mean training.lr"):
        load_config("text-tiny", ["training.lrr=1e-4"])
    with pytest.raises(ValueError, match="unknown config key 'epochs'.*training.epochs"):
        load_config("text-tiny", ["epochs=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_config("text-tiny", ["training.lr"])


def test_image_keys_are_not_text_keys():
    with pytest.raises(ValueError, match="model.image_size"):
        load_config("text-tiny", ["model.image_size=64"])
    assert load_config("image-tiny", ["model.image_size=48"])["model"]["image_size"] == 48


def test_recipe_by_path_with_unknown_key(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("expert: image\nmodel:\n  name: test_resnet\ntraining:\n  epochs: 2\n")
    config = load_config(str(good))
    assert config["model"]["name"] == "test_resnet" and config["training"]["epochs"] == 2
    assert config["model"]["image_size"] == 224  # unspecified keys take the schema default
    bad = tmp_path / "bad.yaml"
    bad.write_text("expert: text\ntraining:\n  warmup: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'training.warmup' in recipe .*bad.yaml.*warmup_ratio"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="text-tiny"):
        load_config("no-such-recipe")


def test_invalid_values_are_refused():
    with pytest.raises(ValueError, match="optimizer"):
        load_config("text-tiny", ["training.optimizer=rmsprop"])
    with pytest.raises(ValueError, match="unknown expert"):
        resolve({"expert": "audio"})
    with pytest.raises(ValueError, match="must be a mapping"):
        resolve({"expert": "text", "training": 3})


def test_written_config_round_trips_and_differences(tmp_path):
    config = load_config("image-tiny", ["seed=3"])
    path = write_config(config, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text()) == config
    other = load_config("image-tiny", ["seed=4", "training.num_workers=3"])
    assert config_differences(config, other) == ["seed"]  # num_workers does not change results
