"""CLI sub-commands for this stage (registered by tinyshot.cli)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the `tinyshot` parser."""
