#!/usr/bin/env bash
# What the stack and client-recipe tests need besides Python: nginx, node and npm, and the OpenAI
# Node SDK (tests/clients). Installed where missing and the machine allows (root with apt-get, as on
# CI); otherwise a note, and those tests skip with the reason (on CI, CI=true, they fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
    else
        echo "note: ${missing[*]} missing and not installable here (needs root and apt-get); the tests that need them skip"
    fi
fi

# The Node SDK, once per package.json change.
if command -v npm >/dev/null; then
    stamp=tests/clients/node_modules/.installed
    if [ ! -f "$stamp" ] || [ tests/clients/package.json -nt "$stamp" ] || [ tests/clients/package-lock.json -nt "$stamp" ]; then
        (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error) && touch "$stamp"
    fi
fi
