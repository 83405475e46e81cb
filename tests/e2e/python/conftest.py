"""Shared fixtures for the end-to-end tests.

Every test module starts its own ``keyvault serve --dev`` process in a fresh
temporary data directory on an ephemeral port, waits for
``DIR/dev-credentials.json`` and builds official-SDK clients from it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional
from urllib.parse import urlparse

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[3]
KEYVAULT_BIN = Path(os.environ.get("KEYVAULT_BIN", str(REPO_ROOT / "target" / "debug" / "keyvault")))
if not KEYVAULT_BIN.is_absolute():
    KEYVAULT_BIN = (REPO_ROOT / KEYVAULT_BIN).resolve()

API_VERSION = "2026-04-01"
VERSION_RE = re.compile(r"^[0-9a-f]{32}$")
STARTUP_TIMEOUT = float(os.environ.get("KEYVAULT_STARTUP_TIMEOUT", "30"))

_ALL_SERVERS: List["KeyVaultServer"] = []


def unique_name(prefix: str = "s") -> str:
    """A valid, unique secret name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class KeyVaultServer:
    """A ``keyvault serve --dev`` child process bound to one data directory."""

    def __init__(self, data_dir: Path, log_path: Path, extra_args: Iterable[str] = ()):
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.creds: Dict[str, Any] = {}
        self._log_file = None
        _ALL_SERVERS.append(self)

    # -- lifecycle -----------------------------------------------------------------
    @property
    def creds_path(self) -> Path:
        return self.data_dir / "dev-credentials.json"

    def start(self) -> "KeyVaultServer":
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        if not KEYVAULT_BIN.exists():
            pytest.fail(f"keyvault binary not found at {KEYVAULT_BIN} (set KEYVAULT_BIN or build it)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A previous run (possibly killed) leaves its credentials file behind with a stale
        # port; remove it so we only ever read the file written by *this* process.
        try:
            self.creds_path.unlink()
        except FileNotFoundError:
            pass
        self._log_file = open(self.log_path, "ab")
        cmd = [
            str(KEYVAULT_BIN), "serve", "--dev",
            "--data-dir", str(self.data_dir),
            "--addr", "127.0.0.1:0",
            *self.extra_args,
        ]
        self._log_file.write(("\n$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(self.data_dir.parent),
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"keyvault exited with {self.proc.returncode} during startup:\n{self.log_tail()}")
            if self.creds_path.exists():
                try:
                    self.creds = json.loads(self.creds_path.read_text())
                    break
                except (ValueError, OSError):
                    pass  # written atomically per contract, but be tolerant
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"keyvault did not write {self.creds_path} within {STARTUP_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.05)
        for key in ("vault_url", "vault_url_named", "ca_cert", "tenant_id", "client_id",
                    "client_secret", "authority_host"):
            assert key in self.creds, f"dev-credentials.json lacks {key!r}: {self.creds}"
        return self

    def stop(self, timeout: float = 15.0) -> int:
        """Graceful stop (SIGTERM); falls back to SIGKILL. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"keyvault did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}")
        finally:
            self._close_log()

    def kill(self) -> None:
        """Hard kill (SIGKILL), as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def restart(self) -> "KeyVaultServer":
        self.stop()
        return self.start()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return "<no log>"

    # -- convenience ---------------------------------------------------------------------
    @property
    def vault_url(self) -> str:
        return self.creds["vault_url"]

    @property
    def vault_url_named(self) -> str:
        return self.creds["vault_url_named"]

    @property
    def ca_cert(self) -> str:
        return self.creds["ca_cert"]

    @property
    def port(self) -> int:
        return urlparse(self.vault_url).port

    def credential(self, **kwargs):
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(
            self.creds["tenant_id"], self.creds["client_id"], self.creds["client_secret"],
            authority=self.creds["authority_host"], connection_verify=self.ca_cert,
            disable_instance_discovery=True, **kwargs,
        )

    def async_credential(self, **kwargs):
        from azure.identity.aio import ClientSecretCredential

        return ClientSecretCredential(
            self.creds["tenant_id"], self.creds["client_id"], self.creds["client_secret"],
            authority=self.creds["authority_host"], connection_verify=self.ca_cert, **kwargs,
        )

    def client(self, credential, named: bool = False, **kwargs):
        """Sync SecretClient. ``named=False`` → 127.0.0.1 URL, challenge verification off."""
        from azure.keyvault.secrets import SecretClient

        if named:
            return SecretClient(self.vault_url_named, credential, connection_verify=self.ca_cert, **kwargs)
        return SecretClient(self.vault_url, credential, connection_verify=self.ca_cert,
                            verify_challenge_resource=False, **kwargs)

    def async_client(self, credential, named: bool = False, **kwargs):
        from azure.keyvault.secrets.aio import SecretClient

        if named:
            return SecretClient(self.vault_url_named, credential, connection_verify=self.ca_cert, **kwargs)
        return SecretClient(self.vault_url, credential, connection_verify=self.ca_cert,
                            verify_challenge_resource=False, **kwargs)


class RawVault:
    """Raw HTTPS access (requests) with a bearer token obtained through the challenge."""

    def __init__(self, server: KeyVaultServer):
        self.server = server
        self.base = server.vault_url.rstrip("/")
        self.session = requests.Session()
        challenge = self.challenge()
        resource = challenge["resource"]
        cred = server.credential()
        try:
            self.token = cred.get_token(resource.rstrip("/") + "/.default").token
        finally:
            cred.close()
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def challenge(self) -> Dict[str, str]:
        r = requests.get(f"{self.base}/secrets", params={"api-version": API_VERSION},
                         verify=self.server.ca_cert, timeout=10)
        assert r.status_code == 401, (r.status_code, r.text)
        return parse_challenge(r.headers["WWW-Authenticate"])

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        params = dict(kwargs.pop("params", {}) or {})
        params.setdefault("api-version", API_VERSION)
        kwargs.setdefault("timeout", 10)
        # pass verify per request: requests lets REQUESTS_CA_BUNDLE override session.verify
        kwargs.setdefault("verify", self.server.ca_cert)
        return self.session.request(method, self.url(path), params=params, **kwargs)

    def close(self) -> None:
        self.session.close()


def parse_challenge(header: str) -> Dict[str, str]:
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


# ---------------------------------------------------------------------------------------
# Resolution of *.localhost (glibc does not resolve it); needed for vault_url_named.
# ---------------------------------------------------------------------------------------
_real_getaddrinfo = socket.getaddrinfo


def _localhost_getaddrinfo(host, *args, **kwargs):
    h = host.decode() if isinstance(host, (bytes, bytearray)) else host
    if isinstance(h, str) and h.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def localhost_resolver():
    """Map any ``*.localhost`` host to 127.0.0.1 (sync requests and aiohttp both use
    ``socket.getaddrinfo``, the latter through ``loop.getaddrinfo``)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(socket, "getaddrinfo", _localhost_getaddrinfo)
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _kill_all_servers():
    yield
    for srv in _ALL_SERVERS:
        srv.kill()


# ---------------------------------------------------------------------------------------
# Server / client fixtures
# ---------------------------------------------------------------------------------------
def make_server(tmp_path_factory, label: str, extra_args: Iterable[str] = ()) -> KeyVaultServer:
    base = tmp_path_factory.mktemp(label)
    return KeyVaultServer(base / "data", base / "server.log", extra_args)


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    srv = make_server(tmp_path_factory, request.module.__name__.rsplit(".", 1)[-1]).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def credential(server):
    cred = server.credential()
    yield cred
    cred.close()


@pytest.fixture(scope="module")
def client(server, credential):
    c = server.client(credential)
    yield c
    c.close()


@pytest.fixture(scope="module")
def named_client(server, credential):
    c = server.client(credential, named=True)
    yield c
    c.close()


@pytest.fixture(scope="module")
def raw(server):
    r = RawVault(server)
    yield r
    r.close()


# ---------------------------------------------------------------------------------------
# Helpers for checking that a plaintext never appears in bytes.
# ---------------------------------------------------------------------------------------
def encodings_of(secret: str) -> Dict[str, bytes]:
    """Byte patterns under which ``secret`` could be stored without real encryption."""
    raw = secret.encode("utf-8")
    forms: Dict[str, bytes] = {
        "utf-8": raw,
        "utf-16-le": secret.encode("utf-16-le"),
        "utf-16-be": secret.encode("utf-16-be"),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "reversed": raw[::-1],
    }
    # base64 at each of the 3 possible alignments, standard and url-safe alphabets; keep
    # only the characters fully determined by the secret bytes.
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw)
        start = ((shift + 2) // 3) * 4
        usable = ((shift + len(raw)) // 3) * 4
        core = enc[start:usable]
        if len(core) >= 12:
            forms[f"base64+{shift}"] = core
            forms[f"base64url+{shift}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return forms


def find_leaks(blob: bytes, secret: str) -> List[str]:
    return [label for label, pat in encodings_of(secret).items() if pat in blob]
