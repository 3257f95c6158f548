#!/usr/bin/env bash
# Writes link/hot-functions.txt: the functions of the release binary that typical runs execute,
# which build.rs has the linker place together at the start of .text (see build.rs for why: the
# kernel keeps 64 KB of code resident around every function touched). Rerun it after a
# dependency update or a large change, then rebuild and rerun bench/run.sh section 3.
#
#   bench/hot-functions.sh [WORK_DIR]     (after bench/run.sh made WORK_DIR, default .peers/bench)
#
# Runs under valgrind's callgrind (Debian: valgrind), which lists every function that ran:
#   - `check` on config.example.toml;
#   - `plan` over the 1,000 keys (the listing, the key GETs);
#   - `once` over a Vault key set that is due (a steady-state pass: the previous rotation
#     finalized, a new one written, claims taken and released), writing a metrics textfile over
#     the one a previous run left (as in bench/run.sh section 3, and a CronJob's runs);
#   - `run` with the 100 file-store policies of section 1 until its first pass is over, then SIGTERM.
# Uses the bench servers: ZR_ZENML_URL, ZR_ZENML_ADMIN_PASSWORD, ZR_VAULT_ADDR (bench/run.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK=$(cd "${1:-$ROOT/.peers/bench}" && pwd)
BIN=${BIN:-$ROOT/target/release/zenml-rotator}
OUT=$ROOT/link/hot-functions.txt
say() { printf '== %s\n' "$*" >&2; }
: "${ZR_ZENML_URL:?the bench ZenML server (source .peers/bench-run/env)}" "${ZR_VAULT_ADDR:?}"
command -v valgrind >/dev/null || { say "needs valgrind (apt-get install valgrind)"; exit 1; }
[ -f "$WORK/policy-vault-1.toml.in" ] || { say "run bench/run.sh first ($WORK has no key sets)"; exit 1; }
[ -x "$BIN" ] || cargo build --release
export ZR_BENCH_PASSWORD=$ZR_ZENML_ADMIN_PASSWORD VAULT_TOKEN=${ZR_VAULT_ROOT_TOKEN:-root}
URL=${ZR_ZENML_URL%/}
CG=$(mktemp -d)
trap 'rm -rf "$CG"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
policy() { # template -> file
  local out=$CG/${1%.in}
  sed -e "s|{concurrency}|4|" -e "s|{port}|${2:-$(free_port)}|" -e "s|^url = .*|url = \"$URL\"|" \
    -e "s|{vault}|$ZR_VAULT_ADDR|" "$WORK/$1" >"$out"
  echo "$out"
}
# A run that fails would leave its functions out of the list: stop instead, with its log.
grind() { # name args...
  local name=$1; shift
  valgrind -q --tool=callgrind --demangle=no --callgrind-out-file="$CG/$name.out" "$BIN" "$@" \
    >/dev/null 2>>"$CG/log" || { tail -20 "$CG/log" >&2; say "$name failed: no list written"; exit 1; }
}

say "check"
grind check check -c config.example.toml
say "plan over 1,000 keys"
grind plan plan -c "$(policy policy-1000.toml.in)" --output json
# The first Vault key set whose 100 keys are all due.
set_due=
for k in 1 2 3 4 5 6 7 8 9; do
  due=$("$BIN" plan -c "$(policy "policy-vault-$k.toml.in")" --output json 2>/dev/null | python3 -c '
import json, sys, datetime
now = datetime.datetime.now(datetime.timezone.utc)
rows = json.load(sys.stdin)
print(sum(r["next_due"] is not None and datetime.datetime.fromisoformat(r["next_due"].replace("Z", "+00:00")) <= now for r in rows))')
  [ "$due" = 100 ] && { set_due=$k; break; }
done
[ -n "$set_due" ] || { say "no Vault key set is due yet: wait two minutes after bench/run.sh"; exit 1; }
install -d -m 0700 "$WORK/state-vault" "$WORK/keys" "$WORK/state"
say "once over Vault key set $set_due"
po=$(policy "policy-vault-$set_due.toml.in")
sed -i "s|^listen = .*|textfile = \"$CG/once.prom\"|" "$po"
[ ! -f "$WORK/once.prom" ] || cp "$WORK/once.prom" "$CG/once.prom"
grind once once -c "$po" --output json
[ -s "$CG/once.prom" ] || { say "once wrote no metrics textfile: no list written"; exit 1; }
say "run with 100 policies, until its first pass is over"
port=$(free_port)
pr=$(policy policy-100.toml.in "$port")
valgrind -q --tool=callgrind --demangle=no --callgrind-out-file="$CG/run.out" "$BIN" run -c "$pr" \
  >/dev/null 2>>"$CG/log" &
pid=$!
ready=
for _ in $(seq 600); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && { ready=1; break; }
  sleep 0.5
done
kill -TERM "$pid"
wait "$pid" || { tail -20 "$CG/log" >&2; say "run failed: no list written"; exit 1; }
[ -n "$ready" ] || { say "run never became ready: no list written"; exit 1; }

# Every function of the binary with any cost, from every run; sorted, so the file diffs well.
python3 - "$BIN" "$OUT" "$CG"/*.out <<'PY'
import os, re, sys
binary, out, files = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3:]
hot = set()
for path in files:
    names, objects, current = {}, {}, None
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m[3]:
                objects[m[2]] = m[3]
            if m[1] == "ob":
                current = objects[m[2]]
            continue
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m[3]:
                names[m[2]] = m[3]
            # Code without a symbol has its address for a name: nothing a later build can order.
            if m[1] == "fn" and current and os.path.realpath(current) == binary \
                    and not names[m[2]].startswith("0x"):
                hot.add(names[m[2]])
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "w") as f:
    f.writelines(name + "\n" for name in sorted(hot))
print(f"{len(hot)} functions from {len(files)} runs -> {out}", file=sys.stderr)
PY
