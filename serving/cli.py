"""`twin serve`: a model repository from an artifacts folder, served by the real Triton server.

On start it prints the endpoints and models as JSON on stdout; prose goes to stderr. It runs until
SIGTERM or Ctrl-C, then stops the server (bounded: `TritonServer.stop`).
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from twinserve.errors import TwinError

from .server import LOOPBACK, Ports, TritonServer, is_loopback


def _serve(args) -> None:
    from .repository import write_repository

    if not is_loopback(args.host):
        print(f"twin serve: warning: listening on {args.host}: anyone who reaches these ports can call every "
              f"endpoint (no key or TLS yet); prefer the default {LOOPBACK} behind a proxy", file=sys.stderr)
    repository = Path(args.repository or tempfile.mkdtemp(prefix="twinserve-models-"))
    models = write_repository(args.artifacts, repository, max_streams=args.max_streams,
                              idle_timeout_s=args.idle_timeout, threads=args.threads,
                              max_clip_frames=args.max_clip_frames)
    ports = Ports(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port)
    with TritonServer(repository, ports, log_path=args.log, host=args.host) as server:
        endpoints = {"grpc": server.url, "http": f"{server.local_host}:{ports.http}",
                     "metrics": f"{server.local_host}:{ports.metrics}/metrics", "host": args.host,
                     "models": sorted(models),
                     "repository": str(repository), "log": str(server.log_path)}
        print(json.dumps(endpoints, indent=2), flush=True)
        print(f"serving {len(models)} models; SIGTERM or Ctrl-C stops", file=sys.stderr)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        try:
            while not stop and server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if server.process.poll() is not None:
            raise TwinError(f"tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}")


def register(commands) -> None:
    serve = commands.add_parser("serve", help="serve an artifacts folder with the Triton Inference Server")
    serve.add_argument("--artifacts", required=True, help="artifacts folder written by `twin export`")
    serve.add_argument("--repository", help="where to write the model repository (default: a temporary folder); "
                                            "an existing folder is replaced only if twinserve wrote it")
    serve.add_argument("--host", default=LOOPBACK,
                       help=f"address gRPC, HTTP and metrics listen on (default {LOOPBACK}: this machine only)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--max-streams", type=int, default=64, help="streams batched together at most")
    serve.add_argument("--idle-timeout", type=float, default=60.0, help="seconds before an idle stream is freed")
    serve.add_argument("--max-clip-frames", type=int, default=512,
                       help="input frames per clip-graph call; longer clips run in overlapping pieces (finite "
                            "receptive field) or are refused (unbounded memory)")
    serve.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per model (0: one per core)")
    serve.add_argument("--log", help="server log file (default: in a temporary folder)")
    serve.set_defaults(handler=_serve)
