"""Errors of the notifier: notifications, webhook endpoints and their deliveries."""

from __future__ import annotations

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails


class EndpointRef(ErrorDetails):
    endpoint_id: str = Field(description="The webhook endpoint's id.")


class DeliveryRef(ErrorDetails):
    delivery_id: str = Field(description="The webhook delivery's id.")


class NotificationRef(ErrorDetails):
    notification_id: str = Field(description="The notification's id.")


class UrlProblem(ErrorDetails):
    url: str = Field(description="The URL as given.")
    problem: str = Field(description="What is wrong with it.")


class UrlRefused(ErrorDetails):
    url: str = Field(description="The URL as given.")
    address: str = Field(description="The address its host is or resolves to.")
    reason: str = Field(
        description="What kind of address: loopback, private, link-local, unique-local,"
        " multicast, unspecified, reserved, not globally routable."
    )


class EndpointLimit(ErrorDetails):
    limit: int = Field(description="Most webhook endpoints a user may register.")


class WebhookEndpointNotFound(DomainError[EndpointRef]):
    """No such endpoint among the caller's (another user's answers the same)."""

    code = "webhook_endpoint_not_found"
    http_status = 404
    retryable = False
    Details = EndpointRef


class WebhookDeliveryNotFound(DomainError[DeliveryRef]):
    """No such delivery among the caller's (another user's answers the same)."""

    code = "webhook_delivery_not_found"
    http_status = 404
    retryable = False
    Details = DeliveryRef


class NotificationNotFound(DomainError[NotificationRef]):
    """No such notification among the caller's (another user's answers the same)."""

    code = "notification_not_found"
    http_status = 404
    retryable = False
    Details = NotificationRef


class WebhookUrlInvalid(DomainError[UrlProblem]):
    """The endpoint URL cannot be sent to: not absolute, not https, or with credentials."""

    code = "webhook_url_invalid"
    http_status = 422
    retryable = False
    Details = UrlProblem


class WebhookUrlNotAllowed(DomainError[UrlRefused]):
    """The endpoint's host is or resolves to an address that is not public (loopback,
    private, link-local, ...): webhooks are not sent into our own network."""

    code = "webhook_url_not_allowed"
    http_status = 422
    retryable = False
    Details = UrlRefused


class WebhookLimitReached(DomainError[EndpointLimit]):
    """The user has as many webhook endpoints as allowed: delete one first."""

    code = "webhook_limit_reached"
    http_status = 409
    retryable = False
    Details = EndpointLimit


class StreamLimit(ErrorDetails):
    limit: int = Field(description="Most live feed connections a user may hold at once.")


class StreamLimitReached(DomainError[StreamLimit]):
    """The user holds as many live feed connections as allowed: close one, or retry later."""

    code = "stream_limit_reached"
    http_status = 429
    retryable = True
    Details = StreamLimit
