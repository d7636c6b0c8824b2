"""Export and import: move chosen entries between caches as one `.tar.gz`.

An export holds the entries under `entries/<key[:2]>/<key>/`, exactly as in
a cache, and `styxcache-export.json` (what is inside). Modules:

- `export`: every file of an entry opened and checked against its manifest
  before any of it is written (a concurrent `gc` cannot tear it).
- `check`: an import first checks the whole archive, writing nothing: every
  member's name, type and size, every link resolved through the others, and
  every entry's manifest (its key payload must hash to its key; it must list
  exactly the entry's files).
- `extract`: then extracts with its own code (not `extractall`) into a
  private folder inside the cache directory, verifies every entry's content
  against its manifest, and only then commits the entries; a good entry
  already in the cache is never replaced.

The tar format itself is read and written by `styxcache.tarstream`.
"""

from __future__ import annotations

from styxcache.transfer.common import (
    EXPORT_FORMAT,
    ExportReport,
    ImportReport,
    TransferError,
)
from styxcache.transfer.export import export_entries
from styxcache.transfer.extract import import_entries

__all__ = [
    "EXPORT_FORMAT",
    "ExportReport",
    "ImportReport",
    "TransferError",
    "export_entries",
    "import_entries",
]
