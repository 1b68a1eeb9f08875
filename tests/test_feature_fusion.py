import numpy as np
import pytest
import torch

from mmclf.fusion.feature import FeatureFusionModel, fit_feature_fusion

OPTIONS = {"epochs": 15, "batch_size": 64, "lr": 0.01, "projection_size": 16}


def toy(rows, seed):
    """Label = 2 * (text says "a") + (image says "b"): each modality alone decides half the bits."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, rows), rng.integers(0, 2, rows)
    text = rng.normal(size=(rows, 8)) * [0.3] + 5.0  # offset and scale: standardisation must cope
    image = rng.normal(size=(rows, 5)) * 3.0
    text[:, 2] += np.where(a == 1, 1.0, -1.0)
    image[:, 0] += np.where(b == 1, 6.0, -6.0)
    return [text.astype(np.float32), image.astype(np.float32)], 2 * a + b


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread avoids hand-off costs on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return toy(600, 0), toy(200, 1), toy(300, 2)


def accuracy(model, features, labels):
    return float((model.predict_proba(features).argmax(axis=1) == labels).mean())


def test_single_modality_models_reach_only_half(data):
    (train, y_train), (val, y_val), (test, y_test) = data
    for m in range(2):
        model = fit_feature_fusion([train[m]], y_train, [val[m]], y_val, num_classes=4, **OPTIONS)
        assert accuracy(model, [test[m]], y_test) < 0.6


@pytest.mark.parametrize("combine", ["concat", "sum", "attention"])
def test_each_combine_mode_uses_both_modalities(data, combine, tmp_path):
    (train, y_train), (val, y_val), (test, y_test) = data
    model = fit_feature_fusion(train, y_train, val, y_val, combine=combine, hidden_size=16,
                               class_names=["10", "40", "50", "60"], **OPTIONS)
    assert accuracy(model, test, y_test) > 0.9
    assert len(model.history) == OPTIONS["epochs"]
    assert model.history[model.best_epoch - 1]["eval_macro_f1"] == max(h["eval_macro_f1"] for h in model.history)
    probs = model.predict_proba(test)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # standardisation statistics come from the training rows
    np.testing.assert_allclose(model.standardize[0].mean.numpy(), train[0].mean(axis=0), rtol=1e-5)
    model.save_pretrained(tmp_path / combine)
    reloaded = FeatureFusionModel.from_pretrained(tmp_path / combine)
    assert reloaded.combine == combine and reloaded.class_names == ["10", "40", "50", "60"]
    np.testing.assert_array_equal(reloaded.predict_proba(test), probs)


def test_attention_weights_are_a_distribution(data):
    (train, y_train), (val, y_val), _ = data
    model = fit_feature_fusion(train, y_train, val, y_val, combine="attention", epochs=1, projection_size=8)
    features = [norm(torch.from_numpy(x[:10])) for norm, x in zip(model.standardize, train)]
    projected = torch.stack([p(x) for p, x in zip(model.projections, features)], dim=1)
    weights = model.attention(torch.tanh(projected)).softmax(dim=1)
    assert weights.shape == (10, 2, 1)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(10, 1))


def test_bad_inputs_are_refused(data):
    (train, y_train), (val, y_val), _ = data
    with pytest.raises(ValueError, match="combine must be one of"):
        fit_feature_fusion(train, y_train, val, y_val, combine="product")
    with pytest.raises(ValueError, match="modality 1 has 599 rows"):
        fit_feature_fusion([train[0], train[1][:-1]], y_train, val, y_val)
    with pytest.raises(ValueError, match=r"validation features: modality 1 must have shape \[rows, 5\]"):
        fit_feature_fusion(train, y_train, [val[0], val[1][:, :4]], y_val)
    broken = train[0].copy()
    broken[7, 3] = np.nan
    with pytest.raises(ValueError, match="modality 0, row 7 has NaN"):
        fit_feature_fusion([broken, train[1]], y_train, val, y_val)
    with pytest.raises(ValueError, match="train labels: row 0 has label 9"):
        fit_feature_fusion(train, np.r_[9, y_train[1:]], val, y_val, num_classes=4)
