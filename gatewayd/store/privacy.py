"""Privacy mode: recipient numbers never stored in clear (``[privacy] enabled = true``).

One secret, from the environment variable ``[privacy] secret_env`` (never the config
file), gives two keys (HMAC-SHA256 of the secret with a fixed label each, once):

- **tokens**: a number's key names and policy state use a keyed hash of its digits,
  BLAKE2b in its keyed (MAC) mode (RFC 7693), 16 bytes in hex (128 bits), instead of the
  digits. BLAKE2b rather than HMAC-SHA256: both are keyed PRFs, but here
  ``hmac.digest`` cost ~3x as much (OpenSSL 3 sets up a context per call), and a token
  is computed on the hot path for every new recipient:
  ``gw:optout:{3f9c...}`` for ``gw:optout:{8613800138000}``, the frequency-cap and
  duplicate keys likewise (gatewayd.store.keys.Keys builds every such name, so nothing
  else needs to know). Keyed: without the secret nobody can test a guessed number
  against the keys (a plain hash of an 11-digit number space falls to a brute force in
  seconds).
- **encryption**: records that must give the number back (consent records, the MO
  stream) hold it encrypted with AES-256-GCM (``cryptography``), as
  ``v1.<base64 nonce + ciphertext + tag>``, beside a masked form for people
  (``+86138****8000``). Status records and events hold masked numbers in any mode.

The same secret must be set for every gatewayd process and CLI of a deployment; a
changed secret makes existing opt-outs and caps unreachable (a new key space): rotate
by importing the consent export under the new secret. Tokens are cached per process
(bounded), so a recipient's few keys a message cost one hash, not three.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_TOKEN_LABEL: Final = b"gatewayd number token v1"
_CIPHER_LABEL: Final = b"gatewayd number encryption v1"
_CACHE_MAX: Final = 100_000
MIN_SECRET_BYTES: Final = 16


class PrivacyError(ValueError):
    """The secret is missing or too short, or a ciphertext does not open."""


class Privacy:
    __slots__ = ("_aead", "_cache", "_token_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise PrivacyError(f"the privacy secret must be at least {MIN_SECRET_BYTES} "
                               "bytes (e.g. `openssl rand -base64 32`)")
        self._token_key = hmac.digest(secret, _TOKEN_LABEL, "sha256")
        self._aead = AESGCM(hmac.digest(secret, _CIPHER_LABEL, "sha256"))
        self._cache: dict[str, str] = {}

    @classmethod
    def from_env(cls, name: str) -> Privacy:
        value = os.environ.get(name, "")
        if not value:
            raise PrivacyError(f"privacy mode is on but the environment variable {name} "
                               "(the secret) is not set")
        return cls(value.encode())

    def token(self, digits: str) -> str:
        """The keyed token that stands for the number in key names."""
        t = self._cache.get(digits)
        if t is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            t = self._cache[digits] = hashlib.blake2b(
                digits.encode(), key=self._token_key, digest_size=16).hexdigest()
        return t

    def mac(self, data: bytes) -> str:
        """A keyed digest of any data (not cached: for data seen once or twice)."""
        return hashlib.blake2b(data, key=self._token_key, digest_size=16).hexdigest()

    def seal(self, digits: str) -> str:
        """The number encrypted (a fresh nonce each time)."""
        nonce = os.urandom(12)
        return "v1." + base64.b64encode(
            nonce + self._aead.encrypt(nonce, digits.encode(), b"number")).decode()

    def open(self, sealed: str) -> str:
        """The number a ``seal`` holds; PrivacyError when it is not ours."""
        try:
            if not sealed.startswith("v1."):
                raise ValueError("unknown format")
            raw = base64.b64decode(sealed[3:], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], b"number").decode()
        except (ValueError, InvalidTag) as e:
            raise PrivacyError("a number does not decrypt with this secret") from e
