"""`twin export`: ONNX graphs (and TensorRT engines) + manifest from a trained run (imports torch only when run)."""

from __future__ import annotations

import sys

from twinserve.training.presets import PRESETS

EXIT_UNAVAILABLE = 3  # the requested runtime (TensorRT, a GPU) is not on this machine


def _export(args) -> int:
    from .onnx_export import export_run
    from .tensorrt import TensorRTUnavailable, export_engines, require_tensorrt

    try:
        if args.format == "tensorrt":
            require_tensorrt()  # before writing anything
        manifest = export_run(args.run, args.out, args.attention)
        if args.format == "tensorrt":
            manifest = export_engines(args.out, args.precision)
    except TensorRTUnavailable as error:
        print(f"twin export: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    for recording, entry in manifest["recordings"].items():
        for graph, spec in entry["graphs"].items():
            counts = spec.get("op_counts")
            nodes = f", {sum(counts.values())} nodes, BatchNormalization: {counts.get('BatchNormalization', 0)}" \
                if counts else ""
            print(f"{args.out}/{spec['file']}: parity {max(spec['parity'].values()):.1e}{nodes}")
    if "attention" in manifest:
        print(f"attention: {manifest['attention']['form']}"
              + (f" ({manifest['attention']['reason']})" if manifest["attention"]["reason"] else ""))
    print(f"wrote {args.out}/manifest.json")
    return 0


def _bench(args) -> None:
    from .bench import run_bench

    results = run_bench(args.out, presets=args.presets, neurons=args.neurons)
    for preset, result in results["presets"].items():
        print(f"{preset} (receptive field {result['receptive_field']}, "
              f"state {result['state_bytes_per_stream'] / 1e6:.1f} MB per stream)")
        for name, path in result["paths"].items():
            print(f"  {name:<28}{path['output_frames_per_s']:9.1f} output frames/s  {path['gflops']:6.1f} GFLOP/s "
                  f"({100 * path['fraction_of_matmul_rate']:.0f}% of matmul)")
        for name, value in result["ratios"].items():
            print(f"  {name:<40}{value:6.2f}")
    print(f"wrote {args.out}")


def register(commands, benchmarks) -> None:
    export = commands.add_parser("export", help="export a trained twin as ONNX graphs with a manifest")
    export.add_argument("--run", required=True, help="run directory written by `twin train`")
    export.add_argument("--out", required=True, help="artifacts folder")
    export.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx",
                        help="tensorrt: also build TensorRT engines from the ONNX graphs (needs TensorRT and a GPU)")
    export.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16",
                        help="TensorRT engine precision (default fp16)")
    export.add_argument("--attention", choices=["fused", "decomposed"], default="fused",
                        help="transformer twins: one ONNX Attention node per attention (default), or written out "
                             "as matrix products for runtimes without it")
    export.set_defaults(handler=_export)

    bench = benchmarks.add_parser("export", help="clip, step and window re-run throughput (PyTorch vs ONNX Runtime)")
    bench.add_argument("--out", default="benchmarks/results/export.json")
    bench.add_argument("--presets", nargs="+", default=["base", "vit-base"], choices=sorted(PRESETS))
    bench.add_argument("--neurons", type=int, default=8000)
    bench.set_defaults(handler=_bench)
