"""The exceptions the outbound guard raises.

All derive from :class:`OutboundRefused`, itself a :class:`requests.RequestException`,
so a caller that already handles ``requests`` failures keeps working, and one that
wants to tell a refusal apart (to report it, or not to retry it) can.  Their message
(``reason``) may name the host but never carries the URL's path or query, a header
value or a body: it is safe to log or show.
"""

from __future__ import annotations

import requests

__all__ = [
    "DeadlineExceeded",
    "DestinationRefused",
    "OutboundRefused",
    "RedirectRefused",
    "ResponseTooLarge",
]


class OutboundRefused(requests.RequestException):
    """An outbound call was stopped by the guard.

    ``reason`` is a short message safe to log or show: it may name the host, never the
    URL's path or query, a header value or a body.
    """

    def __init__(self, reason: str, *, host: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.host = host

    def __str__(self) -> str:
        return self.reason


class RedirectRefused(OutboundRefused):
    """The server answered with a 3xx status; redirects are never followed (RFC 9700 §4.11)."""


class DestinationRefused(OutboundRefused):
    """The host resolves to a loopback, private, link-local or otherwise non-public address."""


class ResponseTooLarge(OutboundRefused):
    """The body (after content decoding) or its declared ``Content-Length`` exceeds the cap."""


class DeadlineExceeded(OutboundRefused):
    """The whole call (resolution, connect, headers, body) outlasted its deadline."""
