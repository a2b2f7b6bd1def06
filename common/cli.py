"""What the cloudcore and edgecore commands share: the config flags, loading with clear errors, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

from common.config import ConfigError, ConfigModel, to_yaml

EXIT_USAGE = 2  # bad flags or a config that does not validate
EXIT_NOT_BUILT = 3  # the feature asked for has not landed yet

ModelT = TypeVar("ModelT", bound=ConfigModel)


def package_version() -> str:
    try:
        return version("kubage")
    except PackageNotFoundError:
        return "unknown"


def config_parser(prog: str, description: str, default_path: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"configuration file (default: {default_path} if it exists, else built-in defaults)",
    )
    parser.add_argument("--defaultconfig", action="store_true", help="print the default configuration and exit")
    parser.add_argument("--version", action="version", version=f"{prog} {package_version()}")
    return parser


def resolve_config(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    model: type[ModelT],
    load: Callable[[Path | None], ModelT],
    default_path: Path,
) -> ModelT | int:
    """Handle ``--defaultconfig`` and load the config; return the config or an exit code."""
    if args.defaultconfig:
        sys.stdout.write(to_yaml(model()))
        return 0
    path = args.config if args.config is not None else (default_path if default_path.exists() else None)
    try:
        return load(path)
    except ConfigError as exc:
        sys.stderr.write(f"{parser.prog}: {exc}\n")
        return EXIT_USAGE


def not_built(what: str, issue: int) -> int:
    sys.stderr.write(f"{what} is not built yet: it arrives with issue #{issue}.\n")
    return EXIT_NOT_BUILT


def report_missing(prog: str, named: list[tuple[str, str]], hint: str) -> int | None:
    """Files a loaded config names (as ``(key, path)``) that are not there: each reported, then EXIT_USAGE."""
    missing = [(key, path) for key, path in named if path and not Path(path).exists()]
    for key, path in missing:
        sys.stderr.write(f"{prog}: {key}: {path} does not exist ({hint})\n")
    return EXIT_USAGE if missing else None
