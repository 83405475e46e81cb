// Official @azure/keyvault-secrets + @azure/identity against the keyvault binary.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { lookup as dnsLookup } from "node:dns";
import { ClientSecretCredential } from "@azure/identity";
import { SecretClient } from "@azure/keyvault-secrets";
import { startServer } from "./server.mjs";

const VERSION_RE = /^[0-9a-f]{32}$/;
const uniq = (prefix) => `${prefix}-${randomBytes(6).toString("hex")}`;
const poll = { intervalInMs: 200 };

// Node does not resolve *.localhost; map it to 127.0.0.1 for the named-vault test. The
// function is handed to the https.Agent through tlsOptions (spread into the agent options,
// which net.connect honours as `lookup`).
function localhostLookup(hostname, options, callback) {
  if (typeof options === "function") [callback, options] = [options, {}];
  if (/\.localhost\.?$/i.test(hostname)) {
    if (options && options.all) return callback(null, [{ address: "127.0.0.1", family: 4 }]);
    return callback(null, "127.0.0.1", 4);
  }
  return dnsLookup(hostname, options, callback);
}

async function collect(iter) {
  const out = [];
  for await (const x of iter) out.push(x);
  return out;
}

async function collectPages(iter, maxPageSize) {
  const pages = [];
  for await (const page of iter.byPage({ maxPageSize })) pages.push(page);
  return pages;
}

async function expectRestError(promiseOrFn, status, code) {
  const p = typeof promiseOrFn === "function" ? promiseOrFn() : promiseOrFn;
  await assert.rejects(p, (err) => {
    assert.equal(err.name, "RestError", `expected RestError, got ${err.name}: ${err.message}`);
    assert.equal(err.statusCode, status, err.message);
    if (code) assert.equal(err.code, code, err.message);
    return true;
  });
}

