"""Whose cache entries are served: the trust model of a (shared) cache.

A hit hands the caller files that somebody else's run wrote. On a cache that
several Unix users share, a member who can rewrite an entry (or rename a folder
above it) could make everybody else's pipeline consume forged results; content
digests do not help, because the forger rewrites the manifest too. So before an
entry is served, the files themselves must show that only trusted users could
have written them, the way ssh checks the permissions of `authorized_keys`:

* every file, folder and link of the entry is owned by a trusted user, and no
  file or folder in it is writable by group or others (commits are sealed so);
* the shard folder, the cache folder and every folder above it are owned by a
  trusted user (or root) and, when others may write to them, carry the sticky
  bit (as `/tmp` does), so nobody can rename or delete what they do not own.

Trusted, always: root, yourself (the effective uid) and the owner of the cache
folder (who could replace the whole tree anyway). `CachePolicy(trust=...)`
adds more: `"group"` (every member of the cache folder's group), or user names
and uids. `"any"` switches the checks off (the pre-0.4 behaviour).

An entry that fails the check is not served and not deleted: if it is your own
entry (its folder is yours) it is treated as damaged and moved aside; otherwise
the call runs uncached, as the base runner alone would.
"""

from __future__ import annotations

import dataclasses
import functools
import grp
import logging
import os
import pwd
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args

from styxcache.errors import UntrustedEntryError

__all__ = [
    "Doubt",
    "TrustSetting",
    "UntrustedEntryError",
    "check_entry",
    "parse_trust",
    "seal_entry",
    "user_name",
]

_log = logging.getLogger("styxcache.trust")

TrustKeyword = Literal["self", "group", "any"]
TrustSetting = TrustKeyword | tuple[int, ...]
"""`"self"`, `"group"`, `"any"`, or the uids trusted besides yourself."""

_KEYWORDS: tuple[TrustKeyword, ...] = get_args(TrustKeyword)
_CHOICES = ", ".join(repr(k) for k in _KEYWORDS)
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def parse_trust(value: object) -> TrustSetting:
    """Validate a `CachePolicy.trust` value.

    Args:
        value: `"self"`, `"group"`, `"any"`, or a sequence of user names and
            uids (yourself, root and the cache owner are always trusted).

    Returns:
        The keyword, or the sorted tuple of uids.

    Raises:
        ValueError: An unknown keyword or user name.
        TypeError: A value of another type.
    """
    if isinstance(value, str):
        for keyword in _KEYWORDS:
            if value == keyword:
                return keyword
        raise ValueError(
            f"CachePolicy.trust must be {_CHOICES} or a list of user "
            f"names and uids; got {value!r} (for one user, write [{value!r}])"
        )
    if not isinstance(value, Iterable):
        raise TypeError(
            f"CachePolicy.trust must be {_CHOICES} or a list of user "
            f"names and uids; got {value!r}"
        )
    uids: set[int] = set()
    for item in value:
        if isinstance(item, bool):
            raise TypeError(f"CachePolicy.trust: not a user name or uid: {item!r}")
        if isinstance(item, int):
            if item < 0:
                raise ValueError(f"CachePolicy.trust: not a uid: {item}")
            uids.add(item)
        elif isinstance(item, str):
            try:
                uids.add(pwd.getpwnam(item).pw_uid)
            except KeyError:
                raise ValueError(f"CachePolicy.trust: no such user: {item!r}") from None
        else:
            raise TypeError(f"CachePolicy.trust: not a user name or uid: {item!r}")
    return tuple(sorted(uids))


