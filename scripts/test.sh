#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run the whole suite.
# Services (mosquitto, nats-server, Alertmanager, the Kafka-protocol broker of librdkafka, moto, Azurite, Ray, Chromium) are started by the tests themselves on free
# loopback ports and stopped afterwards; PostgreSQL tests use localhost:5432 when it is reachable
# (tests/schedule starts its own PostgreSQL server on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
# a private JetStream server per NATS test (Kafka tests use the broker inside librdkafka: pip confluent-kafka)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
# PostgreSQL server binaries: tests/schedule starts a private server (initdb + postgres) on a free port
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# a private Alertmanager per alert test (tests/alerts)
command -v prometheus-alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}") >/dev/null \
      || echo "warning: could not install ${need_apt[*]}; tests that need them will be skipped" >&2
  else
    echo "warning: ${need_apt[*]} missing and no apt-get; tests that need them will be skipped" >&2
  fi
fi

# Azurite (Azure Blob emulator) from npm, into a project-local folder
if command -v npm >/dev/null 2>&1 && [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  mkdir -p .tools
  (cd .tools && npm install --silent --no-audit --no-fund azurite@3 >/dev/null 2>&1) \
    || echo "warning: could not install azurite; Azure tests will be skipped" >&2
fi

# exact versions with hashes (scripts/lock.sh writes them): no resolver, so a fresh install takes minutes, not ten
python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/test.lock
python -m pip install -q --disable-pip-version-check --no-deps -e .

# the walls first: lint and types (configured in pyproject.toml) fail the run like a failing test
python -m ruff check src tests bench
python -m mypy

# exit code 5 (no tests collected) must fail, never pass silently
set +e
python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
