"""Access control through the official azure-keyvault-secrets (sync) client.

The server is started with ``--config FILE`` declaring two extra OAuth clients
(secrets hashed with ``keyvault hash-secret``, read on stdin) and role
assignments: one is "Key Vault Secrets User" (get + list), the other
"Key Vault Reader" (list: metadata only). The ``--dev`` client is Key Vault
Administrator and seeds the secrets. Each principal authenticates with its own
``ClientSecretCredential`` and gets exactly its role's rights: everything else
is a 403 with Key Vault's ``Forbidden`` error.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential

from conftest import KEYVAULT_BIN, make_server, unique_name


def hash_secret(secret: str) -> str:
    out = subprocess.run(
        [str(KEYVAULT_BIN), "hash-secret"], input=secret + "\n", capture_output=True,
        text=True, timeout=30, check=True,
    )
    phc = out.stdout.strip()
    assert phc.startswith("$argon2id$"), phc
    assert secret not in out.stdout and secret not in out.stderr
    return phc


def new_client():
    return str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex


USER = new_client()
READER = new_client()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("access")
    config = base / "keyvault.toml"
    config.write_text(
        f"""
[[clients]]
client_id = "{USER[0]}"
secret_hashes = ["{hash_secret(USER[1])}"]

[[clients]]
client_id = "{READER[0]}"
secret_hashes = ["{hash_secret(READER[1])}"]

[[assignments]]
principal = "{USER[0]}"
role = "Key Vault Secrets User"
scope = "/"

[[assignments]]
principal = "{READER[0]}"
role = "Key Vault Reader"
scope = "/"
"""
    )
    srv = make_server(tmp_path_factory, "access-server", ["--config", str(config)]).start()
    yield srv
    srv.kill()


def principal_client(server, who):
    client_id, secret = who
    cred = ClientSecretCredential(
        server.creds["tenant_id"], client_id, secret,
        authority=server.creds["authority_host"], connection_verify=server.ca_cert,
        disable_instance_discovery=True,
    )
    return server.client(cred), cred


@pytest.fixture(scope="module")
def seeded(server, client):
    name = unique_name("acl")
    client.set_secret(name, "seed-value")
    other = unique_name("acl2")
    client.set_secret(other, "other-value")
    return name, other


def assert_forbidden(excinfo):
    e = excinfo.value
    assert e.status_code == 403, (e.status_code, e.message)
    assert e.error is not None and e.error.code == "Forbidden", e.error
    # Key Vault's RBAC message names the principal and the data action; never a value.
    assert "not authorized" in e.message
    assert "seed-value" not in e.message


def test_secrets_user_can_get_but_not_set(server, seeded):
    name, _ = seeded
    c, cred = principal_client(server, USER)
    try:
        assert c.get_secret(name).value == "seed-value"
        names = {p.name for p in c.list_properties_of_secrets()}
        assert name in names
        with pytest.raises(HttpResponseError) as excinfo:
            c.set_secret(name, "overwritten")
        assert_forbidden(excinfo)
        assert "setSecret" in excinfo.value.message
        with pytest.raises(HttpResponseError) as excinfo:
            c.begin_delete_secret(name).result()
        assert_forbidden(excinfo)
    finally:
        c.close()
        cred.close()


def test_reader_can_list_but_not_get(server, seeded):
    name, other = seeded
    c, cred = principal_client(server, READER)
    try:
        props = {p.name: p for p in c.list_properties_of_secrets()}
        assert name in props and other in props
        assert props[name].enabled is True
        versions = list(c.list_properties_of_secret_versions(name))
        assert len(versions) == 1
        with pytest.raises(HttpResponseError) as excinfo:
            c.get_secret(name)
        assert_forbidden(excinfo)
        assert "getSecret" in excinfo.value.message
        with pytest.raises(HttpResponseError) as excinfo:
            c.set_secret(unique_name("nope"), "x")
        assert_forbidden(excinfo)
    finally:
        c.close()
        cred.close()


def test_admin_still_has_full_rights_and_nothing_changed(client, seeded):
    name, _ = seeded
    # The denied set_secret above did not create a version.
    versions = list(client.list_properties_of_secret_versions(name))
    assert len(versions) == 1
    assert client.get_secret(name).value == "seed-value"


def test_unknown_secret_for_user_is_404_not_403(server):
    # Authorization at vault scope passes, so a missing secret is the usual 404.
    from azure.core.exceptions import ResourceNotFoundError

    c, cred = principal_client(server, USER)
    try:
        with pytest.raises(ResourceNotFoundError):
            c.get_secret(unique_name("missing"))
    finally:
        c.close()
        cred.close()
