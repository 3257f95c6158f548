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
# 3. `once` over 100 keys into Vault (KV v2 on OpenBao): peak RSS, and the rotator's own CPU
#    (user+sys) per rotated key; each run takes the next of nine key sets that is due (bench/vault-policies.py).
#    The requests a run sent are read from the metrics textfile it writes (upstream request counts;
#    each run finds the previous run's file, as a CronJob's do);
#    after each run, curl sends that many requests to the same servers (keep-alive GETs of the set's
#    keys and Vault paths, one curl per server) and its CPU per key is printed beside the rotator's,
#    user and system time apart (curl spends more in the kernel, the rotator in user space);
#    then (PACED=0 skips it) curl sends them again spread over the pass's wall time (--rate), as
#    the rotator sends them, and how often each slept a request (voluntary context switches).
#    A set's runs after its first are steady state (the last rotation finalized, a new one made);
#    with FRESH=1 each run first deletes its set's Vault paths and claims, so it is a first
#    rotation (the store holds no value yet) every time, and no set has to be due.
#    With SPLIT=1 the two halves of a steady state are passes of their own, as at an operator's
#    cadence (`every` of days, `retain` of minutes: a window ends long before the key is due
#    again): a pass 65 s after the set's last rotation only finalizes it (the window of 1m is over,
#    the key not due: `every` is 3m in this mode), its CPU per finalized key and requests printed
#    apart; the set's pass when it is due (185 s) then only rotates, and is measured as every other
#    run is. A set's first run in an invocation starts with one pass, not measured, that brings it
#    to a known state.
# 4. Start-up: exec to the first connection the rotator opens (bench/first-request.py), and `check`.
# 5. Binary size.
# With BEFORE=path/to/an/older/zenml-rotator, 1 and 3-5 measure both binaries, interleaved run by
# run, and print both medians and their ratio. SECTIONS="3 4 5" runs only some sections.
# Uses ZR_ZENML_URL/ZR_ZENML_ADMIN/ZR_ZENML_ADMIN_PASSWORD (and ZR_VAULT_ADDR, ZR_VAULT_ROOT_TOKEN)
# when set, else starts its own ZenML and OpenBao (scripts/peers.sh) and stops them at the end.
# The 1,000 keys are created once per WORK_DIR and server (bench/setup.py; ~7 min on 2 cores).
# Measures the release build (cargo build --release).
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

SECTIONS=${SECTIONS:-1 2 3 4 5}
BEFORE=${BEFORE:-}
wants() { [[ " $SECTIONS " == *" $1 "* ]]; }
# The binaries a side-by-side section measures, in the order each run takes them.
BINS=("$BIN"); [ -z "$BEFORE" ] || BINS=("$BEFORE" "$BIN")

if [ -z "${ZR_ZENML_URL:-}" ] || [ -z "${ZR_VAULT_ADDR:-}" ]; then
  export ZR_RUN_DIR=$ROOT/.peers/bench-run
  scripts/peers.sh install zenml bao
  trap 'scripts/peers.sh stop' EXIT
  scripts/peers.sh start zenml bao
  # shellcheck disable=SC1091
  source "$ZR_RUN_DIR/env"
fi
URL=${ZR_ZENML_URL%/}
export ZR_BENCH_PASSWORD=$ZR_ZENML_ADMIN_PASSWORD

if [ ! -f "$WORK/ids.tsv" ] || [ "$(cat "$WORK/server" 2>/dev/null)" != "$URL" ]; then
  say "creating 100 service accounts x 10 API keys on $URL"
  # The Vault key sets name the old accounts: made again from the new ones (section 3).
  rm -rf "$WORK/keys" "$WORK/state" "$WORK/state-vault" "$WORK/ids.tsv" "$WORK"/policy-vault-*.toml.in
  python3 bench/setup.py "$WORK"
  echo "$URL" >"$WORK/server"
fi

