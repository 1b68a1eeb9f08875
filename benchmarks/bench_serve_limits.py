"""What the server's request limits bound: the time of one batch at the text limit, and the cost of decoding a
large image whole or at reduced scale.

    python benchmarks/bench_serve_limits.py [--pipeline tests/fixtures/pipeline_v0_1/pipeline] [--rows 64] \
        [--max-text-chars 20000] [--repeats 3]

One process, one machine: `predict_details` on --rows rows of typical text (a 60-character title, a 600-character
description) against --rows rows whose title and description are both at --max-text-chars (the longest a request
may send), best of --repeats; then a 4000x3000 JPEG and PNG decoded whole (`Image.open().load()`) against
`open_image(min_side=<the pipeline's resize side>)` (JPEG draft mode, `Image.reduce` for PNG). Other jobs share
the cores, so read the ratios.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mmclf import MultimodalPipeline
from mmclf.data.listings import Listings, open_image
from mmclf.serve import image_side


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def rows_of(count: int, title: str, description: str) -> Listings:
    return Listings(ids=[str(i) for i in range(count)], titles=[title] * count, descriptions=[description] * count,
                    images=[None] * count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(Path(__file__).parents[1] / "tests/fixtures/pipeline_v0_1/pipeline"))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-text-chars", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    pipeline = MultimodalPipeline.from_pretrained(args.pipeline)
    words = ["piscine", "tubulaire", "bleue", "avec", "pompe", "et", "bâche", "de", "protection", "pour", "jardin"]
    text = " ".join(words[i % len(words)] for i in range(args.max_text_chars))[:args.max_text_chars]
    typical = rows_of(args.rows, text[:60], text[:600])
    at_limit = rows_of(args.rows, text, text)
    pipeline.predict_details(typical)  # warm-up
    typical_s = best_of(args.repeats, lambda: pipeline.predict_details(typical))
    limit_s = best_of(args.repeats, lambda: pipeline.predict_details(at_limit))
    print(f"batch of {args.rows} rows: typical text {typical_s:.3f} s, at --max-text-chars {args.max_text_chars} "
          f"{limit_s:.3f} s ({limit_s / typical_s:.1f}x)")

    side = image_side(pipeline) or 256
    gradient = np.linspace(0, 255, 4000, dtype=np.float32)[None, :, None] + np.zeros((3000, 1, 3), np.float32)
    noise = np.random.default_rng(0).normal(0, 20, (3000, 4000, 3))
    photo = Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8))
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        photo.save(buffer, fmt)
        data = buffer.getvalue()
        whole_s = best_of(args.repeats, lambda data=data: Image.open(io.BytesIO(data)).load())
        reduced_s = best_of(args.repeats, lambda data=data: open_image(io.BytesIO(data), min_side=side))
        size = open_image(io.BytesIO(data), min_side=side).size
        print(f"4000x3000 {fmt} ({len(data) / 2**20:.1f} MB): whole {whole_s * 1000:.0f} ms, reduced to {size[0]}x"
              f"{size[1]} (min side {side}) {reduced_s * 1000:.0f} ms ({whole_s / reduced_s:.1f}x faster)")


if __name__ == "__main__":
    main()
