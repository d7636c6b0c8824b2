"""A shared cache no member can poison, tested with real Unix users.

Two users, `a` and `b`, share a group. Each pipeline step runs in a forked
child that has switched to that user (setgroups/setgid/setuid), so every file
is created, renamed and checked by the kernel with that user's rights.
"""

from __future__ import annotations

import dataclasses
import functools
import grp
import json
import os
import pickle
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from click.testing import CliRunner
from styxdefs import LocalRunner, Metadata

from conftest import require, run_tool
from styxcache import CacheEvent, CachePolicy, CachingRunner
from styxcache.cli import main as cli_main
from styxcache.shared_cache import prepare_shared_cache
from styxcache.store import remove_tree

COPY = Metadata(id="copy", name="Copy a file", package="test")
FORGED = "forged!\n"


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@dataclasses.dataclass(frozen=True)
class Lab:
    a: User
    b: User
    group: str
    gid: int
    solo: User
    """A user with a user private group (Debian's useradd -U, umask 002)."""


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """Two real users in one shared group (and one alone), removed at the end."""
    require(
        os.geteuid() == 0 and shutil.which("useradd") is not None,
        "creating Unix users needs root and useradd (CI runs as root)",
    )
    suffix = f"{os.getpid() % 100000}"
    group = f"sclab{suffix}"
    names = [f"scusa{suffix}", f"scusb{suffix}"]
    subprocess.run(["groupadd", group], check=True)
    try:
        for name in names:
            subprocess.run(
                ["useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", name],
                check=True,
            )
        gid = grp.getgrnam(group).gr_gid
        users = [User(n, pwd.getpwnam(n).pw_uid, gid) for n in names]
        solo = f"scusc{suffix}"
        names.append(solo)
        subprocess.run(
            ["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", solo], check=True
        )
        entry = pwd.getpwnam(solo)
        yield Lab(
            users[0], users[1], group, gid, User(solo, entry.pw_uid, entry.pw_gid)
        )
    finally:
        for name in names:
            subprocess.run(["userdel", "-f", name], check=False, capture_output=True)
        subprocess.run(["groupdel", group], check=False, capture_output=True)


@pytest.fixture
def base(lab: Lab) -> Iterator[Path]:
    """A folder every user can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="styxcache-trust-", dir="/tmp"))
    path.chmod(0o755)
    (path / "in.txt").write_text("the real result\n")
    (path / "in.txt").chmod(0o644)
    for user in (lab.a, lab.b, lab.solo):
        scratch = path / user.name
        scratch.mkdir()
        os.chown(scratch, user.uid, user.gid)
    # One step as root first, so every module a step imports lazily is loaded
    # before the children switch users (the interpreter may live under a
    # folder only root can read, as in CI).
    copy_step(path / "warm-up", path)
    remove_tree(path / "warm-up")
    yield path
    remove_tree(path)


def start_as_user(
    user: User, umask: int, func: Callable[..., Any], *args: Any
) -> Callable[[], Any]:
    """Start `func(*args)` in a forked child switched to `user`.

    Returns:
        A function that waits for the child and returns `func`'s result.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([user.gid])
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.umask(umask)
            payload = pickle.dumps(("ok", func(*args)))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_end)

    def result() -> Any:
        with os.fdopen(read_end, "rb") as answer:
            data = answer.read()
        os.waitpid(pid, 0)
        status, value = pickle.loads(data)
        if status == "error":
            raise AssertionError(f"step as {user.name} failed:\n{value}")
        return value

    return result


def as_user(user: User, umask: int, func: Callable[..., Any], *args: Any) -> Any:
    """Run `func(*args)` in a forked child switched to `user`; return its result."""
    return start_as_user(user, umask, func, *args)()


def copy_step(
    cache: Path,
    base: Path,
    trust: Any = "self",
    verify: str = "size",
    command: list[str] | None = None,
    **policy: Any,
) -> dict[str, Any]:
    """One pipeline step, the way generated wrapper code calls the runner."""
    events: list[CacheEvent] = []
    me = pwd.getpwuid(os.geteuid()).pw_name
    runner = CachingRunner(
        LocalRunner(data_dir=base / me / "styx_tmp"),
        cache,
        policy=CachePolicy(trust=trust, verify=verify, memo=False, **policy),
        on_event=events.append,
    )
    out = run_tool(
        runner,
        COPY,
        {"infile": str(base / "in.txt")},
        inputs={"infile": {}},
        outputs={"out": "out.txt"},
        cargs=lambda p: [*(command or []), "cp", p["infile"], "out.txt"],
    )
    return {
        "content": out["out"].read_text(),
        "path": str(out["out"]),
        "kinds": [e.kind for e in events],
        "reasons": [e.reason for e in events],
    }