# The rotator refuses a state or file-store directory others can enter (README, Security).
install -d -m 0700 "$WORK/keys" "$WORK/state"
chmod -R go-rwx "$WORK/keys" "$WORK/state"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
policy() { # template url name -> file
  local out=$WORK/$3
  sed -e "s|{concurrency}|$N|" -e "s|{port}|$(free_port)|" -e "s|^url = .*|url = \"$2\"|" "$WORK/$1" >"$out"
  echo "$out"
}

# A bearer token for the admin, for curl.
zenml_token() {
  curl -fsS -X POST "$URL/api/v1/login" -d grant_type=password -d username="$ZR_ZENML_ADMIN" \
    --data-urlencode password="$ZR_ZENML_ADMIN_PASSWORD" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

REPORT=()
report() { REPORT+=("$(printf "$@")"); }
# Per binary: the median of the runs recorded in the associative array NAME (BINS index -> "v v v "),
# and all the runs, "| "-separated.
medians() { local -n runs=$1; for b in "${!BINS[@]}"; do tr ' ' '\n' <<<"${runs[$b]}" | grep . | median; done; }
all_runs() { local -n runs=$1; for b in "${!BINS[@]}"; do printf '%s| ' "${runs[$b]}"; done; }
# A report line: LABEL, the medians of the runs in NAME side by side, every run, and NOTE; with
# kB=1 the runs are kB and the medians are shown in MB.
report_runs() { # label unit name note [kB]
  local meds=() m unit=$2
  [ -z "${5:-}" ] || unit=kB
  while read -r m; do if [ -n "${5:-}" ]; then meds+=("$(mb "$m")"); else meds+=("$m"); fi; done < <(medians "$3")
  report '%s median %s  [%s: %s]  (%s)' "$1" "$(compare "$2" "${meds[@]}")" "$unit" "$(all_runs "$3")" "$4"
}
mb() { awk -v a="$1" 'BEGIN {printf "%.1f", a / 1024}'; }
# "before -> after (ratio)" of two medians, or the one median.
compare() { # unit median...
  local unit=$1; shift
  if [ $# -eq 2 ]; then
    printf '%s %s -> %s %s (x%s)' "$1" "$unit" "$2" "$unit" "$(awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b / a}')"
  else printf '%s %s' "$1" "$unit"; fi
}

if wants 1; then
  say "1. idle peak RSS of run with 100 policies ($REPS runs per binary)"
  P100=$(policy policy-100.toml.in "$URL" policy-100.toml)
  LISTEN=$(sed -n 's/^listen = "\(.*\)"/\1/p' "$P100")
  declare -A rss=()
  for i in $(seq "$REPS"); do
    for b in "${!BINS[@]}"; do
      "${BINS[$b]}" run -c "$P100" 2>"$WORK/run.log" &
      pid=$!
      for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$LISTEN/readyz")" = 200 ] && break
        sleep 0.1
      done
      sleep 3
      hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
      kill -TERM "$pid"; wait "$pid" || true
      rss[$b]+="$hwm "
      echo "  run $i, ${BINS[$b]}: VmHWM ${hwm} kB" >&2
    done
  done
  report_runs 'idle run, 100 policies:   peak RSS (VmHWM)' MB rss 'target <= 20 MB' kB
fi

if wants 2; then
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
  TOKEN=$(zenml_token)
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
  report 'plan, %s keys:         %s requests: %s key GETs, %s service-account page(s), the rest login  (target <= 1 per key + paging)' \
    "$KEYS" "$REQ_TOTAL" "$REQ_KEYS" "$REQ_PAGES"
  report 'plan wall time:           median %ss  [runs: %s]' "$PLAN_MED" "${t_plan[*]}"
  report 'curl loop, same GETs:     median %ss  [runs: %s]  (xargs -P %s, one keep-alive curl per worker)' "$CURL_MED" "${t_curl[*]}" "$N"
  report 'ratio plan / curl:        %s  (target <= 1.25)' "$RATIO"
fi

if wants 3; then
  say "3. once over 100 keys into Vault at $ZR_VAULT_ADDR ($REPS runs per binary, interleaved)"
  [ -f "$WORK/policy-vault-1.toml.in" ] || python3 bench/vault-policies.py "$WORK"
  export VAULT_TOKEN=${ZR_VAULT_ROOT_TOKEN:-root}
  declare -A last=() rss3=() cpu3=() user3=() wall3=() req3=() floor3=() curl_user3=() paced3=() sleeps3=() paced_sleeps3=()
  declare -A fin_cpu3=() fin_req3=() fin_sleeps3=()
  # One `once` of policy file $2 with binary $1 under bench/rusage.py (its JSON results in
  # once.json); prints exit code, peak RSS kB, CPU s, user s, wall s, sleeps, ZenML and Vault
  # requests (from the textfile it writes, which must be new).
  once_pass() { # binary policy
    touch "$WORK/once.started"; sleep 0.01
    local usage
    usage=$(python3 bench/rusage.py "$WORK/once.json" -- "$1" once -c "$2" --output json 2>>"$WORK/once.log")
    [ "$WORK/once.prom" -nt "$WORK/once.started" ] || { say "once wrote no metrics textfile"; exit 1; }
    python3 -c 'import json,sys; u=json.loads(sys.argv[1]); print(u["exit"], u["maxrss_kb"], u["user_s"] + u["sys_s"], u["user_s"], u["wall_s"], u["sleeps"], end=" ")' "$usage"
    awk '/^zenml_rotator_upstream_request_duration_seconds_count/ {
        if (/upstream="zenml"/) z += $NF; else if (/upstream="vault"/) v += $NF } END {print z + 0, v + 0}' "$WORK/once.prom"
  }
  results() { # result -> how many keys of once.json had it
    python3 -c 'import json,sys; print(sum(r["result"] == sys.argv[2] for r in json.load(open(sys.argv[1]))))' "$WORK/once.json" "$1"
  }
  TOKEN=$(zenml_token)
  # curl sending as many: Z GETs of the set's keys from ZenML and V GETs of its paths' metadata
  # from Vault, cycling over the 100 keys, each server's in one keep-alive curl; prints its user
  # and system CPU seconds.
  curl_same() { # set zenml-requests vault-requests policy
    awk -v u="$URL" -v k="key-$1" -v n="$2" '$2 == k {a[c++] = u "/api/v1/service_accounts/" $1 "/api_keys/" $2 "?hydrate=true"}
      END {for (i = 0; i < n; i++) print "url = \"" a[i % c] "\""}' "$WORK/ids.tsv" >"$WORK/curl-zenml.cfg"
    sed -n 's/^path = "\(.*\)"$/\1/p' "$4" | awk -v u="$ZR_VAULT_ADDR" -v n="$3" '{a[c++] = u "/v1/secret/metadata/" $1}
      END {for (i = 0; i < n; i++) print "url = \"" a[i % c] "\""}' >"$WORK/curl-vault.cfg"
    { python3 bench/rusage.py /dev/null -- curl -fsS --fail-early -H "Authorization: Bearer $TOKEN" -K "$WORK/curl-zenml.cfg"
      python3 bench/rusage.py /dev/null -- curl -fsS --fail-early -H "X-Vault-Token: $VAULT_TOKEN" -K "$WORK/curl-vault.cfg"
    } | python3 -c 'import json,sys; u=[json.loads(l) for l in sys.stdin]; assert all(x["exit"] == 0 for x in u), u; print(sum(x["user_s"] for x in u), sum(x["sys_s"] for x in u))'
  }
  # curl sending the same requests again (curl_same's lists) at the pass's pace: each server's
  # requests spread over the pass's wall time (--rate, a minute's worth), both curls at once as the
  # rotator talks to both servers at once; prints their user and system CPU seconds and how many
  # times they slept. PACED=0 skips it (it takes as long as the pass).
  curl_paced() { # zenml-requests vault-requests wall-seconds
    local rz rv
    rz=$(awk -v n="$1" -v w="$3" 'BEGIN {printf "%d", n * 60 / w + 0.5}')
    rv=$(awk -v n="$2" -v w="$3" 'BEGIN {printf "%d", n * 60 / w + 0.5}')
    python3 bench/rusage.py /dev/null -- curl -fsS --fail-early --rate "$rz/m" -H "Authorization: Bearer $TOKEN" \
      -K "$WORK/curl-zenml.cfg" >"$WORK/paced-zenml.json" &
    python3 bench/rusage.py /dev/null -- curl -fsS --fail-early --rate "$rv/m" -H "X-Vault-Token: $VAULT_TOKEN" \
      -K "$WORK/curl-vault.cfg" >"$WORK/paced-vault.json"
    wait "$!"
    python3 -c 'import json,sys; u=[json.load(open(f)) for f in sys.argv[1:]]; assert all(x["exit"] == 0 for x in u), u
print(sum(x["user_s"] for x in u), sum(x["sys_s"] for x in u), sum(x["sleeps"] for x in u))' "$WORK/paced-zenml.json" "$WORK/paced-vault.json"
  }
  # FRESH=1: the set's Vault paths and their claims go (metadata delete: every version), so the
  # next pass finds an empty store and makes a first rotation of every key.
  wipe_set() { # set
    local p
    sed -n 's/^path = "\(.*\)"$/\1/p' "$WORK/policy-vault-$1.toml.in" | while read -r p; do
      for meta in "secret/metadata/$p" "secret/metadata/zenml-rotator/claims/$p"; do
        curl -fsS -o /dev/null -X DELETE -H "X-Vault-Token: $VAULT_TOKEN" "$ZR_VAULT_ADDR/v1/$meta"
      done
    done
  }
  run=0
  for i in $(seq "$REPS"); do
    for b in "${!BINS[@]}"; do
      k=$(( run % 9 + 1 )); run=$((run + 1))
      # A set is due again two minutes (every = "2m") after the pass that rotated it (with
      # SPLIT=1 three, waited for below, after its finalizing pass).
      if [ "${FRESH:-0}" = 1 ]; then
        wipe_set "$k"
      elif [ "${SPLIT:-0}" != 1 ] && [ -n "${last[$k]:-}" ]; then
        wait_s=$(( last[$k] + 125 - $(date +%s) ))
        [ "$wait_s" -le 0 ] || { echo "  (set $k is due in ${wait_s}s)" >&2; sleep "$wait_s"; }
      fi
      # Private, as the rotator requires now (an older binary may have created it 0755).
      install -d -m 0700 "$WORK/state-vault"; chmod 0700 "$WORK/state-vault"
      pv=$(policy "policy-vault-$k.toml.in" "$URL" "policy-vault-$k.toml")
      # As a CronJob's runs do, each run finds the last one's textfile (and carries over from it).
      sed -i -e "s|{vault}|$ZR_VAULT_ADDR|" -e "s|^listen = .*|textfile = \"$WORK/once.prom\"|" "$pv"
      if [ "${SPLIT:-0}" = 1 ] && [ "${FRESH:-0}" != 1 ]; then
        # `every` 3m here, not 2m: a pass's keys are rotated over ~35 s and finalized over as many,
        # in another order, so a finalizing pass 65 s after the last of them must also end before
        # the first of them is due.
        sed -i 's/^every = "2m"$/every = "3m"/' "$pv"
        # A set this invocation has not rotated yet is in an unknown state (due, or its window
        # open): one pass first, not measured, brings it to a known one (rotated now).
        if [ -z "${last[$k]:-}" ]; then
          read -r code _ < <(once_pass "${BINS[$b]}" "$pv")
          rotated=$(results rotated)
          [ "$code" = 0 ] && [ "$rotated" = 100 ] || { say "set $k's first pass rotated $rotated of 100 (exit $code; rotated less than 3 minutes ago?): see $WORK/once.json"; exit 1; }
          last[$k]=$(date +%s)
          echo "  (set $k rotated, not measured: the passes below start from it)" >&2
        fi
        # The window (1m) of the set's last rotation is over, the set not due (3m): a pass that
        # only finalizes.
        wait_s=$(( last[$k] + 65 - $(date +%s) ))
        [ "$wait_s" -le 0 ] || { echo "  (set $k's window ends in ${wait_s}s)" >&2; sleep "$wait_s"; }
        read -r code maxrss cpu user wall sleeps zreq vreq < <(once_pass "${BINS[$b]}" "$pv")
        finalized=$(results finalized); rotated=$(results rotated)
        [ "$code" = 0 ] && [ "$rotated" = 0 ] || { say "the finalizing pass rotated $rotated (exit $code): see $WORK/once.json, $WORK/once.log"; exit 1; }
        [ "$finalized" = 100 ] || { say "the finalizing pass finalized $finalized of 100: see $WORK/once.json"; exit 1; }
        fin_key=$(awk -v c="$cpu" -v n="$finalized" 'BEGIN {printf "%.2f", c * 1000 / n}')
        fin_reqs=$(awk -v a="$zreq" -v b="$vreq" -v n="$finalized" 'BEGIN {printf "%.1f", (a + b) / n}')
        fin_cpu3[$b]+="$fin_key "; fin_req3[$b]+="$fin_reqs "
        fin_sleeps3[$b]+="$(awk -v s="$sleeps" -v a="$zreq" -v b="$vreq" 'BEGIN {printf "%.2f", s / (a + b)}') "
        echo "  run $i, set $k, ${BINS[$b]}: $finalized finalized in ${wall}s, peak RSS ${maxrss} kB, CPU ${cpu}s = ${fin_key} ms/key," \
          "$sleeps sleeps; $zreq + $vreq requests (ZenML + Vault)" >&2
        wait_s=$(( last[$k] + 185 - $(date +%s) ))
        [ "$wait_s" -le 0 ] || { echo "  (set $k is due in ${wait_s}s)" >&2; sleep "$wait_s"; }
      fi
      read -r code maxrss cpu user wall sleeps zreq vreq < <(once_pass "${BINS[$b]}" "$pv")
      last[$k]=$(date +%s)
      rotated=$(results rotated)
      [ "$code" = 0 ] && [ "$rotated" = 100 ] || { say "once rotated $rotated of 100 (exit $code): see $WORK/once.json, $WORK/once.log"; exit 1; }
      per_key=$(awk -v c="$cpu" -v n="$rotated" 'BEGIN {printf "%.2f", c * 1000 / n}')
      read -r curl_user curl_sys < <(curl_same "$k" "$zreq" "$vreq" "$pv")
      floor=$(awk -v u="$curl_user" -v s="$curl_sys" 'BEGIN {print u + s}')
      floor_key=$(awk -v c="$floor" -v n="$rotated" 'BEGIN {printf "%.2f", c * 1000 / n}')
      user_key=$(awk -v c="$user" -v n="$rotated" 'BEGIN {printf "%.2f", c * 1000 / n}')
      curl_user_key=$(awk -v c="$curl_user" -v n="$rotated" 'BEGIN {printf "%.2f", c * 1000 / n}')
      reqs_key=$(awk -v a="$zreq" -v b="$vreq" -v n="$rotated" 'BEGIN {printf "%.1f", (a + b) / n}')
      rss3[$b]+="$maxrss "; cpu3[$b]+="$per_key "; wall3[$b]+="$wall "; req3[$b]+="$reqs_key "; floor3[$b]+="$floor_key "
      user3[$b]+="$user_key "; curl_user3[$b]+="$curl_user_key "
      sleeps3[$b]+="$(awk -v s="$sleeps" -v a="$zreq" -v b="$vreq" 'BEGIN {printf "%.2f", s / (a + b)}') "
      paced=""
      if [ "${PACED:-1}" != 0 ]; then
        read -r paced_user paced_sys paced_sleeps < <(curl_paced "$zreq" "$vreq" "$wall")
        paced_key=$(awk -v u="$paced_user" -v s="$paced_sys" -v n="$rotated" 'BEGIN {printf "%.2f", (u + s) * 1000 / n}')
        paced3[$b]+="$paced_key "
        paced_sleeps3[$b]+="$(awk -v s="$paced_sleeps" -v a="$zreq" -v b="$vreq" 'BEGIN {printf "%.2f", s / (a + b)}') "
        paced="; at the pass's pace: ${paced_key} ms/key, ${paced_sleeps} sleeps"
      fi
      echo "  run $i, set $k, ${BINS[$b]}: $rotated rotated in ${wall}s, peak RSS ${maxrss} kB, CPU ${cpu}s = ${per_key} ms/key" \
        "(user ${user_key}), ${sleeps} sleeps;" "$zreq + $vreq requests (ZenML + Vault); curl sending as many: ${floor}s = ${floor_key}" \
        "ms/key (user ${curl_user_key})$paced" >&2
    done
  done
  report_runs 'once, 100 keys into Vault: peak RSS' MB rss3 'target <= 9.5 MB' kB
  report_runs 'once, CPU per rotated key:' ms cpu3 'user+sys; target <= 2 ms'
  report_runs 'once, wall time for 100 keys:' s wall3 'the server is the bottleneck; claims add requests'
  report_runs 'once, requests per key:' requests req3 'ZenML + Vault, from the metrics textfile'
  report_runs 'once, user CPU per key:' ms user3 'user space only'
  report_runs 'curl, as many requests:  CPU per key' ms floor3 'user+sys of a plain client sending the same number'
  report_runs 'curl, user CPU per key:' ms curl_user3 'user space only'
  report_runs 'once, sleeps per request:' sleeps sleeps3 'voluntary context switches: a wait for an answer is one'
  if [ "${SPLIT:-0}" = 1 ] && [ "${FRESH:-0}" != 1 ]; then
    report_runs 'finalizing pass, CPU per finalized key:' ms fin_cpu3 'user+sys; the window over, the key not due'
    report_runs 'finalizing pass, requests per key:' requests fin_req3 'ZenML + Vault'
    report_runs 'finalizing pass, sleeps per request:' sleeps fin_sleeps3 'voluntary context switches'
  fi
  if [ "${PACED:-1}" != 0 ]; then
    report_runs 'curl at the pace of the pass: CPU per key' ms paced3 'the same requests spread over the pass wall time (--rate)'
    report_runs 'curl at that pace, sleeps per request:' sleeps paced_sleeps3 'the rate wait and the answer wait'
  fi
  mapfile -t cpu_med < <(medians cpu3); mapfile -t floor_med < <(medians floor3)
  for b in "${!BINS[@]}"; do
    report 'once CPU / curl CPU:      x%s  (%s)' \
      "$(awk -v a="${cpu_med[$b]}" -v c="${floor_med[$b]}" 'BEGIN {printf "%.2f", a / c}')" "${BINS[$b]}"
  done
