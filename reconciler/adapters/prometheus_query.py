"""A small client for Prometheus' HTTP API (`/api/v1/query`): instant queries in, series out.

Shell: the only network I/O of `fleet-status` and `rollout gate`, over urllib3 with connect and
read timeouts, no retries (a scheduled job runs again) and a bound on the answer's size. Any
Prometheus-compatible server answers (Prometheus, Thanos, VictoriaMetrics, Mimir). Credentials
in the URL (`https://user:pw@prom:9090`) are sent as HTTP Basic auth and never printed.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import urllib3

from reconciler.core.fleet_status import Series

MAX_ANSWER_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


class PrometheusError(Exception):
    """The query failed: unreachable, an HTTP error, or an answer that is not a vector."""


class Prometheus:
    """Instant queries against one Prometheus base URL (`http://host:9090`, a path prefix kept)."""

    def __init__(self, url: str, *, read_timeout: float = READ_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PrometheusError(f"expected an http(s) URL of a Prometheus, got {url!r}")
        self._headers: dict[str, str] = {"Accept": "application/json"}
        if parts.username is not None:
            self._headers.update(
                urllib3.make_headers(basic_auth=f"{parts.username}:{parts.password or ''}")
            )
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        self.shown = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout),
            retries=False,
        )

    def query(self, promql: str, *, at: float | None = None) -> list[Series]:
        """The instant vector `promql` evaluates to (at `at`, unix seconds, or now)."""
        return _vector(self._data(promql, at), self.shown)

    def last_sample_times(self, selector: str, *, at: float | None = None) -> list[Series]:
        """Each series a range selector (`metric{...}[1d]`) finds, valued with the unix time of
        its last sample: what was reported last by a target that no longer answers, whose
        series an instant query no longer returns."""
        return _last_samples(self._data(selector, at), self.shown)

    def _data(self, promql: str, at: float | None) -> object:
        fields = {"query": promql}
        if at is not None:
            fields["time"] = f"{at:.3f}"
        try:
            response = self._pool.request(
                "POST",
                self.shown + "/api/v1/query",
                fields=fields,
                encode_multipart=False,
                headers=self._headers,
                preload_content=False,
            )
            try:
                body = response.read(MAX_ANSWER_BYTES + 1)
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise PrometheusError(f"{self.shown}: {type(exc).__name__}: {exc}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise PrometheusError(f"{self.shown}: answer over {MAX_ANSWER_BYTES} bytes")
        try:
            doc = json.loads(body)
        except ValueError:
            raise PrometheusError(
                f"{self.shown}: HTTP {response.status}, not a Prometheus API answer"
            ) from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            error = doc.get("error", "") if isinstance(doc, dict) else ""
            raise PrometheusError(f"{self.shown}: HTTP {response.status}: {error}".strip())
        return doc.get("data")


def _vector(data: object, shown: str) -> list[Series]:
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise PrometheusError(f"{shown}: expected an instant vector answer")
    found = []
    for item in data.get("result") or []:
        try:
            labels = {str(k): str(v) for k, v in item["metric"].items()}
            value = float(item["value"][1])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise PrometheusError(f"{shown}: a malformed series in the answer") from None
        found.append(Series(labels=labels, value=value))
    return found


def _last_samples(data: object, shown: str) -> list[Series]:
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        raise PrometheusError(f"{shown}: expected a range vector answer")
    found = []
    for item in data.get("result") or []:
        try:
            labels = {str(k): str(v) for k, v in item["metric"].items()}
            last = max(float(when) for when, _ in item["values"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise PrometheusError(f"{shown}: a malformed series in the answer") from None
        found.append(Series(labels=labels, value=last))
    return found
