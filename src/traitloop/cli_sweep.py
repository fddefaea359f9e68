"""CLI command `traitloop sweep` (filled in by the sweep work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