fi

if wants 4; then
  say "4. start-up: exec to the first connection ($REPS runs per binary), and check"
  cat >"$WORK/startup.toml.in" <<'TOML'
[zenml]
url = "{zenml}"
username = "admin"
password_env = "ZR_BENCH_PASSWORD"

[state]
dir = "{state}"

[[key]]
name = "k"
service_account = "sa"
api_key = "default"
path = "k.env"
TOML
  declare -A first=() check=()
  for i in $(seq "$REPS"); do
    for b in "${!BINS[@]}"; do
      ms=$(python3 bench/first-request.py "${BINS[$b]}" "$WORK/startup.toml.in" once)
      c=$(python3 bench/rusage.py /dev/null -- "${BINS[$b]}" check -c config.example.toml |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["wall_s"] * 1000, 2))')
      first[$b]+="$ms "; check[$b]+="$c "
      echo "  run $i, ${BINS[$b]}: first request after ${ms} ms; check ${c} ms" >&2
    done
  done
  report_runs 'start-up to first request:' ms first 'once: exec to the login connect'
  report_runs 'check config.example.toml:' ms check 'wall time'
fi

if wants 5; then
  sizes=(); for b in "${BINS[@]}"; do sizes+=("$(awk -v s="$(stat -c %s "$b")" 'BEGIN {printf "%.1f", s / 1048576}')"); done
  report 'binary size:              %s  (target <= 12 MB)' "$(compare MiB "${sizes[@]}")"
fi

printf '\nzenml-rotator benchmark, %s, %s cores, %s%s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" \
  "$("$BIN" --version)" "${BEFORE:+ (before: $BEFORE)}"
printf '%s\n' "${REPORT[@]}"
