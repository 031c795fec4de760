#!/usr/bin/env bash
# Through-the-proxy benchmark, with its floor measured in the same run:
#
#   wrk --> Envoy (ext_authz over gRPC, the shape of envoy/envoy.yaml) --> a do-nothing upstream
#                 |
#                 +--> twofa-authz (Redis session store, a `2fa` route)     side "twofa-authz"
#                 +--> a do-nothing Check server that allows everything     side "floor"
#
# Both sides run at once on loopback, each behind its own Envoy with the same
# configuration; runs alternate (twofa-authz, floor, twofa-authz, ...), and the
# script prints every run, the medians per side (requests/s, p50, p99 from
# `wrk --latency`), the peak RSS of each ext_authz server and the ratios.
# Everything is started and stopped by the script. Uses the release build.
#
#   scripts/bench-envoy.sh [--runs 3] [--duration 10] [--connections 32]
#                          [--wrk-threads 2] [--envoy-concurrency 2]
#                          [--store redis|memory] [--path /admin/reports] [--no-build]
#
# `--store memory --path /user/profile` measures the `token` route with no
# Redis on the path (sessions cannot be marked verified from outside there).
# Needs: wrk (installed with apt-get when missing), curl, python3, and Envoy
# from the test venv (scripts/test.sh creates .venv-test), or $ENVOY.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3 DURATION=10 CONNECTIONS=32 WRK_THREADS=2 ENVOY_CONCURRENCY=2
STORE=redis BENCH_PATH=/admin/reports BUILD=1
ENVOY=${ENVOY:-$ROOT/.venv-test/bin/envoy}
LOADGEN=$ROOT/target/release/examples/loadgen
SERVER=$ROOT/target/release/twofa-authz

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
    case $1 in
        --runs) RUNS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --connections) CONNECTIONS=$2; shift ;;
        --wrk-threads) WRK_THREADS=$2; shift ;;
        --envoy-concurrency) ENVOY_CONCURRENCY=$2; shift ;;
        --store) STORE=$2; shift ;;
        --path) BENCH_PATH=$2; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
