"""Prometheus metrics (SPEC 3.4): names, start-up series, redaction, the endpoint and pushes.

Exposition text is read back with prometheus_client's own parser; the endpoint and the
Pushgateway stand-in are real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.server
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from reconciler.device.metrics import (
    APP_STATES,
    CYCLE_RESULTS,
    VERIFICATION_REASONS,
    Metrics,
    parse_listen,
    redact,
)

# SPEC 3.4, name by name, with the type a dashboard expects.
SPEC_METRICS = {
    "reconciler_release_version": "gauge",
    "reconciler_applied_info": "gauge",
    "reconciler_last_fetch_success_timestamp_seconds": "gauge",
    "reconciler_fetch_errors_total": "counter",
    "reconciler_cycles_total": "counter",
    "reconciler_cycle_duration_seconds": "histogram",
    "reconciler_rollbacks_total": "counter",
    "reconciler_verification_failures_total": "counter",
    "reconciler_apps": "gauge",
    "reconciler_drift_corrections_total": "counter",
    "reconciler_release_expired": "gauge",
    "reconciler_trust_disabled": "gauge",
}
REMOTE = "https://git.example.com/fleet.git"
REDACTED_REMOTE = "https://***@git.example.com/fleet.git"

Labels = frozenset[tuple[str, str]]


def samples(metrics: Metrics) -> dict[str, dict[Labels, float]]:
    """Every sample of `metrics.render()`, by sample name, then by its label set."""
    found: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[name][frozenset(labels.items())]


def closed_port() -> int:
    """A loopback port nothing listens on (bound once by us, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- names and start-up series -------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), SPEC_METRICS.items())
def test_every_spec_metric_is_in_the_exposition_from_the_start(name: str, kind: str) -> None:
    text = Metrics().render().decode()
    assert f"# TYPE {name} {kind}\n" in text


def test_known_label_values_are_exposed_as_zero_before_anything_happens() -> None:
    found = samples(Metrics(remotes=[REMOTE]))
    assert found["reconciler_cycles_total"] == {
        frozenset({("result", result)}): 0.0 for result in CYCLE_RESULTS
    }
    assert set(CYCLE_RESULTS) == {"converged", "unchanged", "failed", "rolled_back"}
    assert found["reconciler_apps"] == {frozenset({("state", s)}): 0.0 for s in APP_STATES}
    assert set(APP_STATES) == {"running", "held_back", "failed"}
    assert found["reconciler_verification_failures_total"] == {
        frozenset({("reason", reason)}): 0.0 for reason in VERIFICATION_REASONS
    }
    assert found["reconciler_fetch_errors_total"] == {frozenset({("remote", REMOTE)}): 0.0}
    for gauge in (
        "reconciler_release_version",
        "reconciler_last_fetch_success_timestamp_seconds",
        "reconciler_release_expired",
        "reconciler_trust_disabled",
    ):
        assert found[gauge] == {frozenset(): 0.0}, gauge
    assert found["reconciler_cycle_duration_seconds_count"] == {frozenset(): 0.0}


def test_per_app_and_info_series_appear_only_once_there_is_something_to_say() -> None:
    found = samples(Metrics())
    assert "reconciler_applied_info" not in found
    assert "reconciler_rollbacks_total" not in found
    assert "reconciler_drift_corrections_total" not in found


def test_two_instances_keep_separate_registries() -> None:
    first, second = Metrics(), Metrics()
    first.record_rollback("gw")
    assert value(first, "reconciler_rollbacks_total", app="gw") == 1.0
    assert "reconciler_rollbacks_total" not in samples(second)


# --- recording -----------------------------------------------------------------------------


def test_set_applied_replaces_the_previous_info_series() -> None:
    metrics = Metrics()
    metrics.set_applied("a" * 40, 7)
    metrics.set_applied("b" * 40, 8)
    found = samples(metrics)
    assert found["reconciler_applied_info"] == {
        frozenset({("commit", "b" * 40), ("release", "8")}): 1.0
    }
    assert found["reconciler_release_version"] == {frozenset(): 8.0}


