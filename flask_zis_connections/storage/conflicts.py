"""The one wording of each conflict a backend reports, whichever backend noticed it.

A memory backend notices a duplicate in a dict, the SQL one through an
``IntegrityError``; the caller (and the HTTP client behind it) must read the same
message, saying what to do instead.
"""

from __future__ import annotations

from ..domain import ConnectionRecord, OAuthClient, PendingFlow
from ..errors import Conflict


def client_conflict(client: OAuthClient) -> Conflict:
    """Another client of the integration has that name."""
    return Conflict(
        f"An OAuth client named {client.name!r} already exists for integration "
        f"{client.integration!r}. Choose another name or update the existing client."
    )


def stale_client(client: OAuthClient) -> Conflict:
    """A lost update: the stored version is not the one the caller read."""
    return Conflict(
        f"OAuth client {client.uuid!r} was changed by someone else since it was read. "
        "Read it again and re-apply your change."
    )


def connection_uuid_conflict(record: ConnectionRecord) -> Conflict:
    """A new connection name with a uuid that another connection already has."""
    return Conflict(
        f"A connection with uuid {record.uuid!r} already exists under another name. "
        "Generate a new uuid for a new connection."
    )


def connection_name_conflict(record: ConnectionRecord, existing_type: str | None) -> Conflict:
    """The integration already has a connection of that name, of any type."""
    held = f"a {existing_type} connection" if existing_type else "a connection"
    return Conflict(
        f"Integration {record.integration!r} already has {held} named {record.name!r}; a "
        "name is unique across every connection type. Choose another name, or delete that "
        "connection first."
    )


def flow_conflict(flow: PendingFlow) -> Conflict:
    return Conflict(f"A flow with id {flow.id!r} already exists.")


def code_conflict() -> Conflict:
    return Conflict("That verification code already exists; generate a new one.")


def token_conflict() -> Conflict:
    return Conflict("That API token already exists; issue a new one.")
