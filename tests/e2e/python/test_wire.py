"""Raw-HTTPS checks of wire details from docs/protocol.md that the SDKs depend on but do not
always surface (integer timestamps, nextLink shape, api-version handling, auth ordering,
headers)."""

from __future__ import annotations

import re
import urllib.parse

import pytest
import requests

from conftest import API_VERSION, VERSION_RE, unique_name

ACCEPTED_API_VERSIONS = [
    "2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6-preview.2", "7.6",
    "2025-06-01-preview", "2025-07-01", "2026-01-01-preview", "2026-03-01-preview", "2026-04-01",
]
RETRY_HEADERS = ("Retry-After", "retry-after-ms", "x-ms-retry-after-ms")


def assert_json(r: requests.Response):
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers.get("Content-Type")
    return r.json()


def assert_error(r: requests.Response, status: int, code: str):
    assert r.status_code == status, (r.status_code, r.text)
    body = assert_json(r)
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    for h in RETRY_HEADERS:
        assert h not in r.headers, f"{h} on a {status}: azure-core would retry it"
    if "x-ms-error-code" in r.headers:
        assert r.headers["x-ms-error-code"] == code
    return body


def assert_int_timestamps(attrs):
    for k in ("created", "updated", "nbf", "exp"):
        if k in attrs and attrs[k] is not None:
            assert type(attrs[k]) is int, (k, attrs[k])


def test_bundle_shape(raw, server):
    name = unique_name("wire")
    r = raw.request("PUT", f"/secrets/{name}", json={
        "value": "v", "contentType": "text/plain", "tags": {"a": "b"},
        "attributes": {"enabled": True, "nbf": 1700000000, "exp": 1893456000}})
    assert r.status_code == 200, r.text
    b = assert_json(r)
    assert b["value"] == "v"
    m = re.fullmatch(re.escape(server.vault_url.rstrip("/")) + r"/secrets/" + name + r"/([0-9a-f]{32})", b["id"])
    assert m, b["id"]
    a = b["attributes"]
    assert_int_timestamps(a)
    assert a["enabled"] is True and a["nbf"] == 1700000000 and a["exp"] == 1893456000
    assert a["created"] == a["updated"]
    assert a["recoveryLevel"] == "Recoverable+Purgeable" and a["recoverableDays"] == 90
    assert b["contentType"] == "text/plain" and b["tags"] == {"a": "b"}
    assert "kid" not in b and b.get("managed") in (None, False)

    # GET without trailing slash, with it, and by version
    for path in (f"/secrets/{name}", f"/secrets/{name}/", f"/secrets/{name}/{m.group(1)}"):
        g = raw.request("GET", path)
        assert g.status_code == 200, (path, g.text)
        assert assert_json(g)["value"] == "v"

    # PATCH latest via trailing slash; update response carries no value
    p = raw.request("PATCH", f"/secrets/{name}/", json={"attributes": {"enabled": False}})
    assert p.status_code == 200, p.text
    pb = assert_json(p)
    assert "value" not in pb and pb["attributes"]["enabled"] is False
    assert pb["contentType"] == "text/plain" and pb["tags"] == {"a": "b"}
    assert_int_timestamps(pb["attributes"])

    d = assert_error(raw.request("GET", f"/secrets/{name}/"), 403, "Forbidden")
    assert (d["error"].get("innererror") or {}).get("code") == "SecretDisabled", d


def test_negative_timestamps_accepted(raw):
    """JS serialises dates after 2038 as negative 32-bit ints; the server must accept them."""
    name = unique_name("neg")
    r = raw.request("PUT", f"/secrets/{name}", json={"value": "v", "attributes": {"exp": -2000000000}})
    assert r.status_code == 200, r.text
    assert type(r.json()["attributes"]["exp"]) is int


