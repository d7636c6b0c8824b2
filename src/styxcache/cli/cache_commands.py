"""The cache commands: stats, ls, show, explain, verify, gc, clear, export, import.

Each lives in a module of its own; this one lists them for the root group.
Exit codes: 0 success; 1 the command worked but found or hit a problem
(damaged entries, a rejected archive); 2 usage errors (a bad option value,
no cache directory, an unknown key prefix).
"""

from __future__ import annotations

import click

from .gc_commands import clear, gc
from .ls_command import ls
from .report_commands import explain, show, stats
from .transfer_commands import export_command, import_command
from .verify_command import verify

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = [
    stats,
    ls,
    show,
    explain,
    verify,
    gc,
    clear,
    export_command,
    import_command,
]
