"""The `twin` command: the composition root that wires every room's subcommands into one parser.

Each room registers its own subcommands and imports its heavy dependencies only when one runs, so a
client-only install (no torch) still starts. A handler returns its result (a dict or list), which is
printed as JSON on stdout; prose and progress go to stderr. Failures map to exit codes in one place
(`twinserve.errors`): 1 runtime failure, 2 usage error or bad input, 3 unavailable feature.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, version

from twinserve.benchmarks import cli as benchmarks_cli
from twinserve.clients import score_cli, stream_cli
from twinserve.clients.experiments import cli as experiments_cli
from twinserve.errors import EXIT_FAILURE, EXIT_USAGE, TwinError, missing_module
from twinserve.export import cli as export_cli
from twinserve.serving import cli as serving_cli
from twinserve.training import cli as training_cli

from . import demo

# Bad arguments or bad input files: the user can fix the call.
USAGE_ERRORS = (ValueError, LookupError, FileNotFoundError, FileExistsError, NotADirectoryError,
                IsADirectoryError)


def _version() -> str:
    try:
        return version("twinserve")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twin", description="Train, export and serve digital twins of visual cortex.",
                                     epilog="Results are printed as JSON on stdout, prose and progress on stderr. "
                                            "Exit codes: 0 ok, 1 runtime failure, 2 usage error or bad input, "
                                            "3 feature unavailable here.")
    parser.add_argument("--version", action="version", version=f"twinserve {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    training_cli.register(commands)
    export_cli.register(commands)
    serving_cli.register(commands)
    stream_cli.register(commands)
    score_cli.register(commands)
    experiments = experiments_cli.register(commands)
    training_cli.register_experiments(experiments)  # `twin experiment mei` runs on the local PyTorch twin
    demo.register(commands)
    bench = commands.add_parser("bench", help="benchmarks → benchmarks/results/*.json")
    benchmarks_cli.register(bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK"))
    return parser


def _message(error: BaseException) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage error exits with 2 (argparse)
    name = f"twin {args.command}"
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        error = missing_module(error)
        print(f"{name}: {error}", file=sys.stderr)
        return error.exit_code
    except TwinError as error:
        print(f"{name}: {'error' if error.exit_code != 3 else 'unavailable'}: {error}", file=sys.stderr)
        return error.exit_code
    except USAGE_ERRORS as error:
        print(f"{name}: error: {_message(error)}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, TimeoutError, OSError) as error:  # ConnectionError is an OSError
        print(f"{name}: failed: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if result is not None:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
