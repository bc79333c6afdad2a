"""Webhook secrets at rest: sealed under the current key, opened by it or an older one after
a key rotation, bound to their endpoint; secrets stored in the clear before (schema 1) still
load and sign."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.base import EVENTS
from contracts.notifications import PLAINTEXT_KEY_ID, WebhookEndpointRegistered
from services.notifier.sealing import SecretBox, SecretsKeyError, new_key, parse_key
from services.notifier.settings import NotifierSettings
from services.notifier.signing import new_secret


def test_a_secret_opens_with_its_key_after_a_key_rotation_and_only_on_its_endpoint() -> None:
    old, current = new_key(), new_key()
    secret = new_secret()
    sealed = SecretBox.from_settings(old, "").seal(secret, "usr_1", "whk_1")
    assert secret not in sealed.model_dump_json()
    assert secret.removeprefix("whsec_") not in sealed.model_dump_json()
    rotated = SecretBox.from_settings(current, old)
    assert rotated.open(sealed, "usr_1", "whk_1") == secret
    assert rotated.seal(secret, "usr_1", "whk_1").key_id == rotated.current_id != sealed.key_id
    with pytest.raises(SecretsKeyError, match="does not decrypt"):
        rotated.open(sealed, "usr_1", "whk_2")  # copied onto another endpoint
    with pytest.raises(SecretsKeyError, match="not configured"):
        SecretBox.from_settings(current, "").open(sealed, "usr_1", "whk_1")


def test_the_notifier_refuses_to_start_without_a_valid_key() -> None:
    for key, problem in (("", "must be set"), ("not base64!", "not base64"), ("AAAA", "32 bytes")):
        with pytest.raises(SecretsKeyError, match=problem):
            NotifierSettings(webhook_secrets_key=key).check_secrets()
    NotifierSettings(webhook_secrets_key=new_key()).check_secrets()
    assert len(parse_key(new_key(), "k")) == 32


def test_a_secret_stored_in_the_clear_before_encryption_still_loads_and_signs() -> None:
    secret = new_secret()
    v1 = {
        "endpoint_id": "whk_1",
        "user_id": "usr_1",
        "url": "https://hooks.example/in",
        "kinds": ["render.completed"],
        "api_key_id": None,
        "secret": secret,
        "at": datetime(2026, 12, 1, tzinfo=UTC).isoformat(),
    }
    event = EVENTS.decode(WebhookEndpointRegistered.event_type, 1, v1)
    assert isinstance(event, WebhookEndpointRegistered)
    assert event.secret.key_id == PLAINTEXT_KEY_ID
    assert SecretBox.from_settings(new_key(), "").open(event.secret, "usr_1", "whk_1") == secret