def test_delete_recover_purge_shapes(raw, server):
    name = unique_name("wire-del")
    put = raw.request("PUT", f"/secrets/{name}", json={"value": "v"}).json()
    d = raw.request("DELETE", f"/secrets/{name}")
    assert d.status_code == 200, d.text
    db = assert_json(d)
    assert "value" not in db
    assert db["id"] == put["id"]
    assert db["recoveryId"] == f"{server.vault_url.rstrip('/')}/deletedsecrets/{name}"
    assert type(db["deletedDate"]) is int and type(db["scheduledPurgeDate"]) is int
    assert db["scheduledPurgeDate"] == db["deletedDate"] + 90 * 86400

    assert_error(raw.request("GET", f"/secrets/{name}/"), 404, "SecretNotFound")
    assert_error(raw.request("PUT", f"/secrets/{name}", json={"value": "x"}), 409, "Conflict")
    g = raw.request("GET", f"/deletedsecrets/{name}")
    assert g.status_code == 200 and "value" not in g.json()

    rec = raw.request("POST", f"/deletedsecrets/{name}/recover")
    assert rec.status_code == 200, rec.text
    rb = assert_json(rec)
    assert "value" not in rb and rb["id"] == put["id"]

    raw.request("DELETE", f"/secrets/{name}")
    pur = raw.request("DELETE", f"/deletedsecrets/{name}")
    assert pur.status_code == 204, pur.text
    assert pur.content == b""
    assert_error(raw.request("GET", f"/deletedsecrets/{name}"), 404, "SecretNotFound")


@pytest.mark.parametrize("kind", ["secrets", "versions", "deletedsecrets"])
def test_next_link_shape_and_last_page_null(raw, server, kind):
    prefix = unique_name("nl")
    vault = server.vault_url.rstrip("/")
    if kind == "versions":
        for i in range(5):
            assert raw.request("PUT", f"/secrets/{prefix}", json={"value": f"v{i}"}).status_code == 200
        path = f"/secrets/{prefix}/versions"
        item_re = re.escape(vault) + r"/secrets/" + prefix + r"/[0-9a-f]{32}"
    else:
        for i in range(5):
            assert raw.request("PUT", f"/secrets/{prefix}-{i}", json={"value": "v"}).status_code == 200
            if kind == "deletedsecrets":
                assert raw.request("DELETE", f"/secrets/{prefix}-{i}").status_code == 200
        path = f"/{kind}"
        item_re = re.escape(vault) + r"/secrets/[0-9A-Za-z-]+"
    url = raw.url(path)
    params = {"api-version": "7.5", "maxresults": 2}
    seen, pages = [], 0
    while True:
        r = raw.session.get(url, params=params, verify=server.ca_cert, timeout=10)
        assert r.status_code == 200, r.text
        body = assert_json(r)
        assert isinstance(body["value"], list)
        assert len(body["value"]) <= 2
        for item in body["value"]:
            assert "value" not in item
            assert_int_timestamps(item["attributes"])
            assert re.fullmatch(item_re, item["id"]), item
            if kind == "deletedsecrets":
                assert type(item["deletedDate"]) is int and type(item["scheduledPurgeDate"]) is int
                assert item["recoveryId"] == item["id"].replace("/secrets/", "/deletedsecrets/")
        seen += [i["id"] for i in body["value"]]
        pages += 1
        assert "nextLink" in body, "send an explicit nextLink (null on the last page)"
        nl = body["nextLink"]
        if nl is None:
            break
        u = urllib.parse.urlsplit(nl)
        assert f"{u.scheme}://{u.netloc}" == vault, nl
        assert u.path == path, nl
        q = dict(urllib.parse.parse_qsl(u.query))
        assert q.get("api-version") == "7.5", f"nextLink must echo the request's api-version: {nl}"
        assert re.fullmatch(r"[A-Za-z0-9_-]+", q.get("$skiptoken", "")), nl
        assert q.get("maxresults") == "2", nl
        url, params = nl, None  # JS requests nextLink verbatim
        assert pages < 100
    assert len(seen) == len(set(seen))
    if kind == "versions":
        assert len(seen) == 5 and pages >= 3
    else:
        assert {f"{vault}/secrets/{prefix}-{i}" for i in range(5)} <= set(seen)


def test_put_with_empty_attributes_object(raw):
    """Older JS clients send "attributes": {}."""
    name = unique_name("emptyattrs")
    r = raw.request("PUT", f"/secrets/{name}", json={"value": "v", "attributes": {}})
    assert r.status_code == 200, r.text
    assert r.json()["attributes"]["enabled"] is True


def test_versions_of_unknown_name(raw):
    r = raw.request("GET", f"/secrets/{unique_name('nobody')}/versions")
    assert r.status_code == 200, r.text
    assert r.json() == {"value": [], "nextLink": None}