describe("@azure/keyvault-secrets against keyvault", () => {
  let server;
  let credential;
  let client;
  let vault;

  before(async () => {
    server = await startServer();
    const { creds, ca } = server;
    vault = creds.vault_url.replace(/\/$/, "");
    // CA trust through pipeline tlsOptions: works for both the identity and the secrets pipelines.
    credential = new ClientSecretCredential(creds.tenant_id, creds.client_id, creds.client_secret, {
      authorityHost: creds.authority_host,
      disableInstanceDiscovery: true,
      tlsOptions: { ca },
    });
    client = new SecretClient(creds.vault_url, credential, {
      disableChallengeResourceVerification: true,
      tlsOptions: { ca },
    });
  });

  after(async () => {
    if (server) await server.stop();
  });

  test("set and get", async () => {
    const name = uniq("js-basic");
    const set = await client.setSecret(name, "hunter2", {
      contentType: "text/plain",
      tags: { env: "test" },
    });
    assert.equal(set.value, "hunter2");
    assert.equal(set.name, name);
    assert.match(set.properties.version, VERSION_RE);
    assert.equal(set.properties.id, `${vault}/secrets/${name}/${set.properties.version}`);
    assert.equal(set.properties.vaultUrl.replace(/\/$/, ""), vault);
    assert.equal(set.properties.enabled, true);
    assert.equal(set.properties.contentType, "text/plain");
    assert.deepEqual(set.properties.tags, { env: "test" });
    assert.ok(set.properties.createdOn instanceof Date);
    assert.ok(Math.abs(set.properties.createdOn.getTime() - Date.now()) < 5 * 60 * 1000);
    assert.equal(set.properties.recoveryLevel, "Recoverable+Purgeable");
    assert.equal(set.properties.recoverableDays, 90);

    const got = await client.getSecret(name);
    assert.equal(got.value, "hunter2");
    assert.equal(got.properties.version, set.properties.version);
    const byVersion = await client.getSecret(name, { version: set.properties.version });
    assert.equal(byVersion.value, "hunter2");
  });

  test("dates round trip", async () => {
    const name = uniq("js-dates");
    const notBefore = new Date("2024-01-02T03:04:05Z");
    const expiresOn = new Date("2031-06-07T08:09:10Z");
    await client.setSecret(name, "v", { notBefore, expiresOn, enabled: true });
    const got = await client.getSecret(name);
    assert.equal(got.properties.notBefore.toISOString(), notBefore.toISOString());
    assert.equal(got.properties.expiresOn.toISOString(), expiresOn.toISOString());
  });

  test("dates after 2038: the JS SDK sends them as 32-bit ints (a bug of the SDK), the server keeps what it is sent", async () => {
    // @azure/keyvault-secrets serialises a Date as `(getTime() / 1000) | 0`: 2040-01-01 wraps to a negative
    // int, 1903-11-25T17:31:44Z. Key Vault would store the same; README says so. If a later SDK fixes it, this
    // assertion fails and README's note can go.
    const name = uniq("js-2038");
    const s = await client.setSecret(name, "v", { expiresOn: new Date("2040-01-01T00:00:00Z") });
    assert.equal(s.value, "v");
    const wrapped = new Date((((Date.UTC(2040, 0, 1) / 1000) | 0) * 1000));
    assert.equal(wrapped.toISOString(), "1903-11-25T17:31:44.000Z");
    assert.equal(s.properties.expiresOn.toISOString(), wrapped.toISOString());
    const got = await client.getSecret(name);
    assert.equal(got.value, "v");
    assert.equal(got.properties.expiresOn.toISOString(), wrapped.toISOString());
  });

  test("versions and version listing with paging", async () => {
    const name = uniq("js-versions");
    const versions = [];
    for (let i = 0; i < 5; i++) {
      const s = await client.setSecret(name, `value-${i}`);
      versions.push(s.properties.version);
    }
    assert.equal(new Set(versions).size, 5);
    assert.equal((await client.getSecret(name)).value, "value-4");
    for (let i = 0; i < 5; i++) {
      assert.equal((await client.getSecret(name, { version: versions[i] })).value, `value-${i}`);
    }
    const listed = await collect(client.listPropertiesOfSecretVersions(name));
    // Sorted by version id, as Key Vault lists them; this server's ids grow with time, so oldest first.
    assert.deepEqual(listed.map((p) => p.version), versions);
    assert.deepEqual([...versions].sort(), versions);
    for (const p of listed) {
      assert.equal(p.id, `${vault}/secrets/${name}/${p.version}`);
      assert.equal(p.name, name);
    }
    const pages = await collectPages(client.listPropertiesOfSecretVersions(name), 2);
    assert.ok(pages.length >= 3, `expected >= 3 pages, got ${pages.map((p) => p.length)}`);
    assert.ok(pages.every((p) => p.length <= 2), `page sizes ${pages.map((p) => p.length)}`);
    assert.deepEqual(pages.flat().map((p) => p.version), versions);
  });

  test("list secrets with paging (maxPageSize 2)", async () => {
    const prefix = uniq("js-page");
    const names = [];
    for (let i = 0; i < 9; i++) names.push(`${prefix}-${i}`);
    for (const n of names) await client.setSecret(n, "x", { tags: { prefix } });
    const all = await collect(client.listPropertiesOfSecrets());
    const pages = await collectPages(client.listPropertiesOfSecrets(), 2);
    const sizes = pages.map((p) => p.length);
    assert.ok(sizes.every((s) => s <= 2), `page sizes ${sizes}`);
    assert.ok(pages.length >= Math.ceil(all.length / 2), `page sizes ${sizes}`);
    const flat = pages.flat();
    assert.equal(flat.length, all.length);
    assert.equal(new Set(flat.map((p) => p.name)).size, flat.length, "duplicates across pages");
    const mine = flat.filter((p) => names.includes(p.name));
    assert.deepEqual(mine.map((p) => p.name).sort(), [...names].sort());
    for (const p of mine) {
      assert.equal(p.id, `${vault}/secrets/${p.name}`);
      assert.deepEqual(p.tags, { prefix });
    }
  });

  test("update properties", async () => {
    const name = uniq("js-update");
    const s = await client.setSecret(name, "v", { contentType: "a", tags: { x: "1" } });
    // empty version → latest
    const upd = await client.updateSecretProperties(name, "", { enabled: false });
    assert.equal(upd.enabled, false);
    assert.equal(upd.contentType, "a");
    assert.deepEqual(upd.tags, { x: "1" });
    assert.equal(upd.version, s.properties.version);
    await expectRestError(client.getSecret(name), 403, "Forbidden");
    const upd2 = await client.updateSecretProperties(name, s.properties.version, {
      enabled: true,
      tags: { y: "2" },
      contentType: "b",
    });
    assert.equal(upd2.enabled, true);
    assert.deepEqual(upd2.tags, { y: "2" });
    assert.equal(upd2.contentType, "b");
    assert.equal((await client.getSecret(name)).value, "v");
  });

  test("delete (poller), get deleted, list deleted, recover (poller), purge", async () => {
    const name = uniq("js-delete");
    const s1 = await client.setSecret(name, "one");
    const s2 = await client.setSecret(name, "two");

    const delPoller = await client.beginDeleteSecret(name, poll);
    const deleted = await delPoller.pollUntilDone();
    assert.equal(deleted.name, name);
    assert.equal(deleted.recoveryId, `${vault}/deletedsecrets/${name}`);
    assert.ok(deleted.deletedOn instanceof Date);
    assert.equal(deleted.scheduledPurgeDate.getTime() - deleted.deletedOn.getTime(), 90 * 86400 * 1000);
    assert.equal(deleted.properties.version, s2.properties.version);

    await expectRestError(client.getSecret(name), 404, "SecretNotFound");
    const got = await client.getDeletedSecret(name);
    assert.equal(got.name, name);
    assert.equal(got.properties.recoveryId, `${vault}/deletedsecrets/${name}`);
    const listed = await collect(client.listDeletedSecrets());
    assert.ok(listed.some((d) => d.name === name), "deleted secret not listed");
    const deletedPages = await collectPages(client.listDeletedSecrets(), 2);
    assert.ok(deletedPages.every((p) => p.length <= 2));
    assert.equal(deletedPages.flat().length, listed.length);
    await expectRestError(client.setSecret(name, "three"), 409, "Conflict");

    const recPoller = await client.beginRecoverDeletedSecret(name, poll);
    const recovered = await recPoller.pollUntilDone();
    assert.equal(recovered.name, name);
    assert.equal((await client.getSecret(name)).value, "two");
    assert.equal((await client.getSecret(name, { version: s1.properties.version })).value, "one");
    await expectRestError(client.getDeletedSecret(name), 404);

    await (await client.beginDeleteSecret(name, poll)).pollUntilDone();
    await client.purgeDeletedSecret(name);
    await expectRestError(client.getDeletedSecret(name), 404, "SecretNotFound");
    const fresh = await client.setSecret(name, "fresh");
    assert.equal(fresh.value, "fresh");
  });

  test("backup and restore", async () => {
    const name = uniq("js-backup");
    const s1 = await client.setSecret(name, "one");
    const s2 = await client.setSecret(name, "two", { tags: { b: "2" } });
    const blob = await client.backupSecret(name);
    assert.ok(blob instanceof Uint8Array && blob.length > 0);
    await expectRestError(client.restoreSecretBackup(blob), 409, "Conflict");
    await (await client.beginDeleteSecret(name, poll)).pollUntilDone();
    await client.purgeDeletedSecret(name);
    const restored = await client.restoreSecretBackup(blob);
    assert.equal(restored.name, name);
    assert.equal(restored.version, s2.properties.version);
    assert.deepEqual(restored.tags, { b: "2" });
    assert.equal((await client.getSecret(name)).value, "two");
    assert.equal((await client.getSecret(name, { version: s1.properties.version })).value, "one");
    const garbage = new Uint8Array(blob);
    for (let i = garbage.length >> 1; i < (garbage.length >> 1) + 4 && i < garbage.length; i++) garbage[i] ^= 0xff;
    await (await client.beginDeleteSecret(name, poll)).pollUntilDone();
    await client.purgeDeletedSecret(name);
    await expectRestError(client.restoreSecretBackup(garbage), 400, "Malformed backup blob");
    // The SDK's own test of a malformed backup: 4,728 zero bytes, Key Vault's message.
    await assert.rejects(client.restoreSecretBackup(new Uint8Array(4728)), (e) => {
      assert.equal(e.statusCode, 400);
      assert.equal(e.message, "Backup blob contains invalid or corrupt version.");
      return true;
    });
    await expectRestError(client.getSecret(name), 404);
  });

  test("errors: 404 / 400", async () => {
    const missing = uniq("js-missing");
    await expectRestError(client.getSecret(missing), 404, "SecretNotFound");
    await expectRestError(client.getSecret(missing, { version: "0".repeat(32) }), 404, "SecretNotFound");
    await expectRestError(client.getDeletedSecret(missing), 404, "SecretNotFound");
    await expectRestError(client.purgeDeletedSecret(missing), 404, "SecretNotFound");
    await expectRestError(client.backupSecret(missing), 404, "SecretNotFound");
    await expectRestError(client.updateSecretProperties(missing, "", { enabled: true }), 404, "SecretNotFound");
    await expectRestError(() => client.beginDeleteSecret(missing, poll), 404, "SecretNotFound");
    await expectRestError(client.setSecret("bad_name", "v"), 400, "BadParameter");
    assert.deepEqual(await collect(client.listPropertiesOfSecretVersions(missing)), []);
  });

  test("named vault URL with challenge resource verification on", async () => {
    const { creds, ca } = server;
    const named = creds.vault_url_named.replace(/\/$/, "");
    const namedClient = new SecretClient(creds.vault_url_named, credential, {
      tlsOptions: { ca, lookup: localhostLookup },
    });
    const name = uniq("js-named");
    const s = await namedClient.setSecret(name, "via-named");
    assert.equal(s.properties.id, `${named}/secrets/${name}/${s.properties.version}`);
    assert.equal((await namedClient.getSecret(name)).value, "via-named");
    const items = (await collect(namedClient.listPropertiesOfSecrets())).filter((p) => p.name === name);
    assert.equal(items.length, 1);
    assert.equal(items[0].id, `${named}/secrets/${name}`);
    const deleted = await (await namedClient.beginDeleteSecret(name, poll)).pollUntilDone();
    assert.equal(deleted.recoveryId, `${named}/deletedsecrets/${name}`);
    await (await namedClient.beginRecoverDeletedSecret(name, poll)).pollUntilDone();
    assert.equal((await namedClient.getSecret(name)).value, "via-named");
  });

  test("names are case-insensitive", async () => {
    const name = uniq("JsCase");
    await client.setSecret(name, "one");
    assert.equal((await client.getSecret(name.toLowerCase())).value, "one");
    await client.setSecret(name.toUpperCase(), "two");
    const versions = await collect(client.listPropertiesOfSecretVersions(name.toLowerCase()));
    assert.equal(versions.length, 2);
    assert.equal((await client.getSecret(name)).value, "two");
  });
});

