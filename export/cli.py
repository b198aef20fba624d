"""`twin export`: ONNX graphs + manifest from a trained run (imports torch only when run)."""

from __future__ import annotations


def _export(args) -> None:
    from .onnx_export import export_run

    manifest = export_run(args.run, args.out)
    for recording, entry in manifest["recordings"].items():
        for graph, spec in entry["graphs"].items():
            print(f"{args.out}/{spec['file']}: parity {max(spec['parity'].values()):.1e}, "
                  f"{sum(spec['op_counts'].values())} nodes, BatchNormalization: "
                  f"{spec['op_counts'].get('BatchNormalization', 0)}")
    print(f"wrote {args.out}/manifest.json")


def register(commands) -> None:
    export = commands.add_parser("export", help="export a trained twin as ONNX graphs with a manifest")
    export.add_argument("--run", required=True, help="run directory written by `twin train`")
    export.add_argument("--out", required=True, help="artifacts folder")
    export.set_defaults(handler=_export)
