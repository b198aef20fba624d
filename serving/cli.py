"""`twin serve`: a model repository from an artifacts folder, served by the real Triton server."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

from twinserve.training.presets import PRESETS


def _serve(args) -> int:
    from .repository import write_repository
    from .server import Ports, TritonServer

    repository = Path(args.repository or tempfile.mkdtemp(prefix="twinserve-models-"))
    models = write_repository(args.artifacts, repository, max_streams=args.max_streams,
                              idle_timeout_s=args.idle_timeout, threads=args.threads)
    ports = Ports(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port)
    with TritonServer(repository, ports, log_path=args.log) as server:
        print(f"serving {len(models)} models from {repository}: {', '.join(sorted(models))}")
        print(f"gRPC localhost:{ports.grpc}  HTTP localhost:{ports.http}  metrics localhost:{ports.metrics}/metrics")
        print(f"log: {server.log_path}; Ctrl-C stops")
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        try:
            while not stop and server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if server.process.poll() is not None:
            print(f"tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}")
            return 1
    return 0


def _bench(args) -> None:
    from .bench import run_bench

    results = run_bench(args.out, presets=args.presets, neurons=args.neurons, frames=args.frames)
    for preset, result in results["presets"].items():
        for source in ("client", "perf_analyzer"):
            for row in result[source]:
                text = row.get("error", "")[:100] or (f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                                                      f"{row['frames_per_s']:7.1f} frames/s")
                print(f"{preset:<10}{source:<14}{row['streams']:>3} streams  {text}")
        print(f"{preset:<10}30 fps streams with p99 < 33 ms: {result['realtime']['max_streams_at_30fps']}")
    print(f"wrote {args.out}")


def register(commands, benchmarks) -> None:
    serve = commands.add_parser("serve", help="serve an artifacts folder with the Triton Inference Server")
    serve.add_argument("--artifacts", required=True, help="artifacts folder written by `twin export`")
    serve.add_argument("--repository", help="where to write the model repository (default: a temporary folder)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--max-streams", type=int, default=64, help="streams batched together at most")
    serve.add_argument("--idle-timeout", type=float, default=60.0, help="seconds before an idle stream is freed")
    serve.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per model (0: one per core)")
    serve.add_argument("--log", help="server log file (default: in a temporary folder)")
    serve.set_defaults(handler=_serve)

    bench = benchmarks.add_parser("stream", help="streaming latency through Triton: own client and perf_analyzer")
    bench.add_argument("--out", default="benchmarks/results/stream.json")
    bench.add_argument("--presets", nargs="+", default=["small", "base"], choices=sorted(PRESETS))
    bench.add_argument("--neurons", type=int, default=8000)
    bench.add_argument("--frames", type=int, default=150, help="frames per stream in the closed-loop runs")
    bench.set_defaults(handler=_bench)
