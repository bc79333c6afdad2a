"""Errors of the wallet, billing and payments contexts."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails


class CreditShortfall(ErrorDetails):
    required_credits: Decimal = Field(description="Credits the operation needs.")
    available_credits: Decimal = Field(description="Credits available now.")


class HoldRef(ErrorDetails):
    hold_id: str = Field(description="The hold's id.")


class HoldState(ErrorDetails):
    hold_id: str = Field(description="The hold's id.")
    status: str = Field(description="The hold's status: pending, captured, voided or expired.")


class TransferRef(ErrorDetails):
    transfer_id: str = Field(description="The transfer's id.")


class CaptureLimit(ErrorDetails):
    hold_id: str = Field(description="The hold's id.")
    held_credits: Decimal = Field(description="Credits the hold reserves.")
    requested_credits: Decimal = Field(description="Credits asked to capture.")


class SpendCapRef(ErrorDetails):
    api_key_id: str = Field(description="The API key.")
    cap: str = Field(description="Which cap: daily or total.")
    cap_credits: Decimal = Field(description="The cap.")
    committed_credits: Decimal = Field(description="Credits committed through the key already.")
    required_credits: Decimal = Field(description="Credits the operation needs.")


class OrderRef(ErrorDetails):
    order_id: str = Field(description="The order's id.")


class JobCostRef(ErrorDetails):
    job_id: str = Field(description="The job's id.")


class InsufficientCredits(DomainError[CreditShortfall]):
    """The wallet's available credits do not cover the amount; top up and retry."""

    code = "insufficient_credits"
    http_status = 402
    retryable = False
    Details = CreditShortfall


class HoldNotFound(DomainError[HoldRef]):
    code = "hold_not_found"
    http_status = 404
    retryable = False
    Details = HoldRef


class HoldNotPending(DomainError[HoldState]):
    """The hold was captured, voided or expired already: it resolves once."""

    code = "hold_not_pending"
    http_status = 409
    retryable = False
    Details = HoldState


class TransferIdReused(DomainError[TransferRef]):
    """This transfer id was applied before with other fields: nothing moved."""

    code = "transfer_id_reused"
    http_status = 409
    retryable = False
    Details = TransferRef


class CaptureExceedsHold(DomainError[CaptureLimit]):
    """A capture may post at most what the hold reserves."""

    code = "capture_exceeds_hold"
    http_status = 409
    retryable = False
    Details = CaptureLimit


class SpendCapReached(DomainError[SpendCapRef]):
    """The API key's daily or total spend cap does not leave room for this."""

    code = "spend_cap_reached"
    http_status = 402
    retryable = False
    Details = SpendCapRef


class NoPrices(DomainError[None]):
    """No price version is in force: nothing can be estimated or charged."""

    code = "no_prices"
    http_status = 503
    retryable = True
    Details = None


class JobCostNotFound(DomainError[JobCostRef]):
    """Billing has no cost for this job among the caller's (not yet, or not theirs)."""

    code = "job_cost_not_found"
    http_status = 404
    retryable = False
    Details = JobCostRef


class OrderNotFound(DomainError[OrderRef]):
    """No such top-up order among the caller's."""

    code = "order_not_found"
    http_status = 404
    retryable = False
    Details = OrderRef


class PaymentSignatureInvalid(DomainError[None]):
    """The checkout signature does not match the order and payment."""

    code = "payment_signature_invalid"
    http_status = 400
    retryable = False
    Details = None


class WebhookSignatureInvalid(DomainError[None]):
    """The webhook's X-Razorpay-Signature does not match its body under any webhook secret."""

    code = "webhook_signature_invalid"
    http_status = 400
    retryable = False
    Details = None


class PaymentNotCaptured(DomainError[OrderRef]):
    """The provider has not captured this payment (yet): nothing is credited."""

    code = "payment_not_captured"
    http_status = 409
    retryable = True
    Details = OrderRef


class PaymentMismatch(DomainError[OrderRef]):
    """The payment does not match its order (amount, currency or order): not credited."""

    code = "payment_mismatch"
    http_status = 409
    retryable = False
    Details = OrderRef


class PaymentProviderUnavailable(DomainError[None]):
    """The payment provider did not answer in time; retry with the same Idempotency-Key."""

    code = "payment_provider_unavailable"
    http_status = 503
    retryable = True
    Details = None
