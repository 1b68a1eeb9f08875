"""Ray Data prediction on a local Ray instance (2 CPUs, started and stopped here) gives the in-process codes."""

import glob
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmclf import MultimodalPipeline

ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install "mmclf[ray]"')

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "pipeline_v0_1"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_predictions_equal_the_in_process_ones(local_ray, tmp_path):
    from mmclf.ray import predict_dataset

    raw = pd.read_csv(FIXTURE / "X_test.csv", dtype=str, keep_default_na=False)
    raw.iloc[:6].to_csv(tmp_path / "part-0.csv", index=False)  # a catalog in two files
    raw.iloc[6:].to_csv(tmp_path / "part-1.csv", index=False)
    reference = MultimodalPipeline.from_pretrained(FIXTURE / "pipeline").predict_details(
        raw, images_dir=FIXTURE / "images")
    # two actors of half a CPU each: the other CPU reads and writes
    predict_dataset(FIXTURE / "pipeline", str(tmp_path / "part-*.csv"), tmp_path / "out", images=str(FIXTURE / "images"),
                    concurrency=2, num_cpus=0.5, rows_per_batch=4)
    frame = pd.concat([pd.read_parquet(f) for f in sorted(glob.glob(str(tmp_path / "out" / "*.parquet")))])
    assert frame["id"].tolist() == reference.ids  # input order kept
    assert frame["prdtypecode"].tolist() == reference.codes
    np.testing.assert_allclose(np.stack(frame["probs"].to_list()), reference.probs, atol=1e-6)
    assert frame["votes"].tolist() == reference.votes.tolist()

    predict_dataset(FIXTURE / "pipeline", ray.data.from_pandas(raw), tmp_path / "csv", output_format="csv",
                    images=str(FIXTURE / "images"), concurrency=1, num_cpus=1)
    written = pd.concat([pd.read_csv(f, dtype=str) for f in sorted(glob.glob(str(tmp_path / "csv" / "*.csv")))])
    assert written.columns.tolist() == ["id", "prdtypecode"] and written["prdtypecode"].tolist() == reference.codes


def test_rows_without_ids_are_refused(local_ray):
    from mmclf.ray import RayPredictor

    predictor = RayPredictor(FIXTURE / "pipeline", device="cpu")
    with pytest.raises(ValueError, match="a Ray batch has no id column"):
        predictor(pd.DataFrame({"title": ["piscine"], "description": [""]}))
    codes = predictor(pd.DataFrame({"id": ["a"], "title": ["piscine"], "description": [""]}))["prdtypecode"]
    assert codes.tolist()[0] in predictor.class_names
