#!/usr/bin/env python3
"""Runs the official ``azure-keyvault-secrets`` test suite, as published in its source distribution on PyPI,
in live mode against a ``keyvault serve --dev`` started here.

    run.py [--bin KEYVAULT_BIN] [--python PYTHON] [--default-version-only] [--serve-arg ARG]... [pytest args...]
    run.py --fetch-only

The suite is fetched once (pinned version, checked against its SHA-256) into ``../.sdk-suite``; nothing of it
is kept in this repository. ``devtools_testutils`` — the Azure SDK's test helpers, which are not on PyPI — is
replaced by the small stand-in beside this file (live mode only: no recordings, no test proxy). The server runs
on 127.0.0.1 on a free port with a fresh data directory; the suite's clients reach it by
``https://<vault>.localhost:<port>`` with challenge-resource verification on, as they would reach Key Vault.

Live mode is how the Azure SDK team runs the suite against real vaults, except that the tests parameterised over
API versions run at every version the SDK supports (the suite runs only the default one live, to keep Azure's
pipelines short; ``--default-version-only`` keeps that rule). Its unit tests run as they are; the perf-stress
harness is left out. A whole run fails unless at least as many tests pass as the pinned suite holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
E2E = HERE.parent
REPO = E2E.parent.parent
PACKAGE = "azure-keyvault-secrets"
VERSION = "4.12.0"
SDIST = f"azure_keyvault_secrets-{VERSION}.tar.gz"
SDIST_SHA256 = "435ea0abb5280baaad9553da7a19e73e1b581048783b852210352bfcb0316aff"
CACHE = E2E / ".sdk-suite"
STARTUP_TIMEOUT_S = 30
SUITE_TIMEOUT_S = 240
# Tests of 4.12.0's suite that pass here: every API version; the default version only. A whole run that passes
# fewer fails (pytest arguments that select tests turn the check off).
MIN_PASSED = 1289
MIN_PASSED_DEFAULT_VERSION = 1055


def fetch_suite(python: str) -> Path:
    """The suite's ``tests`` directory, downloaded and unpacked on first use.

    pip checks the archive against its SHA-256 before it does anything with it (a source distribution's build
    step runs its code: ``--hash`` stops pip straight after the download), and so does this script. The suite
    is unpacked into a directory of its own and moved into place whole, with a marker of the archive's hash:
    a half-unpacked or edited cache is not taken for the suite (it is unpacked again)."""
    root = CACHE / f"azure_keyvault_secrets-{VERSION}"
    marker = root / ".sha256"
    if marker.is_file() and marker.read_text().strip() == SDIST_SHA256:
        return root / "tests"
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / SDIST
    if not archive.exists():
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=CACHE, delete=False) as req:
            req.write(f"{PACKAGE}=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
        try:
            subprocess.run(
                [python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                 "--no-binary", ":all:", "--require-hashes", "--dest", str(CACHE), "-r", req.name],
                check=True,
            )
        finally:
            os.unlink(req.name)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        archive.unlink()
        sys.exit(f"{SDIST}: SHA-256 {digest}, expected {SDIST_SHA256}; removed")
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=CACHE))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        unpacked = staging / root.name
        if not (unpacked / "tests").is_dir():
            sys.exit(f"{SDIST} holds no tests directory")
        (unpacked / ".sha256").write_text(SDIST_SHA256 + "\n")
        shutil.rmtree(root, ignore_errors=True)
        unpacked.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root / "tests"


def start_server(binary: Path, data: Path, log, extra: list[str]) -> tuple[subprocess.Popen, dict]:
    creds_path = data / "dev-credentials.json"
    proc = subprocess.Popen(
        [str(binary), "serve", "--dev", "--data-dir", str(data), "--addr", "127.0.0.1:0", *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            not_started(f"keyvault serve exited with {proc.returncode} before it was ready", log)
        try:
            return proc, json.loads(creds_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    not_started("keyvault serve was not ready within the start-up limit", log)


def not_started(why: str, log) -> None:
    log.flush()
    text = Path(log.name).read_text(errors="replace")
    sys.exit(f"{why}; its log ({log.name}) ends:\n{text[-4000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.environ.get("KEYVAULT_BIN", str(REPO / "target" / "debug" / "keyvault")))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--fetch-only", action="store_true", help="fetch and unpack the suite, run nothing")
    p.add_argument("--default-version-only", action="store_true",
                   help="run the tests over API versions at the SDK's default only (the suite's own live rule)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for `keyvault serve` (repeat it), e.g. --serve-arg=--store=postgres://…")
    a, pytest_args = p.parse_known_args()
    if a.fetch_only:
        fetch_suite(a.python)
        return 0
    binary = Path(a.bin).resolve()
    if not binary.exists():
        sys.exit(f"keyvault binary not found at {binary} (set KEYVAULT_BIN or build it)")
    tests = fetch_suite(a.python)

    work = Path(tempfile.mkdtemp(prefix="kv-sdk-suite-"))
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        proc, creds = start_server(binary, work / "data", log, a.serve_arg)
        env = dict(os.environ)
        env.update({
            "AZURE_TEST_RUN_LIVE": "true",
            "AZURE_KEYVAULT_URL": creds["vault_url_named"],
            # The suite's preparers copy these to AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET.
            "KEYVAULT_TENANT_ID": creds["tenant_id"],
            "KEYVAULT_CLIENT_ID": creds["client_id"],
            "KEYVAULT_CLIENT_SECRET": creds["client_secret"],
            "AZURE_AUTHORITY_HOST": creds["authority_host"],
            "KEYVAULT_CA_CERT": creds["ca_cert"],
            # Clients a test builds itself (the samples) trust the server's CA too.
            "REQUESTS_CA_BUNDLE": creds["ca_cert"],
            "SSL_CERT_FILE": creds["ca_cert"],
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(tests), env.get("PYTHONPATH")])),
        })
        counts_path = work / "counts.json"
        env["KV_SUITE_COUNTS"] = str(counts_path)
        if a.default_version_only:
            env["KV_SUITE_DEFAULT_VERSION_ONLY"] = "1"
        cmd = [a.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", "-p", "devtools_testutils.plugin",
               "--rootdir", str(tests), "--ignore", str(tests / "perfstress_tests"), str(tests), *pytest_args]
        try:
            status = subprocess.run(cmd, cwd=tests, env=env, timeout=SUITE_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            print(f"the suite did not finish within {SUITE_TIMEOUT_S} s", file=sys.stderr)
            status = 1
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    try:
        counts = json.loads(counts_path.read_text())
    except (OSError, ValueError):
        counts = {}
    least = MIN_PASSED_DEFAULT_VERSION if a.default_version_only else MIN_PASSED
    if status == 0 and not pytest_args and counts.get("passed", 0) < least:
        # A whole run that passed fewer tests than the suite holds: the suite is cut short or partly missing.
        print(f"the suite passed {counts.get('passed', 0)} tests, fewer than the {least} it holds", file=sys.stderr)
        status = 1
    if status != 0 or proc.returncode not in (0, -signal.SIGTERM):
        print(f"server log: {log_path}", file=sys.stderr)
        print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
        return status or 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
