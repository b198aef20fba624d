"""`twin export`: ONNX graphs (and TensorRT engines) + manifest from a trained run (imports torch only when run).

The handler returns a summary (printed as JSON on stdout by `twinserve.cli`); prose goes to stderr.
"""

from __future__ import annotations

import sys


def _export(args) -> dict:
    from .onnx_export import export_run
    from .tensorrt import export_engines, require_tensorrt

    if args.format == "tensorrt":
        require_tensorrt()  # before writing anything; raises Unavailable (exit 3) without TensorRT or a GPU
    manifest = export_run(args.run, args.out, args.attention)
    if args.format == "tensorrt":
        manifest = export_engines(args.out, args.precision)
    graphs = {}
    for recording, entry in manifest.recordings.items():
        for name, graph in entry.graphs.items():
            counts = graph.details.get("op_counts")
            graphs[f"{recording}/{name}"] = {"file": graph.file, "parity": max(graph.parity.values()),
                                             **({"nodes": sum(counts.values())} if counts else {})}
            print(f"{args.out}/{graph.file}: parity {max(graph.parity.values()):.1e}"
                  + (f", {sum(counts.values())} nodes, BatchNormalization: {counts.get('BatchNormalization', 0)}"
                     if counts else ""), file=sys.stderr)
    if manifest.attention:
        print(f"attention: {manifest.attention['form']}"
              + (f" ({manifest.attention['reason']})" if manifest.attention["reason"] else ""), file=sys.stderr)
    print(f"wrote {args.out}/manifest.json", file=sys.stderr)
    return {"manifest": f"{args.out}/manifest.json", "core": manifest.core, "receptive_field": manifest.receptive_field,
            "graphs": graphs}


def register(commands) -> None:
    export = commands.add_parser("export", help="export a trained twin as ONNX graphs with a manifest")
    export.add_argument("--run", required=True, help="run directory written by `twin train`")
    export.add_argument("--out", required=True, help="artifacts folder")
    export.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx",
                        help="tensorrt: also build TensorRT engines from the ONNX graphs (needs TensorRT and a GPU)")
    export.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16",
                        help="TensorRT engine precision (default fp16)")
    export.add_argument("--attention", choices=["fused", "decomposed"], default="fused",
                        help="twins with attention: one ONNX Attention node per attention (default), or written out "
                             "as matrix products for runtimes without it")
    export.set_defaults(handler=_export)
