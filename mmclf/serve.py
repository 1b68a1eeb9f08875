"""`mmclf serve`: an HTTP server (FastAPI + uvicorn) over a `MultimodalPipeline`, loaded once at start.

    POST /predict?top_k=5   a JSON list of listings:
                            [{"id": "a1", "title": "...", "description": "...", "image": "<base64 JPEG/PNG>"}, ...]
                            or "image_path": a file under the folder given with --image-root
                            -> {"predictions": [{"id", "code", "votes", "top": [{"code", "probability"}, ...]}],
                                "counts": {"rows", "empty_title", "without_description", "without_image"}}
    GET  /health            -> {"status": "ok", "classes", "experts", "fusions"}   (never needs the key)
    GET  /metrics           Prometheus text format: requests and rows by route and status, latency and batch
                            size histograms, rows waiting in the queue
    GET  /docs, /openapi.json

Dynamic batching: the rows of concurrent requests wait in one queue and are predicted together by one worker
thread, up to `max_batch_rows` rows per batch or `max_wait_ms` after the first waiting row (what Triton's
dynamic batcher and Ray Serve's `@serve.batch` do). A request larger than a batch is split into consecutive
parts, each request's rows stay together and in order, and every request gets exactly its own rows back. A
model forward pays a fixed cost per batch, so 32 one-row requests predicted as one batch cost little more
than one. `batching=False` predicts each request alone, as it arrives.

Titles and descriptions are cleaned as `mmclf predict` and the dataset build clean them (HTML entities decoded,
tags stripped, whitespace collapsed), so the server and a batch prediction give one listing the same answer.

Bad requests get a 4xx answer naming the row and field before they reach the queue (413 for a body, a row count,
a text field or an image's pixel count over the limits, 403 for an image path outside --image-root, 422 for
malformed JSON, a wrong type, an empty or duplicate id, a control character or an image that does not decode). Images are
decoded with a pixel limit checked from the header, and at reduced scale (JPEG draft mode) when far larger than
the image experts read, so no request holds large decoded images. With an API key every route but /health answers 401 without
`Authorization: Bearer <key>` (compared in constant time). A request whose rows wait or run longer than
`request_timeout_s` gets 504; one arriving while `max_queue_rows` rows already wait gets 503 (Retry-After: 1),
as does one arriving after shutdown began. On SIGTERM uvicorn stops accepting connections, the requests in flight
are answered, then the worker stops. Request bodies are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import re
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from mmclf.data.listings import ImageTooLarge, Listings, open_image
from mmclf.data.rows import clean_text
from mmclf.pipeline import MultimodalPipeline

ROUTES = ("/predict", "/health", "/metrics", "/docs", "/openapi.json")
OPEN_ROUTES = ("/health",)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Listing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="your id for the listing (default: its position)")
    title: str = Field(description="the product title")
    description: str = Field(default="", description="the product description (may be empty)")
    image: str | None = Field(default=None, description="the image file's bytes, base64-encoded")
    image_path: str | None = Field(default=None, description="an image file under the server's --image-root")


# control characters (C0, DEL, C1) and lone surrogates; free text keeps tab, line feed and carriage return
CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class RequestError(Exception):
    def __init__(self, status: int, row: int, field: str, message: str):
        super().__init__(message)
        self.status, self.row, self.field = status, row, field


class Unavailable(Exception):
    """503: the queue is full or the server is shutting down."""


def check_fields(listing: Listing, row: int, max_text_chars: int) -> None:
    """413 for a text field over `max_text_chars`, 422 for a control character (any in id and image_path) or an
    empty id (leave the id out to be named by position)."""
    if listing.id is not None and not listing.id.strip():
        raise RequestError(422, row, "id", "the id is empty: give one, or leave it out to be named by position")
    for name in ("id", "title", "description", "image_path"):
        value = getattr(listing, name)
        if value is None:
            continue
        if len(value) > max_text_chars:
            raise RequestError(413, row, name, f"{len(value):,} characters is over the limit of {max_text_chars:,}")
        found = (CONTROL_IN_TEXT if name in ("title", "description") else CONTROL).search(value)
        if found:
            raise RequestError(422, row, name, f"control character U+{ord(found.group()):04X} at position "
                                               f"{found.start()} is not allowed")


def image_side(pipeline: MultimodalPipeline) -> int | None:
    """The largest side the pipeline's image experts resize to (PyTorch or ONNX); None without an image expert."""
    sides = []
    for expert in pipeline.experts.values():
        side = getattr(getattr(expert, "model", None), "resize_size", None)
        if side is None and isinstance(getattr(expert, "encoding", None), dict):
            side = expert.encoding.get("resize_size")
        if isinstance(side, int):
            sides.append(side)
    return max(sides, default=None)


