"""Official azure-keyvault-secrets (sync) client against the keyvault binary.

Runs through ``vault_url`` (https://127.0.0.1:PORT, challenge-resource verification
off) plus a happy path through ``vault_url_named`` (https://myvault.localhost:PORT,
verification on).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.keyvault.secrets import (
    DeletedSecret,
    KeyVaultSecret,
    KeyVaultSecretIdentifier,
    SecretProperties,
)

from conftest import VERSION_RE, make_server, unique_name

UTC = timezone.utc
DAY = timedelta(days=1)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def assert_secret_id(props: SecretProperties, vault_url: str, name: str, versioned: bool = True):
    base = vault_url.rstrip("/")
    assert props.vault_url.rstrip("/") == base, (props.vault_url, base)
    assert props.name == name
    if versioned:
        assert props.version and VERSION_RE.match(props.version), props.version
        assert props.id == f"{base}/secrets/{name}/{props.version}"
    else:
        assert props.version is None, props.id
        assert props.id == f"{base}/secrets/{name}"


def assert_recent(dt: datetime, slack: timedelta = timedelta(minutes=5)):
    assert dt is not None
    assert dt.tzinfo is not None and dt.utcoffset() == timedelta(0), dt
    now = datetime.now(UTC)
    assert now - slack <= dt <= now + slack, (dt, now)


def wait_deleted(client, name):
    poller = client.begin_delete_secret(name)
    deleted = poller.result()
    poller.wait()
    assert poller.done()
    return deleted


def delete_and_purge(client, name):
    wait_deleted(client, name)
    client.purge_deleted_secret(name)


def pages_of(paged):
    return [list(page) for page in paged.by_page()]


# ---------------------------------------------------------------------------------------
# set / get / versions
# ---------------------------------------------------------------------------------------
def test_set_and_get_roundtrip(client, server):
    name = unique_name("basic")
    secret = client.set_secret(name, "hunter2")
    assert isinstance(secret, KeyVaultSecret)
    assert secret.value == "hunter2"
    assert secret.name == name
    p = secret.properties
    assert_secret_id(p, server.vault_url, name)
    assert p.enabled is True
    assert p.content_type is None
    assert not p.tags
    assert p.not_before is None and p.expires_on is None
    assert_recent(p.created_on)
    assert_recent(p.updated_on)
    assert p.created_on == p.updated_on
    assert p.recovery_level == "Recoverable+Purgeable"
    assert p.recoverable_days == 90
    assert p.managed in (None, False)

    got = client.get_secret(name)
    assert got.value == "hunter2"
    assert got.id == secret.id
    assert got.properties.version == p.version
    assert got.properties.created_on == p.created_on

    by_version = client.get_secret(name, p.version)
    assert by_version.value == "hunter2"
    assert by_version.id == secret.id

    ident = KeyVaultSecretIdentifier(secret.id)
    assert ident.name == name
    assert ident.version == p.version
    assert ident.vault_url.rstrip("/") == server.vault_url.rstrip("/")
    assert ident.source_id == secret.id


def test_unicode_and_structured_values(client):
    values = {
        unique_name("json"): '{"database_url": "postgresql://user:pass@host:5432/db", "debug": false}',
        unique_name("pem"): "-----BEGIN CERTIFICATE-----\nMIIDXTCCAkWgAwIBAgIJAKoK/heBjcOuMA0GCSqGSIb3DQEBBQUAMEUxCzAJBgNV\n-----END CERTIFICATE-----\n",
        unique_name("unicode"): "pässwörd ✓ 秘密 🔑 \t\"quoted\" \\backslash",
        unique_name("conn"): "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=a+b/c==;",
        unique_name("big"): "x" * 20000,
    }
    for name, value in values.items():
        assert client.set_secret(name, value).value == value
    for name, value in values.items():
        assert client.get_secret(name).value == value


def test_versions(client, server):
    name = unique_name("versions")
    written = []
    for i in range(7):
        s = client.set_secret(name, f"value-{i}")
        assert s.value == f"value-{i}"
        written.append(s.properties.version)
    assert len(set(written)) == 7, written
    assert all(VERSION_RE.match(v) for v in written)

    latest = client.get_secret(name)
    assert latest.value == "value-6"
    assert latest.properties.version == written[-1]
    for i, v in enumerate(written):
        s = client.get_secret(name, v)
        assert s.value == f"value-{i}"
        assert s.properties.version == v

    listed = list(client.list_properties_of_secret_versions(name))
    # Sorted by version id, as Key Vault lists them; this server's ids grow with time, so oldest first.
    assert [p.version for p in listed] == sorted(written) == written
    for p in listed:
        assert_secret_id(p, server.vault_url, name, versioned=True)
        assert p.enabled is True
        assert_recent(p.created_on)
        assert not hasattr(p, "value")

    # small pages over several round trips
    pages = pages_of(client.list_properties_of_secret_versions(name, max_page_size=2))
    assert len(pages) >= math.ceil(7 / 2), [len(p) for p in pages]
    assert all(len(p) <= 2 for p in pages), [len(p) for p in pages]
    flat = [p.version for page in pages for p in page]
    assert flat == written, "paged version listing: every version once, oldest first"


def test_list_versions_of_unknown_name_is_empty(client):
    assert list(client.list_properties_of_secret_versions(unique_name("nobody"))) == []


def test_content_type_tags_and_dates(client, server):
    name = unique_name("meta")
    nbf = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    exp = datetime(2031, 6, 7, 8, 9, 10, tzinfo=UTC)
    tags = {"environment": "production", "service": "payment-api", "owner": "team-alpha"}
    s = client.set_secret(name, "api-key-value", content_type="text/plain", tags=tags,
                          enabled=True, not_before=nbf, expires_on=exp)
    for p in (s.properties, client.get_secret(name).properties):
        assert p.content_type == "text/plain"
        assert p.tags == tags
        assert p.enabled is True
        assert p.not_before == nbf
        assert p.expires_on == exp
        assert p.not_before.tzinfo is not None and p.expires_on.tzinfo is not None

    # a secret outside its nbf/exp window is still readable (informational for secrets)
    expired = unique_name("expired")
    past = datetime.now(UTC).replace(microsecond=0) - 10 * DAY
    client.set_secret(expired, "old", expires_on=past)
    got = client.get_secret(expired)
    assert got.value == "old" and got.properties.expires_on == past
    future = unique_name("future")
    later = datetime.now(UTC).replace(microsecond=0) + 10 * DAY
    client.set_secret(future, "later", not_before=later)
    got = client.get_secret(future)
    assert got.value == "later" and got.properties.not_before == later

    # listing shows the latest version's properties
    items = {p.name: p for p in client.list_properties_of_secrets() if p.name == name}
    assert name in items
    item = items[name]
    assert_secret_id(item, server.vault_url, name, versioned=False)
    assert item.content_type == "text/plain"
    assert item.tags == tags
    assert item.expires_on == exp and item.not_before == nbf

    # a new version without metadata: latest's properties are shown
    client.set_secret(name, "rotated")
    item = next(p for p in client.list_properties_of_secrets() if p.name == name)
    assert item.content_type is None
    assert not item.tags
    assert item.expires_on is None


def test_update_secret_properties_changes_only_given_fields(client, server):
    name = unique_name("update")
    nbf = datetime(2025, 1, 1, tzinfo=UTC)
    exp = datetime(2030, 1, 1, tzinfo=UTC)
    v1 = client.set_secret(name, "one", content_type="text/plain", tags={"a": "1", "b": "2"})
    v2 = client.set_secret(name, "two", content_type="application/json", tags={"k": "v"},
                           not_before=nbf, expires_on=exp)

    # latest version (no version argument)
    updated = client.update_secret_properties(name, content_type="password")
    assert isinstance(updated, SecretProperties)
    assert_secret_id(updated, server.vault_url, name)
    assert updated.version == v2.properties.version
    assert updated.content_type == "password"
    assert updated.tags == {"k": "v"}
    assert updated.not_before == nbf and updated.expires_on == exp
    assert updated.enabled is True
    assert updated.created_on == v2.properties.created_on
    assert updated.updated_on >= v2.properties.updated_on

    # tags replace the tag set, other fields unchanged
    updated = client.update_secret_properties(name, tags={"environment": "production", "owner": "team-beta"})
    assert updated.tags == {"environment": "production", "owner": "team-beta"}
    assert updated.content_type == "password"
    assert updated.expires_on == exp

    new_exp = datetime(2035, 5, 5, 5, 5, 5, tzinfo=UTC)
    updated = client.update_secret_properties(name, expires_on=new_exp)
    assert updated.expires_on == new_exp and updated.not_before == nbf
    assert updated.tags == {"environment": "production", "owner": "team-beta"}

    # value is untouched
    got = client.get_secret(name)
    assert got.value == "two"
    assert got.properties.content_type == "password"
    assert got.properties.expires_on == new_exp

    # a specific (older) version; the latest is not affected
    old = client.update_secret_properties(name, v1.properties.version, tags={"old": "yes"})
    assert old.version == v1.properties.version
    assert old.tags == {"old": "yes"}
    assert old.content_type == "text/plain"
    assert client.get_secret(name, v1.properties.version).properties.tags == {"old": "yes"}
    assert client.get_secret(name).properties.tags == {"environment": "production", "owner": "team-beta"}


def test_disabled_secret_get_is_forbidden(client):
    name = unique_name("disabled")
    v1 = client.set_secret(name, "first")
    v2 = client.set_secret(name, "second")
    props = client.update_secret_properties(name, enabled=False)
    assert props.enabled is False
    assert props.version == v2.properties.version

    with pytest.raises(HttpResponseError) as ei:
        client.get_secret(name)
    assert ei.value.status_code == 403
    assert ei.value.error.code == "Forbidden"
    with pytest.raises(HttpResponseError) as ei:
        client.get_secret(name, v2.properties.version)
    assert ei.value.status_code == 403

    # other versions stay readable; listing still shows the disabled secret
    assert client.get_secret(name, v1.properties.version).value == "first"
    versions = {p.version: p.enabled for p in client.list_properties_of_secret_versions(name)}
    assert versions == {v1.properties.version: True, v2.properties.version: False}
    item = next(p for p in client.list_properties_of_secrets() if p.name == name)
    assert item.enabled is False

    # re-enable
    assert client.update_secret_properties(name, enabled=True).enabled is True
    assert client.get_secret(name).value == "second"

    # set disabled from the start
    off = unique_name("born-disabled")
    s = client.set_secret(off, "nope", enabled=False)
    assert s.properties.enabled is False
    with pytest.raises(HttpResponseError) as ei:
        client.get_secret(off)
    assert ei.value.status_code == 403


def test_deleted_disabled_secret(client):
    """Key Vault refuses GET /deletedsecrets/{name} of a disabled secret with 403 SecretDisabled; the SDK's delete
    poller takes that as done, the secret is listed among the deleted, and it recovers still disabled."""
    name = unique_name("del-disabled")
    client.set_secret(name, "v", enabled=False)
    deleted = client.begin_delete_secret(name).result()
    assert deleted.name == name and deleted.properties.enabled is False
    with pytest.raises(HttpResponseError) as ei:
        client.get_deleted_secret(name)
    assert ei.value.status_code == 403
    assert ei.value.error.code == "Forbidden"
    assert name in {d.name for d in client.list_deleted_secrets()}
    recovered = client.begin_recover_deleted_secret(name).result()
    assert recovered.enabled is False


# ---------------------------------------------------------------------------------------
# listing / paging
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("page_size", [2, 3])
def test_list_properties_of_secrets_paging(client, server, page_size):
    prefix = unique_name(f"page{page_size}")
    names = {f"{prefix}-{i:02d}" for i in range(10)}
    for n in sorted(names):
        client.set_secret(n, "v-" + n, tags={"prefix": prefix})

    total = len(list(client.list_properties_of_secrets()))
    pages = pages_of(client.list_properties_of_secrets(max_page_size=page_size))
    sizes = [len(p) for p in pages]
    assert all(s <= page_size for s in sizes), sizes
    assert len(pages) >= math.ceil(total / page_size), sizes
    flat = [p.name for page in pages for p in page]
    assert len(flat) == total, "paging returned a different number of items than an unpaged list"
    assert len(flat) == len(set(n.lower() for n in flat)), "duplicates across pages"
    mine = [p for page in pages for p in page if p.name in names]
    assert {p.name for p in mine} == names
    for p in mine:
        assert_secret_id(p, server.vault_url, p.name, versioned=False)
        assert p.tags == {"prefix": prefix}
        assert p.enabled is True
        assert_recent(p.created_on)
        assert_recent(p.updated_on)


def test_list_properties_of_secrets_without_page_size(client):
    names = {unique_name("plain-list") for _ in range(3)}
    for n in names:
        client.set_secret(n, "x")
    listed = [p.name for p in client.list_properties_of_secrets()]
    assert names <= set(listed)
    assert len(listed) == len(set(listed))


def test_max_page_size_out_of_range(client):
    with pytest.raises(HttpResponseError) as ei:
        list(client.list_properties_of_secrets(max_page_size=26))
    assert ei.value.status_code == 400
    assert ei.value.error.code == "BadParameter"


# ---------------------------------------------------------------------------------------
# delete / recover / purge
# ---------------------------------------------------------------------------------------
def test_delete_get_deleted_and_recover(client, server):
    name = unique_name("delrec")
    v1 = client.set_secret(name, "one", tags={"t": "1"})
    v2 = client.set_secret(name, "two", content_type="text/plain", tags={"t": "2"})

    poller = client.begin_delete_secret(name)
    deleted = poller.result()
    assert isinstance(deleted, DeletedSecret)
    assert deleted.name == name
    assert deleted.id == v2.id
    assert deleted.properties.version == v2.properties.version
    assert deleted.properties.content_type == "text/plain"
    assert deleted.properties.tags == {"t": "2"}
    assert deleted.recovery_id == f"{server.vault_url.rstrip('/')}/deletedsecrets/{name}"
    assert_recent(deleted.deleted_date)
    assert deleted.scheduled_purge_date == deleted.deleted_date + 90 * DAY
    poller.wait()
    assert poller.done()

    # gone from the live view
    with pytest.raises(ResourceNotFoundError) as ei:
        client.get_secret(name)
    assert ei.value.status_code == 404
    assert ei.value.error.code == "SecretNotFound"
    with pytest.raises(ResourceNotFoundError):
        client.get_secret(name, v1.properties.version)
    assert name not in {p.name for p in client.list_properties_of_secrets()}
    with pytest.raises(ResourceNotFoundError):
        client.update_secret_properties(name, enabled=False)
    with pytest.raises(ResourceNotFoundError):
        client.backup_secret(name)
    with pytest.raises(ResourceNotFoundError):
        client.begin_delete_secret(name)

    d = client.get_deleted_secret(name)
    assert isinstance(d, DeletedSecret)
    assert d.name == name
    assert d.id == v2.id
    assert d.recovery_id == deleted.recovery_id
    assert d.deleted_date == deleted.deleted_date
    assert d.scheduled_purge_date == deleted.scheduled_purge_date
    assert d.properties.tags == {"t": "2"}
    assert d.properties.recovery_level == "Recoverable+Purgeable"

    listed = [x for x in client.list_deleted_secrets() if x.name == name]
    assert len(listed) == 1
    item = listed[0]
    assert item.recovery_id == deleted.recovery_id
    assert item.deleted_date == deleted.deleted_date
    assert item.scheduled_purge_date == deleted.scheduled_purge_date
    assert item.properties.version is None  # unversioned id in the list
    assert item.id == f"{server.vault_url.rstrip('/')}/secrets/{name}"

    # name is reserved while soft-deleted
    with pytest.raises(ResourceExistsError) as ei:
        client.set_secret(name, "three")
    assert ei.value.status_code == 409
    assert ei.value.error.code == "Conflict"
    assert (ei.value.error.innererror or {}).get("code") == "ObjectIsDeletedButRecoverable"

    # recover brings back every version, same ids
    rpoller = client.begin_recover_deleted_secret(name)
    recovered = rpoller.result()
    assert isinstance(recovered, SecretProperties)
    assert recovered.name == name
    assert recovered.version == v2.properties.version
    assert recovered.id == v2.id
    rpoller.wait()
    assert rpoller.done()

    assert client.get_secret(name).value == "two"
    assert client.get_secret(name, v1.properties.version).value == "one"
    assert sorted(p.version for p in client.list_properties_of_secret_versions(name)) == sorted(
        [v1.properties.version, v2.properties.version])
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret(name)
    assert name not in {x.name for x in client.list_deleted_secrets()}
    # writable again
    assert client.set_secret(name, "three").value == "three"


def test_purge(client):
    name = unique_name("purge")
    client.set_secret(name, "a")
    client.set_secret(name, "b")
    wait_deleted(client, name)
    assert client.purge_deleted_secret(name) is None

    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        client.get_secret(name)
    assert name not in {x.name for x in client.list_deleted_secrets()}
    with pytest.raises(ResourceNotFoundError):
        client.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        client.begin_recover_deleted_secret(name)

    # name is free again: a brand-new secret with only one version
    s = client.set_secret(name, "fresh")
    assert [p.version for p in client.list_properties_of_secret_versions(name)] == [s.properties.version]


def test_list_deleted_secrets_paging(client, server):
    prefix = unique_name("delpage")
    names = {f"{prefix}-{i}" for i in range(7)}
    for n in names:
        client.set_secret(n, "v", content_type="ct-" + n)
    for n in names:
        wait_deleted(client, n)

    total = len(list(client.list_deleted_secrets()))
    pages = pages_of(client.list_deleted_secrets(max_page_size=2))
    sizes = [len(p) for p in pages]
    assert all(s <= 2 for s in sizes), sizes
    assert len(pages) >= math.ceil(total / 2), sizes
    flat = [d for page in pages for d in page]
    assert len(flat) == total
    mine = {d.name: d for d in flat if d.name in names}
    assert set(mine) == names
    for n, d in mine.items():
        assert isinstance(d, DeletedSecret)
        assert d.recovery_id == f"{server.vault_url.rstrip('/')}/deletedsecrets/{n}"
        assert d.properties.content_type == "ct-" + n
        assert_recent(d.deleted_date)
        assert d.scheduled_purge_date == d.deleted_date + 90 * DAY
    for n in names:
        client.purge_deleted_secret(n)


# ---------------------------------------------------------------------------------------
# backup / restore
# ---------------------------------------------------------------------------------------
def test_backup_and_restore(client, server):
    name = unique_name("backup")
    v1 = client.set_secret(name, "first", tags={"v": "1"})
    v2 = client.set_secret(name, "second", content_type="text/plain", tags={"v": "2"},
                           expires_on=datetime(2032, 2, 2, tzinfo=UTC))
    backup = client.backup_secret(name)
    assert isinstance(backup, bytes) and len(backup) > 0

    # name exists live → 409
    with pytest.raises(ResourceExistsError) as ei:
        client.restore_secret_backup(backup)
    assert ei.value.status_code == 409
    assert ei.value.error.code == "Conflict"

    # soft-deleted → still 409 until purged
    wait_deleted(client, name)
    with pytest.raises(ResourceExistsError) as ei:
        client.restore_secret_backup(backup)
    assert ei.value.status_code == 409

    client.purge_deleted_secret(name)
    restored = client.restore_secret_backup(backup)
    assert isinstance(restored, SecretProperties)
    assert_secret_id(restored, server.vault_url, name)
    assert restored.version == v2.properties.version
    assert restored.content_type == "text/plain"
    assert restored.tags == {"v": "2"}
    assert restored.expires_on == datetime(2032, 2, 2, tzinfo=UTC)

    latest = client.get_secret(name)
    assert latest.value == "second"
    assert latest.properties.version == v2.properties.version
    assert client.get_secret(name, v1.properties.version).value == "first"
    assert client.get_secret(name, v1.properties.version).properties.tags == {"v": "1"}
    assert sorted(p.version for p in client.list_properties_of_secret_versions(name)) == sorted(
        [v1.properties.version, v2.properties.version])

    # a restored secret behaves like any other
    v3 = client.set_secret(name, "third")
    assert v3.properties.version not in (v1.properties.version, v2.properties.version)


def test_backup_restore_many_versions_preserves_attributes(client):
    name = unique_name("bk-many")
    written = []
    for i in range(30):
        kw = {"tags": {"i": str(i), "ключ": "значение"}}
        if i % 3 == 0:
            kw["content_type"] = f"ct-{i}"
        if i % 5 == 0:
            kw["expires_on"] = datetime(2030, 1, 1, tzinfo=UTC) + i * DAY
        if i % 7 == 0:
            kw["not_before"] = datetime(2020, 1, 1, tzinfo=UTC) + i * DAY
        written.append(client.set_secret(name, f"value-{i}", **kw))
    client.update_secret_properties(name, written[4].properties.version, enabled=False)
    before = {p.version: p for p in client.list_properties_of_secret_versions(name)}
    assert len(before) == 30

    blob = client.backup_secret(name)
    delete_and_purge(client, name)
    restored = client.restore_secret_backup(blob)
    assert restored.version == written[-1].properties.version

    after = {p.version: p for p in client.list_properties_of_secret_versions(name, max_page_size=7)}
    assert set(after) == set(before)
    for v, b in before.items():
        a = after[v]
        assert (a.enabled, a.content_type, a.tags, a.expires_on, a.not_before, a.created_on) == (
            b.enabled, b.content_type, b.tags, b.expires_on, b.not_before, b.created_on), v
    for i, s in enumerate(written):
        if i == 4:
            with pytest.raises(HttpResponseError) as ei:
                client.get_secret(name, s.properties.version)
            assert ei.value.status_code == 403
        else:
            assert client.get_secret(name, s.properties.version).value == f"value-{i}"


def test_restore_garbage_is_bad_request(client):
    with pytest.raises(HttpResponseError) as ei:
        client.restore_secret_backup(b"this is not a backup blob at all")
    assert ei.value.status_code == 400
    assert ei.value.error.code == "Malformed backup blob"
    assert ei.value.error.message == "Backup blob contains invalid or corrupt version."


# ---------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------
def test_names_are_case_insensitive(client):
    name = unique_name("CaseName")
    v1 = client.set_secret(name, "one")
    assert client.get_secret(name.lower()).value == "one"
    assert client.get_secret(name.upper(), v1.properties.version).value == "one"

    v2 = client.set_secret(name.upper(), "two")  # different casing → new version of the same secret
    assert client.get_secret(name).value == "two"
    versions = {p.version for p in client.list_properties_of_secret_versions(name.lower())}
    assert versions == {v1.properties.version, v2.properties.version}
    assert sum(1 for p in client.list_properties_of_secrets() if p.name.lower() == name.lower()) == 1

    client.update_secret_properties(name.swapcase(), tags={"case": "x"})
    assert client.get_secret(name).properties.tags == {"case": "x"}

    wait_deleted(client, name.lower())
    with pytest.raises(ResourceExistsError):
        client.set_secret(name.upper(), "three")
    client.get_deleted_secret(name.upper())
    client.purge_deleted_secret(name.swapcase())
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret(name)


def test_name_edge_cases_valid(client):
    for name in ["a", "9starts-with-digit", "-dash-first", "A" * 127]:
        s = client.set_secret(name, "ok-" + name[:5])
        assert client.get_secret(name).value == s.value


@pytest.mark.parametrize("bad", ["under_score", "has.dot", "sp ace", "a" * 128, "ümlaut", "semi;colon",
                                 "slash/inside", "q?mark"])
def test_invalid_names_are_bad_request(client, bad):
    with pytest.raises(HttpResponseError) as ei:
        client.set_secret(bad, "value")
    assert ei.value.status_code == 400, (bad, ei.value)
    assert ei.value.error.code == "BadParameter"
    if re.fullmatch(r"[A-Za-z0-9_.-]+", bad):
        assert bad in (ei.value.error.message or ""), ei.value.error.message
    with pytest.raises(HttpResponseError) as ei:
        client.get_secret(bad)
    assert ei.value.status_code == 400, (bad, ei.value)


def test_oversized_value_is_bad_request(client):
    with pytest.raises(HttpResponseError) as ei:
        client.set_secret(unique_name("huge"), "x" * (64 * 1024))
    assert ei.value.status_code == 400
    assert ei.value.error.code == "BadParameter"


# ---------------------------------------------------------------------------------------
# not-found errors
# ---------------------------------------------------------------------------------------
def test_not_found_errors(client):
    missing = unique_name("missing")
    calls = {
        "get_secret": lambda: client.get_secret(missing),
        "get_secret(version)": lambda: client.get_secret(missing, "0" * 32),
        "update_secret_properties": lambda: client.update_secret_properties(missing, enabled=False),
        "begin_delete_secret": lambda: client.begin_delete_secret(missing),
        "get_deleted_secret": lambda: client.get_deleted_secret(missing),
        "purge_deleted_secret": lambda: client.purge_deleted_secret(missing),
        "begin_recover_deleted_secret": lambda: client.begin_recover_deleted_secret(missing),
        "backup_secret": lambda: client.backup_secret(missing),
    }
    for label, call in calls.items():
        with pytest.raises(ResourceNotFoundError) as ei:
            call()
        assert ei.value.status_code == 404, label
        assert ei.value.error.code == "SecretNotFound", (label, ei.value.error.code)

    # existing secret, unknown version
    name = unique_name("exists")
    client.set_secret(name, "v")
    with pytest.raises(ResourceNotFoundError):
        client.get_secret(name, "f" * 32)
    # recovering a live (non-deleted) secret
    with pytest.raises(ResourceNotFoundError):
        client.begin_recover_deleted_secret(name)


# ---------------------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------------------
def test_challenge_header(raw, server):
    ch = raw.challenge()
    assert ch["authorization"] == f"{server.creds['authority_host'].rstrip('/')}/{server.creds['tenant_id']}"
    assert ch["resource"] == f"https://localhost:{server.port}"
    r = raw.request("GET", "/secrets", headers={"Authorization": "Bearer not-a-real-token"})
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers
    assert r.json()["error"]["code"] == "Unauthorized"


def test_wrong_client_secret_is_rejected(server):
    from azure.identity import ClientSecretCredential
    from azure.keyvault.secrets import SecretClient

    bad = ClientSecretCredential(server.creds["tenant_id"], server.creds["client_id"], "wrong-secret",
                                 authority=server.creds["authority_host"], connection_verify=server.ca_cert,
                                 disable_instance_discovery=True)
    c = SecretClient(server.vault_url, bad, connection_verify=server.ca_cert, verify_challenge_resource=False)
    try:
        with pytest.raises(ClientAuthenticationError):
            c.get_secret("anything")
    finally:
        c.close()
        bad.close()


# ---------------------------------------------------------------------------------------
# named vault URL with challenge-resource verification ON
# ---------------------------------------------------------------------------------------
def test_named_vault_happy_path(named_client, server):
    vault = server.vault_url_named.rstrip("/")
    name = unique_name("named")
    s = named_client.set_secret(name, "via-named", content_type="text/plain", tags={"via": "named"})
    assert s.value == "via-named"
    assert_secret_id(s.properties, vault, name)
    got = named_client.get_secret(name)
    assert got.value == "via-named" and got.id == s.id
    s2 = named_client.set_secret(name, "second")
    assert {p.version for p in named_client.list_properties_of_secret_versions(name)} == {
        s.properties.version, s2.properties.version}
    items = [p for p in named_client.list_properties_of_secrets(max_page_size=2) if p.name == name]
    assert len(items) == 1 and items[0].id == f"{vault}/secrets/{name}"
    upd = named_client.update_secret_properties(name, enabled=False)
    assert upd.enabled is False
    named_client.update_secret_properties(name, enabled=True)

    deleted = wait_deleted(named_client, name)
    assert deleted.recovery_id == f"{vault}/deletedsecrets/{name}"
    assert named_client.get_deleted_secret(name).name == name
    recovered = named_client.begin_recover_deleted_secret(name)
    recovered.wait()
    assert recovered.result().version == s2.properties.version
    backup = named_client.backup_secret(name)
    delete_and_purge(named_client, name)
    restored = named_client.restore_secret_backup(backup)
    assert restored.version == s2.properties.version
    assert named_client.get_secret(name).value == "second"


# ---------------------------------------------------------------------------------------
# vault configuration: retention days and purge protection
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def protected_server(tmp_path_factory):
    srv = make_server(tmp_path_factory, "protected", ["--purge-protection"]).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def short_retention_server(tmp_path_factory):
    srv = make_server(tmp_path_factory, "retention7", ["--retention-days", "7"]).start()
    yield srv
    srv.kill()


def test_purge_protection(protected_server):
    cred = protected_server.credential()
    client = protected_server.client(cred)
    try:
        name = unique_name("protected")
        s = client.set_secret(name, "keep-me")
        assert s.properties.recovery_level == "Recoverable"
        assert s.properties.recoverable_days == 90
        deleted = wait_deleted(client, name)
        assert deleted.scheduled_purge_date == deleted.deleted_date + 90 * DAY

        with pytest.raises(HttpResponseError) as ei:
            client.purge_deleted_secret(name)
        assert ei.value.status_code == 403
        assert ei.value.error.code == "Forbidden"
        # still recoverable after the refused purge
        assert client.get_deleted_secret(name).name == name
        client.begin_recover_deleted_secret(name).wait()
        assert client.get_secret(name).value == "keep-me"
    finally:
        client.close()
        cred.close()


def test_custom_retention_days(short_retention_server):
    cred = short_retention_server.credential()
    client = short_retention_server.client(cred)
    try:
        name = unique_name("retention")
        s = client.set_secret(name, "v")
        assert s.properties.recovery_level == "CustomizedRecoverable+Purgeable"
        assert s.properties.recoverable_days == 7
        deleted = wait_deleted(client, name)
        assert deleted.scheduled_purge_date == deleted.deleted_date + 7 * DAY
        assert deleted.properties.recoverable_days == 7
        client.purge_deleted_secret(name)
        with pytest.raises(ResourceNotFoundError):
            client.get_deleted_secret(name)
    finally:
        client.close()
        cred.close()
