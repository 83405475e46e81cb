"""azure.keyvault.secrets.aio.SecretClient + azure.identity.aio.ClientSecretCredential
against the keyvault binary (aiohttp transport)."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.secrets import DeletedSecret, KeyVaultSecret, SecretProperties

from conftest import VERSION_RE, unique_name

UTC = timezone.utc
DAY = timedelta(days=1)


@pytest.fixture
async def aclient(server):
    cred = server.async_credential()
    client = server.async_client(cred)
    try:
        yield client
    finally:
        await client.close()
        await cred.close()


@pytest.fixture
async def named_aclient(server):
    cred = server.async_credential()
    client = server.async_client(cred, named=True)
    try:
        yield client
    finally:
        await client.close()
        await cred.close()


async def collect(paged):
    return [x async for x in paged]


async def collect_pages(paged):
    pages = []
    async for page in paged.by_page():
        pages.append([x async for x in page])
    return pages


async def test_set_get_versions(aclient, server):
    name = unique_name("aio-basic")
    s1 = await aclient.set_secret(name, "one", content_type="text/plain", tags={"k": "v"})
    assert isinstance(s1, KeyVaultSecret)
    assert s1.value == "one"
    assert VERSION_RE.match(s1.properties.version)
    assert s1.id == f"{server.vault_url.rstrip('/')}/secrets/{name}/{s1.properties.version}"
    assert s1.properties.content_type == "text/plain"
    assert s1.properties.tags == {"k": "v"}
    assert s1.properties.recovery_level == "Recoverable+Purgeable"
    s2 = await aclient.set_secret(name, "two")
    assert s2.properties.version != s1.properties.version

    got = await aclient.get_secret(name)
    assert got.value == "two" and got.properties.version == s2.properties.version
    assert got.properties.content_type is None
    old = await aclient.get_secret(name, s1.properties.version)
    assert old.value == "one" and old.properties.tags == {"k": "v"}

    versions = await collect(aclient.list_properties_of_secret_versions(name))
    assert {p.version for p in versions} == {s1.properties.version, s2.properties.version}


async def test_dates_roundtrip(aclient):
    name = unique_name("aio-dates")
    nbf = datetime(2024, 2, 29, 12, 0, 1, tzinfo=UTC)
    exp = datetime(2033, 3, 3, 3, 3, 3, tzinfo=UTC)
    s = await aclient.set_secret(name, "v", not_before=nbf, expires_on=exp, enabled=True)
    assert s.properties.not_before == nbf and s.properties.expires_on == exp
    got = await aclient.get_secret(name)
    assert got.properties.not_before == nbf and got.properties.expires_on == exp
    assert got.properties.created_on.tzinfo is not None


async def test_concurrent_writes(aclient):
    name = unique_name("aio-concurrent")
    results = await asyncio.gather(*(aclient.set_secret(name, f"v{i}") for i in range(20)))
    versions = {r.properties.version for r in results}
    assert len(versions) == 20
    listed = {p.version for p in await collect(aclient.list_properties_of_secret_versions(name, max_page_size=3))}
    assert listed == versions
    for r in results[:5]:
        assert (await aclient.get_secret(name, r.properties.version)).value == r.value


async def test_paging(aclient):
    prefix = unique_name("aio-page")
    names = {f"{prefix}-{i}" for i in range(10)}
    await asyncio.gather(*(aclient.set_secret(n, "x") for n in names))
    total = len(await collect(aclient.list_properties_of_secrets()))
    pages = await collect_pages(aclient.list_properties_of_secrets(max_page_size=3))
    sizes = [len(p) for p in pages]
    assert all(s <= 3 for s in sizes), sizes
    assert len(pages) >= math.ceil(total / 3)
    flat = [p.name for page in pages for p in page]
    assert len(flat) == total == len(set(flat))
    assert names <= set(flat)


async def test_update_and_disabled(aclient):
    name = unique_name("aio-update")
    await aclient.set_secret(name, "v", content_type="a", tags={"x": "1"})
    props = await aclient.update_secret_properties(name, enabled=False)
    assert isinstance(props, SecretProperties)
    assert props.enabled is False and props.content_type == "a" and props.tags == {"x": "1"}
    with pytest.raises(HttpResponseError) as ei:
        await aclient.get_secret(name)
    assert ei.value.status_code == 403
    assert ei.value.error.code == "Forbidden"
    props = await aclient.update_secret_properties(name, enabled=True, tags={"y": "2"})
    assert props.enabled is True and props.tags == {"y": "2"} and props.content_type == "a"
    assert (await aclient.get_secret(name)).value == "v"


async def test_delete_recover_purge(aclient, server):
    name = unique_name("aio-delete")
    s = await aclient.set_secret(name, "v1")
    await aclient.set_secret(name, "v2")
    deleted = await aclient.delete_secret(name)
    assert isinstance(deleted, DeletedSecret)
    assert deleted.name == name
    assert deleted.recovery_id == f"{server.vault_url.rstrip('/')}/deletedsecrets/{name}"
    assert deleted.scheduled_purge_date == deleted.deleted_date + 90 * DAY

    with pytest.raises(ResourceNotFoundError):
        await aclient.get_secret(name)
    d = await aclient.get_deleted_secret(name)
    assert d.name == name and d.recovery_id == deleted.recovery_id
    assert name in {x.name for x in await collect(aclient.list_deleted_secrets(max_page_size=2))}
    with pytest.raises(ResourceExistsError) as ei:
        await aclient.set_secret(name, "v3")
    assert ei.value.status_code == 409

    recovered = await aclient.recover_deleted_secret(name)
    assert isinstance(recovered, SecretProperties) and recovered.name == name
    assert (await aclient.get_secret(name)).value == "v2"
    assert (await aclient.get_secret(name, s.properties.version)).value == "v1"

    await aclient.delete_secret(name)
    assert await aclient.purge_deleted_secret(name) is None
    with pytest.raises(ResourceNotFoundError):
        await aclient.get_deleted_secret(name)
    assert (await aclient.set_secret(name, "fresh")).value == "fresh"


async def test_backup_restore(aclient):
    name = unique_name("aio-backup")
    s1 = await aclient.set_secret(name, "one")
    s2 = await aclient.set_secret(name, "two", tags={"b": "2"})
    blob = await aclient.backup_secret(name)
    assert isinstance(blob, bytes) and blob
    with pytest.raises(ResourceExistsError):
        await aclient.restore_secret_backup(blob)
    await aclient.delete_secret(name)
    await aclient.purge_deleted_secret(name)
    restored = await aclient.restore_secret_backup(blob)
    assert restored.name == name and restored.version == s2.properties.version
    assert restored.tags == {"b": "2"}
    assert (await aclient.get_secret(name, s1.properties.version)).value == "one"
    assert (await aclient.get_secret(name)).value == "two"


async def test_errors(aclient):
    missing = unique_name("aio-missing")
    for coro in (aclient.get_secret(missing), aclient.get_deleted_secret(missing),
                 aclient.purge_deleted_secret(missing), aclient.backup_secret(missing),
                 aclient.delete_secret(missing), aclient.recover_deleted_secret(missing),
                 aclient.update_secret_properties(missing, enabled=True)):
        with pytest.raises(ResourceNotFoundError) as ei:
            await coro
        assert ei.value.status_code == 404
        assert ei.value.error.code == "SecretNotFound"
    with pytest.raises(HttpResponseError) as ei:
        await aclient.set_secret("not_valid", "v")
    assert ei.value.status_code == 400 and ei.value.error.code == "BadParameter"
    with pytest.raises(HttpResponseError) as ei:
        await aclient.restore_secret_backup(b"\x00garbage\xff" * 10)
    assert ei.value.status_code == 400


async def test_named_vault_happy_path(named_aclient, server):
    vault = server.vault_url_named.rstrip("/")
    name = unique_name("aio-named")
    s = await named_aclient.set_secret(name, "named-value", tags={"via": "aio-named"})
    assert s.id == f"{vault}/secrets/{name}/{s.properties.version}"
    assert (await named_aclient.get_secret(name)).value == "named-value"
    items = [p async for p in named_aclient.list_properties_of_secrets(max_page_size=2) if p.name == name]
    assert len(items) == 1 and items[0].id == f"{vault}/secrets/{name}"
    deleted = await named_aclient.delete_secret(name)
    assert deleted.recovery_id == f"{vault}/deletedsecrets/{name}"
    await named_aclient.recover_deleted_secret(name)
    assert (await named_aclient.get_secret(name)).value == "named-value"
