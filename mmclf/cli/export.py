"""`mmclf export`: a pipeline's networks exported to ONNX, written only within the parity tolerance
(`mmclf.stages.export`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("pipeline", help="pipeline folder or owner/name Hub id (its PyTorch form)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    parser.add_argument("--out", required=True, help="the exported pipeline folder (written whole, or not at all)")
    parser.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantization of the experts' weights")
    parser.add_argument("--dataset", help="a built dataset folder whose rows check parity (default: generated rows)")
    parser.add_argument("--split", default="test", help="split of --dataset (default test)")
    parser.add_argument("--parity-rows", type=int, default=128, help="rows to check parity on (default 128)")
    parser.add_argument("--tolerance", type=float,
                        help="largest absolute probability difference allowed (default 1e-4; int8: 0.1)")
    parser.add_argument("--min-agreement", type=float,
                        help="smallest share of decided rows whose predicted class must agree (default 0.99; int8: 0.9)")


def run(args) -> int:
    from mmclf import stages

    exported = stages.export(pipeline=args.pipeline, output_dir=args.out, format=args.format, quantize=args.quantize,
                             dataset=args.dataset, split=args.split, parity_rows=args.parity_rows,
                             tolerance=args.tolerance, min_agreement=args.min_agreement)
    for part, figures in exported.metadata["export"]["parity"].items():
        print(f"{part:>12}: max |Δp| {figures['max_abs_diff']:.2e}, argmax agreement {figures['argmax_agreement']:.3f} "
              f"over {figures['rows']} rows")
    print(f"wrote {args.out} ({exported.metadata['export']['precision']}, backend onnx)")
    return 0
