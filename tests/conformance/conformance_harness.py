"""Run one NiWrap wrapper bare and through the cache, with a stand-in tool.

The stand-in is one POSIX shell script linked on `PATH` under every command
name the catalogue runs. `STANDIN_MODE` picks its behaviour: write the main
(first declared) output, write every declared output, write nothing, fail, or
write the main output and also into a file outside any output folder. It logs
each invocation (working directory, command name, arguments) to
`STANDIN_LOG`, so the tests count real runs and compare command lines.

For each behaviour a wrapper is called with the same arguments through a bare
`LocalRunner` and through `CachingRunner(LocalRunner)`, then again through the
cache (a hit where the rules say the run is cached). After a hit, an output the
tool wrote outside its folder is edited (must rerun), and the input files (or,
without any, one param) are changed (must rerun). Differences from the bare
run, hits the rules forbid, misses the rules promise and stale results are
reported as problems. A second argument set fills every optional param too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from niwrap_catalogue import (
    UnbuildableError,
    Wrapper,
    build_arguments,
    changed_params,
    iter_paths,
)
from styxdefs import DryRunner, InputPathType, LocalRunner, OutputPathType

from styxcache import CachePolicy, CachingRunner
from styxcache.events import CacheEvent
from styxcache.store import CacheStore

BEHAVIOURS = ("main", "all", "none", "fail", "outside")
FULL = "all+optional"
"""Every optional param filled too (flags, optional inputs), stand-in writing
every declared output."""
VARIANTS = (*BEHAVIOURS, FULL)
ROTATE_EVERY = 100
"""Wrappers checked before the session's caches are replaced by empty ones."""

RESULTS: list[WrapperResult] = []
"""Every wrapper checked in this pytest session, for the summary table."""

STANDIN = r"""#!/bin/sh
# styxcache conformance stand-in: one script for every NiWrap command.
{ printf '%s\037' "$PWD" "${0##*/}" "$@"; printf '\n'; } >>"$STANDIN_LOG"
echo "stand-in ${0##*/} $STANDIN_TOKEN"
case "$STANDIN_MODE" in
fail) echo "stand-in failure" >&2; exit 3 ;;
none) exit 0 ;;
esac
write() {
  case "$1" in
  '') return ;;
  "$STANDIN_ROOT"/*) ;;
  /*) return ;; # never outside the test's folder (/root/mri_create_t2combined.log)
  */) mkdir -p -- "$1" && printf '%s\n' "$STANDIN_TOKEN" >"${1}standin.txt"; return ;;
  */*) mkdir -p -- "${1%/*}" ;;
  esac
  printf '%s %s\n' "$STANDIN_TOKEN" "$1" >"$1"
}
if [ "$STANDIN_MODE" = all ]; then
  while IFS= read -r name; do write "$name"; done <"$STANDIN_SPEC"
else
  IFS= read -r name <"$STANDIN_SPEC" && write "$name"
fi
if [ "$STANDIN_MODE" = outside ]; then
  printf '%s\n' "$STANDIN_TOKEN" >>"$STANDIN_OUTSIDE"
fi
exit 0
"""


def fast_tmp() -> str | None:
    """A RAM-backed folder with room to spare, else the default temp folder.

    ~34,000 tiny runs are syscall-bound: on tmpfs they are several times
    faster than on disk. The session needs well under 100 MB there.
    `STYXCACHE_CONFORMANCE_TMP` names another folder.
    """
    forced = os.environ.get("STYXCACHE_CONFORMANCE_TMP")
    if forced:
        return forced
    shm = "/dev/shm"
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return None
    return shm if free > 256 * 2**20 and os.access(shm, os.W_OK) else None


def is_outside(name: str) -> bool:
    """Whether a declared output name leaves the execution's output folder."""
    if os.path.isabs(name):
        return True
    normal = os.path.normpath(name)
    return normal == ".." or normal.startswith("../")


