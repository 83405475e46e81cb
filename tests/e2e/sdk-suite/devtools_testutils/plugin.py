"""pytest plugin of the ``devtools_testutils`` stand-in (loaded with ``-p devtools_testutils.plugin``): the
suite's own marks, live mode's rule that a test marked ``playback_test_only`` does not run, every API version
run (see ``run_every_api_version``), and the counts run.py checks."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import pytest


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "playback_test_only(reason): runs against recordings only")
    config.addinivalue_line("markers", "live_test_only(reason): runs against a live service only")
    if os.environ.get("KV_SUITE_DEFAULT_VERSION_ONLY") != "1":
        run_every_api_version()


def pytest_runtest_setup(item) -> None:
    mark = item.get_closest_marker("playback_test_only")
    if mark is not None:
        pytest.skip(f"playback only: {mark.args[0] if mark.args else 'no reason given'}")


# `*.localhost` names loopback (RFC 6761 §6.3), but glibc resolves only `localhost` itself: the suite reaches
# the server as `https://<vault>.localhost:<port>`, so such names resolve to 127.0.0.1 here (requests and
# aiohttp both resolve through `socket.getaddrinfo`).
_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo


# The suite waits a minute after a purge before it restores (`time.sleep(60)` when live): Azure purges
# eventually; this server purges before it answers, so the restore right after is the stronger test. Waits of
# half a minute or more return at once; shorter ones (the SDK's retry back-off, the suite's polling) are kept.
LONG_WAIT_S = 30
_real_sleep = time.sleep
_real_async_sleep = asyncio.sleep


def _sleep(seconds):
    if seconds < LONG_WAIT_S:
        _real_sleep(seconds)


async def _async_sleep(delay, result=None):
    return await _real_async_sleep(0 if delay >= LONG_WAIT_S else delay, result)


time.sleep = _sleep
asyncio.sleep = _async_sleep


def run_every_api_version() -> None:
    """The suite's preparers skip every API version but the SDK's default when live (`_skip_if_not_configured`:
    a rule to keep Azure's live pipelines short). Here every version the SDK supports runs, from 2016-10-01 on:
    the skip is turned off."""
    import _async_test_case
    import _test_case

    def run_every_version(self, api_version, **kwargs) -> None:
        return None

    _test_case.SecretsClientPreparer._skip_if_not_configured = run_every_version
    _async_test_case.AsyncSecretsClientPreparer._skip_if_not_configured = run_every_version


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """How many tests passed, failed and were skipped, for run.py (which fails a run that passed too few: a suite
    cut short or partly missing)."""
    path = os.environ.get("KV_SUITE_COUNTS")
    if path:
        stats = terminalreporter.stats
        counts = {k: len(stats.get(k, [])) for k in ("passed", "failed", "error", "skipped")}
        with open(path, "w") as f:
            json.dump(counts, f)
