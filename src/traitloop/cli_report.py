"""CLI commands for reports: `traitloop report`, `traitloop compare` (filled in by the report work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
