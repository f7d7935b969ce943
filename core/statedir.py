"""The state directory: created private to the exporter, refused when anyone else could have written into it.

The exporter runs as root (or with CAP_BPF) and compiles kernel programs
against what it keeps here (merged kernel-header trees, compiled objects).
Whoever can write into that directory chooses what the root process compiles
and loads: a header planted by another user ends up in a BPF program. So:

* a missing state directory is created mode 0700, owned by the exporter's
  user (missing parents 0755, like ``mkdir -p``);
* an existing one must be owned by the exporter's user and writable by
  nobody else, and so must every directory above it (root may own those; a
  sticky world-writable one such as /tmp is fine: others cannot replace what
  is in it);
* a tree the exporter built in it earlier is checked the same way, entry by
  entry, before it is used again.

Two kinds of fresh volume are taken as they come, because nothing can have
been planted in them: an *empty* directory the exporter's user owns but
others could write (a Kubernetes emptyDir is mode 0777, owned by root) is
made 0700 first and used if it is still empty then - after the chmod nobody
else can add to it; and a sticky world-writable directory (a /tmp-like
volume) gets a private subdirectory named by the exporter's uid, which the
sticky bit keeps others from replacing.

Anything else is refused with one line naming the path, what is wrong and
the fix; the exporter never uses it and never repairs it silently (whoever
planted the content should not get it blessed by a chmod).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


class UntrustedPath(Exception):
    """A path the exporter will not use: ``str()`` is the one-line reason with the fix."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}; {fix}")
        self.reason = reason
        self.fix = fix


def _writable_by_others(st: os.stat_result) -> str:
    who = [name for bit, name in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "everyone")) if st.st_mode & bit]
    return " and ".join(who)


def _owner_problem(st: os.stat_result, owners: tuple[int, ...]) -> str:
    if st.st_uid in owners:
        return ""
    allowed = "root or the exporter's uid" if 0 in owners and os.geteuid() != 0 else "the exporter's uid"
    return f"is owned by uid {st.st_uid}, not by {allowed} {os.geteuid()}"


def _problem(st: os.stat_result, owners: tuple[int, ...], sticky_ok: bool = False) -> str:
    """What makes an entry untrustworthy ("" when nothing does)."""
    owner = _owner_problem(st, owners)
    if owner:
        return owner
    others = _writable_by_others(st)
    if others and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return f"is writable by {others} (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def _fix(path: Path) -> str:
    uid = os.geteuid()
    return (f"remove {path} (the exporter creates it again, mode 0700), or if its content is yours: "
            f"chown -R {uid} {path} && chmod -R go-w {path}")


def private_dir(path: Path, what: str = "state dir") -> Path:
    """``path`` as a directory only the exporter's user can write, creating it if missing; raises UntrustedPath."""
    uid = os.geteuid()
    path = Path(os.path.abspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _check_ancestors(path.parent, what, path)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # exactly 0700 whatever the umask
        except FileExistsError:
            pass  # made concurrently: checked below like any existing one
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedPath(f"{what} {path} is not a directory", f"remove {path} or set another state_dir")
    if _writable_by_others(st) and st.st_mode & stat.S_IWOTH and st.st_mode & stat.S_ISVTX \
            and st.st_uid in (0, uid):
        # /tmp-like: others cannot rename or remove what we create in it.
        _check_ancestors(Path(os.path.realpath(path)).parent, what, path)
        private = private_dir(path / f"uid-{uid}", what)
        log.info("%s %s is sticky and writable by everyone: using %s, private to uid %d", what, path, private, uid)
        return private
    if st.st_uid == uid and _writable_by_others(st) and _claim_if_empty(path, st):
        log.info("%s %s was an empty directory others could write (a fresh volume): made mode 0700", what, path)
        st = os.stat(path)
    problem = _problem(st, (uid,))
    if problem:
        raise UntrustedPath(f"{what} {path} {problem}; the exporter will not use it", _fix(path))
    _check_ancestors(Path(os.path.realpath(path)).parent, what, path)
    return path


def _claim_if_empty(path: Path, st: os.stat_result) -> bool:
    """Make the empty directory ``path`` (ours) mode 0700; False, and its mode as it was, if it is not empty.

    Empty before the chmod is not enough (an entry could arrive in between);
    empty after it is: from then on only the owner can add entries.
    """
    if os.listdir(path):
        return False
    os.chmod(path, 0o700)
    if os.listdir(path):
        os.chmod(path, stat.S_IMODE(st.st_mode))
        return False
    return True


def _check_ancestors(directory: Path, what: str, path: Path) -> None:
    """Every existing directory from ``directory`` up to / is root's or ours, and not writable by others."""
    owners = (0, os.geteuid())
    for ancestor in (directory, *directory.parents):
        try:
            st = os.stat(ancestor)
        except FileNotFoundError:
            continue
        problem = _problem(st, owners, sticky_ok=True)
        if problem:
            raise UntrustedPath(
                f"{what} {path}: its parent {ancestor} {problem}, so others could replace it; the exporter will "
                "not use it", f"chmod go-w {ancestor} (or chown it to root), or set a state_dir under a directory "
                "only root can write")


def check_system_dir(path: Path, what: str) -> None:
    """``path`` (a directory the exporter reads but did not make, e.g. /usr/src/linux-headers-*) is root's or
    the exporter's and writable by nobody else; raises UntrustedPath."""
    problem = _problem(os.stat(path), (0, os.geteuid()))
    if problem:
        raise UntrustedPath(f"{what} {path} {problem}; the exporter will not use it",
                            f"chown -R root {path} && chmod -R go-w {path}, or remove it")


def check_tree(root: Path, what: str) -> None:
    """Every entry under ``root`` (symlinks not followed) is the exporter's and writable by nobody else.

    Raises UntrustedPath naming the first entry that is not. For trees the
    exporter built itself (hundreds of entries), before it uses them again.
    """
    owners = (os.geteuid(),)
    for directory, dirs, files in os.walk(root, followlinks=False):
        for name in (".", *dirs, *files):
            entry = Path(directory) if name == "." else Path(directory, name)
            st = os.lstat(entry)
            # A symlink's mode is always 0777 and means nothing; its owner and its directory's mode do.
            problem = _owner_problem(st, owners) if stat.S_ISLNK(st.st_mode) else _problem(st, owners)
            if problem:
                raise UntrustedPath(f"{what} {root}: {entry} {problem}; the exporter will not use it",
                                    f"remove {root} (the exporter builds it again)")
