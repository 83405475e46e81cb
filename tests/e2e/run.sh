#!/usr/bin/env bash
# End-to-end tests: the official Azure SDKs (Python sync + aio, JS, Rust) against the keyvault binary.
#
#   KEYVAULT_BIN=path/to/keyvault tests/e2e/run.sh [extra pytest args...]
#   E2E_SETUP_ONLY=1 tests/e2e/run.sh      # only install the pinned SDKs (and compile the Rust tests)
#
# Builds nothing but the Python venv (tests/e2e/.venv; the official Python SDK's test suite is fetched into
# tests/e2e/.sdk-suite), the npm packages
# (tests/e2e/js/node_modules) and the standalone Rust SDK test projects tests/e2e/rust
# (CARGO_TARGET_DIR=target/e2e-rust) and tests/e2e/rust-beta (the same tests, the SDK's newest beta;
# CARGO_TARGET_DIR=target/e2e-rust-beta). The caller must have built the binary
# (default: target/debug/keyvault relative to the repository root).
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$E2E_DIR/../.." && pwd)"

KEYVAULT_BIN="${KEYVAULT_BIN:-target/debug/keyvault}"
case "$KEYVAULT_BIN" in
  /*) ;;
  *) KEYVAULT_BIN="$REPO_ROOT/$KEYVAULT_BIN" ;;
esac
export KEYVAULT_BIN

PYTHON="${PYTHON:-python3}"
VENV="$E2E_DIR/.venv"
REQ="$E2E_DIR/requirements.txt"

hash_of() { sha256sum "$1" | cut -d' ' -f1; }

# --- Python venv -------------------------------------------------------------
req_hash="$(hash_of "$REQ")"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)" != "$req_hash" ]]; then
  echo "e2e: preparing Python venv in $VENV" >&2
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQ"
  echo "$req_hash" > "$VENV/.requirements.sha256"
fi

# --- npm packages ------------------------------------------------------------
JS_DIR="$E2E_DIR/js"
lock_hash="$(hash_of "$JS_DIR/package-lock.json")"
if [[ ! -d "$JS_DIR/node_modules" || "$(cat "$JS_DIR/node_modules/.e2e-lock.sha256" 2>/dev/null || true)" != "$lock_hash" ]]; then
  echo "e2e: npm ci in $JS_DIR" >&2
  (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" > "$JS_DIR/node_modules/.e2e-lock.sha256"
fi

# --- Rust SDK project (standalone cargo project, own lock file and target dir) ---
# Its own target dir, so it never shares (or waits on the lock of) the workspace's target/debug.
RUST_DIR="$E2E_DIR/rust"
RUST_CARGO=(env CARGO_TARGET_DIR="$REPO_ROOT/target/e2e-rust" cargo)
RUST_ARGS=(--locked --manifest-path "$RUST_DIR/Cargo.toml")
# The same tests against the SDK's newest beta (api-version 2026-03-01-preview): rust-beta/Cargo.toml.
RUST_BETA_DIR="$E2E_DIR/rust-beta"
RUST_BETA_CARGO=(env CARGO_TARGET_DIR="$REPO_ROOT/target/e2e-rust-beta" cargo)
RUST_BETA_ARGS=(--locked --manifest-path "$RUST_BETA_DIR/Cargo.toml")

# E2E_SETUP_ONLY=1: only prepare the venv and npm packages (Rust tests that drive the Python SDK use the venv)
# and compile the Rust SDK tests (no server is started).
if [[ "${E2E_SETUP_ONLY:-}" == 1 ]]; then
  "$VENV/bin/python" "$E2E_DIR/sdk-suite/run.py" --fetch-only
  echo "e2e: cargo build --tests ($RUST_DIR)" >&2
  "${RUST_CARGO[@]}" build --tests "${RUST_ARGS[@]}"
  "${RUST_BETA_CARGO[@]}" build --tests "${RUST_BETA_ARGS[@]}"
  echo "e2e: setup done ($VENV, $JS_DIR/node_modules, Rust SDK tests built)" >&2
  exit 0
fi

if [[ ! -x "$KEYVAULT_BIN" ]]; then
  echo "e2e: keyvault binary not found or not executable: $KEYVAULT_BIN (build it first, e.g. cargo build -p keyvault-cli)" >&2
  exit 2
fi

# Bound each suite so a hung server cannot block CI forever.
with_timeout() {
  if command -v timeout >/dev/null 2>&1; then timeout --kill-after=10 "$@"; else shift; "$@"; fi
}

status=0

echo "e2e: pytest (binary: $KEYVAULT_BIN)" >&2
(cd "$E2E_DIR/python" && with_timeout 420 "$VENV/bin/python" -m pytest -q "$@") || status=1

# The official Python SDK's own test suite (from its PyPI source distribution, pinned), in live mode.
echo "e2e: the azure-keyvault-secrets test suite (sdk-suite/run.py)" >&2
with_timeout 300 "$VENV/bin/python" "$E2E_DIR/sdk-suite/run.py" --bin "$KEYVAULT_BIN" || status=1

echo "e2e: node --test" >&2
(cd "$JS_DIR" && with_timeout 240 node --test --test-reporter=spec secrets.test.mjs) || status=1

echo "e2e: cargo test (official Rust SDK, $RUST_DIR)" >&2
if "${RUST_CARGO[@]}" build --tests "${RUST_ARGS[@]}"; then
  with_timeout 300 "${RUST_CARGO[@]}" test "${RUST_ARGS[@]}" || status=1
else
  status=1
fi

echo "e2e: cargo test (official Rust SDK's newest beta, $RUST_BETA_DIR)" >&2
if "${RUST_BETA_CARGO[@]}" build --tests "${RUST_BETA_ARGS[@]}"; then
  with_timeout 300 "${RUST_BETA_CARGO[@]}" test "${RUST_BETA_ARGS[@]}" || status=1
else
  status=1
fi

if [[ $status -ne 0 ]]; then
  echo "e2e: FAILED" >&2
else
  echo "e2e: all passed" >&2
fi
exit $status
