from pydantic import Field

from libs.config import BaseServiceSettings


class PaymentsSettings(BaseServiceSettings):
    env_section = "payments"
    service_name: str = "payments"
    #: Razorpay's API (the local stand-in in development: ``deploy/razorpay``).
    razorpay_url: str = "https://api.razorpay.com"
    razorpay_key_id: str = ""
    #: Secrets: the API key's secret (signs Checkout's answers), the webhook secret set in
    #: Razorpay's Dashboard and, during a rotation, the one before it.
    razorpay_key_secret: str = ""
    razorpay_webhook_secret: str = ""
    razorpay_webhook_secret_previous: str = ""
    #: Seconds to wait for Razorpay's answer.
    razorpay_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Paise per credit: 100 makes 1 credit = ₹1.
    paise_per_credit: int = Field(default=100, ge=1)
    #: Currency of the orders.
    currency: str = "INR"
    #: Seconds to wait for the wallet's reply.
    command_timeout_seconds: float = 15.0

    def check_secrets(self) -> None:
        """Refuse to start without the key and webhook secrets."""
        for name in ("razorpay_key_id", "razorpay_key_secret", "razorpay_webhook_secret"):
            if not getattr(self, name):
                raise ValueError(f"RF_{name.upper()} must be set")
