"""`mmclf serve` on 127.0.0.1: predictions for concurrent clients, a 4xx for each bad request, and it goes on
serving afterwards."""

import base64
import contextlib
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def pipeline():
    return MultimodalPipeline.from_pretrained(FIXTURE / "pipeline")


@pytest.fixture(scope="module")
def server(pipeline):
    app = create_app(pipeline, image_root=FIXTURE / "images", max_rows=20, max_request_bytes=200_000)
    with serving(app) as url:
        yield url, pipeline


def call(url: str, body=None, raw: bytes | None = None, headers: dict | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
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
    assert body["counts"].items() >= {"rows": 12, "empty_title": 0, "without_description": 4, "without_image": 3}.items()


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


# --- dynamic batching, access, metrics, time limits, shutdown ---------------------------------------------------

KEY = "s3cret-key"


def get_text(url: str, headers: dict | None = None) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def batching_server(pipeline):
    """Small batches (4 rows) and a long wait (150 ms), so concurrent requests share batches and long ones split."""
    app = create_app(pipeline, image_root=FIXTURE / "images", max_rows=20, max_batch_rows=4, max_wait_ms=150,
                     api_key=KEY)
    with serving(app) as url:
        yield url


def test_concurrent_requests_share_batches_and_each_gets_its_own_rows_in_order(batching_server, pipeline):
    url, auth = batching_server, {"Authorization": f"Bearer {KEY}"}
    listings = fixture_listings()
    expected = pipeline.predict_details([{"id": x["id"], "title": x["title"], "description": x["description"],
                                          "image": base64.b64decode(x["image"]) if "image" in x else None}
                                         for x in listings])
    before = get_text(f"{url}/metrics", auth)
    requests = [listings[i:i + 1] for i in range(12)] + [listings[::-1], listings[3:10]]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda body: call(f"{url}/predict?top_k=4", body, headers=auth), requests))
    by_id = dict(zip(expected.ids, zip(expected.codes, expected.probs)))
    for body, (status, answer) in zip(requests, answers):
        assert status == 200, answer
        assert [p["id"] for p in answer["predictions"]] == [x["id"] for x in body]  # the 12-row one spans 3 batches
        for prediction in answer["predictions"]:
            code, probs = by_id[prediction["id"]]
            assert prediction["code"] == code
            for top in prediction["top"]:
                assert top["probability"] == pytest.approx(probs[pipeline.class_names.index(top["code"])], abs=1e-5)
    after = get_text(f"{url}/metrics", auth)
    rows_sent = sum(map(len, requests))
    assert metric(after, "mmclf_rows_total", route="/predict", status="200") - \
        metric(before, "mmclf_rows_total", route="/predict", status="200") == rows_sent
    assert metric(after, "mmclf_requests_total", route="/predict", status="200") - \
        metric(before, "mmclf_requests_total", route="/predict", status="200") == len(requests)
    batches = metric(after, "mmclf_batch_rows_count") - metric(before, "mmclf_batch_rows_count")
    assert metric(after, "mmclf_batch_rows_sum") - metric(before, "mmclf_batch_rows_sum") == rows_sent
    assert rows_sent / 4 <= batches < len(requests) + 3  # full batches of 4 at best; far fewer than one per part
    assert metric(after, "mmclf_queue_rows") == 0
    assert metric(after, "mmclf_request_seconds_count", route="/predict") >= len(requests)


