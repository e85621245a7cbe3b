"""Reading a token endpoint's answer, as RFC 6749 §5 says and as real providers write it.

Providers answer JSON (most), ``application/x-www-form-urlencoded`` (older endpoints),
``expires_in`` as a number or a numeric string, the token nested in the answer (Slack's
user token under ``authed_user``), an error as HTTP 200 (``{"ok": false}``), and extra
values a later API call needs (Salesforce's ``instance_url``).  One reader, told by the
client's :class:`~flask_zis_connections.domain.ProviderQuirks` where to look, turns
each into the same validated :class:`TokenResponse` - or an error that never quotes
the provider's body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from .crypto import Encryptor
from .domain import ProviderQuirks
from .errors import ProviderError

_OAUTH_ERROR_RE = re.compile(r"[a-z0-9_.-]{1,64}")
#: Longer than any token a provider issues: ten years.
_MAX_LIFETIME = 10 * 365 * 86400
_DEFAULT_QUIRKS = ProviderQuirks()


class TokenRequestRejected(ProviderError):
    """The provider answered the token request with an OAuth error (RFC 6749 §5.2)."""

    def __init__(self, error: str) -> None:
        self.error = error if _OAUTH_ERROR_RE.fullmatch(error) else "invalid_response"
        super().__init__(f"The provider refused the token request ({self.error}).")


@dataclass(frozen=True)
class TokenResponse:
    """A validated token endpoint answer."""

    access_token: str
    token_type: str
    refresh_token: str | None
    expires_in: float | None
    scope: str | None
    raw_body: str
    refresh_token_expires_in: float | None = None
    #: The whole answer, parsed: where metadata is read from.
    data: Mapping[str, Any] = field(default_factory=dict)

    def expiry(self, now: datetime) -> datetime | None:
        """When the access token expires, to the second (None: the provider did not say)."""
        if self.expires_in is None:
            return None
        return (now + timedelta(seconds=self.expires_in)).replace(microsecond=0)

    def refresh_token_expiry(self, now: datetime) -> datetime | None:
        if self.refresh_token_expires_in is None:
            return None
        return (now + timedelta(seconds=self.refresh_token_expires_in)).replace(microsecond=0)

    def metadata(self, paths: tuple[str, ...]) -> dict[str, Any]:
        """The values at ``paths`` (dotted) that the answer has, keyed by path; never a
        token (a path naming one is skipped)."""
        secret = {self.access_token, self.refresh_token}
        out: dict[str, Any] = {}
        for path in paths:
            value = lookup(self.data, path)
            if value is not None and value not in secret and _json_scalar(value):
                out[path] = value
        return out

    def stored_fields(
        self,
        encryptor: Encryptor,
        now: datetime,
        *,
        kept_refresh_token: str | None,
        kept_scope: str | None,
        default_lifetime: int | None = None,
        default_refresh_lifetime: int | None = None,
    ) -> dict[str, Any]:
        """The connection fields this answer sets, encrypted: one rule for a new
        connection (the flow) and a refreshed one (the lifecycle).

        An answer without a refresh token keeps ``kept_refresh_token`` (re-encrypted
        under the newest key, so this write never puts old-key ciphertext back behind a
        concurrent ``rotate-keys``); without ``scope`` the scope is ``kept_scope``: the
        requested one for a new grant, the stored one on refresh (RFC 6749 §5.1, §6).
        A refresh answer without ``expires_in`` that keeps the old refresh token (as
        Salesforce's do) gets ``default_lifetime`` too: the token is still refreshable.
        """
        expiry = self.expiry(now)
        if expiry is None and default_lifetime and (self.refresh_token or kept_refresh_token):
            expiry = (now + timedelta(seconds=default_lifetime)).replace(microsecond=0)
        fields: dict[str, Any] = {
            "access_token_enc": encryptor.encrypt(self.access_token),
            "refresh_token_enc": encryptor.encrypt_optional(self.refresh_token or kept_refresh_token),
            "token_response_enc": encryptor.encrypt(self.raw_body),
            "token_type": self.token_type,
            "token_expiry": expiry,
            "permission_scope": self.scope if self.scope is not None else kept_scope,
        }
        if self.refresh_token is not None or self.refresh_token_expires_in is not None:
            # A new refresh token has the lifetime it came with (or the provider's
            # documented one); a kept one keeps the expiry the caller's record holds.
            rt_expiry = self.refresh_token_expiry(now)
            if rt_expiry is None and default_refresh_lifetime:
                rt_expiry = (now + timedelta(seconds=default_refresh_lifetime)).replace(microsecond=0)
            fields["refresh_token_expiry"] = rt_expiry
        return fields


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None when any step is missing."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _json_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and not (isinstance(value, str) and len(value) > 2048)


def _decode(text: str, content_type: str | None) -> dict[str, Any]:
    """JSON, or form-encoded when the provider says so in its content type."""
    if (content_type or "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return dict(parse_qsl(text, keep_blank_values=True))
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise ProviderError("The provider's token response is not JSON.") from exc
    if not isinstance(data, dict):
        raise ProviderError("The provider's token response is not a JSON object.")
    return data


def oauth_error(text: str, content_type: str | None) -> str | None:
    """The ``error`` code of an OAuth error answer (RFC 6749 §5.2), or None."""
    try:
        error = _decode(text, content_type).get("error")
    except ProviderError:
        return None
    return str(error) if error is not None else None


def _seconds(raw: Any, name: str) -> float | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise ProviderError(f"The provider's token response has an invalid {name}.")
    try:
        seconds = float(raw)
    except (TypeError, ValueError) as exc:
        raise ProviderError(f"The provider's token response has an invalid {name}.") from exc
    if not 0 <= seconds < _MAX_LIFETIME:
        raise ProviderError(f"The provider's token response has an invalid {name}.")
    return seconds


def parse_token_response(
    text: str, content_type: str | None = None, quirks: ProviderQuirks = _DEFAULT_QUIRKS
) -> TokenResponse:
    """Validate a token response body; ``ProviderError`` when it is not usable."""
    data = _decode(text, content_type)
    if quirks.ok_field is not None and data.get(quirks.ok_field) is False:
        raise TokenRequestRejected(str(data.get("error") or "invalid_response"))
    if "error" in data:
        raise TokenRequestRejected(str(data["error"]))
    where = dict(quirks.token_response_fields)

    def field(name: str) -> Any:
        # Where the provider puts it - or, missing there, at its RFC 6749 place: Slack
        # nests a user token in the code exchange but answers its refresh at the top.
        value = lookup(data, where[name]) if name in where else None
        return lookup(data, name) if value is None else value

    access_token = field("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderError("The provider's token response has no access_token.")
    token_type = field("token_type")
    token_type = "bearer" if token_type is None else token_type
    if not isinstance(token_type, str) or not token_type:
        raise ProviderError("The provider's token response has an invalid token_type.")
    refresh_token = field("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise ProviderError("The provider's token response has an invalid refresh_token.")
    expires_in = _seconds(field("expires_in"), "expires_in")
    if expires_in is None and refresh_token is not None and quirks.default_token_lifetime:
        # A refreshable token without a stated lifetime: assume the provider's documented
        # one, so it is refreshed in time instead of being used until it fails.
        expires_in = float(quirks.default_token_lifetime)
    scope = field("scope")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    elif isinstance(scope, str) and quirks.scope_separator != " ":
        scope = " ".join(s for s in scope.split(quirks.scope_separator) if s)
    if scope is not None and not isinstance(scope, str):
        scope = None
    return TokenResponse(
        access_token=access_token,
        token_type=token_type.lower(),
        refresh_token=refresh_token,
        expires_in=expires_in,
        scope=scope,
        raw_body=text,
        refresh_token_expires_in=_seconds(field("refresh_token_expires_in"), "refresh_token_expires_in"),
        data=MappingProxyType(data),
    )
