"""Hardening for every outbound HTTP call the extension makes.

The extension talks to servers it does not control: OAuth token endpoints (through
Authlib's ``OAuth2Session``, a :class:`requests.Session`), RFC 7009 revocation
endpoints and the token proxy.  Their URLs come from OAuth client records, so a
mistaken or hostile record, or a compromised provider, must not be able to:

* **redirect** the call elsewhere.  A token request carries the client secret and an
  authorization code or refresh token; following a 3xx would replay them to whatever
  ``Location`` names - another host, plain ``http://`` or the cloud metadata address.
  RFC 9700 §4.11 (open redirection) and §4.11.1 (307/308 resend the body) are the
  reason redirects are refused outright rather than filtered;
* reach **internal addresses** (server-side request forgery, see the OWASP SSRF
  Prevention Cheat Sheet): loopback, RFC 1918, link-local (``169.254.169.254``), CGNAT,
  unique-local, multicast, reserved and unspecified addresses, also when written as an
  IPv4-mapped, NAT64 or 6to4 IPv6 address.  The check runs on the addresses the host
  name resolves to, at request time, and the connection is made to exactly those
  addresses: there is no second resolution, hence no DNS-rebinding window;
* hold a worker for ever by answering slowly.  Per-read socket timeouts restart with
  every byte, so a server dripping one byte per second never trips them; the call has
  one **total deadline** covering resolution, connect, TLS, headers and body;
* exhaust memory with a huge or **decompression-bomb** body: the body is read in
  chunks and counted after content decoding, up to a cap.

:func:`harden` applies all of this to a session by mounting :class:`GuardedAdapter`
for ``http://`` and ``https://``.  Every rule is enforced inside
:meth:`GuardedAdapter.send`, so it holds whatever the caller passes as
``allow_redirects``, ``stream`` or ``timeout``.  The session also stops trusting the
environment (``trust_env = False``): no proxy from ``HTTP_PROXY`` and friends (a proxy
would connect on our behalf, out of reach of the destination check) and no
credentials from ``~/.netrc``.

Deadline enforcement: every call gets a watchdog (a timer on the process's one timer
thread) that re-reads the deadline (a caller holding a renewable lease may move it)
and, once it has passed, shuts down (``shutdown(SHUT_RDWR)``) the sockets this call
opened.  Whatever read or write was blocked then fails at once and the failure is
reported as :class:`DeadlineExceeded`.  Name lookups run on the process's few resolver
threads (:mod:`.resolver`: a resolver that never answers holds one of them, never the
caller past its deadline); connects are non-blocking and polled against the same
deadline.

Connections are not kept alive between calls: every call uses its own connection pool,
closed when the call returns.  Provider calls are rare enough that this costs little,
and it means a connection is only ever used for the call that checked its address.

Exceptions raised here derive from :class:`OutboundRefused` (a
:class:`requests.RequestException`); their message (``reason``) may name the host but
never contains the URL's path or query, a header value or a body.

The package is split by concern: :mod:`.policy` (the rules and the address check),
:mod:`.errors` (the exceptions), :mod:`.call` (one call's deadline, watchdog and
sockets) and :mod:`.adapter` (:class:`GuardedAdapter` and the pinned urllib3 classes).
Import from the package itself; the modules are its layout, not its interface.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import requests

from .adapter import GuardedAdapter
from .errors import DeadlineExceeded, DestinationRefused, OutboundRefused, RedirectRefused, ResponseTooLarge
from .policy import DEFAULT_MAX_RESPONSE_BYTES as DEFAULT_MAX_RESPONSE_BYTES
from .policy import OutboundPolicy, is_public_address

__all__ = [
    "DeadlineExceeded",
    "DestinationRefused",
    "GuardedAdapter",
    "OutboundPolicy",
    "OutboundRefused",
    "RedirectRefused",
    "ResponseTooLarge",
    "guarded_session",
    "harden",
    "is_public_address",
]

_SessionT = TypeVar("_SessionT", bound=requests.Session)


def harden(
    session: _SessionT, policy: OutboundPolicy, *, deadline: Callable[[], float] | None = None
) -> _SessionT:
    """Make ``session`` follow ``policy`` and return it.

    Replaces every mounted adapter by one :class:`GuardedAdapter` on ``http://`` and
    ``https://``, turns off ``trust_env`` (no proxies or ``.netrc`` credentials from
    the environment) and sets ``max_redirects`` to 0.  ``deadline``, when given, returns
    a :func:`time.monotonic` instant each call must be over by; it is re-read while the
    call runs (from another thread, so it must be safe to call from one), and a call
    ends at the earlier of it and ``policy.timeout`` after the call started.
    """
    adapter = GuardedAdapter(policy, deadline=deadline)
    for old in list(session.adapters.values()):
        old.close()
    session.adapters.clear()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False
    # trust_env also carried requests' CA-bundle variables; keep honouring those (a
    # deployment behind a TLS-inspecting proxy sets them), without its proxies or netrc.
    if session.verify is True:
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
    session.max_redirects = 0
    return session


def guarded_session(
    policy: OutboundPolicy, *, deadline: Callable[[], float] | None = None
) -> requests.Session:
    """A new :class:`requests.Session` hardened with :func:`harden`."""
    return harden(requests.Session(), policy, deadline=deadline)
