"""The keys a schedule file accepts: the loader's table and the docs made from it.

The loader checks keys against `TOP_FIELDS` and `ENTRY_FIELDS`, and the key
reference of docs/scheduler.md is generated from the same tables
(`render_reference`), so the documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from styxcache.modes import CacheMode
from styxcache.scheduler.entry import CATCHUP_CHOICES, OVERLAP_CHOICES
from styxcache.scheduler.runner_spec import POLICY_FIELDS, RUNNER_KEYS

__all__ = [
    "ENTRY_FIELDS",
    "ENTRY_KEYS",
    "TEXT_KEYS",
    "TOP_FIELDS",
    "TOP_KEYS",
    "FieldDoc",
    "defaultable_keys",
    "entry_keys",
    "register_entry_keys",
    "render_reference",
]


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One key the loader accepts, as the reference documents it.

    Attributes:
        default: The default, as written in YAML (`""`: required or none).
        doc: One line saying what it does.
        defaultable: Whether `defaults:` may set it for every entry.
    """

    default: str
    doc: str
    defaultable: bool = True


# The loader's own table: it decides which keys are accepted, and
# docs/scheduler.md's reference is generated from it (`render_reference`).
# Extensions add rows here (see `register_entry_keys`).
ENTRY_FIELDS: dict[str, FieldDoc] = {
    "name": FieldDoc("", "unique name: letters, digits, `_ . -`", False),
    "cron": FieldDoc("", "cron expression (5 fields, or 6 with seconds)", False),
    "interval_seconds": FieldDoc(
        "", "fire every N seconds instead of `cron` (exactly one of the two)", False
    ),
    "timezone": FieldDoc("UTC", "IANA zone whose wall time `cron` is read in"),
    "anchor": FieldDoc(
        "1970-01-01T00:00:00+00:00",
        "intervals only: one point of the grid (ISO datetime or Unix seconds)",
    ),
    "target": FieldDoc(
        "", "`module:function` called with the run's `RunContext`", False
    ),
    "expand_from": FieldDoc(
        "", "`module:function` returning a list of dicts: one run per dict", False
    ),
    "cache": FieldDoc(
        "normal", f"cache mode inside the run: {', '.join(m.value for m in CacheMode)}"
    ),
    "catchup": FieldDoc("latest", f"late fires: {', '.join(CATCHUP_CHOICES)}"),
    "max_catchup": FieldDoc("10", "most late fires `all` runs; overlap queue length"),
    "overlap": FieldDoc(
        "forbid", f"a fire while a run is going: {', '.join(OVERLAP_CHOICES)}"
    ),
    "jitter_seconds": FieldDoc("0", "deterministic start delay, below the period"),
    "grace_seconds": FieldDoc("60", "a fire this late or less is on time"),
    "max_fanout": FieldDoc("1000", "most items one fire may expand into"),
    "enabled": FieldDoc(
        "true", "false: never fires (restarts from now when re-enabled)"
    ),
    "executor": FieldDoc(
        "(the file's)",
        "where runs go: inline, threads, processes, nats, dask://host:port",
        False,
    ),
    "dispatch": FieldDoc("local", "`nats` is another spelling of `executor: nats`"),
    "runner": FieldDoc(
        "(the file's)",
        "cache the run goes through: a mapping with `cache_dir` (`base`,"
        " `data_dir`, `read_only_caches`, `policy`), or `none` for no cache",
    ),
    "retries": FieldDoc("0", "restarts of a run the executor lost (worker died)"),
}
"""Every key a schedule entry may carry, with its default and meaning."""

TOP_FIELDS: dict[str, FieldDoc] = {
    "schedules": FieldDoc("", "the list of entries"),
    "state_dir": FieldDoc(
        ".styxcache-schedule", "folder of the ledger, relative to the file"
    ),
    "state": FieldDoc("", "`postgresql://` URL of a run store shared by schedulers"),
    "executor": FieldDoc(
        "threads", "`kind` (inline, threads, processes, nats, dask://...), max_workers"
    ),
    "runner": FieldDoc(
        "(a default cache)",
        "the cache of every entry without `runner:`; `none` for no cache",
    ),
    "nats": FieldDoc("", "NATS server and credentials for `executor: nats`"),
    "dask": FieldDoc("", "TLS files for `tls://` Dask schedulers"),
    "defaults": FieldDoc("", "entry keys applied to every entry"),
    "max_sleep_seconds": FieldDoc("30", "longest single wait of the loop"),
    "shutdown_timeout_seconds": FieldDoc("30", "grace for running work on shutdown"),
}
"""Every top-level key of a schedule file."""

# Keys whose value must be text: a YAML 1.1 boolean there is a quoting mistake.
TEXT_KEYS = frozenset(
    {
        "name",
        "cron",
        "timezone",
        "target",
        "expand_from",
        "cache",
        "catchup",
        "overlap",
        "executor",
        "dispatch",
        "dispatch_type",
        "anchor",
    }
)
"""Keys whose value must be text (YAML reads an unquoted `no` as False)."""


def register_entry_keys(fields: Mapping[str, FieldDoc]) -> None:
    """Accept more entry keys (for extensions such as publish entries).

    Args:
        fields: Key to its documentation row.
    """
    ENTRY_FIELDS.update(fields)


def entry_keys() -> frozenset[str]:
    """Return the keys an entry may carry now (extensions included)."""
    return frozenset(ENTRY_FIELDS)


def defaultable_keys() -> frozenset[str]:
    """Return the entry keys `defaults:` may set."""
    return frozenset(k for k, f in ENTRY_FIELDS.items() if f.defaultable)


register_entry_keys(
    {
        "dispatch_type": FieldDoc(
            "",
            "seeds 002/003: publish a `goal` or `task` message instead of"
            " running a target",
            False,
        ),
        "goal_config": FieldDoc("", "with `dispatch_type: goal`: the goal", False),
        "task_config": FieldDoc("", "with `dispatch_type: task`: the task", False),
    }
)

ENTRY_KEYS: frozenset[str] = frozenset(ENTRY_FIELDS)
"""Keys a schedule entry may carry (as of import; see `register_entry_keys`)."""
TOP_KEYS: frozenset[str] = frozenset(TOP_FIELDS)
"""Keys a schedule file may carry at its top level."""


def _table(fields: Mapping[str, FieldDoc], extra: str) -> list[str]:
    rows = [
        f"| key | default | meaning{extra} |",
        "|---|---|---|" + ("---|" if extra else ""),
    ]
    for key, field in fields.items():
        default = (
            f"`{field.default}`"
            if field.default[:1] not in ("", "(")
            else (field.default or "-")
        )
        cells = [f"`{key}`", default, field.doc]
        if extra:
            cells.append("yes" if field.defaultable else "no")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def render_reference() -> str:
    """Return the Markdown key reference of docs/scheduler.md.

    Generated from `TOP_FIELDS` and `ENTRY_FIELDS`, the tables the loader
    itself checks keys against, so the documentation cannot drift.

    Returns:
        Two Markdown tables.
    """
    lines = ["Top-level keys:", ""]
    lines += _table(TOP_FIELDS, "")
    lines += ["", "Keys of each entry under `schedules:`:", ""]
    lines += _table(ENTRY_FIELDS, " | in `defaults:`")
    lines += [
        "",
        "Keys of a `runner:` mapping: "
        + ", ".join(f"`{k}`" for k in sorted(RUNNER_KEYS))
        + ". Fields of its `policy:` (`CachePolicy`): "
        + ", ".join(f"`{k}`" for k in sorted(POLICY_FIELDS))
        + ".",
    ]
    return "\n".join(lines) + "\n"
