"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "threshold"]


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def threshold(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"threshold must be >= 0 (0 disables decomposition), got {text}")
    return value