def user_name(uid: int) -> str:
    """Return `name (uid)` for a uid, or just the uid when it has no name."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


@functools.lru_cache(maxsize=1024)
def _in_group(uid: int, gid: int) -> bool:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


@dataclasses.dataclass(frozen=True)
class Doubt:
    """Why an entry cannot be trusted.

    Attributes:
        reason: What was found, naming the path and its owner or mode.
        own: The entry folder is yours: it is damage you may move aside,
            rather than someone else's entry you must leave alone.
        whole_cache: The doubt is about the cache folder or a folder above
            it, so it holds for every entry.
    """

    reason: str
    own: bool
    whole_cache: bool = False


class _Checker:
    """The checks for one cache folder under one trust setting."""

    def __init__(self, root: Path, setting: TrustSetting) -> None:
        self.given = Path(os.path.abspath(root))
        self.root = Path(os.path.realpath(root))
        self.setting = setting
        self._lock = threading.Lock()
        self._root_seen: tuple[int, ...] | None = None
        self._root_problem = ""
        self._owner = -1
        self._gid = -1
        self._read_only = False

    @property
    def me(self) -> int:
        # Read each time: a forked worker may have switched users since.
        return os.geteuid()

    def trusted(self, uid: int) -> bool:
        if uid in (0, self.me, self._owner):
            return True
        if self.setting == "group":
            return _in_group(uid, self._gid)
        return isinstance(self.setting, tuple) and uid in self.setting

    def _group_trusted(self, gid: int) -> bool:
        """Whether every member of a group is trusted (so g+w is harmless)."""
        if self.setting == "group" and gid == self._gid:
            return True
        try:
            group = grp.getgrgid(gid)
        except KeyError:
            return False
        if not all(_trusted_name(self, name) for name in group.gr_mem):
            return False
        # A user private group (Debian's umask 002 default): the group of one
        # user, named after them. Any other group may have members whose
        # primary group it is, which the group database does not list.
        try:
            user = pwd.getpwnam(group.gr_name)
        except KeyError:
            return False
        return user.pw_gid == gid and self.trusted(user.pw_uid)

    def _untrusted_writers(self, st: os.stat_result) -> str:
        """Who untrusted may write to this, or "" (read-only volumes: nobody)."""
        if self._read_only:
            return ""
        if st.st_mode & stat.S_IWOTH:
            return "others"
        if st.st_mode & stat.S_IWGRP and not self._group_trusted(st.st_gid):
            return f"group {_group_name(st.st_gid)}"
        return ""

    def _folder_problem(
        self, path: str, st: os.stat_result, *, repair: bool = False
    ) -> str:
        """Check a folder above an entry: trusted owner, sticky if shared."""
        if not stat.S_ISDIR(st.st_mode):
            return f"{path} is not a folder (a symlink or file stands in its place)"
        if not self.trusted(st.st_uid):
            owner = user_name(st.st_uid)
            return f"folder {path} belongs to {owner}, who is not trusted"
        writers = "" if st.st_mode & stat.S_ISVTX else self._untrusted_writers(st)
        if writers:
            if repair and st.st_uid == self.me:
                # A folder of this cache that is ours: the sticky bit stops
                # others renaming what they do not own and changes nothing for
                # us. Folders above the cache are the user's, and left alone.
                try:
                    os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_ISVTX)
                    _log.info("made shared cache folder %s sticky (like /tmp)", path)
                    return ""
                except OSError as exc:
                    _log.debug("cannot make %s sticky: %s", path, exc)
            return (
                f"folder {path} is writable by {writers} without the sticky bit, "
                f"so they could swap what it holds (chmod +t {path})"
            )
        return ""

    def _check_root(self) -> str:
        try:
            # Through any symlink, as the store reads: a swapped link shows
            # up as another folder, and the whole chain is checked again.
            st = os.stat(self.given)
        except OSError as exc:
            return f"cannot inspect cache folder {self.given}: {exc.strerror}"
        seen = (st.st_dev, st.st_ino, st.st_uid, st.st_gid, st.st_mode, self.me)
        with self._lock:
            if seen == self._root_seen:
                return self._root_problem
        self._owner = st.st_uid
        self._gid = st.st_gid
        self.root = Path(os.path.realpath(self.given))
        try:
            self._read_only = bool(os.statvfs(self.root).f_flag & os.ST_RDONLY)
        except OSError:
            self._read_only = False
        problem = ""
        # Every folder above the cache could rename it and plant another one;
        # so could the folders above a symlink on the way to it, which the
        # store reads through.
        real = [*reversed(self.root.parents), self.root]
        for folder in dict.fromkeys([*reversed(self.given.parents), self.given, *real]):
            try:
                above = os.lstat(folder)
            except OSError as exc:
                problem = f"cannot inspect {folder}: {exc.strerror}"
                break
            if stat.S_ISLNK(above.st_mode) and folder not in real:
                continue  # judged by the folder holding it, and its target's
            repair = folder == self.root
            problem = self._folder_problem(str(folder), above, repair=repair)
            if problem:
                break
        with self._lock:
            self._root_seen = seen
            self._root_problem = problem
        return problem

    def check(self, entry: Path) -> Doubt | None:
        problem = self._check_root()
        if problem:
            return Doubt(problem, own=False, whole_cache=True)
        shard = os.path.join(self.given, entry.parent.name)
        try:
            problem = self._folder_problem(shard, os.lstat(shard), repair=True)
            top = os.lstat(os.path.join(shard, entry.name))
        except FileNotFoundError:
            return None  # no entry: an ordinary miss
        except OSError as exc:
            return Doubt(f"cannot inspect {entry}: {exc.strerror}", own=False)
        if problem:
            return Doubt(problem, own=False)
        own = top.st_uid == self.me and stat.S_ISDIR(top.st_mode)
        found = self._walk(os.path.join(shard, entry.name), top)
        if found:
            return Doubt(found, own=own)
        if not own and not self._replaceable(shard):
            try:
                os.lstat(os.path.join(shard, entry.name, ".styxcache.done"))
            except OSError:
                # Someone else's unfinished run: a commit could neither
                # replace it nor move it aside, so do not try.
                owner = user_name(top.st_uid)
                return Doubt(f"{entry} is an unfinished run of {owner}", own=False)
        return None

    def _replaceable(self, shard: str) -> bool:
        """Whether we may rename someone else's entry out of its shard."""
        if self.me == 0:
            return True
        try:
            folder = os.lstat(shard)
        except OSError:
            return True
        return folder.st_uid == self.me or not folder.st_mode & stat.S_ISVTX

    def _walk(self, path: str, st: os.stat_result) -> str:
        problem = self._item_problem(path, st)
        if problem or not stat.S_ISDIR(st.st_mode):
            return problem
        # The common case, a sealed item of a plainly trusted owner, is decided
        # inline: this loop runs over every file of every hit.
        plainly = {0, self.me, self._owner}
        pending = [path]
        while pending:
            folder = pending.pop()
            try:
                items = list(os.scandir(folder))
            except OSError as exc:
                return f"cannot list {folder}: {exc.strerror}"
            for item in items:
                try:
                    info = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                mode = info.st_mode
                if info.st_uid not in plainly or mode & _OTHERS_WRITE:
                    problem = self._item_problem(item.path, info)
                    if problem:
                        return problem
                if stat.S_ISDIR(mode):
                    pending.append(item.path)
        return ""

    def _item_problem(self, path: str, st: os.stat_result) -> str:
        if not self.trusted(st.st_uid):
            return f"{path} belongs to {user_name(st.st_uid)}, who is not trusted"
        writers = "" if stat.S_ISLNK(st.st_mode) else self._untrusted_writers(st)
        if writers:
            return f"{path} is writable by {writers} (mode {stat.filemode(st.st_mode)})"
        return ""