def test_set_applied_with_a_new_release_of_the_same_commit_still_leaves_one_series() -> None:
    metrics = Metrics()
    for release in (3, 3, 4):
        metrics.set_applied("c" * 40, release)
    assert samples(metrics)["reconciler_applied_info"] == {
        frozenset({("commit", "c" * 40), ("release", "4")}): 1.0
    }


def test_a_cycle_counts_its_result_and_its_duration() -> None:
    metrics = Metrics()
    metrics.record_cycle("converged", 1.5)
    metrics.record_cycle("unchanged", 0.02)
    metrics.record_cycle("converged", 0.5)
    found = samples(metrics)
    assert value(metrics, "reconciler_cycles_total", result="converged") == 2.0
    assert value(metrics, "reconciler_cycles_total", result="unchanged") == 1.0
    assert value(metrics, "reconciler_cycles_total", result="failed") == 0.0
    assert found["reconciler_cycle_duration_seconds_count"] == {frozenset(): 3.0}
    assert found["reconciler_cycle_duration_seconds_sum"][frozenset()] == pytest.approx(2.02)
    assert value(metrics, "reconciler_cycle_duration_seconds_bucket", le="0.025") == 1.0
    assert value(metrics, "reconciler_cycle_duration_seconds_bucket", le="+Inf") == 3.0


def test_app_counts_are_set_not_added() -> None:
    metrics = Metrics()
    metrics.set_app_counts(running=5, held_back=1, failed=2)
    metrics.set_app_counts(running=3, held_back=0, failed=1)
    assert samples(metrics)["reconciler_apps"] == {
        frozenset({("state", "running")}): 3.0,
        frozenset({("state", "held_back")}): 0.0,
        frozenset({("state", "failed")}): 1.0,
    }


def test_rollbacks_drift_and_refusals_count_per_label() -> None:
    metrics = Metrics()
    metrics.record_rollback("gw")
    metrics.record_rollback("gw")
    metrics.record_drift("db")
    metrics.record_verification_failure("expired")
    assert value(metrics, "reconciler_rollbacks_total", app="gw") == 2.0
    assert value(metrics, "reconciler_drift_corrections_total", app="db") == 1.0
    assert value(metrics, "reconciler_verification_failures_total", reason="expired") == 1.0
    assert value(metrics, "reconciler_verification_failures_total", reason="unsigned") == 0.0


def test_flags_and_fetch_time_are_gauges_that_go_both_ways() -> None:
    metrics = Metrics()
    metrics.set_release_expired(True)
    metrics.set_trust_disabled(True)
    metrics.record_fetch_success(1_700_000_000.25)
    assert value(metrics, "reconciler_release_expired") == 1.0
    assert value(metrics, "reconciler_trust_disabled") == 1.0
    assert value(metrics, "reconciler_last_fetch_success_timestamp_seconds") == 1_700_000_000.25
    metrics.set_release_expired(False)
    metrics.set_trust_disabled(False)
    assert value(metrics, "reconciler_release_expired") == 0.0
    assert value(metrics, "reconciler_trust_disabled") == 0.0


# --- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "remote",
    [
        "https://user:token@git.example.com/fleet.git",
        "https://token@git.example.com/fleet.git",
        "https://user:to@ken@git.example.com/fleet.git",
        "https://user:to/ken@git.example.com/fleet.git",
        "HTTPS://user:token@git.example.com/fleet.git",
    ],
)
def test_fetch_error_labels_never_carry_the_remote_credentials(remote: str) -> None:
    metrics = Metrics(remotes=[remote])
    metrics.record_fetch_error(remote)
    text = metrics.render().decode()
    assert "token" not in text
    assert "ken@" not in text
    (labels,) = samples(metrics)["reconciler_fetch_errors_total"]
    assert dict(labels)["remote"].endswith("://***@git.example.com/fleet.git")


def test_a_remote_given_at_start_and_failing_later_counts_on_one_series() -> None:
    remote = "https://user:token@git.example.com/fleet.git"
    metrics = Metrics(remotes=[remote, "https://mirror.example.com/fleet.git"])
    metrics.record_fetch_error(remote)
    metrics.record_fetch_error(remote)
    assert samples(metrics)["reconciler_fetch_errors_total"] == {
        frozenset({("remote", REDACTED_REMOTE)}): 2.0,
        frozenset({("remote", "https://mirror.example.com/fleet.git")}): 0.0,
    }