def forge_entry(entry: Path, target: Path) -> None:
    """Write a forged copy of `entry` at `target`, manifest and all.

    Same size as the real output and a manifest whose digest matches the
    forged bytes, so neither `verify="size"` nor `verify="full"` notices.
    """
    shutil.copytree(entry, target, symlinks=True)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = target / "out.txt"
    real = out.read_text()
    forged = FORGED.ljust(len(real) - 1, "!") + "\n"
    out.write_text(forged)
    manifest_path = target / ".styxcache.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for record in manifest["outputs"]:
        if record["path"] == "out.txt":
            record["digest"] = blake3.blake3(forged.encode()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def replace_entry(entry: str, scratch: str) -> list[str]:
    """Member b's attack: move a's entry away and put a forged one there."""
    done: list[str] = []
    forged = Path(scratch) / "forged"
    forge_entry(Path(entry), forged)
    try:
        # Within the shard: moving a's folder elsewhere would need write
        # access to the folder itself, which a sealed entry does not give.
        os.rename(entry, f"{entry}.stolen")
        done.append("moved a's entry away")
    except OSError as exc:
        done.append(f"refused: {exc.strerror}")
        return done
    os.rename(forged, entry)
    done.append("planted the forged entry")
    return done


def rewrite_in_place(entry: str) -> str:
    """Member b's other attack: edit a's committed output and manifest."""
    try:
        Path(entry, "out.txt").write_text(FORGED)
    except OSError as exc:
        return f"refused: {exc.strerror}"
    return "rewritten"


def old_docs_cache(base: Path, lab: Lab, owner: User | None = None) -> Path:
    """The cache as the old how-to set it up: chgrp lab, chmod g+rwxs, no +t."""
    cache = base / "cache"
    cache.mkdir()
    os.chown(cache, owner.uid if owner else -1, lab.gid)
    cache.chmod(0o2775)
    return cache


def test_forged_replacement_is_not_served_even_with_full_verify(
    lab: Lab, base: Path
) -> None:
    cache = old_docs_cache(base, lab, owner=lab.a)
    first = as_user(lab.a, 0o002, copy_step, cache, base)
    assert first["kinds"] == ["miss"] and first["content"] == "the real result\n"
    entry = str(Path(first["path"]).parent)
    assert Path(entry).parent.parent == cache
    # In the old layout the shard is group-writable and not sticky, so b can
    # swap a's entry for a forged one whose manifest matches it.
    steps = as_user(lab.b, 0o002, replace_entry, entry, str(base / lab.b.name))
    assert steps == ["moved a's entry away", "planted the forged entry"]
    again = as_user(lab.a, 0o002, copy_step, cache, base, "self", "full")
    assert again["content"] == "the real result\n"
    assert again["kinds"] == ["miss"]
    assert "not trusted" in again["reasons"][0]
    # The victim did not delete the planted entry (it is not hers).
    assert Path(entry, "out.txt").read_text().startswith("forged!")


def test_members_cannot_touch_each_others_entries_in_a_prepared_cache(
    lab: Lab, base: Path
) -> None:
    cache = prepare_shared_cache(base / "cache", lab.group)
    first = as_user(lab.a, 0o002, copy_step, cache, base)
    entry = str(Path(first["path"]).parent)
    assert Path(entry).parent.parent == cache
    for path in [Path(entry), *Path(entry).iterdir()]:
        assert not path.lstat().st_mode & (stat.S_IWGRP | stat.S_IWOTH), path
    assert as_user(lab.b, 0o002, rewrite_in_place, entry).startswith("refused")
    steps = as_user(lab.b, 0o002, replace_entry, entry, str(base / lab.b.name))
    assert steps[0].startswith("refused")  # the sticky shard protects a's entry
    again = as_user(lab.a, 0o002, copy_step, cache, base, "self", "full")
    assert again == {**first, "kinds": ["hit"], "reasons": again["reasons"]}


def plant_shard(cache: str, base: str) -> list[str]:
    """Member b plants a forged shard for a's key (renaming a's shard if any).

    b learns the key by running the same step in a private cache.
    """
    scratch = Path(base) / pwd.getpwuid(os.geteuid()).pw_name
    own = copy_step(scratch / "own-cache", Path(base))
    real_entry = Path(own["path"]).parent
    shard, name = real_entry.parent.name, real_entry.name
    forged_shard = scratch / "shard"
    forged_shard.mkdir()
    forge_entry(real_entry, forged_shard / name)
    done: list[str] = []
    target = Path(cache, shard)
    if target.exists():
        try:
            os.rename(target, Path(cache, f"{shard}.old"))
        except OSError as exc:
            return [f"refused: {exc.strerror}"]
        done.append("renamed a's shard")
    os.rename(forged_shard, target)
    done.append("planted a forged shard")
    return done


@pytest.mark.parametrize("owner", ["admin", "a"])
def test_a_planted_shard_is_refused(lab: Lab, base: Path, owner: str) -> None:
    cache = old_docs_cache(base, lab, owner=lab.a if owner == "a" else None)
    first = as_user(lab.a, 0o022, copy_step, cache, base)
    assert first["content"] == "the real result\n"
    planted = as_user(lab.b, 0o022, plant_shard, str(cache), str(base))
    again = as_user(lab.a, 0o022, copy_step, cache, base, "self", "full")
    assert again["content"] == "the real result\n"
    if owner == "a":
        # a's own cache folder was made sticky on a's first lookup, so b
        # cannot rename a's shard at all.
        assert planted == ["refused: Operation not permitted"]
        assert again["kinds"] == ["hit"]
    else:
        # The admin's folder is group-writable without the sticky bit: a
        # never trusted it, ran uncached, and refuses b's planted shard.
        assert planted == ["planted a forged shard"]
        assert again["kinds"] == ["miss"] and "not trusted" in again["reasons"][0]


def test_members_who_trust_each_other_share_hits(lab: Lab, base: Path) -> None:
    cache = prepare_shared_cache(base / "cache", lab.group)
    first = as_user(lab.a, 0o002, copy_step, cache, base)
    assert first["kinds"] == ["miss"]
    by_name = as_user(lab.b, 0o002, copy_step, cache, base, [lab.a.name])
    by_group = as_user(lab.b, 0o002, copy_step, cache, base, "group")
    for served in (by_name, by_group):
        assert served["kinds"] == ["hit"]
        assert served["path"] == first["path"]
        assert served["content"] == "the real result\n"


def test_an_untrusted_members_entry_runs_uncached_and_stays(
    lab: Lab, base: Path
) -> None:
    cache = prepare_shared_cache(base / "cache", lab.group)
    first = as_user(lab.a, 0o002, copy_step, cache, base)
    mine = as_user(lab.b, 0o002, copy_step, cache, base)  # trust="self"
    assert mine["kinds"] == ["miss"] and "not trusted" in mine["reasons"][0]
    assert mine["content"] == "the real result\n"
    assert mine["path"] != first["path"]  # b's result stays with b's runner
    assert Path(first["path"]).read_text() == "the real result\n"


# Without other users: the policy knob, and one's own damaged entries ---------


def test_the_trust_setting_is_checked_when_the_policy_is_made() -> None:
    with pytest.raises(ValueError, match="no such user: 'no-such-user-zz'"):
        CachePolicy(trust=["no-such-user-zz"])
    with pytest.raises(ValueError, match="'self', 'group', 'any'"):
        CachePolicy(trust="everyone")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a user name or uid"):
        CachePolicy(trust=[1.5])  # type: ignore[list-item]
    assert CachePolicy(trust=["root", 0, 7]).trust == (0, 7)
    assert CachePolicy().trust == "self"


def test_an_own_entry_others_may_write_is_moved_aside_and_recomputed(
    tmp_path: Path,
) -> None:
    (tmp_path / "in.txt").write_text("the real result\n")
    cache = tmp_path / "cache"
    first = copy_step(cache, tmp_path)
    out = Path(first["path"])
    out.chmod(0o646)  # anyone may now rewrite the cached output
    again = copy_step(cache, tmp_path)
    assert again["kinds"] == ["miss"] and "writable by others" in again["reasons"][0]
    assert list((cache / ".quarantine").glob(f"*{out.parent.name}*"))
    assert copy_step(cache, tmp_path)["kinds"] == ["hit"]


def test_trust_any_turns_the_checks_off(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("the real result\n")
    cache = tmp_path / "cache"
    Path(copy_step(cache, tmp_path, "any")["path"]).chmod(0o646)
    assert copy_step(cache, tmp_path, "any")["kinds"] == ["hit"]


def _release(fifo: Path) -> None:
    """Let a tool waiting on `fifo` finish (if nobody waits, nothing to do)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write("go\n")


def plant_entry(cache: str, base: str) -> str:
    """Member b plants a forged entry for a's key in a prepared cache."""
    scratch = Path(base) / pwd.getpwuid(os.geteuid()).pw_name
    own = copy_step(scratch / "own-cache", Path(base))
    real_entry = Path(own["path"]).parent
    forge_entry(real_entry, scratch / "forged")
    target = Path(cache, real_entry.parent.name, real_entry.name)
    os.rename(scratch / "forged", target)
    return str(target)


def test_an_entry_planted_while_the_tool_runs_is_not_handed_over(
    lab: Lab, base: Path
) -> None:
    cache = prepare_shared_cache(base / "cache", lab.group)
    started, go = base / "started", base / "go"
    for fifo in (started, go):
        os.mkfifo(fifo)
        fifo.chmod(0o666)
    # a's tool says it started, then waits for the word to finish.
    gate = ["sh", "-c", f'echo started > {started}; read x < {go}; exec "$@"', "sh"]
    finish = start_as_user(lab.a, 0o002, copy_step, cache, base, "self", "size", gate)
    try:
        # In a thread, so that a child that failed early fails the test
        # instead of leaving it waiting on the pipe forever.
        said: list[str] = []
        waiter = threading.Thread(
            target=lambda: said.append(started.read_text()), daemon=True
        )
        waiter.start()
        waiter.join(120)
        assert said == ["started\n"], "a's tool never started"
        planted = as_user(lab.b, 0o002, plant_entry, str(cache), str(base))
    finally:
        _release(go)
    with pytest.raises(AssertionError, match="UntrustedEntryError") as failed:
        finish()
    assert "is not trusted" in str(failed.value)
    assert Path(planted, "out.txt").read_text().startswith("forged!")


def test_gc_keeps_the_prepared_shard_folders(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from styxcache.cli import main

    cache = prepare_shared_cache(tmp_path / "cache")
    long_ago = 1_000_000_000
    for shard in ("00", "ab", "ff"):
        os.utime(cache / shard, (long_ago, long_ago))
    result = CliRunner().invoke(main, ["gc", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    for shard in ("00", "ab", "ff"):
        mode = (cache / shard).stat().st_mode
        assert stat.S_ISDIR(mode) and mode & stat.S_ISVTX
    assert stat.S_IMODE(cache.stat().st_mode) == 0o3775


def private_cache_twice(base: str) -> list[list[str]]:
    """A user's own cache, in folders their private group may write."""
    home = Path(base) / pwd.getpwuid(os.geteuid()).pw_name
    project = home / "project"
    project.mkdir()  # 0775 under umask 002: writable by the user's own group
    runs = [copy_step(project / "cache", Path(base)) for _ in range(2)]
    return [run["kinds"] for run in runs]


def test_a_user_private_group_is_not_taken_for_other_people(
    lab: Lab, base: Path
) -> None:
    (base / lab.solo.name).chmod(0o775)
    os.chown(base / lab.solo.name, -1, lab.solo.gid)
    assert as_user(lab.solo, 0o002, private_cache_twice, str(base)) == [
        ["miss"],
        ["hit"],
    ]


def test_a_trusted_members_damaged_or_unfinished_entry_runs_uncached(
    lab: Lab, base: Path
) -> None:
    cache = prepare_shared_cache(base / "cache", lab.group)
    first = as_user(lab.a, 0o002, copy_step, cache, base)
    out = Path(first["path"])
    entry = out.parent
    out.chmod(0o644)
    out.write_text("x")  # damaged (as root): the wrong size
    out.chmod(0o444)
    damaged = as_user(lab.b, 0o002, copy_step, cache, base, "group")
    assert damaged["kinds"] == ["miss"] and "not ours" in damaged["reasons"][0]
    assert damaged["content"] == "the real result\n" and entry.is_dir()
    (entry / ".styxcache.done").unlink()  # as if a's run never finished
    unfinished = as_user(lab.b, 0o002, copy_step, cache, base, "group")
    assert unfinished["kinds"] == ["miss"]
    assert "unfinished run" in unfinished["reasons"][0]
    assert unfinished["content"] == "the real result\n" and entry.is_dir()


def other_input_step(cache: Path, base: Path, trust: Any, **policy: Any) -> Any:
    """Like copy_step, but for another input (another key)."""
    scratch = base / pwd.getpwuid(os.geteuid()).pw_name
    (scratch / "in.txt").write_text("b's own input\n")
    events: list[CacheEvent] = []
    runner = CachingRunner(
        LocalRunner(data_dir=scratch / "styx_tmp"),
        cache,
        policy=CachePolicy(trust=trust, memo=False, **policy),
        on_event=events.append,
    )
    out = run_tool(
        runner,
        COPY,
        {"infile": str(scratch / "in.txt")},
        inputs={"infile": {}},
        outputs={"out": "out.txt"},
        cargs=lambda p: ["cp", p["infile"], "out.txt"],
    )
    return out["out"].read_text(), [e.kind for e in events]


def test_a_members_size_limit_never_fails_on_others_entries(
    lab: Lab, base: Path
) -> None:
    cache = prepare_shared_cache(base / "cache", lab.group)
    first = as_user(lab.a, 0o002, copy_step, cache, base)
    step = functools.partial(other_input_step, max_size=1)
    text, kinds = as_user(lab.b, 0o002, step, cache, base, "group")
    assert (text, kinds) == ("b's own input\n", ["miss"])
    assert Path(first["path"]).read_text() == "the real result\n"  # a's stays


def swap_link(link: str, base: str) -> str:
    """Member b points a's cache link at a forged cache of b's own."""
    scratch = Path(base) / pwd.getpwuid(os.geteuid()).pw_name
    own = copy_step(scratch / "own-cache", Path(base))
    real_entry = Path(own["path"]).parent
    fake = scratch / "fake-cache"
    (fake / real_entry.parent.name).mkdir(parents=True)
    forge_entry(real_entry, fake / real_entry.parent.name / real_entry.name)
    os.unlink(link)
    os.symlink(fake, link)
    return "swapped"


def test_a_swapped_symlink_on_the_way_to_the_cache_is_refused(
    lab: Lab, base: Path
) -> None:
    real, links = base / lab.a.name / "real", base / lab.a.name / "links"
    for folder in (real, links):
        folder.mkdir()
        os.chown(folder, lab.a.uid, lab.a.gid)
    (links / "cache").symlink_to(real)
    os.lchown(links / "cache", lab.a.uid, lab.a.gid)
    first = as_user(lab.a, 0o022, copy_step, links / "cache", base)
    assert first["kinds"] == ["miss"]
    links.chmod(0o777)  # a's mistake: anyone may now replace the link
    assert as_user(lab.b, 0o022, swap_link, str(links / "cache"), str(base)) == (
        "swapped"
    )
    again = as_user(lab.a, 0o022, copy_step, links / "cache", base)
    assert again["content"] == "the real result\n"
    assert again["kinds"] == ["miss"] and "not trusted" in again["reasons"][0]


def cli_as_member(args: list[str]) -> tuple[int, str]:
    """Run one `styxcache` command in this (already switched) process."""
    done = CliRunner().invoke(cli_main, args, catch_exceptions=True)
    crashed = done.exception is not None and not isinstance(done.exception, SystemExit)
    crash = f"Error({done.exception!r})" if crashed else ""
    return done.exit_code, done.output + crash


def damage_own_entry(path: str) -> str:
    os.chmod(path, 0o644)
    Path(path).write_text("the real result?\n")  # same size: damage a verify finds
    return "damaged"


@pytest.mark.parametrize(
    "args",
    [
        ["gc", "--max-size", "0"],
        ["verify"],
        ["verify", "--full"],
        ["clear", "--yes"],
    ],
)
def test_maintenance_by_one_member_never_crashes_on_anothers_entries(
    lab: Lab, base: Path, args: list[str]
) -> None:
    """In a prepared (sticky) cache, b's gc/verify/clear leave a's entry alone."""
    # The command once as root first: its lazy imports (rich loads some on
    # first use) must not need the switched user to read the interpreter.
    cli_as_member([*args, "--cache-dir", str(base / "warm-up-cache")])
    cache = prepare_shared_cache(base / "cache", lab.group)
    first = as_user(lab.a, 0o002, copy_step, cache, base)
    if args[0] == "verify":  # something for verify to act on
        as_user(lab.a, 0o002, damage_own_entry, first["path"])
    code, output = as_user(
        lab.b, 0o002, cli_as_member, [*args, "--cache-dir", str(cache)]
    )
    assert "Traceback" not in output and "Error(" not in output, output
    assert code in (0, 1), output
    # a's entry is still there (b may not remove or quarantine it).
    assert Path(first["path"]).exists()
