"""Cache commands: stats, ls, show, explain, verify, gc, clear, export, import."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
