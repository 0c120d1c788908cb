"""Prometheus metrics of the daemon (SPEC 3.4), in a registry of their own.

Owns the metric names, their label values and how they are exposed: `render()` for tests and
the status verb, `serve(listen)` for `metrics.listen`, `push(...)` for `metrics.pushgateway`.
Every label value known in advance is created at start (controller-runtime's `.Add(0)`), so a
dashboard sees a 0 rather than no series. Must not: use prometheus_client's global registry
(tests build several `Metrics`), raise from `push` (a gateway being down is no reason to stop
reconciling), or put a credential from a remote URL into a label.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    push_to_gateway,
    start_http_server,
)
from prometheus_client.exposition import basic_auth_handler, default_handler

from reconciler import errors, logs
from reconciler.core.urls import redact, scrub

CYCLE_RESULTS = ("converged", "unchanged", "failed", "rolled_back")
VERIFICATION_REASONS = tuple(reason.value for reason in errors.Reason)
APP_STATES = ("running", "held_back", "failed")
# reconciler_app_info{state}: SPEC 3.4's fleet view of one app on one device.
APP_INFO_STATES = ("running", "pending", "paused", "held_back", "failed")
# A cycle takes from milliseconds (nothing moved) to minutes (pulls plus health.timeout).
CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
PUSH_TIMEOUT = 10.0
# What an empty host in `metrics.listen` (":9469") binds: settings documents it as every address.
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - only when the config asks for every address

_log = logging.getLogger("reconciler.metrics")


@dataclass
class MetricsServer:
    """A running exposition endpoint; `port` is the bound one (useful with port 0)."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Metrics:
    """The SPEC 3.4 metrics and the only ways the daemon changes them."""

    def __init__(self, *, remotes: Iterable[str] = ()) -> None:
        """`remotes`: the fleet repo's url and mirrors, so their error counters start at 0."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.release_version = Gauge(
            "reconciler_release_version", "Version of the applied release.", registry=r
        )
        self.applied_info = Gauge(
            "reconciler_applied_info",
            "The applied commit and release (always 1).",
            ["commit", "release"],
            registry=r,
        )
        self.last_fetch_success = Gauge(
            "reconciler_last_fetch_success_timestamp_seconds",
            "Unix time of the last successful query of the fleet repo.",
            registry=r,
        )
        self.fetch_errors = Counter(
            "reconciler_fetch_errors_total",
            "Failed queries of a fleet repo remote.",
            ["remote"],
            registry=r,
        )
        self.cycles = Counter(
            "reconciler_cycles_total", "Reconcile cycles by result.", ["result"], registry=r
        )
        self.cycle_duration = Histogram(
            "reconciler_cycle_duration_seconds",
            "Wall time of one reconcile cycle.",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.rollbacks = Counter(
            "reconciler_rollbacks_total",
            "Apps returned to their previous revision.",
            ["app"],
            registry=r,
        )
        self.verification_failures = Counter(
            "reconciler_verification_failures_total",
            "Releases refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.apps = Gauge("reconciler_apps", "Apps by state.", ["state"], registry=r)
        self.drift_corrections = Counter(
            "reconciler_drift_corrections_total",
            "Managed containers put back after they were stopped, removed or changed by hand.",
            ["app"],
            registry=r,
        )
        self.release_expired = Gauge(
            "reconciler_release_expired", "1 when the newest release has expired.", registry=r
        )
        self.trust_disabled = Gauge(
            "reconciler_trust_disabled",
            "1 when trust.allow_unsigned lets unsigned releases through.",
            registry=r,
        )
        for result in CYCLE_RESULTS:
            self.cycles.labels(result=result)
        for reason in VERIFICATION_REASONS:
            self.verification_failures.labels(reason=reason)
        for state in APP_STATES:
            self.apps.labels(state=state)
        for remote in remotes:
            self.fetch_errors.labels(remote=redact(remote))
        self._applied: tuple[str, str] | None = None
        self._init_rollout_metrics()
        # One per head query of the fleet source (Git's ref query, a static tree's latest.json),
        # counted by the device against the head it last fetched: not_modified, changed, error.
        self.source_requests = Counter(
            "reconciler_source_requests_total",
            "Queries of the fleet source for its head, by result.",
            ["result"],
            registry=r,
        )
        for result in self.SOURCE_REQUEST_RESULTS:
            self.source_requests.labels(result=result)

    SOURCE_REQUEST_RESULTS = ("not_modified", "changed", "error")

    def record_source_request(self, result: str) -> None:
        """One head query: "not_modified", "changed" (the head moved) or "error" (no remote
        answered)."""
        if result not in self.SOURCE_REQUEST_RESULTS:
            raise ValueError(f"source request result {result!r} is not one of those counted")
        self.source_requests.labels(result=result).inc()

    # --- recording -------------------------------------------------------------------------

    def record_cycle(self, result: str, seconds: float) -> None:
        self.cycles.labels(result=result).inc()
        self.cycle_duration.observe(seconds)

    def record_fetch_success(self, timestamp: float) -> None:
        self.last_fetch_success.set(timestamp)

    def record_fetch_error(self, remote: str) -> None:
        self.fetch_errors.labels(remote=redact(remote)).inc()

    def set_applied(self, commit: str, release_version: int) -> None:
        """The applied commit and release; the previous info series goes, so exactly one is 1."""
        labels = (commit, str(release_version))
        if self._applied is not None and self._applied != labels:
            self.applied_info.remove(*self._applied)
        self.applied_info.labels(*labels).set(1)
        self._applied = labels
        self.release_version.set(release_version)

    def set_app_counts(self, *, running: int, held_back: int, failed: int) -> None:
        self.apps.labels(state="running").set(running)
        self.apps.labels(state="held_back").set(held_back)
        self.apps.labels(state="failed").set(failed)

    def know_apps(self, apps: Iterable[str]) -> None:
        """Start the per-app series at 0 for apps the device runs (called at start and after
        each cycle), so an app's first rollback or drift shows as a rise, not a new series."""
        for app in apps:
            self.rollbacks.labels(app=app)
            self.drift_corrections.labels(app=app)

    def record_rollback(self, app: str) -> None:
        self.rollbacks.labels(app=app).inc()

    def record_verification_failure(self, reason: str) -> None:
        self.verification_failures.labels(reason=reason).inc()

    def record_drift(self, app: str) -> None:
        self.drift_corrections.labels(app=app).inc()

    def set_release_expired(self, expired: bool) -> None:
        self.release_expired.set(1 if expired else 0)

    def set_trust_disabled(self, disabled: bool) -> None:
        self.trust_disabled.set(1 if disabled else 0)

    # --- the fleet view (SPEC 3.4): device, per-app revision and state, hold, window -----------

    def _init_rollout_metrics(self) -> None:
        r = self.registry
        self.device_info = Gauge(
            "reconciler_device_info", "This device's name (always 1).", ["device"], registry=r
        )
        self.app_info = Gauge(
            "reconciler_app_info",
            "One series per app of the release on this device (always 1): the revision it "
            "runs (state running) or the release's revision that is pending, paused, held "
            "back or failed here.",
            ["app", "revision", "state"],
            registry=r,
        )
        self.hold = Gauge(
            "reconciler_hold", "1 while a local hold (reconciler hold) is in force.", registry=r
        )
        self.in_maintenance_window = Gauge(
            "reconciler_in_maintenance_window",
            "1 when new revisions may be applied now (inside a window, or none configured).",
            registry=r,
        )
        self.in_maintenance_window.set(1)
        self._device: str | None = None
        self._app_info: dict[str, tuple[str, str]] = {}  # app -> (revision, state) exposed

    def set_device(self, name: str) -> None:
        """reconciler_device_info{device}; a renamed device (config reload) drops the old one."""
        if self._device not in (None, name):
            self.device_info.remove(self._device)
        self.device_info.labels(device=name).set(1)
        self._device = name

    def set_app_info(self, apps: Mapping[str, tuple[str, str]]) -> None:
        """app -> (revision, state): exactly one series per app; a series whose revision or
        state changed, or whose app left, is removed (not left at a stale 1)."""
        for app, (revision, state) in self._app_info.items():
            if apps.get(app) != (revision, state):
                self.app_info.remove(app, revision, state)
        for app, (revision, state) in apps.items():
            if state not in APP_INFO_STATES:
                raise ValueError(f"app state {state!r} is not one of {APP_INFO_STATES}")
            self.app_info.labels(app=app, revision=revision, state=state).set(1)
        self._app_info = dict(apps)

    def set_hold(self, held: bool) -> None:
        self.hold.set(1 if held else 0)

    def set_in_maintenance_window(self, inside: bool) -> None:
        self.in_maintenance_window.set(1 if inside else 0)

    # --- exposing ----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def serve(self, listen: str) -> MetricsServer | None:
        """Serve `/metrics` on `listen` (`host:port`, `[v6]:port`) in a thread; "" serves none."""
        if not listen:
            return None
        host, port = parse_listen(listen)
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        bound = server.server_address[1]
        shown = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        logs.event(_log, logging.INFO, "metrics.serving", listen=shown)
        return MetricsServer(host, bound, server, thread)

    def push(self, gateway: str, job: str, grouping: Mapping[str, str] | None = None) -> bool:
        """Push to a Pushgateway; True on success. A failure is logged, never raised.

        Credentials in the URL (`https://user:pw@gw:9091`) are sent as HTTP Basic auth.
        """
        try:
            url, handler = _gateway_handler(gateway)
            push_to_gateway(
                url,
                job=job,
                registry=self.registry,
                grouping_key=dict(grouping or {}),
                timeout=PUSH_TIMEOUT,
                handler=handler,
            )
        except Exception as exc:  # any failure only costs this push, never the cycle
            logs.event(
                _log,
                logging.WARNING,
                "metrics.push_failed",
                gateway=redact(gateway),
                error=scrub(f"{type(exc).__name__}: {exc}"),
            )
            return False
        return True


