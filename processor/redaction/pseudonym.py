"""Keyed pseudonyms: `prefix + hex(HMAC-SHA256(key, value))[:length]`.

Stable across spans, restarts and instances that share the key, so joins and per-user debugging still work,
while nobody without the key can map a pseudonym back (a plain hash of a user id is a dictionary attack away).
The key comes from an environment variable or a key file, never from a config file, and is never logged.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from processor.config_node import ConfigError

DEFAULT_KEY_ENV = "RECOHOP_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16


@dataclass
class KeySource:
    """Where the key is read from (the rules file says where, never what)."""

    file: str  # the rules file, for error messages
    env: str = DEFAULT_KEY_ENV
    key_file: Path | None = None


@functools.cache
def throwaway_key() -> bytes:
    """One random key per process, so a config reload keeps the zero-config default's pseudonyms stable."""
    return os.urandom(32)


def load_key(source: KeySource, why: str, builtin_default: bool = False,
             log: logging.Logger | None = None) -> bytes:
    """The pseudonym key; a ConfigError naming the variable or file when it is missing, except for the
    built-in default, which gets a throwaway key and a warning."""
    if source.key_file is not None:
        try:
            key = source.key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(source.file, "pseudonym.key_file",
                              f"a readable key file for {why} ({exc.strerror or exc})") from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(source.file, "pseudonym.key_file",
                              f"a key file holding at least {MIN_KEY_BYTES} bytes of secret for {why}")
        return key
    key = os.environ.get(source.env, "").encode()
    if len(key) >= MIN_KEY_BYTES:
        return key
    if builtin_default:
        (log or logging.getLogger("recohop")).warning(
            "redaction: %s is not set; using a throwaway pseudonym key, so pseudonyms will differ after a "
            "restart and between instances (set %s to a secret of at least %d bytes to make them stable)",
            source.env, source.env, MIN_KEY_BYTES)
        return throwaway_key()
    state = "is too short" if key else "is not set"
    raise ConfigError(source.file, "pseudonym.key_env",
                      f"environment variable {source.env} set to a secret of at least {MIN_KEY_BYTES} bytes, "
                      f"or pseudonym.key_file, because {why} (the variable {state})")


class Pseudonymiser:
    """HMAC-SHA256 pseudonyms with a bounded cache (user ids repeat across a trace's spans)."""

    CACHE_MAX = 131072

    def __init__(self, key: bytes, length: int = 16) -> None:
        self._key = key
        self.length = length
        self._cache: dict[bytes, str] = {}

    @property
    def key(self) -> bytes:
        """The secret, for the native scanner that computes the same HMAC in C (never logged)."""
        return self._key

    def digest(self, value: bytes) -> str:
        cache = self._cache
        found = cache.get(value)
        if found is None:
            found = hmac.digest(self._key, value, "sha256").hex()[: self.length]  # one-shot, in C
            if len(cache) >= self.CACHE_MAX:
                cache.clear()
            cache[value] = found
        return found

    def pseudonym(self, value: bytes, prefix: str) -> str:
        return prefix + self.digest(value)