class RecordingDryRunner(DryRunner):
    """A dry run that also records each declared output name, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.declared: list[str] = []
        self.staged: list[str] = []

    def output_file(self, local_file: str, *, optional: bool = False) -> OutputPathType:
        self.declared.append(local_file)
        return super().output_file(local_file, optional=optional)

    def mutable_copy(self, host_file: InputPathType) -> OutputPathType:
        # The base runner stages the copy in the output folder before the
        # tool runs, so even a run that writes nothing leaves a file there.
        self.staged.append(Path(host_file).name)
        return super().mutable_copy(host_file)


@dataclasses.dataclass
class Call:
    """What one call of the wrapper did, as the caller and the tool saw it."""

    outputs: Any = None
    error: BaseException | None = None
    runs: list[list[str]] = dataclasses.field(default_factory=list)
    event: CacheEvent | None = None

    @property
    def root(self) -> Path | None:
        return getattr(self.outputs, "root", None)

    @property
    def cwd(self) -> str:
        """The folder the tool ran in, or "" when it did not run."""
        return self.runs[0][0] if self.runs and self.runs[0] else ""

    @property
    def error_type(self) -> str:
        return type(self.error).__name__ if self.error is not None else "-"


@dataclasses.dataclass
class BehaviourResult:
    """One behaviour of one wrapper."""

    behaviour: str  # a name of VARIANTS
    expect: str  # "hit", "rerun" or "either"
    mode: str = ""  # the stand-in's STANDIN_MODE; the behaviour by default
    hit: bool = False
    changed: bool = False  # a changed input (or param) was checked to rerun
    outside_edit: bool = False  # an edited outside output was checked to rerun
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class WrapperResult:
    """Everything the suite found about one wrapper."""

    wrapper: str
    suite: str
    command: str = ""
    unbuildable: str = ""
    full_unbuildable: str = ""  # why the all-optional variant could not be built
    behaviours: list[BehaviourResult] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def failing(self) -> bool:
        return bool(self.problems) or any(b.problems for b in self.behaviours)

    @property
    def status(self) -> str:
        """`unbuildable`, `failing`, `cached` or `uncached-by-rule`."""
        if self.unbuildable:
            return "unbuildable"
        if self.failing:
            return "failing"
        main = next(b for b in self.behaviours if b.behaviour == "main")
        return "cached" if main.hit else "uncached-by-rule"

    def all_problems(self) -> list[str]:
        found = list(self.problems)
        for b in self.behaviours:
            found.extend(f"[{b.behaviour}] {p}" for p in b.problems)
        return found


class Session:
    """Shared state of a conformance run: the stand-in, the two runners, the cache.

    Args:
        root: An empty folder for everything the run writes.
        policy: More `CachePolicy` fields for the caching runners.
    """

    def __init__(self, root: Path, **policy: Any) -> None:
        self.root = root
        self.policy = policy
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.standin = root / "standin.sh"
        self.standin.write_text(STANDIN)
        self.standin.chmod(0o755)
        self.environ: dict[str, str] = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "LC_ALL": "C",
            "STANDIN_ROOT": str(root),
        }
        self.bare_dir = root / "bare"
        self.cached_base_dir = root / "cached-base"
        self.bare = LocalRunner(data_dir=self.bare_dir, environ=self.environ)
        self.events: list[CacheEvent] = []
        self.caches: dict[str, CachingRunner] = {}
        self.checked = 0
        self.variant = BEHAVIOURS[0]
        self.rotate()

    def rotate(self) -> None:
        """Start new, empty caches (and drop the old ones) every so often.

        The whole catalogue leaves ~400 MB of small entries: bounded this way,
        the session fits a container's small /dev/shm.
        """
        shutil.rmtree(self.root / "cache", ignore_errors=True)
        self.events.clear()
        # One cache per variant: the behaviour is chosen by the environment,
        # which is not part of the key, so a shared cache would serve one
        # behaviour's entry to another.
        self.caches = {
            variant: CachingRunner(
                LocalRunner(data_dir=self.cached_base_dir, environ=self.environ),
                self.root / "cache" / variant,
                policy=CachePolicy(memo_dir=self.root / "memo", **self.policy),
                on_event=self.events.append,
            )
            for variant in VARIANTS
        }

    def link(self, command: str) -> None:
        if "/" in command or not command:
            raise UnbuildableError(f"command {command!r} is not a plain name")
        target = self.bin / command
        if not target.exists():
            target.symlink_to(self.standin)

    def call(self, wrapper: Wrapper, kwargs: dict[str, Any], *, cached: bool) -> Call:
        log = Path(self.environ["STANDIN_LOG"])
        before = len(_read_log(log))
        seen = len(self.events)
        result = Call()
        runner = self.caches[self.variant] if cached else self.bare
        try:
            result.outputs = wrapper.function(**kwargs, runner=runner)
        except Exception as exc:
            result.error = exc
        result.runs = _read_log(log)[before:]
        new = self.events[seen:]
        result.event = new[-1] if new else None
        return result


def _read_log(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    lines = log.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    return [line.split("\x1f")[:-1] for line in lines]


@contextmanager
def quiet_local_runner() -> Iterator[None]:
    """Keep LocalRunner's per-run INFO/DEBUG lines out of a 10,000-run session."""
    logger = logging.getLogger(LocalRunner.logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _normal_outputs(value: Any, root: Path | None, cwd: str = "") -> Any:
    """Outputs with paths inside the per-run folder made relative to it.

    A name leaving the folder with `..` is resolved against the folder the tool
    ran in (`cwd`), which for such a call is the base runner's own folder, not
    the returned root.
    """
    if isinstance(value, Path):
        if root is not None and (value == root or root in value.parents):
            return ("run", value.relative_to(root).as_posix())
        if cwd and str(value).startswith(cwd.rstrip("/") + "/../"):
            return ("run", str(value)[len(cwd.rstrip("/")) + 1 :])
        return ("abs", str(value))
    if hasattr(value, "_asdict"):
        return {k: _normal_outputs(v, root, cwd) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_normal_outputs(v, root, cwd) for v in value]
    if isinstance(value, dict):
        return {k: _normal_outputs(v, root, cwd) for k, v in value.items()}
    return value


def _normal_runs(runs: list[list[str]]) -> list[list[str]]:
    """Command lines with the tool's working folder (the per-run folder) masked."""
    normal = []
    for run in runs:
        cwd, rest = run[0], run[1:]
        normal.append([arg.replace(cwd, "<cwd>") if cwd else arg for arg in rest])
    return normal


def tree(root: Path | None) -> dict[str, bytes | None]:
    """Files (bytes) and folders (None) under a per-run folder or cache entry."""
    if root is None or not root.is_dir():
        return {}
    reserved = CacheStore.RESERVED
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if relative in reserved or relative.startswith(".styxcache"):
                continue
            found[relative] = None if path.is_dir() else path.read_bytes()
    return found


def outside_files(outputs: Any, root: Path | None) -> dict[str, bytes | None]:
    """Contents of the returned paths outside the per-run folder."""
    found: dict[str, bytes | None] = {}
    for path in iter_paths(outputs):
        if root is not None and (path == root or root in path.parents):
            continue
        found[str(path)] = path.read_bytes() if path.is_file() else None
    return found


def expectation(behaviour: str, declared: list[str], staged: int = 0) -> str:
    """What the commit rule says a repeat of this behaviour must be.

    A run exiting 0 is cached when it wrote at least one file into its output
    folder or declared no output inside it. Outputs named outside the folder
    may be cached (recorded in the manifest) or run uncached: either is
    allowed, as long as the caller sees what the bare runner gives.
    """
    names = [n for n in declared if n not in (".", "")]
    inside = [n for n in names if not is_outside(n)]
    if behaviour == "fail":
        return "rerun"
    if any(is_outside(n) for n in names):
        return "either"
    if behaviour in ("main", "outside"):
        written = names[:1]
    elif behaviour == "all":
        written = names
    else:
        written = []
    return "hit" if written or staged or not inside else "rerun"


def compare(bare: Call, cached: Call, what: str) -> list[str]:
    """Differences a caller could see between a bare call and a cached one."""
    problems: list[str] = []
    if bare.error_type != cached.error_type:
        problems.append(
            f"{what}: bare raised {bare.error_type}, cached raised "
            f"{cached.error_type}: {_first_line(cached.error)}"
        )
        return problems
    codes = [getattr(c.error, "return_code", None) for c in (bare, cached)]
    if codes[0] != codes[1]:
        problems.append(f"{what}: exit status in the error differs: {codes}")
    bare_outputs = _normal_outputs(bare.outputs, bare.root, bare.cwd)
    cached_outputs = _normal_outputs(cached.outputs, cached.root, cached.cwd)
    if bare_outputs != cached_outputs:
        problems.append(
            f"{what}: returned outputs differ: bare {bare_outputs!r} "
            f"vs cached {cached_outputs!r}"
        )
    bare_tree, cached_tree = tree(bare.root), tree(cached.root)
    if bare_tree != cached_tree:
        problems.append(
            f"{what}: files in the output folder differ: bare {sorted(bare_tree)} "
            f"vs cached {sorted(cached_tree)}"
            + ("" if set(bare_tree) != set(cached_tree) else " (contents)")
        )
    return problems


def _first_line(error: BaseException | None) -> str:
    return str(error).splitlines()[0][:300] if error is not None and str(error) else ""


def _write_inputs(files: list[Path], text: str) -> None:
    for path in files:
        if path.exists():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        path.write_text(f"{text} {path.name}\n")


def _prepare(
    session: Session, wrapper: Wrapper, work: Path, *, optional: bool
) -> tuple[dict[str, Any], list[Path], RecordingDryRunner, Path]:
    """Build the arguments, dry-run them, link the command, write the spec."""
    kwargs, files = build_arguments(wrapper, work / "inputs", optional=optional)
    dry = RecordingDryRunner()
    wrapper.function(**kwargs, runner=dry)
    assert dry.last_cargs is not None, "the dry run ran nothing"
    session.link(dry.last_cargs[0])
    spec = work / "spec.txt"
    names = [n for n in dry.declared if n not in (".", "")]
    spec.write_text("".join(f"{n}\n" for n in names))
    return kwargs, files, dry, spec


def check_wrapper(session: Session, wrapper: Wrapper, work: Path) -> WrapperResult:
    """Run every behaviour of one wrapper and report what differed."""
    started = time.perf_counter()
    result = WrapperResult(wrapper.id, wrapper.suite)
    session.checked += 1
    if session.checked % ROTATE_EVERY == 0:
        session.rotate()
    try:
        kwargs, files, dry, spec = _prepare(session, wrapper, work, optional=False)
    except UnbuildableError as exc:
        result.unbuildable = str(exc)
        return result
    assert dry.last_cargs is not None
    result.command = dry.last_cargs[0]
    declared = list(dry.declared)
    env = session.environ
    env.update(
        STANDIN_LOG=str(work / "runs.log"),
        STANDIN_SPEC=str(spec),
        STANDIN_OUTSIDE=str(work / "outside.txt"),
    )
    for behaviour in BEHAVIOURS:
        outcome = BehaviourResult(
            behaviour, expectation(behaviour, dry.declared, len(dry.staged))
        )
        result.behaviours.append(outcome)
        _run_behaviour(session, wrapper, kwargs, files, outcome)
    try:
        full = _prepare(session, wrapper, work / "full", optional=True)
    except UnbuildableError as exc:
        result.full_unbuildable = str(exc)
    else:
        kwargs, files, dry, spec = full
        declared += dry.declared
        env.update(STANDIN_SPEC=str(spec))
        outcome = BehaviourResult(
            FULL, expectation("all", dry.declared, len(dry.staged)), mode="all"
        )
        result.behaviours.append(outcome)
        _run_behaviour(session, wrapper, kwargs, files, outcome)
    litter = sorted(p.name for p in session.cached_base_dir.glob("*"))
    # A `..` name only resolves while the base runner's folder exists, so a
    # call declaring one runs in that folder, which stays, as without a cache.
    escapes = any(is_outside(n) and not os.path.isabs(n) for n in declared)
    if litter and not escapes:
        result.problems.append(
            f"the cached LocalRunner's data_dir holds {litter[:3]} after the calls"
        )
    shutil.rmtree(session.cached_base_dir, ignore_errors=True)
    shutil.rmtree(session.bare_dir, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


def _run_behaviour(
    session: Session,
    wrapper: Wrapper,
    kwargs: dict[str, Any],
    files: list[Path],
    outcome: BehaviourResult,
) -> None:
    behaviour, problems = outcome.mode or outcome.behaviour, outcome.problems
    session.variant = outcome.behaviour
    env = session.environ
    _write_inputs(files, f"{wrapper.id} {behaviour} v1")
    env.update(STANDIN_MODE=behaviour, STANDIN_TOKEN=f"{behaviour}-v1")

    bare = session.call(wrapper, kwargs, cached=False)
    first = session.call(wrapper, kwargs, cached=True)
    if len(bare.runs) != 1:
        problems.append(f"the bare call ran the tool {len(bare.runs)} times")
    if len(first.runs) != 1:
        problems.append(
            f"the first cached call ran the tool {len(first.runs)} times"
            + (
                f" ({first.error_type}: {_first_line(first.error)})"
                if first.error
                else ""
            )
        )
    elif bare.runs and _normal_runs(first.runs) != _normal_runs(bare.runs):
        problems.append(
            f"command lines differ: bare {_normal_runs(bare.runs)[0]} vs cached "
            f"{_normal_runs(first.runs)[0]}"
        )
    problems.extend(compare(bare, first, "first call"))
    if problems:
        return

    repeat = session.call(wrapper, kwargs, cached=True)
    outcome.hit = repeat.event is not None and repeat.event.kind == "hit"
    if outcome.hit and repeat.runs:
        problems.append("the repeat was reported as a hit but the tool ran")
    if not outcome.hit and not repeat.runs and repeat.error is None:
        problems.append("the repeat neither ran the tool nor was a hit")
    if outcome.expect == "hit" and not outcome.hit:
        reason = repeat.event.reason if repeat.event is not None else "no event"
        problems.append(f"the repeat was not a hit (expected one): {reason}")
    if outcome.expect == "rerun" and outcome.hit:
        problems.append("the repeat was served from the cache; the rule says rerun")
    problems.extend(compare(bare, repeat, "repeat"))
    if outcome.hit and outside_files(repeat.outputs, repeat.root) != outside_files(
        bare.outputs, bare.root
    ):
        problems.append("a hit returned outside paths whose contents differ")
    if not outcome.hit:
        return
    edit = _check_outside_edit(session, wrapper, kwargs, repeat)
    if edit is not None:
        outcome.outside_edit = True
        problems.extend(edit)
    if files:
        _write_inputs(files, f"{wrapper.id} {behaviour} v2")
        changed_kwargs, what = kwargs, "changed inputs"
    else:
        # No input file to edit: a changed param must rerun just the same.
        found = changed_params(wrapper, kwargs)
        if found is None:
            return
        changed_kwargs, what = found, "a changed param"
    env.update(STANDIN_TOKEN=f"{behaviour}-v2")
    outcome.changed = True
    changed = session.call(wrapper, changed_kwargs, cached=True)
    if changed.event is not None and changed.event.kind == "hit":
        problems.append(f"{what}: served the earlier result")
    if len(changed.runs) != 1:
        problems.append(f"{what}: ran the tool {len(changed.runs)} times")
    if changed.error is not None:
        problems.append(
            f"{what}: raised {changed.error_type}: {_first_line(changed.error)}"
        )
    stale = [
        name
        for name, data in tree(changed.root).items()
        if data is not None and b"-v1 " in data
    ]
    if stale:
        problems.append(f"{what}: returned stale files {stale[:3]}")


def _check_outside_edit(
    session: Session, wrapper: Wrapper, kwargs: dict[str, Any], hit: Call
) -> list[str] | None:
    """After a hit, edit an output the tool wrote outside its folder.

    Without the cache the next call would run the tool and rewrite it, so the
    cache must not serve a hit that leaves the edited file in place.
    """
    root = session.environ["STANDIN_ROOT"]
    # Only a file this behaviour's run wrote: the tool would write it again.
    token = session.environ["STANDIN_TOKEN"].encode() + b" "
    written = [
        path
        for path, data in outside_files(hit.outputs, hit.root).items()
        if data is not None and path.startswith(root + "/") and data.startswith(token)
    ]
    if not written:
        return None
    edited = Path(written[0])
    original = edited.read_bytes()
    edited.write_bytes(b"edited by the user\n")
    again = session.call(wrapper, kwargs, cached=True)
    problems = []
    if again.event is not None and again.event.kind == "hit" and not again.runs:
        problems.append(f"an edited outside output {edited.name} was served as a hit")
    if edited.read_bytes() != original:
        problems.append(
            f"the outside output {edited.name} is not what the tool writes "
            f"after an edit: {edited.read_bytes()[:40]!r}"
        )
    return problems


def check_many(
    wrappers: list[Wrapper], root: Path, *, on_result: Any = None
) -> list[WrapperResult]:
    """Check every wrapper in one session; each gets its own work folder."""
    session = Session(root)
    results: list[WrapperResult] = []
    with quiet_local_runner():
        for wrapper in wrappers:
            work = root / "work" / wrapper.suite / wrapper.name
            work.mkdir(parents=True)
            result = check_wrapper(session, wrapper, work)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
