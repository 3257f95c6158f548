#!/usr/bin/env python3
"""Creates the benchmark's managed keys on a ZenML server and the policy files that manage them.

  setup.py OUT_DIR            (ZR_ZENML_URL, ZR_ZENML_ADMIN, ZR_ZENML_ADMIN_PASSWORD from the env)

Creates SERVICE_ACCOUNTS (100) service accounts named <prefix>-sa-NNN with KEYS_PER_ACCOUNT (10)
API keys key-0..key-9 each, in parallel (8 at once), and writes under OUT_DIR:
  keys/<policy>.env        the current value of every key, as the file store keeps it (so `plan`
                           sees a stored value, not an empty store)
  policy-1000.toml         one [[key]] per API key (1,000 keys), file store
  policy-100.toml          key-0 of each account (100 policies), for the daemon's memory figure
  ids.tsv                  service account id and key name per key, for the curl baseline
Key values go only to the env files (mode 0600), never to stdout.
"""
import concurrent.futures
import json
import os
import sys
import time
import urllib.parse
import urllib.request

URL = os.environ["ZR_ZENML_URL"].rstrip("/")
ADMIN = os.environ["ZR_ZENML_ADMIN"]
PASSWORD = os.environ["ZR_ZENML_ADMIN_PASSWORD"]
ACCOUNTS = int(os.environ.get("SERVICE_ACCOUNTS", "100"))
PER_ACCOUNT = int(os.environ.get("KEYS_PER_ACCOUNT", "10"))


def token():
    data = urllib.parse.urlencode(
        {"grant_type": "password", "username": ADMIN, "password": PASSWORD}
    ).encode()
    with urllib.request.urlopen(f"{URL}/api/v1/login", data=data) as r:
        return json.load(r)["access_token"]


TOKEN = token()


def post(path, body):
    req = urllib.request.Request(
        f"{URL}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == 4:
                raise
            time.sleep(1 + attempt)


def make_account(args):
    prefix, i = args
    name = f"{prefix}-sa-{i:03d}"
    sa = post("/api/v1/service_accounts", {"name": name, "active": True})
    keys = []
    for k in range(PER_ACCOUNT):
        key = post(f"/api/v1/service_accounts/{sa['id']}/api_keys", {"name": f"key-{k}"})
        keys.append((f"key-{k}", key["body"]["key"]))
    return name, sa["id"], keys


def main():
    out = sys.argv[1]
    os.makedirs(f"{out}/keys", exist_ok=True)
    prefix = f"bench{int(time.time())}"
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        accounts = list(pool.map(make_account, [(prefix, i) for i in range(ACCOUNTS)]))
    header = f"""[zenml]
url = "{URL}"
username = "{ADMIN}"
password_env = "ZR_BENCH_PASSWORD"

[defaults]
every = "30d"
retain = "60m"
store = "local"
concurrency = {{concurrency}}

[metrics]
listen = "127.0.0.1:{{port}}"

[state]
dir = "{out}/state"

[stores.local]
kind = "file"
dir = "{out}/keys"
"""
    all_keys, first_keys, ids = [], [], []
    for name, sa_id, keys in accounts:
        for key_name, value in keys:
            policy = f"{name}-{key_name}"
            path = f"{out}/keys/{policy}.env"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"ZENML_STORE_URL={URL}\nZENML_STORE_API_KEY={value}\n")
            block = (
                f'\n[[key]]\nname = "{policy}"\nservice_account = "{name}"\n'
                f'api_key = "{key_name}"\npath = "{policy}.env"\n'
            )
            all_keys.append(block)
            if key_name == "key-0":
                first_keys.append(block)
            ids.append(f"{sa_id}\t{key_name}")
    with open(f"{out}/policy-1000.toml.in", "w") as f:
        f.write(header + "".join(all_keys))
    with open(f"{out}/policy-100.toml.in", "w") as f:
        f.write(header + "".join(first_keys))
    with open(f"{out}/ids.tsv", "w") as f:
        f.write("\n".join(ids) + "\n")
    print(
        f"created {ACCOUNTS} service accounts x {PER_ACCOUNT} keys = {len(ids)} keys "
        f"in {time.time() - started:.0f}s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
