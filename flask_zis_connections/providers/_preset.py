"""One provider preset: the OAuth facts of a real provider, as its own docs give them.

A preset is data, not behaviour: it holds client-creation options (URLs, how the
secret is sent, scope joining, the token answer's shape...) so that
``create_oauth_client(..., provider="hubspot")`` needs only the client id and secret.
It is frozen and its mappings are read-only, because one catalog object is shared by
every app and thread of the process: nobody may change another app's preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_NO_PARAMS: Mapping[str, str] = MappingProxyType({})


def _no_params() -> Mapping[str, str]:
    # A factory although the value is read-only: dataclasses refuse unhashable defaults.
    return _NO_PARAMS


#: Preset fields that are documentation about the preset, not client options.
DESCRIPTIVE_FIELDS = ("name", "display_name", "docs", "quirks")

#: Client options a preset may supply, in the order they are reported.
OPTION_FIELDS = (
    "auth_url",
    "token_url",
    "revocation_url",
    "token_endpoint_auth_method",
    "pkce",
    "scope_separator",
    "default_scopes",
    "authorize_params",
    "offline_access_params",
    "offline_scopes",
    "token_params",
    "refresh_params",
    "default_token_lifetime",
    "api_base_url",
    "allowed_domains",
    "token_response_fields",
    "ok_field",
    "metadata_from_token",
    "metadata_from_callback",
    "reauth_errors",
    "api_token_header",
    "default_refresh_token_lifetime",
    "issuer",
)

#: What ``GET /connections/oauth/providers`` shows of each preset: public catalog
#: knowledge only (no field here can hold a credential).
PUBLIC_FIELDS = (
    "name",
    "display_name",
    "docs",
    "auth_url",
    "token_url",
    "revocation_url",
    "token_endpoint_auth_method",
    "pkce",
    "scope_separator",
    "offline_access_params",
    "offline_scopes",
    "token_params",
    "refresh_params",
    "default_token_lifetime",
    "api_base_url",
    "allowed_domains",
    "metadata_from_token",
    "metadata_from_callback",
    "quirks",
)


@dataclass(frozen=True)
class ProviderPreset:
    """The catalog entry of one provider.

    ``None`` (or an empty mapping/tuple, or the RFC 6749 space separator) means the
    provider's docs give nothing particular there, so the client's own default applies:
    :meth:`client_options` leaves such fields out rather than guessing a value.
    """

    name: str
    display_name: str
    docs: tuple[str, ...]
    auth_url: str
    token_url: str
    quirks: str
    revocation_url: str | None = None
    token_endpoint_auth_method: str | None = None
    pkce: bool | None = None
    scope_separator: str = " "
    default_scopes: str | None = None
    authorize_params: Mapping[str, str] = field(default_factory=_no_params)
    offline_access_params: Mapping[str, str] = field(default_factory=_no_params)
    offline_scopes: str = ""
    token_params: Mapping[str, str] = field(default_factory=_no_params)
    refresh_params: Mapping[str, str] = field(default_factory=_no_params)
    default_token_lifetime: int | None = None
    api_base_url: str | None = None
    allowed_domains: tuple[str, ...] = ()
    token_response_fields: Mapping[str, str] = field(default_factory=_no_params)
    ok_field: str | None = None
    metadata_from_token: tuple[str, ...] = ()
    metadata_from_callback: tuple[str, ...] = ()
    reauth_errors: tuple[str, ...] = ()
    api_token_header: str | None = None
    default_refresh_token_lifetime: int | None = None
    issuer: str | None = None

    def client_options(self) -> dict[str, Any]:
        """The client-creation options this preset supplies, and only those it sets.

        Fresh, plain values (``dict``/``list``), so a caller can merge explicit options
        over them - ``{**preset.client_options(), **explicit}`` - and change the result
        without touching the shared preset.
        """
        options: dict[str, Any] = {}
        for key in OPTION_FIELDS:
            value = getattr(self, key)
            if value is None or (key == "scope_separator" and value == " "):
                continue
            if isinstance(value, Mapping):
                if value:
                    options[key] = dict(value)
            elif isinstance(value, tuple):
                if value:
                    options[key] = list(value)
            elif value != "":
                options[key] = value
        return options

    def public_json(self) -> dict[str, Any]:
        """The preset as the catalog endpoint shows it (plain JSON values)."""
        out: dict[str, Any] = {}
        for key in PUBLIC_FIELDS:
            value = getattr(self, key)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out
