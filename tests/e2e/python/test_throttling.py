"""Throttling through the official azure-keyvault-secrets client.

The server runs with a small request budget (``rate_limit_per_10s = 4`` over a
2-second window). Past it, Key Vault answers 429 with a ``Retry-After`` header
and the ``Throttled`` error body; the SDK's retry policy must wait and retry
until the request goes through. A policy placed in the per-retry position sees
every attempt, so the test knows the 429s really happened and were retried.
"""

from __future__ import annotations

import time

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.policies import SansIOHTTPPolicy

from conftest import make_server, unique_name

BUDGET = 4
WINDOW_SECS = 2


class AttemptRecorder(SansIOHTTPPolicy):
    """Records the status of every attempt (retries included) and its Retry-After."""

    def __init__(self):
        self.attempts = []

    def on_response(self, request, response):
        http = response.http_response
        self.attempts.append((http.status_code, http.headers.get("Retry-After")))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("throttle")
    config = base / "keyvault.toml"
    config.write_text(f"rate_limit_per_10s = {BUDGET}\nrate_limit_window_secs = {WINDOW_SECS}\n")
    srv = make_server(tmp_path_factory, "throttle-server", ["--config", str(config)]).start()
    yield srv
    srv.kill()


def test_sdk_waits_out_429_and_every_call_succeeds(server):
    recorder = AttemptRecorder()
    cred = server.credential()
    client = server.client(cred, per_retry_policies=[recorder], retry_backoff_factor=0.1)
    try:
        name = unique_name("thr")
        started = time.monotonic()
        client.set_secret(name, "v0")
        for i in range(1, 3 * BUDGET):
            assert client.get_secret(name).value == "v0", i
        elapsed = time.monotonic() - started
    finally:
        client.close()
        cred.close()

    statuses = [s for s, _ in recorder.attempts]
    throttled = [(s, ra) for s, ra in recorder.attempts if s == 429]
    assert throttled, f"the budget was never exceeded: {statuses}"
    # Every 429 told the client when to come back, within the window.
    for _, retry_after in throttled:
        assert retry_after is not None and 1 <= int(retry_after) <= WINDOW_SECS, retry_after
    # 3 x BUDGET authorised calls in windows of BUDGET: at least two windows had to be waited out.
    successes = [s for s in statuses if s == 200]
    assert len(successes) == 3 * BUDGET, statuses
    assert elapsed >= 2 * WINDOW_SECS * 0.9, (elapsed, statuses)


def test_without_retries_the_sdk_raises_throttled(server):
    cred = server.credential()
    client = server.client(cred, retry_total=0)
    time.sleep(WINDOW_SECS)  # a fresh window, whatever the previous test spent
    error = None
    try:
        name = unique_name("thr")
        client.set_secret(name, "v")
        for _ in range(3 * BUDGET):
            try:
                client.get_secret(name)
            except HttpResponseError as e:
                error = e
                break
    finally:
        client.close()
        cred.close()
    assert error is not None, "the budget is not enforced"
    assert error.status_code == 429, (error.status_code, error.message)
    assert error.error is not None and error.error.code == "Throttled", error.error
    assert error.response.headers.get("Retry-After") is not None
