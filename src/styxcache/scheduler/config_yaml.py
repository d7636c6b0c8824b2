"""Read a schedule file's YAML, remembering where every key's value sits.

The positions let each `ConfigError` say `file:line:column`, and the source
text lets it explain a YAML 1.1 surprise (an unquoted `no` read as False).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from styxcache.scheduler.config_errors import ConfigError
from styxcache.scheduler.config_keys import TEXT_KEYS

__all__ = ["Marks", "read_yaml"]

_BOOL_WORDS = "yes/no/on/off/true/false"

# (line, column, source text) of a value; 1-based.
_Spot = tuple[int, int, str | None]


def _bool_hint(error: ConfigError, value: Any, source: str | None = None) -> None:
    """Say that YAML read a word as a boolean where text was expected."""
    if not isinstance(value, bool) or error.field not in TEXT_KEYS:
        return
    as_bool = str(value).lower()
    if source is not None:
        error.message += (
            f" (YAML read `{source}` as the boolean {as_bool}: unquoted"
            f" {_BOOL_WORDS} are booleans in YAML; write"
            f' {error.field}: "{source}" for the text)'
        )
    else:
        error.message += (
            f" (YAML read the value as the boolean {as_bool}: quote words such"
            f" as {_BOOL_WORDS} to keep them text)"
        )
    error.locate(error.file, error.line, error.column)  # rebuilds the text


@dataclasses.dataclass
class Marks:
    """Where each mapping key and value sits in the YAML file (1-based).

    Attributes:
        file: The file (None for a document given in code).
        maps: `id(mapping)` to the mapping's own position and, per key,
            the position and source text of its value.
    """

    file: Path | None = None
    maps: dict[int, tuple[tuple[int, int], dict[str, _Spot]]] = dataclasses.field(
        default_factory=dict
    )

    def place(self, error: ConfigError, *mappings: Any) -> None:
        """Give `error` the position of its field in the first mapping holding it.

        Args:
            error: The error (its `field` names the key).
            *mappings: Where the key may be, most specific first.
        """
        key = (error.field or "").split(".")[0]
        fallback: tuple[int, int] | None = None
        for mapping in mappings:
            known = self.maps.get(id(mapping)) if mapping is not None else None
            if known is None:
                continue
            start, values = known
            fallback = fallback or start
            if key in values:
                line, column, source = values[key]
                _bool_hint(error, mapping.get(key), source)
                error.locate(self.file, line, column)
                return
        for mapping in mappings:
            if isinstance(mapping, Mapping) and key in mapping:
                _bool_hint(error, mapping.get(key))
                break
        if fallback is not None:
            error.locate(self.file, *fallback)
        elif self.file is not None:
            error.locate(self.file, None, None)


class _MarkingLoader(yaml.SafeLoader):
    """A safe loader that remembers where every mapping key's value sits."""

    positions: Marks

    def _map(self, node: yaml.MappingNode) -> Any:
        data: dict[Any, Any] = {}
        yield data
        data.update(self.construct_mapping(node))
        values: dict[str, _Spot] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                source = (
                    value_node.value
                    if isinstance(value_node, yaml.ScalarNode)
                    else None
                )
                mark = value_node.start_mark
                values[str(key_node.value)] = (mark.line + 1, mark.column + 1, source)
        start = node.start_mark
        self.positions.maps[id(data)] = ((start.line + 1, start.column + 1), values)


_MarkingLoader.add_constructor("tag:yaml.org,2002:map", _MarkingLoader._map)


def read_yaml(file: Path) -> tuple[Any, Marks]:
    """Read and decode a schedule file, with the positions of its keys.

    Args:
        file: The YAML file.

    Returns:
        The decoded document and its marks.

    Raises:
        ConfigError: If the file cannot be read or is not YAML (with the
            position of the problem).
    """
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    marks = Marks(file=file)
    loader = _MarkingLoader(text)
    loader.positions = marks
    try:
        return loader.get_single_data(), marks
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        error = ConfigError(
            f"not valid YAML: {problem}" + (f" ({context})" if context else "")
        )
        if mark is not None:
            error.locate(file, mark.line + 1, mark.column + 1)
        else:
            error.locate(file, None, None)
        raise error from None
    finally:
        loader.dispose()
