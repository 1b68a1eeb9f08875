"""`mmclf serve`: the HTTP server over a pipeline (`mmclf.serve.create_app`, run by uvicorn)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--pipeline", required=True, help="pipeline folder or owner/name Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--image-root", help="the folder whose files requests may name as image_path (default: none)")
    parser.add_argument("--max-rows", type=int, default=256, help="listings per request (default 256)")
    parser.add_argument("--max-request-mb", type=float, default=32, help="request body size limit (default 32 MB)")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args) -> int:
    import uvicorn

    from mmclf.pipeline import MultimodalPipeline
    from mmclf.serve import create_app

    if args.image_root and not Path(args.image_root).is_dir():
        raise FileNotFoundError(f"--image-root folder not found: {args.image_root}")
    pipeline = MultimodalPipeline.from_pretrained(args.pipeline, device=args.device)
    app = create_app(pipeline, image_root=args.image_root, max_rows=args.max_rows,
                     max_request_bytes=int(args.max_request_mb * 2**20), batch_size=args.batch_size)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
