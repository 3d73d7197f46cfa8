#!/usr/bin/env bash
# HTTP keep-alive throughput: sluice against HAProxy, alternating in one run.
#
# Both proxies run one thread pinned to CPU $PROXY_CPU (default 0) with a plain proxy config;
# wrk and the nginx backend share CPU $LOAD_CPU (default 1). Each run measures HAProxy, then
# sluice, so machine noise hits both alike; the summary gives medians and the ratio.
#
# Usage:   cluster-tests/bench/http-compare.sh [runs=5]
# Env:     DURATION=10s CONNS=64 THREADS=1 PORT=18080 BACKEND_PORT=19000
#          SLUICE_BIN=path (default: build target/release/sluice with cargo)
# Needs:   haproxy, nginx (nginx-light), wrk, taskset; everything stays on 127.0.0.1.
set -euo pipefail
RUNS=${1:-5}
DURATION=${DURATION:-10s}; CONNS=${CONNS:-64}; THREADS=${THREADS:-1}
PORT=${PORT:-18080}; BACKEND_PORT=${BACKEND_PORT:-19000}
PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

for tool in haproxy nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y haproxy nginx-light wrk)" >&2; exit 2; }
done
if [ -z "${SLUICE_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p sluice-node)
  SLUICE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice"
fi

WORK="$(mktemp -d -t sluice-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  [ -n "${KEEP_WORKDIR:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

wait_port() { # host port -> waits up to 10 s
  local i
  for ((i = 0; i < 200; i++)); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1:$2 did not open" >&2; return 1
}

# The backend: nginx answering 200 "ok", keep-alive without limits.
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 60s;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$BACKEND_PORT reuseport; location / { default_type text/plain; return 200 "ok"; } } }
NGINX
taskset -c "$LOAD_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)
wait_port 127.0.0.1 "$BACKEND_PORT"

# The same plain proxy in both syntaxes.
cat >"$WORK/haproxy.cfg" <<HA
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:$PORT
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:$BACKEND_PORT maxconn 1000
HA
cat >"$WORK/sluice.toml" <<SL
[node]
threads = 1

[[frontend]]
name = "fe"
bind = "127.0.0.1:$PORT"
backend = "be"

[[backend]]
name = "be"
servers = [ { name = "s1", addr = "127.0.0.1:$BACKEND_PORT" } ]
SL

start_proxy() { # name -> sets PROXY_PID
  case $1 in
    haproxy) taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & ;;
    sluice) SLUICE_LOG=warn taskset -c "$PROXY_CPU" "$SLUICE_BIN" --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 & ;;
  esac
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_port 127.0.0.1 "$PORT"
}

# wrk --latency output -> "rps p50_ms p99_ms errors"
parse_wrk() {
  awk '
    function ms(v) { if (v ~ /us$/) {sub(/us$/,"",v); return v/1000}
                     if (v ~ /ms$/) {sub(/ms$/,"",v); return v+0}
                     if (v ~ /s$/)  {sub(/s$/,"",v);  return v*1000} return v }
    /Requests\/sec:/ {rps=$2}
    $1=="50.000%" || $1=="50%" {p50=ms($2)}
    $1=="99.000%" || $1=="99%" {p99=ms($2)}
    /Non-2xx or 3xx responses:/ {n+=$NF}
    /Socket errors:/ {n+=1}
    END {printf "%s %.3f %.3f %d\n", rps, p50, p99, n}'
}
median() { sort -g | awk '{a[NR]=$1} END {if(NR==0){print "NA";exit} print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }

declare -A R
log "proxy on CPU $PROXY_CPU; wrk -t$THREADS -c$CONNS -d$DURATION + nginx on CPU $LOAD_CPU; $RUNS runs each, alternating"
for ((run = 1; run <= RUNS; run++)); do
  for proxy in haproxy sluice; do
    start_proxy "$proxy"
    # A short warm-up so both start with established backend connections.
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$PORT/" >/dev/null 2>&1
    out=$(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$PORT/" 2>&1 | tee "$WORK/$proxy.$run.txt" | parse_wrk)
    R[$proxy]+="$out"$'\n'
    log "run $run $proxy: req/s p50_ms p99_ms errors = $out"
    kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true
  done
done

echo
echo "# http-compare: wrk -t$THREADS -c$CONNS -d$DURATION --latency, $RUNS alternating runs, proxy pinned to CPU $PROXY_CPU (1 thread), wrk+nginx on CPU $LOAD_CPU"
printf "%-8s %14s %12s %12s %8s\n" proxy "req/s median" "p50 ms" "p99 ms" errors
for proxy in haproxy sluice; do
  rps=$(printf "%s" "${R[$proxy]}" | awk 'NF{print $1}' | median)
  p50=$(printf "%s" "${R[$proxy]}" | awk 'NF{print $2}' | median)
  p99=$(printf "%s" "${R[$proxy]}" | awk 'NF{print $3}' | median)
  err=$(printf "%s" "${R[$proxy]}" | awk 'NF{s+=$4} END{print s+0}')
  printf "%-8s %14s %12s %12s %8s\n" "$proxy" "$rps" "$p50" "$p99" "$err"
  eval "RPS_$proxy=$rps; P99_$proxy=$p99"
done
awk -v s="$RPS_sluice" -v h="$RPS_haproxy" -v ps="$P99_sluice" -v ph="$P99_haproxy" \
  'BEGIN { printf "ratio sluice/haproxy: req/s %.2f x, p99 %.2f x\n", s/h, ps/ph }'
echo "# raw runs (req/s p50_ms p99_ms errors):"
for proxy in haproxy sluice; do printf "%s" "${R[$proxy]}" | sed "s/^/$proxy /"; done
