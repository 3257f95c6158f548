#!/usr/bin/env bash
# The performance benchmark (not a test: it prints figures, it asserts nothing). Rerun any time:
#
#   bench/run.sh [WORK_DIR]      (default .peers/bench; REPS=5 CONCURRENCY=4 BIN=... override)
#
# 1. `run` idle peak RSS (VmHWM) with 100 policies loaded, after its first pass, REPS times.
# 2. `plan` over 1,000 managed keys: the requests it sends (through a counting proxy, untimed),
#    then its wall time against the same GETs from a plain parallel curl loop (xargs -P N, one
#    keep-alive curl per worker, N = CONCURRENCY = the policy's concurrency), REPS times each,
#    interleaved; medians and the ratio.
# Uses ZR_ZENML_URL/ZR_ZENML_ADMIN/ZR_ZENML_ADMIN_PASSWORD when set, else starts its own ZenML
# (scripts/peers.sh) and stops it at the end. The 1,000 keys are created once per WORK_DIR and
# server (bench/setup.py; ~7 min on 2 cores). Measures the release build (cargo build --release).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK=$(mkdir -p "${1:-$ROOT/.peers/bench}" && cd "${1:-$ROOT/.peers/bench}" && pwd)
REPS=${REPS:-5}
N=${CONCURRENCY:-4}
BIN=${BIN:-$ROOT/target/release/zenml-rotator}
say() { printf '== %s\n' "$*" >&2; }

if [ ! -x "$BIN" ]; then
  say "building the release binary (several minutes cold)"
  cargo build --release
fi

if [ -z "${ZR_ZENML_URL:-}" ]; then
  export ZR_RUN_DIR=$ROOT/.peers/bench-run
  scripts/peers.sh install zenml
  trap 'scripts/peers.sh stop' EXIT
  scripts/peers.sh start zenml
  # shellcheck disable=SC1091
  source "$ZR_RUN_DIR/env"
fi
URL=${ZR_ZENML_URL%/}
export ZR_BENCH_PASSWORD=$ZR_ZENML_ADMIN_PASSWORD

if [ ! -f "$WORK/ids.tsv" ] || [ "$(cat "$WORK/server" 2>/dev/null)" != "$URL" ]; then
  say "creating 100 service accounts x 10 API keys on $URL"
  rm -rf "$WORK/keys" "$WORK/state" "$WORK/ids.tsv"
  python3 bench/setup.py "$WORK"
  echo "$URL" >"$WORK/server"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
policy() { # template url name -> file
  local out=$WORK/$3
  sed -e "s|{concurrency}|$N|" -e "s|{port}|$(free_port)|" -e "s|^url = .*|url = \"$2\"|" "$WORK/$1" >"$out"
  echo "$out"
}

say "1. idle peak RSS of run with 100 policies ($REPS runs)"
P100=$(policy policy-100.toml.in "$URL" policy-100.toml)
LISTEN=$(sed -n 's/^listen = "\(.*\)"/\1/p' "$P100")
rss=()
for i in $(seq "$REPS"); do
  "$BIN" run -c "$P100" 2>"$WORK/run.log" &
  pid=$!
  for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$LISTEN/readyz")" = 200 ] && break
    sleep 0.1
  done
  sleep 3
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  rss+=("$hwm")
  echo "  run $i: VmHWM ${hwm} kB" >&2
done
RSS_MED=$(printf '%s\n' "${rss[@]}" | median)

say "2a. requests plan sends for 1,000 keys (through a counting proxy; untimed)"
P1000=$(policy policy-1000.toml.in "$URL" policy-1000.toml)
python3 bench/count-proxy.py "$URL" "$WORK/proxy.port" "$WORK/proxy.counts" &
proxy=$!
for _ in $(seq 100); do [ -s "$WORK/proxy.port" ] && break; sleep 0.1; done
PCOUNT=$(policy policy-1000.toml.in "http://127.0.0.1:$(cat "$WORK/proxy.port")" policy-1000-counted.toml)
"$BIN" plan -c "$PCOUNT" --output json >"$WORK/plan.json" || { say "plan failed: see $WORK/plan.json"; exit 1; }
kill -TERM "$proxy"; wait "$proxy" || true
rm -f "$WORK/proxy.port"
sed 's/^/  /' "$WORK/proxy.counts" >&2
REQ_TOTAL=$(awk '{s+=$1} END {print s}' "$WORK/proxy.counts")
REQ_KEYS=$(awk '/GET .*api_keys/ {s+=$1} END {print s+0}' "$WORK/proxy.counts")
REQ_PAGES=$(awk '/GET \/api\/v1\/service_accounts$/ {s+=$1} END {print s+0}' "$WORK/proxy.counts")
KEYS=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$WORK/plan.json")

say "2b. plan vs the same GETs from curl under xargs -P $N ($REPS runs each, interleaved)"
TOKEN=$(curl -fsS -X POST "$URL/api/v1/login" -d grant_type=password -d username="$ZR_ZENML_ADMIN" \
  --data-urlencode password="$ZR_ZENML_ADMIN_PASSWORD" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
awk -v u="$URL" '{print u "/api/v1/service_accounts/" $1 "/api_keys/" $2 "?hydrate=true"}' "$WORK/ids.tsv" >"$WORK/urls.txt"
PER_WORKER=$(( ($(wc -l <"$WORK/urls.txt") + N - 1) / N ))
curl_loop() {
  local page=1 pages=1
  while [ "$page" -le "$pages" ]; do
    pages=$(curl -fsS -H "Authorization: Bearer $TOKEN" \
      "$URL/api/v1/service_accounts?hydrate=true&page=$page&size=1000" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["total_pages"])')
    page=$((page + 1))
  done
  xargs -P "$N" -n "$PER_WORKER" curl -fsS -H "Authorization: Bearer $TOKEN" <"$WORK/urls.txt" >/dev/null
}
t_plan=(); t_curl=()
for i in $(seq "$REPS"); do
  s=$(date +%s.%N)
  "$BIN" plan -c "$P1000" --output json >/dev/null || { say "plan failed"; exit 1; }
  e=$(date +%s.%N)
  t_plan+=("$(awk -v a="$e" -v b="$s" 'BEGIN {printf "%.3f", a - b}')")
  s=$(date +%s.%N); curl_loop; e=$(date +%s.%N)
  t_curl+=("$(awk -v a="$e" -v b="$s" 'BEGIN {printf "%.3f", a - b}')")
  echo "  run $i: plan ${t_plan[-1]}s, curl loop ${t_curl[-1]}s" >&2
done
PLAN_MED=$(printf '%s\n' "${t_plan[@]}" | median)
CURL_MED=$(printf '%s\n' "${t_curl[@]}" | median)
RATIO=$(awk -v a="$PLAN_MED" -v b="$CURL_MED" 'BEGIN {printf "%.3f", a / b}')

cat <<REPORT

zenml-rotator benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $("$BIN" --version)
idle run, 100 policies:   peak RSS (VmHWM) median $(awk -v a="$RSS_MED" 'BEGIN {printf "%.1f", a / 1024}') MB  [runs: ${rss[*]} kB]  (target <= 20 MB)
plan, $KEYS keys:         $REQ_TOTAL requests: $REQ_KEYS key GETs, $REQ_PAGES service-account page(s), the rest login  (target <= 1 per key + paging)
plan wall time:           median ${PLAN_MED}s  [runs: ${t_plan[*]}]
curl loop, same GETs:     median ${CURL_MED}s  [runs: ${t_curl[*]}]  (xargs -P $N, one keep-alive curl per worker)
ratio plan / curl:        $RATIO  (target <= 1.25)
REPORT
