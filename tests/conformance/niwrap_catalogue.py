"""The NiWrap catalogue: every wrapper function, and arguments built from its signature.

A wrapper is the public function of one generated NiWrap module (`niwrap.fsl.bet`
-> `bet`). Its arguments are generated from the type hints of its `*_params`
helper: input files become real small files, numbers and strings simple values,
`Literal` choices their first allowed value, nested parameter structs are built
through their own `*_params` helpers. Values the wrapper's `*_validate` refuses
(a number out of range, a list of the wrong length) are replaced by the next
candidate for that param until validation passes.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import pkgutil
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from styxdefs import Metadata, StyxValidationError

SUFFIXES = ("_params", "_cargs", "_outputs", "_execute", "_validate")
MAX_ATTEMPTS = 60
"""Validation rounds before a wrapper is reported as not fillable."""


class UnbuildableError(Exception):
    """A wrapper whose arguments cannot be generated; the message says why."""


@dataclasses.dataclass(frozen=True)
class Wrapper:
    """One NiWrap wrapper function."""

    suite: str
    module: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"

    def load(self) -> types.ModuleType:
        return importlib.import_module(f"niwrap.{self.suite}.{self.module}")

    @property
    def function(self) -> Callable[..., Any]:
        return getattr(self.load(), self.name)  # type: ignore[no-any-return]

    @property
    def metadata(self) -> Metadata:
        module = self.load()
        found = [getattr(module, k) for k in module.__all__ if k.endswith("_METADATA")]
        return found[0]  # type: ignore[no-any-return]


def suites() -> list[str]:
    """Names of the installed NiWrap suites (`fsl`, `afni`...)."""
    import niwrap

    return sorted(m.name for m in pkgutil.iter_modules(niwrap.__path__))


def discover(only: set[str] | None = None) -> list[Wrapper]:
    """Every wrapper function of every installed suite, sorted by id."""
    found: list[Wrapper] = []
    for suite in suites():
        if only is not None and suite not in only:
            continue
        package = importlib.import_module(f"niwrap.{suite}")
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"niwrap.{suite}.{info.name}")
            for name in getattr(module, "__all__", ()):
                value = getattr(module, name)
                if (
                    inspect.isfunction(value)
                    and name.islower()
                    and not name.endswith(SUFFIXES)
                ):
                    found.append(Wrapper(suite, info.name, name))
    return sorted(found, key=lambda w: w.id)


# Argument generation ----------------------------------------------------------


@dataclasses.dataclass
class Slot:
    """One value to choose: its candidates, and which one is in use."""

    name: str
    candidates: list[Callable[[], Any]]
    index: int = 0
    forced: bool = False  # a bound from a validation message was tried

    def value(self) -> Any:
        return self.candidates[self.index]()

    def advance(self) -> bool:
        if self.index + 1 >= len(self.candidates):
            return False
        self.index += 1
        return True


class Builder:
    """Builds one wrapper's keyword arguments; input files go into `inputs`."""

    INTS = (1, 2, 3, 0, 4, 10, 100, -1)
    FLOATS = (0.5, 1.0, 0.0, 2.0, 3.0, 0.25, 10.0, 100.0, -0.5)
    LENGTHS = (1, 2, 3, 4, 6, 9, 12, 16)

    def __init__(
        self, wrapper: Wrapper, inputs: Path, *, last_variant: bool = False
    ) -> None:
        self.wrapper = wrapper
        self.last_variant = last_variant
        self.module = wrapper.load()
        self.inputs = inputs
        self.slots: list[Slot] = []
        self.files: list[Path] = []
        self._helpers = self._struct_helpers()

    def _struct_helpers(self) -> dict[Any, Callable[..., Any]]:
        """Map each nested TypedDict to the `*_params` helper that returns it."""
        helpers: dict[Any, Callable[..., Any]] = {}
        for name in self.module.__all__:
            value = getattr(self.module, name)
            if inspect.isfunction(value) and name.endswith("_params"):
                returned = typing.get_type_hints(value).get("return")
                if returned is not None:
                    helpers[returned] = value
        return helpers

    def input_file(self, name: str) -> Path:
        path = self.inputs / f"{name}.nii.gz"
        if not path.exists():
            path.write_text(f"conformance input {self.wrapper.id} {name}\n")
            self.files.append(path)
        return path

    def plan(self, name: str, hint: Any) -> Callable[[], Any]:
        """Return a thunk producing a value for `hint`, adding slots as needed."""
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            present = [a for a in args if a is not type(None)]
            if set(present) == {Path, str}:
                return self._file_thunk(name)
            if present == [Path]:
                return self._file_thunk(name)
            literals = [a for a in present if typing.get_origin(a) is typing.Literal]
            others = [a for a in present if a not in literals]
            order = itertools.chain(literals, others)
            if self.last_variant:
                # The other end of the union: nested structs and file variants
                # the first-variant pass never builds.
                order = itertools.chain(reversed(others), literals)
            thunks: list[Callable[[], Any]] = [self.plan(name, a) for a in order]
            return self._choice(name, thunks)
        if origin is typing.Literal:
            return self._choice(name, [lambda v=v: v for v in args])
        if origin is list:
            (item,) = args
            element = self.plan(name, item)
            lengths = [lambda n=n: n for n in self.LENGTHS]
            length = self._choice(f"{name}[]", lengths)
            return lambda: [element() for _ in range(length())]
        if hint is Path:
            return self._file_thunk(name)
        if hint is bool:
            return self._choice(name, [lambda: True, lambda: False])
        if hint is int:
            return self._choice(name, [lambda v=v: v for v in self.INTS])
        if hint is float:
            return self._choice(name, [lambda v=v: v for v in self.FLOATS])
        if hint is str:
            return self._choice(name, [lambda: name, lambda: "1", lambda: "a,b"])
        helper = self._helpers.get(hint)
        if helper is not None:
            return self.call_plan(helper)
        raise UnbuildableError(f"param {name!r}: no value for type {hint!r}")

    def _file_thunk(self, name: str) -> Callable[[], Any]:
        path = self.input_file(name)
        return lambda: path

    def _choice(
        self, name: str, candidates: list[Callable[[], Any]]
    ) -> Callable[[], Any]:
        if len(candidates) == 1:
            return candidates[0]
        slot = Slot(name, candidates)
        self.slots.append(slot)
        return slot.value

    def call_plan(self, function: Callable[..., Any]) -> Callable[[], Any]:
        """Plan a call of `function` with its required params filled."""
        hints = typing.get_type_hints(function)
        planned: dict[str, Callable[[], Any]] = {}
        for param in inspect.signature(function).parameters.values():
            if param.name == "runner" or param.default is not inspect.Parameter.empty:
                continue
            planned[param.name] = self.plan(param.name, hints[param.name])
        return lambda: function(**{k: thunk() for k, thunk in planned.items()})

    def build(self, *, optional: bool = False) -> dict[str, Any]:
        """Return the wrapper's keyword arguments, valid for its validator.

        Args:
            optional: Fill the optional params too (flags set, every optional
                input file given), not only the required ones.

        Raises:
            UnbuildableError: If no combination of candidates passes validation.
        """
        module = self.module
        name = self.wrapper.name
        params_fn = getattr(module, f"{name}_params")
        validate = getattr(module, f"{name}_validate")
        hints = typing.get_type_hints(params_fn)
        planned: dict[str, Callable[[], Any]] = {}
        for param in inspect.signature(params_fn).parameters.values():
            if param.default is not inspect.Parameter.empty and not optional:
                continue
            planned[param.name] = self.plan(param.name, hints[param.name])
        last = ""
        for _ in range(MAX_ATTEMPTS):
            kwargs = {k: thunk() for k, thunk in planned.items()}
            try:
                validate(params_fn(**kwargs))
            except StyxValidationError as exc:
                last = str(exc)
                if not self._advance(last):
                    raise UnbuildableError(f"validation: {last}") from None
                continue
            return kwargs
        raise UnbuildableError(
            f"validation still fails after {MAX_ATTEMPTS} tries: {last}"
        )

    def _advance(self, message: str) -> bool:
        """Move the slots the validation message names to their next candidate.

        A message naming a range ("must be between 50 and 99", "must contain
        between 5 and 5 elements") makes its lower bound the next candidate.
        """
        named = {_plain(n) for n in re.findall(r"`([^`]+)`", message)}
        length = "elements" in message
        bounds = re.search(r"between (-?[0-9.]+) and (-?[0-9.]+)", message)
        moved = False
        for slot in self.slots:
            if _plain(slot.name.removesuffix("[]")) not in named:
                continue
            if slot.name.endswith("[]") != length:
                continue
            if bounds is not None and not slot.forced:
                current = slot.value()
                low = float(bounds.group(1))
                value = int(low) if length or isinstance(current, int) else low
                slot.candidates.insert(slot.index + 1, lambda v=value: v)
                slot.forced = True
            moved = slot.advance() or moved
        return moved