describe("purge protection (JS)", () => {
  let server;
  let client;

  before(async () => {
    server = await startServer(["--purge-protection", "--retention-days", "7"]);
    const { creds, ca } = server;
    const credential = new ClientSecretCredential(creds.tenant_id, creds.client_id, creds.client_secret, {
      authorityHost: creds.authority_host,
      disableInstanceDiscovery: true,
      tlsOptions: { ca },
    });
    client = new SecretClient(creds.vault_url, credential, {
      disableChallengeResourceVerification: true,
      tlsOptions: { ca },
    });
  });

  after(async () => {
    if (server) await server.stop();
  });

  test("purge is forbidden; recovery level reflects configuration", async () => {
    const name = uniq("js-protected");
    const s = await client.setSecret(name, "keep");
    assert.equal(s.properties.recoveryLevel, "CustomizedRecoverable");
    assert.equal(s.properties.recoverableDays, 7);
    const deleted = await (await client.beginDeleteSecret(name, poll)).pollUntilDone();
    assert.equal(deleted.scheduledPurgeDate.getTime() - deleted.deletedOn.getTime(), 7 * 86400 * 1000);
    await expectRestError(client.purgeDeletedSecret(name), 403, "Forbidden");
    await (await client.beginRecoverDeletedSecret(name, poll)).pollUntilDone();
    assert.equal((await client.getSecret(name)).value, "keep");
  });
});
