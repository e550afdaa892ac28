#!/usr/bin/env bash
# storegate's test command (README.md). Builds the binaries the end-to-end
# tests spawn, then runs every test in the workspace. Tests that need
# PostgreSQL read STOREGATE_TEST_PG (default postgres://postgres@127.0.0.1:5432/postgres);
# tests that need Mosquitto start their own (`mosquitto` on the PATH or in
# /usr/sbin). With CI=true a missing service fails the test instead of
# skipping it; without, this script says loudly, before and after the run,
# which halves it skips.
set -euo pipefail
cd "$(dirname "$0")"

pg_url=${STOREGATE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
# host:port of the URL (defaults as libpq's).
hostport=${pg_url#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
pg_host=${hostport%:*}
pg_port=${hostport##*:}
[ "$pg_port" = "$hostport" ] && pg_port=5432
[ -n "$pg_host" ] || pg_host=127.0.0.1

skipped=()
if ! (exec 3<>"/dev/tcp/$pg_host/$pg_port") 2>/dev/null; then
  skipped+=("the PostgreSQL half of every hub test (no server at $pg_host:$pg_port; set STOREGATE_TEST_PG)")
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  skipped+=("every test against a real Mosquitto (apt-get install mosquitto)")
fi
if ! command -v mosquitto_pub >/dev/null 2>&1; then
  skipped+=("the third-party device test (apt-get install mosquitto-clients)")
fi

banner() {
  if [ ${#skipped[@]} -gt 0 ]; then
    if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
      echo "!!! CI=true: these tests will FAIL, not skip:" >&2
    else
      echo "!!! SKIPPING (not failing) because a service is missing:" >&2
    fi
    for s in "${skipped[@]}"; do echo "!!!   - $s" >&2; done
  else
    echo "test.sh: PostgreSQL at $pg_host:$pg_port and Mosquitto found: every half of every test runs" >&2
  fi
}

banner
cargo build --workspace --bins
status=0
cargo test --workspace "$@" || status=$?
banner
exit $status
