"""The `twin` command. Each package registers its own subcommands; heavy imports happen only when
a subcommand runs, so a client-only install (no torch) still starts."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("twinserve.training.cli", "twinserve.export.cli", "twinserve.serving.cli", "twinserve.clients.stream_cli", "twinserve.clients.score_cli",
                   "twinserve.clients.experiments.cli", "twinserve.demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twin", description="Train, export and serve digital twins of visual cortex.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser("bench", help="benchmarks → benchmarks/results/*.json")
    benchmarks = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands, benchmarks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except ModuleNotFoundError as error:
        print(f"twin {args.command}: needs {error.name!r}; install the extras: pip install 'twinserve[train,export]'",
              file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ConnectionError) as error:
        print(f"twin {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
