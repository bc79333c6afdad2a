"""Webhook signing secrets encrypted at rest: AES-256-GCM under the notifier's key.

Each ciphertext names the key that sealed it (``key_id``: the first 8 hex digits of the
key's SHA-256), so keys can rotate: ``RF_NOTIFIER_WEBHOOK_SECRETS_KEY`` seals, and it or any
of ``RF_NOTIFIER_WEBHOOK_SECRETS_PREVIOUS_KEYS`` opens. The associated data binds a
ciphertext to its user and endpoint, so one cannot be copied onto another endpoint.
Secrets recorded before encryption (schema 1) are upcast with the key id ``plaintext``
(``contracts.notifications``) and open as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contracts.notifications import PLAINTEXT_KEY_ID, SealedSecret

NONCE_BYTES = 12


class SecretsKeyError(ValueError):
    """A key setting is missing or malformed, or a ciphertext's key is not configured."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def parse_key(text: str, setting: str) -> bytes:
    """A base64 key of 32 bytes, else :class:`SecretsKeyError` naming the setting."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SecretsKeyError(f"{setting} is not base64") from e
    if len(key) != 32:
        raise SecretsKeyError(f"{setting} must be the base64 of 32 bytes, not {len(key)}")
    return key


def new_key() -> str:
    """A fresh key for ``RF_NOTIFIER_WEBHOOK_SECRETS_KEY``."""
    return base64.b64encode(os.urandom(32)).decode()


def _aad(user_id: str, endpoint_id: str) -> bytes:
    return f"webhook-secret:{user_id}:{endpoint_id}".encode()


class SecretBox:
    """Seals with the current key; opens with any configured key."""

    def __init__(self, current: bytes, previous: list[bytes] | None = None) -> None:
        self.current_id = key_id(current)
        self._keys = {key_id(k): AESGCM(k) for k in [*(previous or []), current]}

    @classmethod
    def from_settings(cls, current: str, previous: str) -> SecretBox:
        """From the two settings (``previous``: comma-separated); refuses a missing key."""
        name = "RF_NOTIFIER_WEBHOOK_SECRETS_KEY"
        if not current.strip():
            raise SecretsKeyError(f"{name} must be set (python -m services.notifier.sealing)")
        old = [parse_key(k, f"{name[:-4]}_PREVIOUS_KEYS") for k in previous.split(",") if k.strip()]
        return cls(parse_key(current, name), old)

    def seal(self, secret: str, user_id: str, endpoint_id: str) -> SealedSecret:
        nonce = os.urandom(NONCE_BYTES)
        data = self._keys[self.current_id].encrypt(
            nonce, secret.encode(), _aad(user_id, endpoint_id)
        )
        return SealedSecret(
            key_id=self.current_id,
            nonce=base64.b64encode(nonce).decode(),
            ciphertext=base64.b64encode(data).decode(),
        )

    def open(self, sealed: SealedSecret, user_id: str, endpoint_id: str) -> str:
        if sealed.key_id == PLAINTEXT_KEY_ID:  # recorded before encryption (schema 1)
            return sealed.ciphertext
        aes = self._keys.get(sealed.key_id)
        if aes is None:
            raise SecretsKeyError(
                f"webhook secret sealed with key {sealed.key_id}, which is not configured"
                " (RF_NOTIFIER_WEBHOOK_SECRETS_PREVIOUS_KEYS)"
            )
        try:
            plain = aes.decrypt(
                base64.b64decode(sealed.nonce),
                base64.b64decode(sealed.ciphertext),
                _aad(user_id, endpoint_id),
            )
        except InvalidTag as e:
            raise SecretsKeyError(f"the webhook secret of {endpoint_id} does not decrypt") from e
        return plain.decode()


if __name__ == "__main__":
    print(new_key())