for n in "$RUNS" "$DURATION" "$CONNECTIONS" "$WRK_THREADS" "$ENVOY_CONCURRENCY"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "not a positive number: $n" >&2; exit 2; }
done
[[ $STORE == redis || $STORE == memory ]] || { echo "--store is redis or memory" >&2; exit 2; }
[[ $BENCH_PATH == /* ]] || { echo "--path must start with /" >&2; exit 2; }

as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
[[ -x $ENVOY ]] || { echo "no Envoy at $ENVOY (run scripts/test.sh once, or set ENVOY)" >&2; exit 1; }
if ((BUILD)); then
    (cd "$ROOT" && cargo build --release --bins --examples)
fi
[[ -x $LOADGEN && -x $SERVER ]] || { echo "build first: cargo build --release --bins --examples" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Issuer, Redis, twofa-authz and the upstream, from the load generator.
"$LOADGEN" --serve-stack "$TMP/stack.env" --tokens 1 --store "$STORE" --server-bin "$SERVER" &
PIDS+=($!)
for _ in $(seq 300); do [[ -f $TMP/stack.env ]] && break; sleep 0.1; done
[[ -f $TMP/stack.env ]] || { echo "the stack did not come up within 30 s" >&2; exit 1; }
# shellcheck disable=SC1091
source "$TMP/stack.env"

FLOOR=127.0.0.1:$(free_port)
"$LOADGEN" --serve-floor "$FLOOR" &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")

# One Envoy per side; they differ only in the ext_authz cluster's port.
render_envoy() { # file listen_port admin_port authz_host_port
    local authz_host=${4%:*} authz_port=${4##*:} up_host=${UPSTREAM%:*} up_port=${UPSTREAM##*:}
    cat >"$1" <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $3 } }
static_resources:
  listeners:
    - name: ingress
      address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                normalize_path: true
                merge_slashes: true
                path_with_escaped_slashes_action: REJECT_REQUEST
                route_config:
                  name: ingress
                  virtual_hosts:
                    - name: app
                      domains: ["*"]
                      routes:
                        - match: { path_separated_prefix: /admin }
                          route: { cluster: app }
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              check_settings:
                                context_extensions:
                                  twofa.require: 2fa
                        - match: { prefix: / }
                          route: { cluster: app }
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      grpc_service:
                        envoy_grpc: { cluster_name: authz_grpc }
                        timeout: 2s
                      failure_mode_allow: false
                      status_on_error: { code: 503 }
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: authz_grpc
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {}
      load_assignment:
        cluster_name: authz_grpc
        endpoints:
          - lb_endpoints:
              - endpoint: { address: { socket_address: { address: $authz_host, port_value: $authz_port } } }
    - name: app
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: app
        endpoints:
          - lb_endpoints:
              - endpoint: { address: { socket_address: { address: $up_host, port_value: $up_port } } }
EOF
}

SIDES=(twofa-authz floor)
declare -A LISTEN ADMIN AUTHZ SERVER_PID ENVOY_PID
AUTHZ[twofa-authz]=$TWOFA_GRPC SERVER_PID[twofa-authz]=$TWOFA_PID
AUTHZ[floor]=$FLOOR SERVER_PID[floor]=$FLOOR_PID
for side in "${SIDES[@]}"; do
    LISTEN[$side]=$(free_port) ADMIN[$side]=$(free_port)
    render_envoy "$TMP/envoy-$side.yaml" "${LISTEN[$side]}" "${ADMIN[$side]}" "${AUTHZ[$side]}"
    "$ENVOY" -c "$TMP/envoy-$side.yaml" --concurrency "$ENVOY_CONCURRENCY" \
        --disable-hot-restart --log-level error &
    PIDS+=($!) ENVOY_PID[$side]=$!
done
for side in "${SIDES[@]}"; do
    ok=0
    for _ in $(seq 100); do
        if [[ $(curl -s "http://127.0.0.1:${ADMIN[$side]}/ready" 2>/dev/null) == LIVE* ]]; then ok=1; break; fi
        sleep 0.1
    done
    ((ok)) || { echo "Envoy ($side) not ready within 10 s" >&2; exit 1; }
done

url() { echo "http://127.0.0.1:${LISTEN[$1]}$BENCH_PATH"; }
status_of() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
# The request is allowed on both sides, and on the twofa-authz side Envoy really
# asks twofa-authz (no token: 401).
for side in "${SIDES[@]}"; do
    got=$(status_of -H "Authorization: $TOKEN" "$(url "$side")")
    [[ $got == 200 ]] || { echo "$side: the benchmark request got $got, not 200" >&2; exit 1; }
done
got=$(status_of "$(url twofa-authz)")
[[ $got == 401 ]] || { echo "twofa-authz: a request without a token got $got, not 401" >&2; exit 1; }

# wrk's latency figures in ms, whatever unit it prints.
to_ms() {
    awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) }
           else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } printf "%.3f\n", v }'
}
# One wrk run; prints "rps p50 p99" and fails on any non-2xx answer or socket error.
measure() { # side seconds
    local out
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2"s --latency \
        -H "Authorization: $TOKEN" "$(url "$1")")
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        echo "$1: not every request was allowed:" >&2
        echo "$out" >&2
        return 1
    fi
    local rps p50 p99
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out" | to_ms)
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out" | to_ms)
    echo "$rps $p50 $p99"
}
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
# CPU clock ticks (user + system, 100 per second) a process has used: fields
# 14 and 15 of /proc/PID/stat, counted after the parenthesised command name.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }' || echo 0; }

echo "wrk -t$WRK_THREADS -c$CONNECTIONS, ${DURATION}s runs x $RUNS per side, Envoy --concurrency $ENVOY_CONCURRENCY," \
    "store $STORE, path $BENCH_PATH"
for side in "${SIDES[@]}"; do measure "$side" 2 >/dev/null; done # warm-up
declare -A RESULTS
for i in $(seq "$RUNS"); do
    for side in "${SIDES[@]}"; do
        t0=$(cpu_ticks "${SERVER_PID[$side]}") e0=$(cpu_ticks "${ENVOY_PID[$side]}")
        r=$(measure "$side" "$DURATION")
        t1=$(cpu_ticks "${SERVER_PID[$side]}") e1=$(cpu_ticks "${ENVOY_PID[$side]}")
        read -r rps p50 p99 <<<"$r"
        # CPU per proxied request, in microseconds: the ext_authz server's,
        # and Envoy's (which applies the identity headers a real answer sets).
        per_req() { awk -v t="$1" -v r="$rps" -v d="$DURATION" 'BEGIN { printf "%.1f", (r > 0 ? t * 10000 / (r * d) : 0) }'; }
        cpu=$(per_req $((t1 - t0))) ecpu=$(per_req $((e1 - e0)))
        RESULTS[$side]+="$r $cpu $ecpu"$'\n'
        printf 'run %d %-11s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  cpu us/req: ext_authz %5.1f, Envoy %5.1f\n' \
            "$i" "$side" "$rps" "$p50" "$p99" "$cpu" "$ecpu"
    done
done
declare -A MED_RPS MED_P50 MED_P99 MED_CPU MED_ECPU
for side in "${SIDES[@]}"; do
    rows=${RESULTS[$side]}
    MED_RPS[$side]=$(awk 'NF { print $1 }' <<<"$rows" | median)
    MED_P50[$side]=$(awk 'NF { print $2 }' <<<"$rows" | median)
    MED_P99[$side]=$(awk 'NF { print $3 }' <<<"$rows" | median)
    MED_CPU[$side]=$(awk 'NF { print $4 }' <<<"$rows" | median)
    MED_ECPU[$side]=$(awk 'NF { print $5 }' <<<"$rows" | median)
    printf '%-11s median %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  cpu us/req: ext_authz %.1f, Envoy %.1f  ext_authz server peak RSS %s MiB\n' \
        "$side" "${MED_RPS[$side]}" "${MED_P50[$side]}" "${MED_P99[$side]}" "${MED_CPU[$side]}" "${MED_ECPU[$side]}" "$(hwm_mib "${SERVER_PID[$side]}")"
done
awk -v a="${MED_RPS[twofa-authz]}" -v b="${MED_RPS[floor]}" -v pa="${MED_P99[twofa-authz]}" -v pb="${MED_P99[floor]}" \
    -v ca="${MED_CPU[twofa-authz]}" -v cb="${MED_CPU[floor]}" \
    'BEGIN { printf "ratio twofa-authz/floor: %.2f (req/s)  ext_authz cpu per request %.2fx  p99 %+.3f ms\n", (b > 0 ? a / b : 0), (cb > 0 ? ca / cb : 0), pa - pb }'
