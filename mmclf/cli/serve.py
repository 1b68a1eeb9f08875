"""`mmclf serve`: the HTTP server over a pipeline (`mmclf.serve.create_app`, run by uvicorn)."""

from __future__ import annotations

import os
from pathlib import Path

API_KEY_VARIABLE = "MMCLF_API_KEY"


def add_arguments(parser) -> None:
    parser.add_argument("--pipeline", required=True, help="pipeline folder (PyTorch or ONNX export) or owner/name Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--image-root", help="the folder whose files requests may name as image_path (default: none)")
    parser.add_argument("--max-rows", type=int, default=256, help="listings per request (default 256)")
    parser.add_argument("--max-request-mb", type=float, default=32, help="request body size limit (default 32 MB)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per model forward pass (default 64)")
    parser.add_argument("--max-image-pixels", type=int, default=25_000_000,
                        help="width x height of one image, read from its header before decoding; a larger image "
                             "gets 413 (default 25000000)")
    parser.add_argument("--max-text-chars", type=int, default=20_000,
                        help="characters in one id, title, description or image_path; a longer one gets 413 "
                             "(default 20000)")
    batching = parser.add_argument_group("dynamic batching (rows of concurrent requests predicted together)")
    batching.add_argument("--max-batch-rows", type=int, default=64,
                          help="rows per batch; larger requests are split into consecutive parts (default 64)")
    batching.add_argument("--max-wait-ms", type=float, default=5.0,
                          help="how long the first waiting row waits for others to join its batch (default 5)")
    batching.add_argument("--no-batching", action="store_true", help="predict each request alone, as it arrives")
    batching.add_argument("--max-queue-rows", type=int, default=4096,
                          help="rows allowed to wait; a request beyond gets 503 (default 4096)")
    batching.add_argument("--request-timeout-s", type=float, default=30.0,
                          help="a request not answered in this time gets 504 (default 30)")
    access = parser.add_argument_group("access")
    access.add_argument("--api-key", help=f"require Authorization: Bearer KEY on every route but /health (prefer "
                                          f"--api-key-file or ${API_KEY_VARIABLE}: a command line is visible to "
                                          "other users of the machine)")
    access.add_argument("--api-key-file", help="a file holding the API key (its first line)")


def api_key(args) -> str | None:
    """--api-key, else the first line of --api-key-file, else $MMCLF_API_KEY; None: no key required."""
    if args.api_key and args.api_key_file:
        raise ValueError("give either --api-key or --api-key-file, not both")
    if args.api_key_file:
        path = Path(args.api_key_file)
        if not path.is_file():
            raise FileNotFoundError(f"--api-key-file not found: {path}")
        lines = path.read_text().splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"--api-key-file {path}: its first line is empty")
        return lines[0].strip()
    return args.api_key or os.environ.get(API_KEY_VARIABLE) or None


def run(args) -> int:
    import uvicorn

    from mmclf.pipeline import MultimodalPipeline
    from mmclf.serve import create_app

    if args.image_root and not Path(args.image_root).is_dir():
        raise FileNotFoundError(f"--image-root folder not found: {args.image_root}")
    key = api_key(args)
    pipeline = MultimodalPipeline.from_pretrained(args.pipeline, device=args.device)
    app = create_app(pipeline, image_root=args.image_root, max_rows=args.max_rows,
                     max_request_bytes=int(args.max_request_mb * 2**20), batch_size=args.batch_size,
                     batching=not args.no_batching, max_batch_rows=args.max_batch_rows, max_wait_ms=args.max_wait_ms,
                     max_queue_rows=args.max_queue_rows, request_timeout_s=args.request_timeout_s, api_key=key,
                     max_image_pixels=args.max_image_pixels, max_text_chars=args.max_text_chars)
    # on SIGTERM uvicorn stops accepting, answers the requests in flight (at most this long), then exits
    uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=int(args.request_timeout_s) + 5)
    return 0