@pytest.mark.parametrize(
    "remote",
    [
        "ssh://git@git.example.com/fleet.git",
        "git@git.example.com:fleet.git",
        "https://git.example.com/fleet.git",
        "/srv/git/fleet.git",
    ],
)
def test_remotes_without_a_secret_keep_their_name(remote: str) -> None:
    assert redact(remote) == remote


def test_an_ssh_password_is_hidden_too() -> None:
    assert redact("ssh://git:pw@git.example.com/fleet.git") == (
        "ssh://***@git.example.com/fleet.git"
    )


@given(
    user=st.text(min_size=1).filter(lambda text: not text.isspace()),
    password=st.text(),
)
def test_whatever_the_user_and_password_hold_neither_survives_redaction(
    user: str, password: str
) -> None:
    url = f"https://{user}:{password}@git.example.com/fleet.git"
    assert redact(url) == REDACTED_REMOTE
    assert redact(redact(url)) == REDACTED_REMOTE


# --- the endpoint --------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers["Content-Type"], response.read()


def test_serve_answers_a_real_get_with_the_exposition_and_shutdown_frees_the_port() -> None:
    metrics = Metrics()
    metrics.record_cycle("converged", 0.3)
    server = metrics.serve("127.0.0.1:0")
    assert server is not None
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        status, content_type, body = http_get(f"http://127.0.0.1:{server.port}/metrics")
        assert status == 200
        assert content_type.startswith("text/plain")
        assert body == metrics.render()
        assert b'reconciler_cycles_total{result="converged"} 1.0' in body
    finally:
        server.shutdown()
    with pytest.raises(urllib.error.URLError) as refused:
        http_get(f"http://127.0.0.1:{server.port}/metrics")
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    # Freed, so a restarted daemon (or a config reload) can take the same port again.
    again = metrics.serve(f"127.0.0.1:{server.port}")
    assert again is not None
    again.shutdown()


def test_serve_shows_later_changes_without_a_restart() -> None:
    metrics = Metrics()
    server = metrics.serve("127.0.0.1:0")
    assert server is not None
    try:
        metrics.set_applied("d" * 40, 12)
        _, _, body = http_get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.shutdown()
    assert f'reconciler_applied_info{{commit="{"d" * 40}",release="12"}} 1.0'.encode() in body


def test_an_empty_listen_serves_nothing() -> None:
    assert Metrics().serve("") is None


def test_serve_on_ipv6_loopback_logs_a_bracketed_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="reconciler.metrics"):
        server = metrics.serve("[::1]:0")
    assert server is not None
    try:
        _, _, body = http_get(f"http://[::1]:{server.port}/metrics")
    finally:
        server.shutdown()
    assert b"reconciler_cycles_total" in body
    assert f"metrics.serving listen=[::1]:{server.port}" in caplog.messages


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9469", ("127.0.0.1", 9469)),
        ("[::1]:9469", ("::1", 9469)),
        ("localhost:0", ("localhost", 0)),
        (":9469", ("0.0.0.0", 9469)),
    ],
)
def test_parse_listen_gives_the_address_to_bind(listen: str, address: tuple[str, int]) -> None:
    assert parse_listen(listen) == address


@pytest.mark.parametrize("listen", ["9469", "127.0.0.1", "127.0.0.1:http", "h:65536", "h:-1"])
def test_parse_listen_refuses_anything_but_host_and_port(listen: str) -> None:
    with pytest.raises(ValueError, match=r"metrics\.listen: expected \"host:port\""):
        parse_listen(listen)


# --- pushes --------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    content_type: str
    authorization: str | None
    body: bytes


