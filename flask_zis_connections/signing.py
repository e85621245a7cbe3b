"""Signed, expiring tokens for the flow: one itsdangerous salt per purpose.

The flow token (``start_redirect?flow_token=``) and the OAuth ``state`` both sign only
a random flow id; the PKCE verifier and everything else stay server-side.  Different
salts mean a flow token can never be replayed as a state or the other way round.
Keys are ``[*SECRET_KEY_FALLBACKS, SECRET_KEY]`` (newest last), as Flask's own session
signing does, so rotating ``SECRET_KEY`` does not break flows in progress.
"""

from __future__ import annotations

from typing import Any, Final

from flask import Flask
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import ConfigurationError, InvalidRequest

FLOW_TOKEN_SALT: Final = "flask-zis-connections.flow-token"
STATE_SALT: Final = "flask-zis-connections.oauth-state"


def _keys(app: Flask) -> Any:
    secret = app.config.get("SECRET_KEY")
    if not secret:
        raise ConfigurationError(
            "SECRET_KEY is not set: flow tokens and OAuth state are signed with it. "
            "Set app.config['SECRET_KEY'] before using the OAuth flow."
        )
    fallbacks = [k for k in app.config.get("SECRET_KEY_FALLBACKS") or [] if k]
    return [*fallbacks, secret]


def serializer(app: Flask, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_keys(app), salt=salt)


def sign(app: Flask, salt: str, value: str) -> str:
    return serializer(app, salt).dumps(value)


def unsign(app: Flask, salt: str, token: str, max_age: int, what: str) -> str:
    """Verify and return the signed value; every failure is a 400 that names ``what``."""
    try:
        value = serializer(app, salt).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise InvalidRequest(f"The {what} has expired. Start the OAuth flow again.") from exc
    except BadSignature as exc:
        raise InvalidRequest(f"The {what} is invalid. Start the OAuth flow again.") from exc
    if not isinstance(value, str):
        raise InvalidRequest(f"The {what} is invalid. Start the OAuth flow again.")
    return value