@pytest.mark.parametrize("maxresults", [0, 26, -1])
def test_maxresults_out_of_range(raw, maxresults):
    assert_error(raw.request("GET", "/secrets", params={"maxresults": maxresults}), 400, "BadParameter")


@pytest.mark.parametrize("version", ACCEPTED_API_VERSIONS)
def test_accepted_api_versions(raw, version):
    name = unique_name("apiver")
    r = raw.request("PUT", f"/secrets/{name}", params={"api-version": version}, json={"value": "v"})
    assert r.status_code == 200, (version, r.text)
    r = raw.request("GET", f"/secrets/{name}/", params={"api-version": version})
    assert r.status_code == 200 and r.json()["value"] == "v", (version, r.text)


def test_unknown_and_missing_api_version(raw):
    body = assert_error(raw.request("GET", "/secrets", params={"api-version": "1999-01-01"}), 400, "BadParameter")
    assert "1999-01-01" in body["error"]["message"] and "not recognized" in body["error"]["message"], body
    r = raw.session.get(raw.url("/secrets"), verify=raw.server.ca_cert, timeout=10)
    assert_error(r, 400, "BadParameter")


def test_percent_encoded_query_name(raw, server):
    """JS sends ?api%2Dversion=…; the query *name* must be decoded."""
    name = unique_name("pct")
    assert raw.request("PUT", f"/secrets/{name}", json={"value": "pct"}).status_code == 200
    r = raw.session.get(raw.url(f"/secrets/{name}/") + "?api%2Dversion=2026-04-01",
                        verify=server.ca_cert, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["value"] == "pct"


def test_auth_is_checked_before_anything_else(server):
    """The first SDK request has no Authorization and an emptied body: answer 401, never 400/404."""
    base = server.vault_url.rstrip("/")
    cases = [
        ("PUT", f"/secrets/{unique_name('x')}?api-version={API_VERSION}"),          # empty body
        ("PUT", "/secrets/bad_name!?api-version=" + API_VERSION),                   # invalid name
        ("GET", f"/secrets/{unique_name('x')}/?api-version=1999-01-01"),             # bad api-version
        ("GET", f"/secrets/{unique_name('missing')}/?api-version={API_VERSION}"),    # would be 404
        ("POST", f"/secrets/restore?api-version={API_VERSION}"),
        ("DELETE", f"/deletedsecrets/{unique_name('x')}?api-version={API_VERSION}"),
    ]
    for method, path in cases:
        headers = {"Content-Type": "application/json", "Content-Length": "0"}
        r = requests.request(method, base + path, headers=headers, data=b"", verify=server.ca_cert, timeout=10)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        www = r.headers.get("WWW-Authenticate", "")
        assert www == (f'Bearer authorization="{server.creds["authority_host"].rstrip("/")}/'
                       f'{server.creds["tenant_id"]}", resource="https://localhost:{server.port}"'), www
        body = assert_json(r)
        assert body["error"]["code"] == "Unauthorized"
        for h in RETRY_HEADERS:
            assert h not in r.headers


def test_not_found_has_no_retry_after(raw):
    assert_error(raw.request("GET", f"/secrets/{unique_name('nf')}/"), 404, "SecretNotFound")
    assert_error(raw.request("POST", f"/secrets/{unique_name('nf')}/backup"), 404, "SecretNotFound")
    assert_error(raw.request("POST", f"/deletedsecrets/{unique_name('nf')}/recover"), 404, "SecretNotFound")


def test_backup_value_is_unpadded_base64url(raw):
    name = unique_name("bk")
    raw.request("PUT", f"/secrets/{name}", json={"value": "v"})
    r = raw.request("POST", f"/secrets/{name}/backup")
    assert r.status_code == 200, r.text
    v = r.json()["value"]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", v), "backup value must be base64url without padding"
    # restore with padding re-added is also accepted by decoders that tolerate it; the SDKs
    # strip padding, which must work:
    raw.request("DELETE", f"/secrets/{name}")
    assert raw.request("DELETE", f"/deletedsecrets/{name}").status_code == 204
    rr = raw.request("POST", "/secrets/restore", json={"value": v})
    assert rr.status_code == 200, rr.text
    rb = rr.json()
    assert VERSION_RE.match(rb["id"].rsplit("/", 1)[-1])
    assert raw.request("GET", f"/secrets/{name}/").json()["value"] == "v"
