#!/usr/bin/env python3
"""Runs the official ``azure-keyvault-secrets`` test suite, as published in its source distribution on PyPI,
in live mode against a ``keyvault serve --dev`` started here.

    run.py [--bin KEYVAULT_BIN] [--python PYTHON] [--default-version-only] [--serve-arg ARG]... [--nodes N]
           [pytest args...]
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

``--nodes N`` (with a shared store: ``--serve-arg=--store=postgres://…``) runs N servers over that one store, as
a deployment behind a load balancer does: the first node's data directory (its CA and certificate, key-encryption
key, token-signing key and dev client) is copied for the others, every node issues and accepts tokens for one
public address, and a TCP balancer here hands the suite's connections to the nodes in turn — a test's token may
come from one node and its requests go to another, and consecutive tests (each with its own client) land on
different nodes; within one test the client keeps its connection, so its requests mostly reach one node. The
run fails unless every node served at least a third of an even share of the connections.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
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


def start_server(binary: Path, data: Path, log, extra: list[str], addr: str = "127.0.0.1:0",
                 ready=None) -> tuple[subprocess.Popen, dict]:
    """Start ``keyvault serve --dev``; ready once ``ready()`` holds (by default: once it has written its
    dev-credentials.json), then its credentials."""
    creds_path = data / "dev-credentials.json"
    proc = subprocess.Popen(
        [str(binary), "serve", "--dev", "--data-dir", str(data), "--addr", addr, *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                not_started(f"keyvault serve exited with {proc.returncode} before it was ready", log)
            try:
                if ready is None or ready():
                    return proc, json.loads(creds_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.05)
        not_started("keyvault serve was not ready within the start-up limit", log)
    except BaseException:
        # Not left running, however the wait ended (the limit, an interrupt).
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int, ca_cert: str):
    """A readiness check for a node at ``port``: its ``/healthz`` answers 200 over TLS with the dev CA."""
    context = ssl.create_default_context(cafile=ca_cert)

    def check() -> bool:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    return check


class Balancer:
    """A TCP balancer on 127.0.0.1 (its port taken at once and kept, so that the nodes can be told it): once
    started, each accepted connection goes to the next node in turn, bytes relayed both ways until either side
    closes. ``served[i]`` counts the connections node i got."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.ports: list[int] = []
        self.served: list[int] = []
        self.closed = False

    def start(self, ports: list[int]) -> None:
        self.ports = ports
        self.served = [0] * len(ports)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        turn = 0
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            node = turn % len(self.ports)
            turn += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.ports[node]), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self.served[node] += 1
            # Bytes go on as they come (Nagle's delay on relayed TLS records would cost each request ~40 ms).
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    @staticmethod
    def _relay(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def start_nodes(binary: Path, work: Path, log, extra: list[str], nodes: int):
    """``nodes`` servers over the store ``extra`` names, behind a [`Balancer`]: their processes, the credentials
    to reach them through it, and the balancer."""
    balancer = Balancer()
    public = balancer.port
    ports = [free_port() for _ in range(nodes)]
    shared = [f"--issuer-host=127.0.0.1:{public}", f"--resource-suffix=localhost:{public}", *extra]
    first = work / "data"
    procs = []
    try:
        proc, creds = start_server(binary, first, log, shared, f"127.0.0.1:{ports[0]}")
        procs.append(proc)
        for i, port in enumerate(ports[1:], start=2):
            data = work / f"data{i}"
            shutil.copytree(first, data, ignore=shutil.ignore_patterns("serve.lock", "audit.log*"))
            ready = healthy(port, creds["ca_cert"])
            procs.append(start_server(binary, data, log, shared, f"127.0.0.1:{port}", ready)[0])
        balancer.start(ports)
    except BaseException:
        balancer.close()
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    vault = creds["vault_url_named"].split("//", 1)[1].split(".", 1)[0]
    creds = dict(creds, vault_url_named=f"https://{vault}.localhost:{balancer.port}",
                 authority_host=f"https://127.0.0.1:{balancer.port}")
    return procs, creds, balancer


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
    p.add_argument("--nodes", type=int, default=1,
                   help="servers over one shared store (give it with --serve-arg=--store=postgres://…), behind a "
                        "balancer that hands out connections in turn")
    a, pytest_args = p.parse_known_args()
    if a.nodes < 1 or (a.nodes > 1 and not any(x.startswith("--store=postgres") for x in a.serve_arg)):
        sys.exit("--nodes N needs N ≥ 1, and more than one node a shared store (--serve-arg=--store=postgres://…)")
    if a.fetch_only:
        fetch_suite(a.python)
        return 0
    binary = Path(a.bin).resolve()
    if not binary.exists():
        sys.exit(f"keyvault binary not found at {binary} (set KEYVAULT_BIN or build it)")
    tests = fetch_suite(a.python)

    work = Path(tempfile.mkdtemp(prefix="kv-sdk-suite-"))
    log_path = work / "server.log"
    balancer = None
    with open(log_path, "wb") as log:
        if a.nodes == 1:
            proc, creds = start_server(binary, work / "data", log, a.serve_arg)
            procs = [proc]
        else:
            procs, creds, balancer = start_nodes(binary, work, log, a.serve_arg, a.nodes)
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
            status = subprocess.run(cmd, cwd=tests, env=env, timeout=SUITE_TIMEOUT_S * a.nodes).returncode
        except subprocess.TimeoutExpired:
            print(f"the suite did not finish within {SUITE_TIMEOUT_S * a.nodes} s", file=sys.stderr)
            status = 1
        finally:
            if balancer is not None:
                balancer.close()
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
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
    if balancer is not None:
        print(f"connections per node: {balancer.served}")
        fair = sum(balancer.served) / len(balancer.served)
        if status == 0 and min(balancer.served) < fair / 3:
            print("a node served far fewer connections than the others", file=sys.stderr)
            status = 1
    if status != 0 or any(proc.returncode not in (0, -signal.SIGTERM) for proc in procs):
        print(f"server log: {log_path}", file=sys.stderr)
        print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
        return status or 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