def read_last_fetch(listen: str, *, timeout: float = 2.0) -> float | None:
    """The running daemon's `reconciler_last_fetch_success_timestamp_seconds`, read from its
    `metrics.listen` endpoint (any-address binds are asked on loopback); None when nothing
    answers or no fetch succeeded yet. For `status`: the fetch time is kept in memory only."""
    import urllib.request

    if not listen:
        return None
    try:
        host, port = parse_listen(listen)
    except ValueError:
        return None
    if host in ("", ANY_ADDRESS, "::"):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    # No proxy: the daemon's own endpoint, whatever http_proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{shown}:{port}/metrics", timeout=timeout) as reply:
            body = reply.read(4 * 1024 * 1024).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        if name == "reconciler_last_fetch_success_timestamp_seconds":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds if seconds > 0 else None
    return None


def parse_listen(listen: str) -> tuple[str, int]:
    """The address to bind: `127.0.0.1:9469` -> ("127.0.0.1", 9469); `[::1]:9469` ->
    ("::1", 9469); `:9469` -> ("0.0.0.0", 9469), as an empty host means every address."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f'metrics.listen: expected "host:port", got {listen!r}')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # getaddrinfo("") fails, so the empty host settings accepts would crash `serve`.
    return host or ANY_ADDRESS, int(port_text)


def _gateway_handler(gateway: str) -> tuple[str, Callable[..., Callable[[], None]]]:
    """`gateway` without its credentials, and the push handler that sends them.

    urllib does not read credentials from a URL: it would look up "user:pw@gw" as a host
    name, failing every push with a misleading DNS error (and sending the password to DNS).
    """
    # prometheus_client assumes http:// for a bare "host:port"; so must the split below.
    url = gateway if "://" in gateway else f"http://{gateway}"
    parts = urlsplit(url)
    if parts.username is None:
        return gateway, default_handler
    username, password = unquote(parts.username), unquote(parts.password or "")
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return bare, handler
