#!/usr/bin/env python3
"""Sequential ``get_secret`` with the official Python SDK (azure-keyvault-secrets, sync client) against a
``keyvault serve --dev`` server, for ``keyvault-bench --clients``.

    seq_get.py DEV_CREDENTIALS_JSON --n N [--seconds S] [--max-ops M] [--warmup-ops W] [--prefix bench-]

Gets ``{prefix}{i:07d}`` for random i < N, one at a time, exactly as an application would: one
``SecretClient`` (requests, HTTP/1.1 keep-alive), a ``ClientSecretCredential`` against the server's issuer,
challenge verification off (the vault is on an IP address), the dev CA trusted through ``connection_verify``.

Protocol with the harness (stdout, one line each): after the warm-up (challenge, token, connection, W gets)
it prints ``READY`` and waits for a line on stdin (so the harness can sample the server's CPU time), then
runs for at most S seconds and M gets and prints one JSON object:
``{"ops", "errors", "first_error", "seconds", "cpu_seconds", "latencies_us", "versions"}``.
Only the standard library and the SDK are used.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("creds")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-ops", type=int, default=100_000)
    p.add_argument("--warmup-ops", type=int, default=20)
    p.add_argument("--prefix", default="bench-")
    a = p.parse_args()

    import azure.core
    import azure.identity
    import azure.keyvault.secrets
    from azure.identity import ClientSecretCredential
    from azure.keyvault.secrets import SecretClient

    with open(a.creds, encoding="utf-8") as f:
        creds = json.load(f)
    credential = ClientSecretCredential(
        creds["tenant_id"],
        creds["client_id"],
        creds["client_secret"],
        authority=creds["authority_host"],
        connection_verify=creds["ca_cert"],
        disable_instance_discovery=True,
    )
    client = SecretClient(
        creds["vault_url"],
        credential,
        connection_verify=creds["ca_cert"],
        verify_challenge_resource=False,
    )
    rng = random.Random(1)
    names = [f"{a.prefix}{i:07d}" for i in range(a.n)]

    for _ in range(max(1, a.warmup_ops)):
        client.get_secret(names[rng.randrange(a.n)])
    print("READY", flush=True)
    sys.stdin.readline()

    latencies = []
    errors = 0
    first_error = None
    started = time.perf_counter()
    cpu_started = time.process_time()
    deadline = started + a.seconds
    while len(latencies) + errors < a.max_ops:
        t = time.perf_counter()
        if t >= deadline:
            break
        try:
            secret = client.get_secret(names[rng.randrange(a.n)])
            if secret.value is None:
                raise RuntimeError(f"{secret.name} has no value")
            latencies.append(int((time.perf_counter() - t) * 1e6))
        except Exception as e:  # noqa: BLE001 - counted and reported, like the Rust side's errors
            errors += 1
            if first_error is None:
                first_error = f"{type(e).__name__}: {e}"[:300]
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    client.close()
    credential.close()
    print(
        json.dumps(
            {
                "ops": len(latencies),
                "errors": errors,
                "first_error": first_error,
                "seconds": elapsed,
                "cpu_seconds": cpu,
                "latencies_us": latencies,
                "versions": {
                    "python": platform.python_version(),
                    "azure-keyvault-secrets": azure.keyvault.secrets.__version__,
                    "azure-identity": azure.identity.__version__,
                    "azure-core": azure.core.__version__,
                },
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
