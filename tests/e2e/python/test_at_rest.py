"""Secret values are never stored (or backed up) in plaintext, and tampered backups are rejected."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Dict, List

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from conftest import encodings_of, find_leaks, make_server, unique_name


def new_sentinel(tag: str) -> str:
    return f"SENTINEL-{tag}-{secrets.token_hex(16)}"


def scan_dir(data_dir: Path, sentinels: List[str]) -> Dict[str, List[str]]:
    """Read every file under data_dir (WAL/SHM included) and report any plaintext form found."""
    leaks: Dict[str, List[str]] = {}
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files, f"no files under {data_dir}"
    for path in files:
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, PermissionError):
            continue  # transient files (e.g. a journal removed while we list)
        for s in sentinels:
            found = find_leaks(blob, s)
            if found:
                leaks.setdefault(str(path.relative_to(data_dir)), []).extend(f"{s}:{f}" for f in found)
    return leaks


def populate(client) -> List[str]:
    """Writes several secrets/versions whose values are unique sentinels; returns the sentinels."""
    s1, s2, s3, s4 = (new_sentinel(t) for t in ("v1", "v2", "other", "deleted"))
    name = unique_name("atrest")
    client.set_secret(name, s1, content_type="text/plain", tags={"k": "v"})
    client.set_secret(name, s2)
    client.update_secret_properties(name, enabled=False)  # re-writes the latest version's record
    client.update_secret_properties(name, enabled=True, tags={"k2": "v2"})
    # a larger value (multi-page), with the sentinel embedded
    big = unique_name("big")
    client.set_secret(big, ("pad-" * 2000) + s3 + ("-pad" * 2000))
    # soft-deleted secret: still stored, still must be encrypted
    deleted = unique_name("del")
    client.set_secret(deleted, s4)
    client.begin_delete_secret(deleted).wait()
    # read back so that caches/plaintext buffers are exercised
    assert client.get_secret(name).value == s2
    return [s1, s2, s3, s4]


@pytest.mark.parametrize("mode", ["running", "sigterm", "sigkill"])
def test_values_not_in_plaintext_on_disk(tmp_path_factory, mode):
    srv = make_server(tmp_path_factory, f"atrest-{mode}").start()
    try:
        cred = srv.credential()
        client = srv.client(cred)
        try:
            sentinels = populate(client)
        finally:
            client.close()
            cred.close()
        if mode == "sigterm":
            assert srv.stop() == 0
        elif mode == "sigkill":
            srv.kill()
        leaks = scan_dir(srv.data_dir, sentinels)
        assert not leaks, f"plaintext secret values found on disk ({mode}): {leaks}"
        # the server's own log must not echo values either
        log = srv.log_path.read_bytes()
        assert not any(find_leaks(log, s) for s in sentinels), "secret value written to the server log"

        if mode != "running":
            # and the data is really there: restart and read the values back
            srv.start()
            cred = srv.credential()
            client = srv.client(cred)
            try:
                values = {client.get_secret(p.name).value for p in client.list_properties_of_secrets()}
                assert sentinels[1] in values
            finally:
                client.close()
                cred.close()
    finally:
        srv.kill()


def test_encodings_helper_detects_plain_forms():
    s = new_sentinel("self-test")
    for label, pat in encodings_of(s).items():
        assert find_leaks(b"xx" + pat + b"yy", s), label
    for shift in range(3):
        blob = base64.b64encode(os.urandom(shift) + s.encode())
        assert find_leaks(blob, s)
    assert not find_leaks(os.urandom(4096), s)


@pytest.fixture(scope="module")
def backup_server(tmp_path_factory):
    srv = make_server(tmp_path_factory, "atrest-backup").start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def bclient(backup_server):
    cred = backup_server.credential()
    client = backup_server.client(cred)
    yield client
    client.close()
    cred.close()


def test_backup_blob_is_not_plaintext(bclient):
    name = unique_name("bk")
    s1, s2 = new_sentinel("bk1"), new_sentinel("bk2")
    bclient.set_secret(name, s1)
    bclient.set_secret(name, s2, tags={"t": "x"})
    blob = bclient.backup_secret(name)
    assert isinstance(blob, bytes) and len(blob) > 0
    for s in (s1, s2):
        assert not find_leaks(blob, s), f"backup contains a plaintext form of {s}: {find_leaks(blob, s)}"
    # two backups of the same secret should not be byte-identical if encryption is randomized;
    # not required, so only check they both restore (below).
    bclient.begin_delete_secret(name).wait()
    bclient.purge_deleted_secret(name)
    restored = bclient.restore_secret_backup(blob)
    assert restored.name == name
    assert bclient.get_secret(name).value == s2


def _flip_middle(blob: bytes, n: int = 4) -> bytes:
    b = bytearray(blob)
    mid = len(b) // 2
    for i in range(mid, min(mid + n, len(b))):
        b[i] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("tamper", ["flip-middle", "flip-last", "truncate"])
def test_tampered_backup_is_rejected(bclient, tamper):
    name = unique_name("tamper")
    value = new_sentinel("tamper")
    bclient.set_secret(name, value)
    blob = bclient.backup_secret(name)
    bclient.begin_delete_secret(name).wait()
    bclient.purge_deleted_secret(name)

    if tamper == "flip-middle":
        bad = _flip_middle(blob)
    elif tamper == "flip-last":
        bad = blob[:-1] + bytes([blob[-1] ^ 0x01])
    else:
        bad = blob[: len(blob) * 2 // 3]
    assert bad != blob

    with pytest.raises(HttpResponseError) as ei:
        bclient.restore_secret_backup(bad)
    assert ei.value.status_code == 400, (ei.value.status_code, ei.value.message)
    assert ei.value.error.code == "Malformed backup blob"
    assert ei.value.error.message == "Backup blob contains invalid or corrupt version."

    # nothing was written
    with pytest.raises(ResourceNotFoundError):
        bclient.get_secret(name)
    with pytest.raises(ResourceNotFoundError):
        bclient.get_deleted_secret(name)
    assert list(bclient.list_properties_of_secret_versions(name)) == []
    assert name not in {p.name for p in bclient.list_properties_of_secrets()}

    # the genuine blob still restores
    bclient.restore_secret_backup(blob)
    assert bclient.get_secret(name).value == value
