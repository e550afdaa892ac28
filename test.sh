#!/usr/bin/env bash
# storegate's test command (README.md). Builds the binaries the end-to-end
# tests spawn, then runs every test in the workspace. Tests that need
# PostgreSQL read STOREGATE_TEST_PG (default postgres://postgres@127.0.0.1:5432/postgres);
# with CI=true a missing service fails the test instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace --bins
cargo test --workspace "$@"
