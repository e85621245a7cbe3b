"""Token cache invalidations between processes over Redis pub/sub.

With ``ZIS_TOKEN_CACHE_REDIS_URL`` set, ``Lifecycle.changed`` publishes
``<integration>\\t<name>`` on the Redis channel ``zis_token_cache`` and a daemon
thread per process (:class:`RedisListener`) subscribes to it and drops the entries it
names.  It works over any storage, so several processes sharing one SQLite file get
the same bound as PostgreSQL's ``NOTIFY``: the message's delivery delay.

One channel name for every app, on purpose.  Two apps sharing one Redis hear each
other's invalidations, which costs a spurious miss (one storage read) and nothing
else; a channel named after the database would split processes that spell the same
database differently (a hostname against an IP, one SQLite file bind-mounted at two
paths), and a missed invalidation is the one failure this cache must not have.  The
Redis database number does not separate them either: pub/sub ignores it.

Publishing never fails the write that triggered it: when Redis is unreachable the
publisher logs one warning per outage and other processes fall back to the TTL, since
their listeners (cut off too) clear their caches when they subscribe again.  Clients
are made per process (a forked worker never writes on its parent's socket) with
short timeouts and no retries, so a write waits at most about a second on a Redis
that does not answer.  No log line carries the URL's password.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.connection import parse_url
from redis.retry import Retry

from .forks import reset_in_child
from .token_cache import CHANNEL, Listener, payload

if TYPE_CHECKING:
    from .token_cache import TokenCache

log = logging.getLogger("flask_zis_connections")

# redis-py leaves these two unannotated; their types, once, for mypy's strict mode.
_parse_url: Callable[[str], dict[str, Any]] = parse_url
_pubsub: Callable[[redis.Redis], PubSub] = redis.Redis.pubsub

#: Seconds to connect, and to wait for an answer, before a publish gives up.
TIMEOUT: Final = 1.0
#: Seconds of silence after which a listener PINGs, and then waits as long for the
#: answer before it takes the connection for dead (a server gone without closing the
#: socket, e.g. behind a dropped network path, is otherwise never noticed).
LIVENESS: Final = 5.0
#: How long ``close()`` waits for a listener thread to end.
JOIN_TIMEOUT: Final = 5.0


class RedisChannel:
    """Publishes and hears token cache invalidations on one Redis pub/sub channel."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        self.url = url
        self.channel = channel
        parts = _parse_url(url)
        self._password: str | None = parts.get("password")
        if "path" in parts:
            self.where = f"unix://{parts['path']}"
        else:
            scheme = url.partition("://")[0]
            self.where = f"{scheme}://{parts.get('host', 'localhost')}:{parts.get('port', 6379)}"
        self._publisher: redis.Redis | None = None
        self._down = False  # a warning was logged for the current outage
        self._listeners: list[RedisListener] = []
        #: A parent's publisher after a fork: kept referenced, never used or closed.
        self._inherited: list[redis.Redis] = []
        reset_in_child(self, RedisChannel._after_fork)

    def __repr__(self) -> str:
        return f"<RedisChannel {self.channel!r} at {self.where}>"

    def client(self, **options: Any) -> redis.Redis:
        """A new client of this URL: short timeouts, no retries (the caller decides)."""
        settings: dict[str, Any] = {
            "socket_connect_timeout": TIMEOUT,
            "socket_timeout": TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": True,
            **options,
        }
        return redis.Redis.from_url(self.url, **settings)

    def scrub(self, text: str) -> str:
        """``text`` with the URL's password masked (a driver message might echo it)."""
        return text.replace(self._password, "***") if self._password else text

    # -- publishing ---------------------------------------------------------------
    def publish(self, integration: str, name: str | None) -> None:
        """Send one invalidation; never raises (the write it follows already happened)."""
        client = self._publisher
        if client is None:
            client = self._publisher = self.client()
        try:
            client.publish(self.channel, payload(integration, name))
        except Exception as exc:
            if not self._down:
                self._down = True
                log.warning(
                    "Could not publish a token cache invalidation to Redis at %s (%s); other "
                    "processes see this write within ZIS_TOKEN_CACHE_TTL.",
                    self.where,
                    self.scrub(f"{type(exc).__name__}: {exc}"),
                )
            else:
                log.debug("Redis at %s is still unreachable (%s).", self.where, type(exc).__name__)
            return
        if self._down:
            self._down = False
            log.info("Publishing token cache invalidations to Redis at %s again.", self.where)

    # -- listening ----------------------------------------------------------------
    def start_listener(self, cache: TokenCache) -> None:
        """Start this process's subscriber (called on the cache's first ``put`` here)."""
        self._listeners = [t for t in self._listeners if t.is_alive()]
        listener = RedisListener(self, cache)
        self._listeners.append(listener)
        listener.start()

    @property
    def listeners(self) -> list[RedisListener]:
        """This process's listener threads (one per cache, in practice one)."""
        return list(self._listeners)

    def close(self) -> None:
        """Stop and join this process's listeners; drop the publisher's connections."""
        listeners = self.listeners
        for listener in listeners:
            listener.stopped.set()
        for listener in listeners:
            if listener.is_alive() and listener is not threading.current_thread():
                listener.join(JOIN_TIMEOUT)
        client, self._publisher = self._publisher, None
        if client is not None:
            client.close()

    def _after_fork(self) -> None:
        """A forked child publishes on a client of its own (the parent's sockets are the
        parent's: left open and unused) and has none of its parent's listener threads."""
        if self._publisher is not None:
            self._inherited.append(self._publisher)
        self._publisher = None
        self._listeners = []


class RedisListener(Listener):
    """``SUBSCRIBE zis_token_cache`` on its own connection; invalidates the cache.

    Every ``subscribe`` confirmation counts as a (re)subscription and clears the
    cache, including one redis-py might send on its own after reconnecting.
    """

    def __init__(self, channel: RedisChannel, cache: TokenCache) -> None:
        super().__init__("zis-token-cache-redis-listener", cache)
        self._channel = channel

    def describe(self) -> str:
        return f"Redis subscription at {self._channel.where}"

    def explain(self, exc: Exception) -> str:
        return self._channel.scrub(f"{type(exc).__name__}: {exc}")

    def listen(self) -> None:
        client = self._channel.client()
        pubsub = _pubsub(client)
        try:
            pubsub.subscribe(self._channel.channel)
            heard = time.monotonic()
            pinged: float | None = None
            while self.alive():
                message = pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is None:
                    if pinged is not None and now - pinged > LIVENESS:
                        raise redis.ConnectionError(f"no answer to PING within {LIVENESS:g} s")
                    if pinged is None and now - heard > LIVENESS:
                        pubsub.ping()
                        pinged = now
                    continue
                heard, pinged = now, None
                kind = message["type"]
                if kind == "subscribe":
                    if not self.subscribed():
                        return
                elif kind == "message" and not self.deliver(str(message["data"])):
                    return
        finally:
            pubsub.close()
            client.close()