def decode_image(listing: Listing, row: int, image_root: Path | None, max_pixels: int | None = None,
                 min_side: int | None = None):
    if listing.image is not None and listing.image_path is not None:
        raise RequestError(422, row, "image", "give either image or image_path, not both")
    if listing.image is not None:
        try:
            data = base64.b64decode(listing.image, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(422, row, "image", "not valid base64") from None
        source = io.BytesIO(data)
    elif listing.image_path is not None:
        if image_root is None:
            raise RequestError(403, row, "image_path", "this server reads no image files (started without --image-root)")
        try:
            path = (image_root / listing.image_path).resolve()
            if not path.is_relative_to(image_root):
                raise RequestError(403, row, "image_path", "the path is outside the server's image folder")
            if not path.is_file():
                raise RequestError(422, row, "image_path", "no such image file")
        except OSError as error:  # a name too long, a symlink loop ...
            raise RequestError(422, row, "image_path", f"not a usable path ({error.strerror})") from None
        source = path
    else:
        return None
    field_name = "image" if listing.image is not None else "image_path"
    try:
        image = open_image(source, max_pixels, min_side)
    except ImageTooLarge as error:
        raise RequestError(413, row, field_name, f"the image is too large: {error} (--max-image-pixels)") from None
    except Exception as error:  # noqa: BLE001 - PIL raises many kinds: each means the image is unusable
        raise RequestError(422, row, field_name, f"the image does not decode ({type(error).__name__})") from None
    return image


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps can live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("mmclf_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.rows = Counter("mmclf_rows", "listings in answered /predict requests", ["route", "status"],
                            registry=self.registry)
        self.latency = Histogram("mmclf_request_seconds", "time from request to answer", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("mmclf_batch_rows", "rows per predicted batch", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.batch_seconds = Histogram("mmclf_batch_seconds", "time to predict one batch", buckets=LATENCY_BUCKETS,
                                       registry=self.registry)
        self.queue_rows = Gauge("mmclf_queue_rows", "rows waiting to be predicted", registry=self.registry)


@dataclass
class Part:
    """Consecutive rows of one request, predicted in one batch."""

    titles: list[str]
    descriptions: list[str]
    images: list
    future: Future = field(default_factory=Future)

    def __len__(self) -> int:
        return len(self.titles)


class Batcher:
    """One worker thread predicting the queued parts of requests together, up to `max_batch_rows` rows or
    `max_wait_s` after the first waiting part; batching=False: one request per batch."""

    def __init__(self, pipeline: MultimodalPipeline, *, batching: bool = True, max_batch_rows: int = 64,
                 max_wait_s: float = 0.005, max_queue_rows: int = 4096, batch_size: int = 64,
                 metrics: Metrics | None = None):
        if max_batch_rows < 1 or max_wait_s < 0 or max_queue_rows < 1:
            raise ValueError("max_batch_rows and max_queue_rows must be at least 1 and max_wait_ms at least 0")
        self.pipeline, self.batching, self.batch_size = pipeline, batching, batch_size
        self.max_batch_rows, self.max_wait_s, self.max_queue_rows = max_batch_rows, max_wait_s, max_queue_rows
        self.metrics = metrics or Metrics()
        self.queue: deque[list[Part]] = deque()  # one entry per request: its parts, in order
        self.waiting_rows = 0
        self.closing = False
        self.condition = threading.Condition()
        self.worker = threading.Thread(target=self.run, name="mmclf-batcher", daemon=True)
        self.worker.start()

    def submit(self, rows: Listings) -> list[Future]:
        """Queue a request's rows; the futures give their parts' results (PipelinePrediction slices) in order."""
        step = self.max_batch_rows if self.batching else len(rows)
        images = list(rows.images)
        parts = [Part(rows.titles[i:i + step], rows.descriptions[i:i + step], images[i:i + step])
                 for i in range(0, len(rows), step)]
        with self.condition:
            if self.closing:
                raise Unavailable("the server is shutting down")
            if self.waiting_rows and self.waiting_rows + len(rows) > self.max_queue_rows:
                raise Unavailable(f"{self.waiting_rows} rows are waiting already (limit {self.max_queue_rows})")
            self.queue.append(parts)
            self.waiting_rows += len(rows)
            self.metrics.queue_rows.set(self.waiting_rows)
            self.condition.notify()
        return [part.future for part in parts]

    def next_batch(self) -> list[Part] | None:
        """Wait for rows, then for more until the batch is full or the first rows waited `max_wait_s`."""
        with self.condition:
            while not self.queue:
                if self.closing:
                    return None
                self.condition.wait()
            if not self.batching:
                batch = self.queue.popleft()
            else:
                deadline = time.monotonic() + self.max_wait_s
                while self.waiting_rows < self.max_batch_rows and not self.closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.condition.wait(left)
                batch, rows = [], 0
                while self.queue and rows + len(self.queue[0][0]) <= self.max_batch_rows:
                    part = self.queue[0].pop(0)
                    batch.append(part)
                    rows += len(part)
                    if not self.queue[0]:
                        self.queue.popleft()
            self.waiting_rows -= sum(map(len, batch))
            self.metrics.queue_rows.set(self.waiting_rows)
        return batch

    def run(self) -> None:
        while (batch := self.next_batch()) is not None:
            batch = [part for part in batch if part.future.set_running_or_notify_cancel()]  # timed-out ones skipped
            if not batch:
                continue
            rows = Listings(ids=[str(i) for i in range(sum(map(len, batch)))],
                            titles=[t for part in batch for t in part.titles],
                            descriptions=[d for part in batch for d in part.descriptions],
                            images=[image for part in batch for image in part.images])
            started = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # rows without an image are normal here; the answer counts them
                    result = self.pipeline.predict_details(rows, self.batch_size)
            except Exception as error:  # noqa: BLE001 - the requests of this batch get the error, the server goes on
                for part in batch:
                    part.future.set_exception(error)
                continue
            self.metrics.batch_rows.observe(len(rows))
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            start = 0
            for part in batch:
                stop = start + len(part)
                part.future.set_result((result.winners[start:stop], result.votes[start:stop], result.probs[start:stop]))
                start = stop

    def close(self, timeout: float | None = None) -> None:
        """Predict what is queued, then stop the worker."""
        with self.condition:
            self.closing = True
            self.condition.notify_all()
        self.worker.join(timeout)


def create_app(pipeline: MultimodalPipeline, *, image_root=None, max_rows: int = 256,
               max_request_bytes: int = 32 * 2**20, batch_size: int = 64, batching: bool = True,
               max_batch_rows: int = 64, max_wait_ms: float = 5.0, max_queue_rows: int = 4096,
               request_timeout_s: float = 30.0, api_key: str | None = None, max_image_pixels: int = 25_000_000,
               max_text_chars: int = 20_000) -> FastAPI:
    """The app; `batching`, `max_batch_rows`, `max_wait_ms`: dynamic batching across requests; `api_key`: every
    route but /health needs `Authorization: Bearer <api_key>`; `max_image_pixels` (width x height, from the image's
    header) and `max_text_chars` (per field): 413 beyond."""
    if max_image_pixels < 1 or max_text_chars < 1:
        raise ValueError("max_image_pixels and max_text_chars must be at least 1")
    root = Path(image_root).resolve() if image_root is not None else None
    min_side = image_side(pipeline)
    metrics = Metrics()
    batcher = Batcher(pipeline, batching=batching, max_batch_rows=max_batch_rows, max_wait_s=max_wait_ms / 1000,
                      max_queue_rows=max_queue_rows, batch_size=batch_size, metrics=metrics)
    expected = f"Bearer {api_key}".encode() if api_key else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(batcher.close, request_timeout_s)

    app = FastAPI(title="mmclf", description="Product type codes from title, description and image.",
                  version="1", lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        started = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        response = checked(request)
        if response is None:
            response = await call_next(request)
        status = str(response.status_code)
        metrics.requests.labels(route, status).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        if route == "/predict":
            metrics.rows.labels(route, status).inc(getattr(request.state, "rows", 0))
        return response

    def checked(request: Request) -> JSONResponse | None:
        """401 without the key, 411/413 for a body without a length or over the limit; None: go on."""
        if expected is not None and request.url.path not in OPEN_ROUTES:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"detail": "missing or wrong API key: send Authorization: Bearer <key>"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if request.method == "POST" and length is None:
            return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
        if length is not None and int(length) > max_request_bytes:
            return JSONResponse({"detail": f"request body of {int(length):,} bytes is over the limit of "
                                           f"{max_request_bytes:,}"}, status_code=413)
        return None

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = []
        for item in error.errors():
            if item["type"] == "json_invalid":
                problems.append(f"body: not valid JSON at character {item['loc'][-1]} ({item['ctx']['error']})")
                continue
            location = [part for part in item["loc"] if part != "body"]
            where = (f"row {location[0]}, field {'.'.join(map(str, location[1:]))}: " if len(location) > 1 and
                     isinstance(location[0], int) else f"{'.'.join(map(str, location)) or 'body'}: ")
            problems.append(where + item["msg"])
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        return JSONResponse({"detail": [f"row {error.row}, field {error.field}: {error}"]}, status_code=error.status)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, error: Unavailable):
        return JSONResponse({"detail": f"try again: {error}"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "classes": len(pipeline.class_names), "experts": list(pipeline.experts),
                "fusions": len(pipeline.fusions)}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def listings_of(listings: list[Listing]) -> Listings:
        if not listings:
            raise RequestError(422, 0, "body", "the list of listings is empty")
        if len(listings) > max_rows:
            raise RequestError(413, max_rows, "body", f"{len(listings)} listings is over the limit of {max_rows} "
                                                      "per request")
        ids, first_row = [], {}
        for row, item in enumerate(listings):
            check_fields(item, row, max_text_chars)
            sample_id = item.id if item.id is not None else str(row)  # a row without an id is named by its position
            if sample_id in first_row:
                raise RequestError(422, row, "id", f"duplicate id {sample_id!r} (also in row {first_row[sample_id]})")
            first_row[sample_id] = row
            ids.append(sample_id)
        # cleaned as `mmclf predict` and the dataset build clean them: the experts were trained on such text
        return Listings(ids=ids, titles=[clean_text(item.title) for item in listings],
                        descriptions=[clean_text(item.description) for item in listings],
                        images=[decode_image(item, i, root, max_image_pixels, min_side)
                                for i, item in enumerate(listings)])

    @app.post("/predict")
    async def predict(request: Request, listings: list[Listing],
                      top_k: int = Query(5, ge=1, le=len(pipeline.class_names))):
        request.state.rows = len(listings)
        rows = await run_in_threadpool(listings_of, listings)  # image decoding stays off the event loop
        waiting = [asyncio.wrap_future(future) for future in batcher.submit(rows)]
        try:
            parts = await asyncio.wait_for(asyncio.gather(*waiting), request_timeout_s)
        except TimeoutError:
            return JSONResponse({"detail": f"the prediction did not finish within {request_timeout_s:g} s"},
                                status_code=504)
        winners, votes, probs = (np.concatenate(column) for column in zip(*parts))
        top = (-probs).argsort(axis=1)[:, :top_k]
        names = pipeline.class_names
        return {"predictions": [
            {"id": sample_id, "code": names[winner], "votes": int(count),
             "top": [{"code": names[c], "probability": round(float(row[c]), 6)} for c in best]}
            for sample_id, winner, count, row, best in zip(rows.ids, winners, votes, probs, top)],
            "counts": rows.counts()}

    return app
