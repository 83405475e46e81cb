"""Certificate and workload identity credentials of the official azure-identity against the server.

The server is started with ``--config FILE`` declaring:

- a client with a certificate (``[[clients]] certificates``): ``azure.identity.CertificateCredential`` signs a
  client assertion with the certificate's RSA key (MSAL builds it: header thumbprint, ``aud`` = the token
  endpoint from the discovery document) and the server verifies it; ``azure.identity.aio``'s builds its own,
  with base64 padding on every part;
- a trusted issuer (a JWKS file: the test's own "cluster" key) and a client federated to one of its subjects
  (``federated``): ``azure.identity.WorkloadIdentityCredential`` posts the token file's content, as on AKS.

Both read a secret the ``--dev`` client wrote; a certificate the server doesn't know, and a federated token of
another subject, get ``ClientAuthenticationError`` with Entra's codes.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
import uuid

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, WorkloadIdentityCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from conftest import make_server, unique_name

CERT_CLIENT = str(uuid.uuid4())
WI_CLIENT = str(uuid.uuid4())
ISSUER = "https://oidc.prod-aks.example.com/11111111-cluster/"
SUBJECT = "system:serviceaccount:apps:billing"


def new_certificate():
    """An RSA key and a self-signed certificate: (key PEM + certificate PEM, certificate PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e-cert-client")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem + cert_pem, cert_pem


def b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


CLUSTER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLUSTER_KID = "cluster-key-1"


def cluster_token(subject: str, audience: str = "api://AzureADTokenExchange", key=CLUSTER_KEY) -> str:
    """A service account token, as the cluster's OIDC issuer signs it."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": subject, "aud": [audience], "iat": now, "nbf": now, "exp": now + 3600}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": CLUSTER_KID})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("assertions")
    client_pem, cert_pem = new_certificate()
    (base / "client.pem").write_bytes(client_pem)
    (base / "cert.pem").write_bytes(cert_pem)
    numbers = CLUSTER_KEY.public_key().public_numbers()
    jwks = {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": CLUSTER_KID,
                      "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}]}
    (base / "jwks.json").write_text(json.dumps(jwks))
    config = base / "keyvault.toml"
    config.write_text(
        f"""
[[trusted_issuers]]
issuer = "{ISSUER}"
audience = "api://keyvault-rs"
jwks_file = "{base / 'jwks.json'}"

[[clients]]
client_id = "{CERT_CLIENT}"
certificates = ["{base / 'cert.pem'}"]

[[clients]]
client_id = "{WI_CLIENT}"
federated = [{{ issuer = "{ISSUER}", subject = "{SUBJECT}" }}]
"""
    )
    srv = make_server(tmp_path_factory, "assertion-server", ["--config", str(config)]).start()
    srv.client_pem = base / "client.pem"
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def seeded(server, client):
    name = unique_name("wi")
    client.set_secret(name, "seen-through-an-assertion")
    return name


def certificate_credential(srv, path, **kwargs):
    return CertificateCredential(
        srv.creds["tenant_id"], CERT_CLIENT, str(path),
        authority=srv.creds["authority_host"], connection_verify=srv.ca_cert,
        disable_instance_discovery=True, **kwargs,
    )


@pytest.mark.parametrize("send_chain", [False, True])
def test_certificate_credential_reads_a_secret(server, seeded, send_chain):
    srv = server
    cred = certificate_credential(srv, srv.client_pem, send_certificate_chain=send_chain)
    client = srv.client(cred)
    assert client.get_secret(seeded).value == "seen-through-an-assertion"


async def test_async_certificate_credential_reads_a_secret(server, seeded):
    """azure.identity.aio's CertificateCredential builds its assertion itself (not through MSAL), with
    ``base64.urlsafe_b64encode`` padding on every part and the signature made over the padded text: a 2048-bit
    RSA signature always ends in ``==``. Entra accepts it; so must the server."""
    from azure.identity.aio import CertificateCredential as AsyncCertificateCredential

    srv = server
    cred = AsyncCertificateCredential(
        srv.creds["tenant_id"], CERT_CLIENT, str(srv.client_pem),
        authority=srv.creds["authority_host"], connection_verify=srv.ca_cert,
        disable_instance_discovery=True,
    )
    client = srv.async_client(cred)
    try:
        secret = await client.get_secret(seeded)
        assert secret.value == "seen-through-an-assertion"
    finally:
        await client.close()
        await cred.close()


def test_unknown_certificate_is_refused(server, tmp_path):
    srv = server
    other_pem, _ = new_certificate()
    path = tmp_path / "other.pem"
    path.write_bytes(other_pem)
    cred = certificate_credential(srv, path)
    port = srv.port
    with pytest.raises(ClientAuthenticationError) as e:
        cred.get_token(f"https://localhost:{port}/.default")
    assert "AADSTS700027" in e.value.message, e.value.message


def test_msal_reuses_its_assertion_for_another_scope(server, tmp_path_factory):
    """MSAL keeps a signed assertion for 9 minutes: a token for a second scope carries the same one (same
    ``jti``). Accepted by default, as Entra accepts it; refused with ``allow_client_assertion_reuse = false``."""
    cred = certificate_credential(server, server.client_pem)
    p = server.port
    cred.get_token(f"https://localhost:{p}/.default")
    cred.get_token(f"https://localhost:{p}//.default")  # the same resource, another scope string

    config = server.client_pem.parent / "keyvault.toml"
    strict_config = server.client_pem.parent / "strict.toml"
    strict_config.write_text("allow_client_assertion_reuse = false\n" + config.read_text())
    strict = make_server(tmp_path_factory, "assertion-once", ["--config", str(strict_config)]).start()
    try:
        cred = certificate_credential(strict, server.client_pem)
        p = strict.port
        cred.get_token(f"https://localhost:{p}/.default")
        with pytest.raises(ClientAuthenticationError) as e:
            cred.get_token(f"https://localhost:{p}//.default")
        assert "AADSTS50027" in e.value.message and "used before" in e.value.message, e.value.message
    finally:
        strict.kill()


def workload_credential(srv, token_file):
    return WorkloadIdentityCredential(
        tenant_id=srv.creds["tenant_id"], client_id=WI_CLIENT, token_file_path=str(token_file),
        authority=srv.creds["authority_host"], connection_verify=srv.ca_cert,
        disable_instance_discovery=True,
    )


def test_workload_identity_reads_a_secret(server, seeded, tmp_path):
    srv = server
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(cluster_token(SUBJECT))
    client = srv.client(workload_credential(srv, token_file))
    assert client.get_secret(seeded).value == "seen-through-an-assertion"


def test_workload_identity_of_another_subject_is_refused(server, tmp_path):
    srv = server
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(cluster_token("system:serviceaccount:apps:intruder"))
    with pytest.raises(ClientAuthenticationError) as e:
        workload_credential(srv, token_file).get_token(f"https://localhost:{srv.port}/.default")
    assert "AADSTS700213" in e.value.message, e.value.message
    # Signed by a key the cluster never published: refused too.
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token_file.write_text(cluster_token(SUBJECT, key=rogue))
    with pytest.raises(ClientAuthenticationError) as e:
        workload_credential(srv, token_file).get_token(f"https://localhost:{srv.port}/.default")
    assert "AADSTS50013" in e.value.message, e.value.message
