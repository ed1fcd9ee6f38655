"""`imaging-cloud video` commands for de-identification and SD downgrade (issue 8)."""

from __future__ import annotations

from typing import Any


def add_processing_commands(actions: Any) -> None:
    """Add the processing subcommands to `imaging-cloud video`."""