def _trusted_name(checker: _Checker, name: str) -> bool:
    try:
        return checker.trusted(pwd.getpwnam(name).pw_uid)
    except KeyError:
        return False


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


_checkers: dict[tuple[str, TrustSetting], _Checker] = {}
_checkers_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def check_entry(root: Path, entry: Path, setting: TrustSetting) -> Doubt | None:
    """Check that only trusted users could have written an entry.

    Args:
        root: The cache folder.
        entry: The entry's folder, `<root>/<key[:2]>/<key>`.
        setting: `CachePolicy.trust`.

    Returns:
        None when the entry may be served (or does not exist), else why not.
    """
    if setting == "any":
        return None
    index = (os.fspath(root), setting)
    with _checkers_lock:
        checker = _checkers.get(index)
        if checker is None:
            if len(_checkers) >= 256:
                _checkers.clear()
            checker = _checkers[index] = _Checker(root, setting)
    doubt = checker.check(entry)
    if doubt is not None and not doubt.own:
        warned = (os.fspath(root), "" if doubt.whole_cache else entry.name)
        if warned not in _warned:
            if len(_warned) >= 4096:
                _warned.clear()
            _warned.add(warned)
            what = (
                f"no entry of the cache {root} is trusted"
                if doubt.whole_cache
                else f"cache entry {entry.name[:12]} in {root} is not trusted"
            )
            _log.warning(
                "%s: %s; running uncached (CachePolicy(trust=...) says whose "
                "entries to trust, see docs/security.md)",
                what,
                doubt.reason,
            )
    return doubt


def seal_entry(folder: Path, *, read_only: bool) -> None:
    """Make a staged entry writable by its owner only (or by nobody).

    Group and others lose write access to every file and folder, so no member
    of a shared cache can edit another's entry; with `read_only` the files lose
    the owner's write bit too. The entry's own folder, private while the tool
    ran, becomes readable by whoever may read the folder it was staged in.
    Symlinks are never followed.

    Args:
        folder: The staged entry.
        read_only: Also make the files read-only for their owner.
    """
    strip = stat.S_IWUSR | _OTHERS_WRITE if read_only else _OTHERS_WRITE
    for current, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(current, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & strip:
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~strip)
        for name in (*dirs, ""):
            path = os.path.join(current, name) if name else current
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & _OTHERS_WRITE:
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~_OTHERS_WRITE)
    readers = stat.S_IMODE(os.stat(folder.parent).st_mode) & 0o055
    os.chmod(folder, (stat.S_IMODE(os.lstat(folder).st_mode) & 0o700) | readers)
