"""HTTP basic auth against bcrypt hashes, as exporter-toolkit does it, without blocking the loop.

A bcrypt check costs tens of milliseconds of CPU on purpose. It runs on a
thread, one check at a time (waiting requests are coroutines, not threads),
and its answer is remembered for the (user, hash, password) triple, so a
scraper that authenticates every 15 s pays once. Successes and failures are
remembered apart: a flood of wrong passwords cannot push a good one out and
make the real scraper queue behind the flood. An unknown user is checked
against a decoy hash, so timing does not tell which users exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Mapping

import bcrypt

from crusoe_metrics_exporter.web import in_thread

#: What an unknown user's password is checked against (cost 10, as exporter-toolkit's decoy),
#: so the time taken is the same; the answer for an unknown user is no whatever it says.
DECOY_HASH = b"$2b$10$tiK7Glqfet5EkIHgW269U.SXb5TYzWP21GOHnroqkA72lC4Z3K3W2"
#: bcrypt reads at most 72 bytes of a password (Go's bcrypt ignores the rest too).
BCRYPT_MAX_PASSWORD = 72


class _Remembered:
    """A small LRU set of keys."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def add(self, key: bytes) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)


class BasicAuth:
    def __init__(self) -> None:
        self._granted = _Remembered(64)
        self._refused = _Remembered(1024)
        self._one_at_a_time = asyncio.Lock()

    async def allows(self, authorization: str | None, users: Mapping[str, bytes]) -> bool:
        """Whether the Authorization header names a user of ``users`` with the right password."""
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        known = hashed is not None
        checked_hash = hashed if hashed is not None else DECOY_HASH
        key = hashlib.sha256(b"\0".join((user.encode(), checked_hash, password))).digest()
        if key in self._granted:
            return known
        if key in self._refused:
            return False
        async with self._one_at_a_time:
            ok = await in_thread(lambda: self._check(password, checked_hash), "bcrypt") and known
        (self._granted if ok else self._refused).add(key)
        return ok

    @staticmethod
    def _check(password: bytes, hashed: bytes) -> bool:
        try:
            return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed)
        except ValueError:  # a hash bcrypt cannot use (checked at load; defensive)
            return False


def parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    """(user, password) from ``Basic <base64(user:password)>``, or None."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode(), password
    except UnicodeDecodeError:
        return None
