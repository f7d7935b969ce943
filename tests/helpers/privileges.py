"""Running a command as a real unprivileged user holding only chosen capabilities (setpriv)."""

from __future__ import annotations

USER = "nobody"


def setpriv(caps: list[str]) -> tuple[str, ...]:
    """A command prefix that runs the rest as ``nobody`` with exactly ``caps`` (ambient, so they survive exec)."""
    names = ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    argv = ["setpriv", f"--reuid={USER}", "--regid=nogroup", "--clear-groups"]
    if caps:
        argv += [f"--inh-caps={names}", f"--ambient-caps={names}"]
    else:
        argv += ["--inh-caps=-all"]
    return (*argv, "--")
