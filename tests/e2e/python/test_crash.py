"""Durability: every acknowledged write survives ``kill -9`` of the server."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
import time
import uuid
from typing import List, Tuple

import pytest
import requests

from conftest import API_VERSION, VERSION_RE, RawVault, make_server, unique_name

THREADS = 8
LOAD_SECONDS = 2.5
MAX_WRITES_PER_THREAD = 1500  # bound the verification work


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory):
    srv = make_server(tmp_path_factory, "crash").start()
    yield srv
    srv.kill()


def _writer(raw: RawVault, tid: int, stop: threading.Event, acked: List[Tuple[str, str, str]],
            errors: List[str]) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {raw.token}"
    names = [f"crash-t{tid}-n{j}" for j in range(5)]  # several versions per name
    n = 0
    try:
        while not stop.is_set() and n < MAX_WRITES_PER_THREAD:
            name = names[n % len(names)]
            value = f"t{tid}-{n}-{uuid.uuid4().hex}"
            try:
                r = session.put(raw.url(f"/secrets/{name}"), params={"api-version": API_VERSION},
                                json={"value": value, "tags": {"writer": str(tid)}}, timeout=10,
                                verify=raw.server.ca_cert)
            except requests.RequestException:
                return  # server died mid-request: this write was never acknowledged
            if r.status_code != 200:
                errors.append(f"PUT {name} -> {r.status_code} {r.text[:300]}")
                return
            body = r.json()
            version = body["id"].rsplit("/", 1)[-1]
            if body.get("value") != value or not VERSION_RE.match(version):
                errors.append(f"PUT {name}: bad response {body}")
                return
            acked.append((name, version, value))
            n += 1
    finally:
        session.close()


def test_acknowledged_writes_survive_sigkill(crash_server):
    raw = RawVault(crash_server)
    acked: List[Tuple[str, str, str]] = []
    errors: List[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_writer, args=(raw, t, stop, acked, errors), daemon=True)
               for t in range(THREADS)]
    for t in threads:
        t.start()
    time.sleep(LOAD_SECONDS)
    # kill while writers are still running
    alive_writers = sum(t.is_alive() for t in threads)
    crash_server.kill()
    stop.set()
    for t in threads:
        t.join(timeout=20)
    raw.close()
    assert not errors, errors[:5]
    assert acked, "no write was acknowledged before the kill"
    assert alive_writers > 0, "load finished before the kill; raise MAX_WRITES_PER_THREAD"
    snapshot = list(acked)
    print(f"crash test: {len(snapshot)} acknowledged writes, {alive_writers} writers alive at kill")

    crash_server.start()  # same data dir, new port
    raw2 = RawVault(crash_server)
    try:
        missing, wrong = [], []
        local = threading.local()

        def check(item):
            name, version, value = item
            if not hasattr(local, "s"):
                local.s = requests.Session()
                local.s.headers["Authorization"] = f"Bearer {raw2.token}"
            r = local.s.get(raw2.url(f"/secrets/{name}/{version}"), params={"api-version": API_VERSION},
                            verify=crash_server.ca_cert, timeout=10)
            if r.status_code != 200:
                missing.append((name, version, r.status_code))
            elif r.json().get("value") != value:
                wrong.append((name, version, value, r.json().get("value")))

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            list(pool.map(check, snapshot))
        assert not missing, f"{len(missing)}/{len(snapshot)} acknowledged writes lost, e.g. {missing[:5]}"
        assert not wrong, f"{len(wrong)} values differ, e.g. {wrong[:3]}"

        # the latest version of each name is the last acknowledged one or a later (unacked) write
        by_name = {}
        for name, version, value in snapshot:
            by_name.setdefault(name, []).append(version)
        for name, versions in by_name.items():
            r = raw2.request("GET", f"/secrets/{name}/versions", params={"maxresults": 25})
            assert r.status_code == 200, r.text
            r = raw2.request("GET", f"/secrets/{name}/")
            assert r.status_code == 200, r.text

        # the recovered store is writable and consistent
        name = unique_name("after-crash")
        r = raw2.request("PUT", f"/secrets/{name}", json={"value": "ok"})
        assert r.status_code == 200, r.text
        assert raw2.request("GET", f"/secrets/{name}/").json()["value"] == "ok"
    finally:
        raw2.close()


def test_graceful_restart_keeps_everything(tmp_path_factory):
    """SIGTERM + restart: live, versioned, disabled and soft-deleted state all persist."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    srv = make_server(tmp_path_factory, "restart").start()
    try:
        cred = srv.credential()
        client = srv.client(cred)
        live = unique_name("live")
        v1 = client.set_secret(live, "one", tags={"a": "b"}, content_type="text/plain")
        v2 = client.set_secret(live, "two")
        disabled = unique_name("off")
        client.set_secret(disabled, "x", enabled=False)
        gone = unique_name("gone")
        client.set_secret(gone, "bye")
        client.begin_delete_secret(gone).wait()
        client.close()
        cred.close()

        assert srv.stop() == 0, f"non-zero exit on SIGTERM:\n{srv.log_tail()}"
        srv.start()

        cred = srv.credential()
        client = srv.client(cred)
        try:
            assert client.get_secret(live).value == "two"
            old = client.get_secret(live, v1.properties.version)
            assert old.value == "one" and old.properties.tags == {"a": "b"}
            assert old.properties.content_type == "text/plain"
            assert old.properties.created_on == v1.properties.created_on
            assert {p.version for p in client.list_properties_of_secret_versions(live)} == {
                v1.properties.version, v2.properties.version}
            with pytest.raises(HttpResponseError) as ei:
                client.get_secret(disabled)
            assert ei.value.status_code == 403
            with pytest.raises(ResourceNotFoundError):
                client.get_secret(gone)
            assert client.get_deleted_secret(gone).name == gone
            client.begin_recover_deleted_secret(gone).wait()
            assert client.get_secret(gone).value == "bye"
        finally:
            client.close()
            cred.close()
    finally:
        srv.kill()


