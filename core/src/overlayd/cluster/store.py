"""The etcd adapter: the few etcd v3 calls cluster mode makes, through ``etcd3gw``.

``etcd3gw`` speaks etcd's gRPC gateway (HTTP/JSON, TLS through ``requests``);
see ``docs/design-notes.rst`` for why it was chosen. Its calls block, so the
agent runs them in a small thread pool of its own; this module is synchronous.

Every call goes to the current endpoint; a connection failure moves on to the
next endpoint (round robin) and, when every endpoint failed, raises
:class:`StoreUnavailable`. The adapter counts the requests it sends
(:attr:`EtcdStore.requests`) for the benchmark and ``overlayctl cluster``.

Watches: ``etcd3gw`` runs a watch stream in a thread and never says when the
stream ends (etcd stopped, connection cut, watch cancelled by etcd). The
adapter gives the client a ``requests`` session of its own
(``etcd3gw.client.Etcd3Client(session=...)``, a documented parameter) whose
streamed responses report their end, so :meth:`EtcdStore.watch_prefix` calls
``on_end`` exactly once when the stream stops for any reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError
from etcd3gw.exceptions import ConnectionTimeoutError
from etcd3gw.exceptions import Etcd3Exception
from etcd3gw.lease import Lease
from etcd3gw.utils import _increment_last_byte
from etcd3gw.watch import Watcher

from overlayd.cluster.config import ClusterSettings
from overlayd.cluster.errors import StoreUnavailable

__all__ = ["EtcdStore", "KeyValue", "WatchEvent", "WatchHandle"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds one request may take (a watch stream has no read timeout).
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd holds it."""

    key: str
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put (``value`` set) or a delete (``value`` is ``None``) of ``key``."""

    key: str
    value: bytes | None
    revision: int
    lease: int


class _EndReportingResponse:
    """Wraps ``iter_content`` of a streamed response so its end is reported once."""

    def __init__(self, resp: requests.Response, on_end: Callable[[str], None]) -> None:
        self._iter = resp.iter_content
        self._on_end = on_end

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        reason = "the stream ended"
        try:
            for chunk in self._iter(*args, **kwargs):
                if b'"canceled":true' in chunk:
                    # etcd cancelled the watch (e.g. its start revision was
                    # compacted); the gateway keeps the stream open, silent.
                    reason = "etcd cancelled the watch"
                    return
                yield chunk
        except Exception as exc:  # noqa: BLE001 - any error of requests/urllib3 ends the stream
            reason = f"the stream failed: {exc}"
        finally:
            self._on_end(reason)


class _Session(requests.Session):
    """A session whose streamed POSTs report their end to the registered callback."""

    def __init__(self) -> None:
        super().__init__()
        self.next_stream_end: Callable[[str], None] | None = None
        self._lock = threading.Lock()

    def post(self, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        resp = super().post(url, *args, **kwargs)
        if kwargs.get("stream"):
            with self._lock:
                on_end, self.next_stream_end = self.next_stream_end, None
            if on_end is not None:
                resp.iter_content = _EndReportingResponse(resp, on_end)  # type: ignore[method-assign]
        return resp


class WatchHandle:
    """A running watch; :meth:`cancel` stops it (``on_end`` is then called too)."""

    def __init__(self) -> None:
        self._watcher: Watcher | None = None
        self._ended = threading.Event()
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                watcher.stop()
            except Exception as exc:  # noqa: BLE001 - the stream may already be gone
                log.debug("stopping a watch: %s", exc)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()


def _kv(item: Any, value: bytes) -> KeyValue:
    key = item["key"]
    return KeyValue(
        key=key.decode() if isinstance(key, bytes) else str(key),
        value=value,
        mod_revision=int(item.get("mod_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


class EtcdStore:
    """The etcd calls of cluster mode, over every configured endpoint."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self._clients = [self._client(url) for url in settings.endpoints]
        self._current = 0
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()
        #: Requests sent (watch creations included), for figures and ``overlayctl cluster``.
        self.requests = 0

    def _client(self, url: str) -> Etcd3Client:
        parts = urlsplit(url)
        s = self.settings
        # etcd3gw applies ca_cert/cert_* only to a session it makes itself, so
        # our session carries them too.
        session = _Session()
        # Environment settings (REQUESTS_CA_BUNDLE, proxies) would override the
        # configured CA (a known requests behaviour) and route etcd traffic
        # through a proxy; the [cluster] table alone decides.
        session.trust_env = False
        if s.ca_file is not None:
            session.verify = str(s.ca_file)
        if s.cert_file is not None and s.key_file is not None:
            session.cert = (str(s.cert_file), str(s.key_file))
        return Etcd3Client(
            host=parts.hostname or "localhost",
            port=parts.port or 2379,
            protocol=parts.scheme,
            ca_cert=str(s.ca_file) if s.ca_file else None,
            cert_key=str(s.key_file) if s.key_file else None,
            cert_cert=str(s.cert_file) if s.cert_file else None,
            timeout=REQUEST_TIMEOUT,
            # etcd 3.4+ serves the gateway under /v3/; naming it saves a
            # discovery request per client.
            api_path="/v3/",
            session=session,
        )

    def _call(self, what: str, fn: Callable[[Etcd3Client], T]) -> T:
        errors: list[str] = []
        for _ in range(len(self._clients)):
            with self._lock:
                index = self._current
                self.requests += 1
            client = self._clients[index]
            try:
                return fn(client)
            except (
                ConnectionFailedError,
                ConnectionTimeoutError,
                requests.RequestException,
            ) as exc:
                errors.append(f"{self.settings.endpoints[index]}: {_short(exc)}")
                with self._lock:
                    if self._current == index:
                        self._current = (index + 1) % len(self._clients)
        raise StoreUnavailable(f"etcd is unreachable ({what}): " + "; ".join(errors))

    def close(self) -> None:
        for client in self._clients:
            client.session.close()

    # -- leases ---------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        return self._call("lease grant", lambda c: c.lease(ttl).id)

    def keepalive(self, lease_id: int) -> int:
        """Refresh the lease; returns its TTL, or -1 when it no longer exists."""
        return self._call("lease keepalive", lambda c: Lease(lease_id, c).refresh())

    def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left (-1: expired or unknown)."""
        return self._call("lease time-to-live", lambda c: Lease(lease_id, c).ttl())

    def revoke(self, lease_id: int) -> None:
        self._call("lease revoke", lambda c: Lease(lease_id, c).revoke())

    # -- keys -----------------------------------------------------------------

    def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under ``prefix`` at one revision; returns ``(revision, kvs)``."""

        def read(c: Etcd3Client) -> tuple[int, list[KeyValue]]:
            revision = int(c.status()["header"]["revision"])
            items = c.get(
                prefix,
                metadata=True,
                range_end=_increment_last_byte(prefix),
                revision=revision,
            )
            return revision, [_kv(meta, value) for value, meta in items]

        return self._call("range", read)

    def create(self, key: str, value: bytes, lease_id: int | None = None) -> bool:
        """Put ``key`` only if it does not exist (one transaction); ``True`` if it did not."""
        return self._call(
            "create",
            lambda c: c.create(key, value, lease=Lease(lease_id, c) if lease_id else None),
        )

    def put(self, key: str, value: bytes, lease_id: int | None = None) -> None:
        self._call(
            "put", lambda c: c.put(key, value, lease=Lease(lease_id, c) if lease_id else None)
        )

    def get(self, key: str) -> KeyValue | None:
        def read(c: Etcd3Client) -> KeyValue | None:
            items = c.get(key, metadata=True)
            return _kv(items[0][1], items[0][0]) if items else None

        return self._call("get", read)

    def delete(self, key: str) -> None:
        self._call("delete", lambda c: c.delete(key))

    # -- watch ----------------------------------------------------------------

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_event: Callable[[WatchEvent], None],
        on_end: Callable[[str], None],
    ) -> WatchHandle:
        """Watch every key under ``prefix`` from ``start_revision``.

        ``on_event`` and ``on_end`` run in the watch thread; ``on_end(reason)``
        is called once, whatever ends the stream.
        """
        handle = WatchHandle()

        def ended(reason: str) -> None:
            if not handle._ended.is_set():
                handle._ended.set()
                on_end(reason)

        def callback(event: Any) -> None:
            kv = event["kv"]
            deleted = event.get("type") == "DELETE"
            key = kv["key"]
            on_event(
                WatchEvent(
                    key=key.decode() if isinstance(key, bytes) else str(key),
                    value=None if deleted else kv.get("value", b""),
                    revision=int(kv.get("mod_revision", 0)),
                    lease=int(kv.get("lease", 0)),
                )
            )

        def start(c: Etcd3Client) -> Watcher:
            session = c.session
            assert isinstance(session, _Session)
            session.next_stream_end = ended
            try:
                return Watcher(
                    c,
                    prefix,
                    callback,
                    start_revision=start_revision,
                    range_end=_increment_last_byte(prefix),
                )
            except requests.RequestException as exc:
                session.next_stream_end = None
                raise ConnectionFailedError(str(exc)) from exc

        with self._watch_lock:
            handle._watcher = self._call("watch", start)
        return handle


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, Etcd3Exception) and exc.detail_text:
        text = exc.detail_text
    return text if len(text) < 200 else text[:197] + "..."
