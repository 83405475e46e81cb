"""The official Python SDK against two `keyvault serve` nodes over one PostgreSQL database.

Not a pytest module: crates/keyvault-cli/tests/postgres_nodes.rs starts the database and both nodes, then
runs this script with the venv's Python. Each node gets its own SecretClient and its own credential (each
node's issuer); everything written through one is seen through the other.

    python two_nodes.py CA_PEM TENANT CLIENT_ID URL_A URL_B    (client secret in KV_CLIENT_SECRET)
"""

import os
import sys

from azure.core.exceptions import ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient


def client(ca, tenant, client_id, secret, url):
    cred = ClientSecretCredential(
        tenant, client_id, secret, authority=url, connection_verify=ca, disable_instance_discovery=True
    )
    return SecretClient(url, cred, verify_challenge_resource=False, connection_verify=ca)


def main():
    ca, tenant, client_id, url_a, url_b = sys.argv[1:6]
    secret = os.environ["KV_CLIENT_SECRET"]
    a = client(ca, tenant, client_id, secret, url_a)
    b = client(ca, tenant, client_id, secret, url_b)
    name = "py-two-nodes"

    first = a.set_secret(name, "from-a", content_type="text/plain", tags={"node": "a"})
    got = b.get_secret(name)
    assert got.value == "from-a" and got.properties.version == first.properties.version, got.id
    assert got.properties.tags == {"node": "a"}

    second = b.set_secret(name, "from-b")
    assert a.get_secret(name).value == "from-b"
    assert a.get_secret(name, first.properties.version).value == "from-a"
    versions = {p.version for p in a.list_properties_of_secret_versions(name)}
    assert versions == {first.properties.version, second.properties.version}, versions
    assert name in {p.name for p in b.list_properties_of_secrets(max_page_size=2)}

    b.begin_delete_secret(name).wait()
    try:
        a.get_secret(name)
        raise AssertionError("deleted through B but still readable through A")
    except ResourceNotFoundError:
        pass
    assert a.get_deleted_secret(name).recovery_id.endswith("/deletedsecrets/" + name)
    assert name in {d.name for d in a.list_deleted_secrets()}

    a.begin_recover_deleted_secret(name).wait()
    assert b.get_secret(name).value == "from-b"
    print("two nodes: one vault")


if __name__ == "__main__":
    main()
