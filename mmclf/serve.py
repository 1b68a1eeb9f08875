"""`mmclf serve`: an HTTP server (FastAPI + uvicorn) over a `MultimodalPipeline`, loaded once at start.

    POST /predict?top_k=5   a JSON list of listings:
                            [{"id": "a1", "title": "...", "description": "...", "image": "<base64 JPEG/PNG>"}, ...]
                            or "image_path": a file under the folder given with --image-root
                            -> {"predictions": [{"id", "code", "votes", "top": [{"code", "probability"}, ...]}],
                                "counts": {"rows", "empty_title", "without_description", "without_image"}}
    GET  /health            -> {"status": "ok", "classes", "experts", "fusions"}
    GET  /docs, /openapi.json

Bad requests get a 4xx answer naming the row and field (413 for a body or a row count over the limits,
403 for an image path outside --image-root, 422 for malformed JSON, a wrong type or an image that does not
decode), and the server goes on serving. Predictions run one request at a time in a worker thread (the
models use every core for one batch), so /health answers while a request is predicted.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import warnings
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from mmclf.data.listings import Listings
from mmclf.pipeline import MultimodalPipeline


class Listing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="your id for the listing (default: its position)")
    title: str = Field(description="the product title")
    description: str = Field(default="", description="the product description (may be empty)")
    image: str | None = Field(default=None, description="the image file's bytes, base64-encoded")
    image_path: str | None = Field(default=None, description="an image file under the server's --image-root")


class RequestError(Exception):
    def __init__(self, status: int, row: int, field: str, message: str):
        super().__init__(message)
        self.status, self.row, self.field = status, row, field


def decode_image(listing: Listing, row: int, image_root: Path | None):
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
        path = (image_root / listing.image_path).resolve()
        if not path.is_relative_to(image_root):
            raise RequestError(403, row, "image_path", "the path is outside the server's image folder")
        if not path.is_file():
            raise RequestError(422, row, "image_path", "no such image file")
        source = path
    else:
        return None
    try:
        image = Image.open(source)
        image.load()
    except Exception as error:  # noqa: BLE001 - PIL raises many kinds: each means the image is unusable
        raise RequestError(422, row, "image" if listing.image is not None else "image_path",
                           f"the image does not decode ({type(error).__name__})") from None
    return image


def create_app(pipeline: MultimodalPipeline, *, image_root=None, max_rows: int = 256,
               max_request_bytes: int = 32 * 2**20, batch_size: int = 64) -> FastAPI:
    app = FastAPI(title="mmclf", description="Product type codes from title, description and image.",
                  version="1")
    root = Path(image_root).resolve() if image_root is not None else None
    lock = threading.Lock()

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method == "POST" and length is None:
            return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
        if length is not None and int(length) > max_request_bytes:
            return JSONResponse({"detail": f"request body of {int(length):,} bytes is over the limit of "
                                           f"{max_request_bytes:,}"}, status_code=413)
        return await call_next(request)

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

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "classes": len(pipeline.class_names), "experts": list(pipeline.experts),
                "fusions": len(pipeline.fusions)}

    @app.post("/predict")
    def predict(listings: list[Listing], top_k: int = Query(5, ge=1, le=len(pipeline.class_names))) -> dict:
        if not listings:
            raise RequestError(422, 0, "body", "the list of listings is empty")
        if len(listings) > max_rows:
            raise RequestError(413, max_rows, "body", f"{len(listings)} listings is over the limit of {max_rows} "
                                                      "per request")
        rows = Listings(ids=[item.id if item.id is not None else str(i) for i, item in enumerate(listings)],
                        titles=[item.title for item in listings], descriptions=[item.description for item in listings],
                        images=[decode_image(item, i, root) for i, item in enumerate(listings)])
        with lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rows without an image are normal here; the answer counts them
            result = pipeline.predict_details(rows, batch_size)
        top = (-result.probs).argsort(axis=1)[:, :top_k]
        return {"predictions": [
            {"id": sample_id, "code": code, "votes": int(votes),
             "top": [{"code": pipeline.class_names[c], "probability": round(float(probs[c]), 6)} for c in best]}
            for sample_id, code, votes, probs, best in zip(result.ids, result.codes, result.votes, result.probs, top)],
            "counts": result.counts}

    return app