@dataclass
class Gateway:
    """A Pushgateway stand-in on 127.0.0.1 that records each request and answers `status`."""

    url: str
    requests: list[Received] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    handle = Gateway(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            handle.requests.append(
                Received(
                    self.command,
                    self.path,
                    self.headers.get("Content-Type", ""),
                    self.headers.get("Authorization"),
                    self.rfile.read(length),
                )
            )
            self.send_response(handle.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = _record  # noqa: N815 - http.server's naming
        do_POST = _record  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll keeps shutdown() (which waits for the next poll) from costing 0.5 s a test.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    handle.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield handle
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_push_to_a_listening_gateway_puts_the_metrics_and_returns_true(gateway: Gateway) -> None:
    metrics = Metrics(remotes=[REMOTE])
    metrics.set_applied("e" * 40, 5)
    assert metrics.push(gateway.url, job="reconciler", grouping={"device": "dev-1"}) is True
    (request,) = gateway.requests
    assert request.method == "PUT"
    assert request.path == "/metrics/job/reconciler/device/dev-1"
    assert request.content_type.startswith("text/plain")
    assert request.authorization is None
    assert request.body == metrics.render()
    applied = f'reconciler_applied_info{{commit="{"e" * 40}",release="5"}} 1.0'
    assert applied.encode() in request.body


def test_push_accepts_a_gateway_written_without_a_scheme(gateway: Gateway) -> None:
    address = gateway.url.removeprefix("http://")
    assert Metrics().push(address, job="reconciler") is True
    assert [r.path for r in gateway.requests] == ["/metrics/job/reconciler"]


def test_push_to_a_dead_gateway_returns_false_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = closed_port()
    with caplog.at_level(logging.WARNING, logger="reconciler.metrics"):
        assert Metrics().push(f"http://127.0.0.1:{port}", job="reconciler") is False
    (message,) = caplog.messages
    assert message.startswith(f"metrics.push_failed gateway=http://127.0.0.1:{port} error=")


def test_push_refused_by_the_gateway_returns_false(gateway: Gateway) -> None:
    gateway.status = 500
    assert Metrics().push(gateway.url, job="reconciler") is False
    assert len(gateway.requests) == 1


def test_credentials_in_the_gateway_url_are_sent_as_basic_auth(gateway: Gateway) -> None:
    with_credentials = gateway.url.replace("http://", "http://pusher:p%40ss%3Aword@")
    assert Metrics().push(with_credentials, job="reconciler") is True
    (request,) = gateway.requests
    assert request.path == "/metrics/job/reconciler"
    expected = base64.b64encode(b"pusher:p@ss:word").decode()
    assert request.authorization == f"Basic {expected}"


def test_a_failed_push_does_not_log_the_gateway_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = f"http://pusher:s3cret@127.0.0.1:{closed_port()}"
    with caplog.at_level(logging.WARNING, logger="reconciler.metrics"):
        assert Metrics().push(gateway, job="reconciler") is False
    (message,) = caplog.messages
    assert "Connection refused" in message  # the closed port, not a host named "pusher:..."
    assert "s3cret" not in caplog.text
    assert "pusher" not in caplog.text


def test_known_apps_get_their_per_app_series_at_zero():
    m = Metrics()
    m.know_apps(["gw", "api"])
    text = m.render().decode()
    for app in ("gw", "api"):
        assert f'reconciler_rollbacks_total{{app="{app}"}} 0.0' in text
        assert f'reconciler_drift_corrections_total{{app="{app}"}} 0.0' in text


def test_status_reads_the_last_fetch_time_from_a_running_daemons_endpoint() -> None:
    from reconciler.device.metrics import read_last_fetch

    metrics = Metrics()
    server = metrics.serve("127.0.0.1:0")
    assert server is not None
    try:
        assert read_last_fetch(f"127.0.0.1:{server.port}") is None  # no fetch yet
        metrics.record_fetch_success(1_700_000_000.5)
        assert read_last_fetch(f"127.0.0.1:{server.port}") == 1_700_000_000.5
        assert read_last_fetch(f":{server.port}") == 1_700_000_000.5  # any address: loopback
    finally:
        server.shutdown()
    assert read_last_fetch(f"127.0.0.1:{server.port}", timeout=1) is None  # nobody answers
    assert read_last_fetch("") is None
