"""`keadm join`."""

from __future__ import annotations

import argparse

from common.cli import not_built


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    return not_built("'keadm join'", 7)
