from decimal import Decimal

from pydantic import Field

from libs.config import BaseServiceSettings
from services.notifier.sealing import SecretBox


class NotifierSettings(BaseServiceSettings):
    env_section = "notifier"
    service_name: str = "notifier"
    #: Ten connections are held all the time (the relay, seven projections' leader locks,
    #: the webhook sender's and the mailer's): the pool needs room beyond them for the
    #: consumer, the projectors' batches, commands and the workers' appends.
    db_pool_size: int = 20

    #: ``balance.low`` when available credits fall below this.
    low_balance_credits: Decimal = Field(default=Decimal("10"), ge=0)
    #: Plain ``http://`` endpoint URLs are refused unless this is set (local development).
    webhook_allow_http: bool = False
    #: Endpoints whose host is or resolves to a loopback, private, link-local, ... address
    #: are refused, at registration and at every attempt, unless this is set (local
    #: development and tests with a receiver on 127.0.0.1).
    webhook_allow_private_addresses: bool = False
    #: Seconds one POST to a receiver may take, connecting included.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    #: POSTs in flight at once in all, and to one endpoint.
    webhook_concurrency: int = Field(default=64, ge=1)
    webhook_endpoint_concurrency: int = Field(default=1, ge=1)
    #: Retries: the first back-off step, the longest, and the window from the first attempt
    #: (24 h) after which a delivery is dead-lettered.
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_delay_seconds: float = Field(default=3 * 3600.0, gt=0)
    webhook_retry_window_seconds: float = Field(default=24 * 3600.0, gt=0)
    #: Secrets: the key that encrypts webhook signing secrets at rest (base64 of 32 bytes,
    #: AES-256-GCM; required: the notifier does not start without it) and, after a key
    #: rotation, the keys before it (comma-separated), which still decrypt what they sealed.
    webhook_secrets_key: str = ""
    webhook_secrets_previous_keys: str = ""
    #: How long the previous secret still signs after a rotation.
    webhook_secret_grace_seconds: float = Field(default=24 * 3600.0, ge=0)
    #: The delivery worker looks for due deliveries at least this often.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    #: E-mail: the SMTP server (``make up``: the local sink on 18025), the sender address,
    #: seconds one hand-over may take, and hand-overs in flight at once.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=18025, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    email_from: str = "Render farm <notifications@renderfarm.local>"
    email_timeout_seconds: float = Field(default=10.0, gt=0)
    email_concurrency: int = Field(default=4, ge=1)
    #: Retries of e-mails the server refused or could not take (it was down): as webhooks'.
    email_retry_base_seconds: float = Field(default=5.0, gt=0)
    email_retry_max_delay_seconds: float = Field(default=3600.0, gt=0)
    email_retry_window_seconds: float = Field(default=24 * 3600.0, gt=0)
    #: The mailer looks for due e-mails at least this often.
    email_poll_seconds: float = Field(default=1.0, gt=0)

    def secret_box(self) -> SecretBox:
        """The webhook secrets' keys; refuses a missing or malformed key."""
        return SecretBox.from_settings(self.webhook_secrets_key, self.webhook_secrets_previous_keys)

    def check_secrets(self) -> None:
        """Refuse to start without a valid key for the webhook secrets."""
        self.secret_box()
