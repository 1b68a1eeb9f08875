"""How the demo catalog's signal splits between text and image, measured with simple models.

    python benchmarks/demo_catalog_signal.py [--rows 3000] [--test-rows 1500] [--seed 0] [--cnn]

Generates a catalog in a temporary folder, trains on X_train/Y_train and scores macro-F1 on the test
split with: TF-IDF + logistic regression on text; logistic regression on colour histograms of the
images; the same on both feature sets together. With --cnn, also a tiny CNN trained from
scratch for 2 epochs on the 64 px images (image-only), to check the visual signal is learnable.
"""

from __future__ import annotations

import argparse
import html
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from mmclf.demo_catalog import VISUAL_GROUP_OF, generate_catalog
from mmclf.scoring import macro_f1
from mmclf.testing import colour_histograms


def clean(text) -> str:
    text = html.unescape(text) if isinstance(text, str) else ""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()


def load_split(out: Path, split: str):
    x = pd.read_csv(out / f"X_{split}.csv", index_col=0)
    y = pd.read_csv(out / f"Y_{split}.csv", index_col=0)["prdtypecode"].to_numpy()
    texts = [clean(t) + " " + clean(d) for t, d in zip(x["designation"], x["description"])]
    paths = [out / f"image_{split}" / f"image_{i}_product_{p}.jpg" for i, p in zip(x["imageid"], x["productid"])]
    return texts, paths, y


def logistic_regression_f1(train_x, train_y, test_x, test_y) -> float:
    model = LogisticRegression(C=10, max_iter=3000)
    model.fit(train_x, train_y)
    return macro_f1(test_y, model.predict(test_x))


def tiny_cnn_scores(train_paths, train_y, test_paths, test_y, epochs: int = 2) -> tuple[float, float]:
    """Macro-F1 over classes and accuracy over visual groups of a 3-conv CNN trained from scratch."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    classes = np.unique(train_y)

    def tensors(paths, y):
        keep = [i for i, p in enumerate(paths) if p.exists()]
        images = np.stack([np.asarray(Image.open(paths[i]).convert("RGB").resize((64, 64))) for i in keep])
        x = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255
        return x, torch.tensor(np.searchsorted(classes, y[keep]))

    def block(n_in, n_out):
        return [nn.Conv2d(n_in, n_out, 3, padding=1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU(), nn.MaxPool2d(2)]

    x, y = tensors(train_paths, train_y)
    test_x, test_target = tensors(test_paths, test_y)
    model = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, len(classes)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(test_x).argmax(1).numpy()
    target = test_target.numpy()
    group = np.array([VISUAL_GROUP_OF[str(c)] for c in classes])
    return macro_f1(target, predicted), float((group[predicted] == group[target]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--test-rows", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnn", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate_catalog(out, rows=args.rows, test_rows=args.test_rows, seed=args.seed, progress=False)
        train_text, train_paths, train_y = load_split(out, "train")
        test_text, test_paths, test_y = load_split(out, "test")
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
        train_t, test_t = vectorizer.fit_transform(train_text), vectorizer.transform(test_text)
        train_i, test_i = colour_histograms(train_paths), colour_histograms(test_paths)
        both_train = hstack([train_t, csr_matrix(train_i)]).tocsr()
        both_test = hstack([test_t, csr_matrix(test_i)]).tocsr()
        print(f"rows={args.rows} test_rows={args.test_rows} seed={args.seed}")
        print(f"text  (TF-IDF + logistic regression)           macro-F1 "
              f"{logistic_regression_f1(train_t, train_y, test_t, test_y):.3f}")
        print(f"image (colour histogram + logistic regression) macro-F1 "
              f"{logistic_regression_f1(train_i, train_y, test_i, test_y):.3f}")
        print(f"both  (concatenated + logistic regression)      macro-F1 "
              f"{logistic_regression_f1(both_train, train_y, both_test, test_y):.3f}")
        if args.cnn:
            f1, group_accuracy = tiny_cnn_scores(train_paths, train_y, test_paths, test_y)
            print(f"image (tiny CNN, 2 epochs from scratch)         macro-F1 {f1:.3f}, "
                  f"visual-group accuracy {group_accuracy:.3f}")


if __name__ == "__main__":
    main()
