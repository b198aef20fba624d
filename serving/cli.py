"""`twin serve`: a model repository from an artifacts folder, served by the real Triton server.

On start it prints the endpoints and models as JSON on stdout: where each endpoint listens, whether
it has TLS and asks for the API key (never the key itself); prose goes to stderr. It runs until
SIGTERM or Ctrl-C, then stops the server (bounded: `TritonServer.stop`). Meanwhile it supervises
`tritonserver` (`serving.supervisor`): a server that dies is restarted on the same ports, with
backoff; crashes are counted on stderr and in the `--status` file.

The API key comes from `--api-key-file` or the environment variable `contract.API_KEY_ENV`, never
from the command line (where `ps` would show it); it is required as soon as gRPC or HTTP listen
beyond loopback.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from pathlib import Path

from twinserve.contract import API_KEY_ENV, read_api_key

from . import limits
from .server import LOOPBACK, Access, Listen, Ports, TritonServer
from .supervisor import Supervisor


def _warn_about(listen: Listen, access: Access) -> None:
    """Say on stderr what listens beyond this machine and what travels in clear there."""
    warnings = []
    if "grpc" in listen.exposed and not access.tls:
        warnings.append(f"gRPC listens on {listen.grpc} without TLS: the API key and the data travel in clear "
                        f"(add --tls-cert/--tls-key, or put a TLS proxy in front)")
    if "http" in listen.exposed:
        warnings.append(f"HTTP listens on {listen.http}: Triton's HTTP has no TLS, so the API key and the data "
                        f"travel in clear")
    if "metrics" in listen.exposed:
        warnings.append(f"metrics listen on {listen.metrics}: no key guards them")
    for warning in warnings:
        print(f"twin serve: warning: {warning}", file=sys.stderr)


def _serve(args) -> None:
    from .repository import write_repository

    access = Access(read_api_key(args.api_key_file), args.tls_cert, args.tls_key)
    listen = Listen.on(args.host, access.tls, args.http_host, args.metrics_host)
    access.check(listen)  # before any work: a key is needed beyond loopback
    _warn_about(listen, access)
    repository = Path(args.repository or tempfile.mkdtemp(prefix="twinserve-models-"))
    models = write_repository(args.artifacts, repository, limits.from_args(args), threads=args.threads)
    ports = Ports(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port)
    log = Path(args.log) if args.log else Path(tempfile.mkdtemp(prefix="twinserve-log-")) / "tritonserver.log"

    def start() -> TritonServer:
        return TritonServer(repository, ports, log_path=log, host=args.host, access=access,
                            http_host=args.http_host, metrics_host=args.metrics_host)

    supervisor = Supervisor(start, status_path=args.status, max_crashes=args.max_crashes)
    try:
        server = supervisor.server
        endpoints = {"grpc": server.url, "http": server.http_url, "metrics": server.metrics_url, "host": args.host,
                     **server.describe(), "models": sorted(models), "repository": str(repository), "log": str(log),
                     "status": str(args.status) if args.status else None}
        print(json.dumps(endpoints, indent=2), flush=True)
        print(f"serving {len(models)} models; SIGTERM or Ctrl-C stops", file=sys.stderr)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        try:
            supervisor.run(lambda: bool(stop))
        except KeyboardInterrupt:
            pass
    finally:
        supervisor.stop()


def register(commands) -> None:
    serve = commands.add_parser("serve", help="serve an artifacts folder with the Triton Inference Server")
    serve.add_argument("--artifacts", required=True, help="artifacts folder written by `twin export`")
    serve.add_argument("--repository", help="where to write the model repository (default: a temporary folder); "
                                            "an existing folder is replaced only if twinserve wrote it")
    serve.add_argument("--host", default=LOOPBACK,
                       help=f"address gRPC listens on, and HTTP and metrics unless said otherwise (default "
                            f"{LOOPBACK}: this machine only); any other needs an API key")
    serve.add_argument("--http-host", help=f"address HTTP listens on (default: --host, but {LOOPBACK} when gRPC has "
                                           "TLS on another address: Triton's HTTP has no TLS)")
    serve.add_argument("--metrics-host", help=f"address Prometheus metrics listen on (default: --host if that is "
                                              f"loopback, else {LOOPBACK}: metrics have no key)")
    serve.add_argument("--api-key-file", help=f"file whose first line is the API key every call but metrics must "
                                              f"carry (default: the environment variable {API_KEY_ENV}, if set)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate (chain) for TLS on gRPC; with --tls-key")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    limits.add_flags(serve.add_argument_group("limits (a request beyond one is refused with an error naming it)"))
    serve.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per model (0: one per core)")
    serve.add_argument("--log", help="server log file, kept across restarts (default: in a temporary folder)")
    serve.add_argument("--status", type=Path, help="JSON file kept up to date with the supervisor's counts: crashes, "
                                                   "restarts, last exit code, the running server's pid")
    serve.add_argument("--max-crashes", type=int, default=20,
                       help="give up after this many tritonserver crashes within 10 minutes (default 20)")
    serve.set_defaults(handler=_serve)
