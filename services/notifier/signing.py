"""Webhook signatures as the Standard Webhooks specification defines them.

A secret is ``whsec_`` and the base64 of 32 random bytes; the signature of a message is
``v1,`` and the base64 of HMAC-SHA256(secret bytes, ``{webhook-id}.{webhook-timestamp}.{body}``).
During a rotation each secret that signs adds its own ``v1,...``, separated by spaces, so a
receiver holding either one accepts the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{msg_id}.{timestamp}.{body}``."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def webhook_headers(signing: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt: id, timestamp and every signing secret's signature."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in signing),
        "content-type": "application/json",
    }
