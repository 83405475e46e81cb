#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: repeatable where timings are not (a shared, noisy host).

    count_instructions.py KEYVAULT_BIN --op get|set|update [--requests N] [--names M] [--connections C]
                          [--out FILE.callgrind] [--keep]

Starts ``KEYVAULT_BIN serve --dev`` on 127.0.0.1 under ``valgrind --tool=callgrind`` with collection off,
fills M secrets (64-byte values) over HTTPS, reads each once (so GETs find them cached), then switches
collection on (``callgrind_control -i on``), sends N requests of the operation on random names over C
keep-alive connections (C threads), switches collection off and stops the server. Prints the instructions
of the server process per request (all its threads: workers, SQLite writer and checkpointer, audit log),
and writes the callgrind profile for ``callgrind_annotate``.

Compare two builds with the same arguments: the counts repeat to within a fraction of a percent. They count
instructions, not time: cache misses, system calls and waits do not show, and valgrind runs SHA-256 and AES
without some of the CPU's extensions, so cryptography weighs more here than on the machine
(``callgrind_annotate`` per function tells). Needs valgrind (``apt-get install valgrind``) and Python 3's
standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

API = "api-version=7.6"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bin")
    p.add_argument("--op", choices=["get", "set", "update"], default="get")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--keep", action="store_true",
                   help="keep the data directory (always kept without --out: the profile is in it)")
    a = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install valgrind)", file=sys.stderr)
            return 2
    data = tempfile.mkdtemp(prefix="kv-callgrind-")
    out = a.out or os.path.join(data, "callgrind.out")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         a.bin, "serve", "--dev", "--data-dir", data, "--addr", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "server.log"), "wb"),
        # callgrind_control (vgdb) may need ptrace, which a non-dumpable server allows only to root.
        env={**os.environ, "KEYVAULT_LOG": "warn", "KEYVAULT_ALLOW_CORE_DUMPS": "1"})
    try:
        creds_path = os.path.join(data, "dev-credentials.json")
        deadline = time.time() + 120
        while not os.path.exists(creds_path):
            if server.poll() is not None or time.time() > deadline:
                print("the server did not start (see server.log)", file=sys.stderr)
                return 1
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole; give the listener a moment under valgrind
        # The port the kernel picked is in the credentials' vault URL (a random port of our own choosing
        # could be taken: the server then exits, "Address already in use").
        creds = json.load(open(creds_path))
        drive(a, creds, server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
    total = instructions(out)
    if total is None:
        print(f"no instruction total in {out}", file=sys.stderr)
        return 1
    keep = a.keep or not a.out
    print(json.dumps({"op": a.op, "requests": a.requests, "connections": a.connections,
                      "names": a.names, "instructions": total,
                      "instructions_per_request": round(total / a.requests),
                      "profile": out, "data_dir": data if keep else None}))
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return 0


def drive(a: argparse.Namespace, creds: dict, pid: int) -> None:
    url = urllib.parse.urlparse(creds["vault_url"])
    ctx = ssl.create_default_context(cafile=creds["ca_cert"])

    def connect() -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=300)

    conn = connect()
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials", "client_id": creds["client_id"],
        "client_secret": creds["client_secret"], "scope": f"https://localhost:{url.port}/.default"})
    conn.request("POST", f"/{creds['tenant_id']}/oauth2/v2.0/token", form,
                 {"Content-Type": "application/x-www-form-urlencoded"})
    token = json.loads(conn.getresponse().read())["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(c: http.client.HTTPSConnection, method: str, path: str, body: str | None = None) -> None:
        c.request(method, f"{path}?{API}", body, headers)
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:200]!r}")

    names = [f"bench-{i:07d}" for i in range(a.names)]
    for n in names:
        call(conn, "PUT", f"/secrets/{n}", json.dumps({"value": "x" * 64}))
    for n in names:
        call(conn, "GET", f"/secrets/{n}")
    conns = [connect() for _ in range(a.connections)]
    for c in conns:  # handshakes and first requests outside the count
        call(c, "GET", f"/secrets/{names[0]}")
    per = [a.requests // a.connections + (1 if t < a.requests % a.connections else 0)
           for t in range(a.connections)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        rnd = random.Random(t + 1)
        try:
            for _ in range(per[t]):
                n = names[rnd.randrange(len(names))]
                if a.op == "get":
                    call(conns[t], "GET", f"/secrets/{n}")
                elif a.op == "set":
                    call(conns[t], "PUT", f"/secrets/{n}", json.dumps({"value": "y" * 64}))
                else:
                    call(conns[t], "PATCH", f"/secrets/{n}", json.dumps({"contentType": "text/plain"}))
        except BaseException as e:  # reported after the threads end
            errors.append(e)

    subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(a.connections)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    if errors:
        raise errors[0]


def instructions(profile: str) -> int | None:
    out = subprocess.run(["callgrind_annotate", profile], capture_output=True, text=True).stdout
    m = re.search(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", out, re.M)
    return int(m.group(1).replace(",", "")) if m else None


if __name__ == "__main__":
    sys.exit(main())