def test_acknowledged_metadata_changes_survive_sigkill(tmp_path_factory):
    """Updates, deletes, purges, recovers and restores acknowledged just before a kill -9 persist."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    srv = make_server(tmp_path_factory, "crash-meta").start()
    try:
        cred = srv.credential()
        client = srv.client(cred)
        upd, dele, pur, rec, res = (unique_name(p) for p in ("upd", "del", "pur", "rec", "res"))
        for n in (upd, dele, pur, rec, res):
            client.set_secret(n, "value-" + n)
        client.update_secret_properties(upd, enabled=False, tags={"after": "update"}, content_type="ct")
        client.begin_delete_secret(dele).wait()
        client.begin_delete_secret(pur).wait()
        client.purge_deleted_secret(pur)
        client.begin_delete_secret(rec).wait()
        client.begin_recover_deleted_secret(rec).wait()
        blob = client.backup_secret(res)
        client.begin_delete_secret(res).wait()
        client.purge_deleted_secret(res)
        client.restore_secret_backup(blob)
        client.close()
        cred.close()
        srv.kill()

        srv.start()
        cred = srv.credential()
        client = srv.client(cred)
        try:
            props = next(p for p in client.list_properties_of_secret_versions(upd))
            assert props.enabled is False and props.tags == {"after": "update"} and props.content_type == "ct"
            with pytest.raises(HttpResponseError) as ei:
                client.get_secret(upd)
            assert ei.value.status_code == 403
            with pytest.raises(ResourceNotFoundError):
                client.get_secret(dele)
            assert client.get_deleted_secret(dele).name == dele
            with pytest.raises(ResourceNotFoundError):
                client.get_deleted_secret(pur)
            with pytest.raises(ResourceNotFoundError):
                client.get_secret(pur)
            assert client.get_secret(rec).value == "value-" + rec
            assert client.get_secret(res).value == "value-" + res
        finally:
            client.close()
            cred.close()
    finally:
        srv.kill()