def test_every_route_but_health_needs_the_key(batching_server):
    url = batching_server
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for route, body in (("/predict", [{"title": "piscine"}]), ("/metrics", None), ("/openapi.json", None)):
            status, answer = call(f"{url}{route}", body, headers=headers)
            assert status == 401 and "API key" in answer["detail"], (route, headers)
    assert call(f"{url}/health")[0] == 200
    status, answer = call(f"{url}/predict", [{"title": "piscine"}], headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and len(answer["predictions"]) == 1
    text = get_text(f"{url}/metrics", {"Authorization": f"Bearer {KEY}"})
    assert metric(text, "mmclf_requests_total", route="/predict", status="401") >= 3


def test_time_limit_answers_504_and_a_full_queue_503(pipeline):
    app = create_app(pipeline, max_wait_ms=600, max_batch_rows=64, request_timeout_s=0.2, max_queue_rows=2)
    with serving(app) as url, ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(call, f"{url}/predict", [{"title": "piscine"}, {"title": "livre"}])
        time.sleep(0.1)
        status, answer = call(f"{url}/predict", [{"title": "jeu"}])
        assert status == 503 and "2 rows are waiting" in answer["detail"]
        status, answer = waiting.result()
        assert status == 504 and "did not finish within 0.2 s" in answer["detail"]
        assert call(f"{url}/health")[0] == 200
    app.state.batcher.close(5)
    assert not app.state.batcher.worker.is_alive()


@pytest.mark.slow  # a server in a subprocess: ~8 s importing torch
def test_sigterm_answers_the_request_in_flight_and_the_log_holds_no_listing(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as sink:
        server = subprocess.Popen([sys.executable, "-m", "mmclf", "serve", "--pipeline", str(FIXTURE / "pipeline"),
                                   "--port", str(port), "--max-wait-ms", "1500"], stdout=sink, stderr=sink,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "MMCLF_API_KEY": KEY})
        try:
            url, deadline = f"http://127.0.0.1:{port}", time.time() + 60
            while call_or_none(f"{url}/health") is None:
                assert time.time() < deadline and server.poll() is None, log.read_text()
                time.sleep(0.2)
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(call, f"{url}/predict", [{"title": "Piscine tubulaire secrète"}],
                                     headers={"Authorization": f"Bearer {KEY}"})
                time.sleep(0.5)  # the request now waits in the queue (1.5 s)
                server.send_signal(signal.SIGTERM)
                status, body = answer.result(timeout=30)
            assert status == 200 and len(body["predictions"]) == 1
            assert server.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        finally:
            if server.poll() is None:
                server.kill()
    text = log.read_text()
    assert "Finished server process" in text and "POST /predict" in text
    assert "Piscine" not in text and "secrète" not in text and KEY not in text


def call_or_none(url: str):
    try:
        return call(url)
    except OSError:
        return None


def test_api_key_comes_from_the_option_a_file_or_the_environment(tmp_path, monkeypatch):
    import argparse

    from mmclf.cli.serve import api_key

    def args(**values):
        return argparse.Namespace(**{"api_key": None, "api_key_file": None, **values})

    monkeypatch.delenv("MMCLF_API_KEY", raising=False)
    assert api_key(args()) is None
    monkeypatch.setenv("MMCLF_API_KEY", "from-env")
    assert api_key(args()) == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    assert api_key(args(api_key_file=str(tmp_path / "key"))) == "from-file"
    assert api_key(args(api_key="given")) == "given"
    with pytest.raises(FileNotFoundError, match="--api-key-file not found"):
        api_key(args(api_key_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="first line is empty"):
        api_key(args(api_key_file=str(tmp_path / "empty")))


# --- small requests that must not knock the server over ---------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG file whose header claims width x height pixels, followed by the data of a 1x1 image."""
    import io
    import struct
    import zlib

    from PIL import Image

    small = io.BytesIO()
    Image.new("L", (1, 1)).save(small, "PNG")
    data = bytearray(small.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def encoded(image, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_duplicate_or_empty_ids_control_characters_and_unusable_paths_get_a_4xx_naming_row_and_field(server):
    url, _ = server
    cases = [
        ([{"id": "a1", "title": "x"}, {"id": "b", "title": "y"}, {"id": "a1", "title": "z"}], 422,
         "row 2, field id: duplicate id 'a1' (also in row 0)"),
        ([{"title": "x"}, {"id": "0", "title": "y"}], 422, "row 1, field id: duplicate id '0' (also in row 0)"),
        ([{"title": "x"}, {"title": "y", "image_path": "image_5001\x00.jpg"}], 422,
         "row 1, field image_path: control character U+0000 at position 10"),
        ([{"title": "ok\x07ay"}], 422, "row 0, field title: control character U+0007 at position 2"),
        ([{"title": "x", "description": "a\x1bb"}], 422, "row 0, field description: control character U+001B"),
        ([{"id": "a\nb", "title": "x"}], 422, "row 0, field id: control character U+000A"),
        ([{"id": "a", "title": "x"}, {"id": " ", "title": "y"}], 422, "row 1, field id: the id is empty"),
        ([{"id": "a\ud800", "title": "x"}], 422, "row 0, field id: control character U+D800"),
        ([{"title": "x", "image_path": "a" * 300 + ".jpg"}], 422, "row 0, field image_path: not a usable path"),
    ]
    for body, status, message in cases:
        got, answer = call(f"{url}/predict", body)
        assert got == status, (body, answer)
        assert message in answer["detail"][0], answer
    status, body = call(f"{url}/predict", [{"id": "t", "title": "Piscine\ttubulaire\r\n3 m", "description": "a\nb"}])
    assert status == 200 and body["predictions"][0]["id"] == "t"  # tab and line breaks are text, not controls
    assert call(f"{url}/health")[0] == 200


def test_images_are_checked_against_the_pixel_limit_from_their_header_and_decoded_at_reduced_scale(server, pipeline):
    import io

    import numpy as np
    from PIL import Image

    from mmclf.data.listings import ImageTooLarge, open_image
    from mmclf.serve import image_side

    url, _ = server
    side = image_side(pipeline)
    assert side == max(e.model.resize_size for e in pipeline.experts.values() if hasattr(e.model, "resize_size"))
    bomb = png_header(12000, 12000)  # 144 Mpixels, 70 bytes: refused before any pixel is decoded
    status, answer = call(f"{url}/predict", [{"title": "x"}, {"title": "y", "image": base64.b64encode(bomb).decode()}])
    assert status == 413, answer
    assert answer["detail"] == [("row 1, field image: the image is too large: 12000x12000 = 144,000,000 pixels is "
                                 "over the limit of 25,000,000 (--max-image-pixels)")]
    with pytest.raises(ImageTooLarge, match="400000000 pixels"):  # over PIL's own limit, whatever max_pixels says
        open_image(io.BytesIO(png_header(20000, 20000)), max_pixels=500_000_000)

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 2000, 3), dtype=np.uint8))
    reduced = {fmt: open_image(io.BytesIO(encoded(photo, fmt)), min_side=256).size
               for fmt in ("JPEG", "PNG")}
    assert reduced == {"JPEG": (500, 400), "PNG": (334, 267)}  # draft at 1/4; reduce by 6: shorter side >= 256
    assert open_image(IMAGE, min_side=256).size == (24, 24)  # small images are decoded as they are
    with pytest.raises(ImageTooLarge, match="3,200,000 pixels is over the limit of 3,000,000"):
        open_image(io.BytesIO(encoded(photo, "JPEG")), max_pixels=3_000_000)
    smooth = encoded(Image.linear_gradient("L").resize((2000, 1600)).convert("RGB"), "JPEG")  # within the body limit
    status, answer = call(f"{url}/predict", [{"title": "x", "image": base64.b64encode(smooth).decode()}])
    assert status == 200 and answer["counts"]["without_image"] == 0


def test_long_text_gets_413_at_once_and_the_server_answers_others_meanwhile(pipeline):
    app = create_app(pipeline, max_text_chars=1000, max_request_bytes=8 * 2**20, max_wait_ms=0)
    with serving(app) as url, ThreadPoolExecutor(4) as pool:
        huge = [pool.submit(call, f"{url}/predict", [{"title": "ok"}, {"title": "<" * 1_000_000}]) for _ in range(3)]
        small = call(f"{url}/predict", [{"title": "piscine"}])
        answers = [future.result() for future in huge]
        assert small[0] == 200
        for status, answer in answers:
            assert status == 413
            assert answer["detail"] == ["row 1, field title: 1,000,000 characters is over the limit of 1,000"]
        status, answer = call(f"{url}/predict", [{"title": "x" * 1000, "description": "d" * 1000}])
        assert status == 200


def test_long_text_pairs_tokenize_as_before_in_linear_time():
    import random

    from transformers import AutoTokenizer

    from mmclf.experts.text import tokenize

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE / "pipeline" / "experts" / "text")
    pieces = ["piscine", "tubulaire", "état", "d'occasion", "  ", "\n", "\t", "3m", "é", "!!", "x" * 40, ""]
    rng = random.Random(0)
    for _ in range(40):
        title, description = (" ".join(rng.choice(pieces) for _ in range(rng.randrange(0, 120))) for _ in range(2))
        whole = dict(tokenizer([title], [description], truncation="longest_first", max_length=32))
        assert tokenize({"title": [title], "description": [description]}, tokenizer, 32) == whole
    # a 20,000-character pair reaches the tokenizer as 32 words a field: its pair truncation costs the product of the
    # two lengths (tokenizing this pair whole takes GBs; the pairs above show the cut changes no token)
    text = " ".join(rng.choice(pieces[:4]) for _ in range(3000))[:20_000]
    seen = []

    def recording(titles, descriptions, **options):
        seen.extend(titles + descriptions)
        return tokenizer(titles, descriptions, **options)

    encoded = tokenize({"title": [text] * 2, "description": [text] * 2}, recording, 32)
    assert [len(ids) for ids in encoded["input_ids"]] == [32, 32]
    assert len(seen) == 4 and max(len(field.split()) for field in seen) == 32 and len(text.split()) > 2000


def test_the_server_cleans_text_as_batch_prediction_does(server):
    url, pipeline = server
    raw = {"id": "h1", "title": "Pompe &amp;eacute;lectrique <b>neuve</b>&nbsp;&lt;piscine&gt;",
           "description": "<p>Filtre&nbsp;&amp;amp; tuyau</p>\n\n  inclus"}
    with pytest.warns(UserWarning, match="none of the 1 rows has an image"):
        expected = pipeline.predict_proba([raw])
    status, body = call(f"{url}/predict?top_k=3", [raw])
    assert status == 200, body
    for top in body["predictions"][0]["top"]:
        assert top["probability"] == pytest.approx(expected.loc["h1", top["code"]], abs=1e-5)
    cleaned = call(f"{url}/predict?top_k=3", [{"id": "h1", "title": "Pompe électrique neuve",
                                                "description": "Filtre & tuyau inclus"}])
    assert cleaned == (status, body)
