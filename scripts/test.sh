#!/usr/bin/env bash
# The project's test command: format and lint gates, every Rust test, then the official Python, JS and
# Rust SDKs against the real `keyvault` binary. Needs the Rust toolchain, Python 3.11 and Node 20.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== installing the pinned official SDKs (tests/e2e: Python venv, npm ci)"
E2E_SETUP_ONLY=1 bash tests/e2e/run.sh
echo "== cargo test (also builds target/debug/keyvault, which the end-to-end tests run)"
cargo test --workspace
echo "== end-to-end: official SDKs against the real binary"
KEYVAULT_BIN="$PWD/target/debug/keyvault" bash tests/e2e/run.sh