def _plain(name: str) -> str:
    """A param name as validators and Python signatures both spell it."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def build_arguments(
    wrapper: Wrapper, inputs: Path, *, optional: bool = False
) -> tuple[dict[str, Any], list[Path]]:
    """Keyword arguments for `wrapper` and the input files they name.

    Args:
        wrapper: The wrapper.
        inputs: Folder for the generated input files.
        optional: Fill the optional params too, and take the last variant
            of each union (the required-only pass takes the first).

    Raises:
        UnbuildableError: If the signature cannot be filled automatically.
    """
    inputs.mkdir(parents=True, exist_ok=True)
    builder = Builder(wrapper, inputs, last_variant=optional)
    kwargs = builder.build(optional=optional)
    # Files planned for a union variant that was not chosen are not inputs.
    used = set(iter_paths(kwargs))
    for path in builder.files:
        if path not in used:
            path.unlink()
    return kwargs, [path for path in builder.files if path in used]


def changed_params(wrapper: Wrapper, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The same arguments with one number or string changed, still valid.

    Used for wrappers without input files, to check that a changed call reruns.
    """
    module = wrapper.load()
    params_fn = getattr(module, f"{wrapper.name}_params")
    validate = getattr(module, f"{wrapper.name}_validate")
    for name, value in kwargs.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            new: Any = value + "2"
        elif isinstance(value, int):
            new = value + 1
        elif isinstance(value, float):
            new = value + 0.25
        else:
            continue
        candidate = {**kwargs, name: new}
        try:
            validate(params_fn(**candidate))
        except StyxValidationError:
            continue
        return candidate
    # No required param to change (`afni_env`): set an optional one instead.
    hints = typing.get_type_hints(params_fn)
    simple = {bool: True, str: "changed", int: 2, float: 0.75}
    for param in inspect.signature(params_fn).parameters.values():
        if param.name in kwargs or param.default is inspect.Parameter.empty:
            continue
        kinds = [a for a in typing.get_args(hints[param.name]) if a is not type(None)]
        kind = hints[param.name] if not kinds else kinds[0] if len(kinds) == 1 else None
        if kind not in simple or simple[kind] == param.default:
            continue
        candidate = {**kwargs, param.name: simple[kind]}
        try:
            validate(params_fn(**candidate))
        except StyxValidationError:
            continue
        return candidate
    return None


def iter_paths(value: Any) -> Iterator[Path]:
    """Every `Path` inside a returned Outputs value (tuples, lists, dicts)."""
    if isinstance(value, Path):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_paths(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_paths(item)
