"""`mmclf serve` on 127.0.0.1: predictions for concurrent clients, a 4xx for each bad request, and it goes on
serving afterwards."""

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import uvicorn

from mmclf import MultimodalPipeline
from mmclf.serve import create_app

FIXTURE = Path(__file__).parent / "fixtures" / "pipeline_v0_1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
IMAGE = FIXTURE / "images" / "image_5001_product_1001.jpg"


@pytest.fixture(scope="module")
def server():
    pipeline = MultimodalPipeline.from_pretrained(FIXTURE / "pipeline")
    app = create_app(pipeline, image_root=FIXTURE / "images", max_rows=20, max_request_bytes=200_000)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", pipeline
    instance.should_exit = True
    thread.join(timeout=10)


def call(url: str, body=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def fixture_listings():
    import pandas as pd

    raw = pd.read_csv(FIXTURE / "X_test.csv", dtype=str, keep_default_na=False)
    listings = []
    for _, row in raw.iterrows():
        path = FIXTURE / "images" / f"image_{row['imageid']}_product_{row['productid']}.jpg"
        listing = {"id": row["Unnamed: 0"], "title": row["designation"], "description": row["description"]}
        if path.is_file():
            listing["image"] = base64.b64encode(path.read_bytes()).decode()
        listings.append(listing)
    return listings


def test_predictions_match_the_pipeline_for_concurrent_clients(server):
    url, _ = server
    listings = fixture_listings()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: call(f"{url}/predict?top_k=3", listings[i:i + 4]), range(0, 12, 1)))
    for start, (status, body) in enumerate(answers):
        assert status == 200, body
        expected = EXPECTED["predictions"][start:start + 4]
        assert [p["code"] for p in body["predictions"]] == expected
        assert [p["id"] for p in body["predictions"]] == EXPECTED["ids"][start:start + 4]
        for prediction in body["predictions"]:
            top = prediction["top"]
            assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    status, body = call(f"{url}/predict", listings)
    probs = {p["id"]: {t["code"]: t["probability"] for t in p["top"]} for p in body["predictions"]}
    for sample_id, row in zip(EXPECTED["ids"], EXPECTED["fused_probs"]):
        for code, value in zip(EXPECTED["class_names"], row):
            assert probs[sample_id][code] == pytest.approx(value, abs=1e-5)
    assert body["counts"] == {"rows": 12, "empty_title": 0, "without_description": 4, "without_image": 3}


def test_image_path_under_the_image_root(server):
    url, _ = server
    by_path = call(f"{url}/predict", [{"title": "état de pompe neuf", "image_path": IMAGE.name}])
    by_bytes = call(f"{url}/predict", [{"title": "état de pompe neuf",
                                        "image": base64.b64encode(IMAGE.read_bytes()).decode()}])
    assert by_path[0] == by_bytes[0] == 200 and by_path[1] == by_bytes[1]


def test_bad_requests_get_a_4xx_naming_row_and_field_and_the_server_goes_on(server):
    url, _ = server
    cases = [
        (None, b"{not json", 422, "body"),
        ([{"title": "ok"}, {"title": 5}], None, 422, "row 1, field title"),
        ([{"description": "no title"}], None, 422, "row 0, field title"),
        ([{"title": "x", "colour": "red"}], None, 422, "row 0, field colour"),
        ({"title": "not a list"}, None, 422, "body"),
        ([{"title": "x"}, {"title": "y", "image": "%%%"}], None, 422, "row 1, field image: not valid base64"),
        ([{"title": "x", "image": base64.b64encode(b"not an image").decode()}], None, 422,
         "row 0, field image: the image does not decode"),
        ([{"title": "x", "image_path": "../pipeline/README.md"}], None, 403, "row 0, field image_path: the path is outside"),
        ([{"title": "x", "image_path": "missing.jpg"}], None, 422, "row 0, field image_path: no such image file"),
        ([{"title": "x"}] * 21, None, 413, "21 listings is over the limit of 20"),
        ([], None, 422, "the list of listings is empty"),
        ([{"title": "x" * 300_000}], None, 413, "over the limit of 200,000"),
    ]
    for body, raw, status, message in cases:
        got, answer = call(f"{url}/predict", body, raw)
        assert got == status, (body if raw is None else raw, answer)
        assert message in json.dumps(answer), answer
    assert call(f"{url}/predict?top_k=0", [{"title": "x"}])[0] == 422
    status, health = call(f"{url}/health")
    assert status == 200 and health == {"status": "ok", "classes": 4, "experts": ["text", "image"], "fusions": 2}
    status, body = call(f"{url}/predict", [{"title": "piscine"}])
    assert status == 200 and len(body["predictions"]) == 1
    status, schema = call(f"{url}/openapi.json")
    assert status == 200 and "/predict" in schema["paths"]
