"""The HTTP face of the exporter: an asyncio server (``server``), what it answers
(``endpoints``), HTTP/1.1 framing (``wire``), and the web configuration file
with TLS and basic auth (``config``, ``auth``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def in_thread(func: Callable[[], _T], name: str) -> asyncio.Future[_T]:
    """Run blocking ``func`` on a daemon thread of its own; await the returned future for its result.

    Not the loop's default executor: its threads are joined at interpreter
    exit, and the work here (a collect, a render, a bcrypt check) must never
    hold up shutdown. Each call is one short-lived thread, so nothing idles.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def deliver(result: _T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
