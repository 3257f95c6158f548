#!/usr/bin/env python3
"""Writes the policies of the `once`-into-Vault benchmark from the keys bench/setup.py created.

  vault-policies.py WORK_DIR

For each K in 1..9, policy-vault-K.toml.in holds key-K of every service account (100 keys) with a
Vault KV v2 store (token auth from $VAULT_TOKEN), every = "2m" and retain = "1m": each set is due
again two minutes after a pass rotated it, so consecutive runs take the sets in turn and every run
rotates 100 keys. Placeholders: {vault} (address), {concurrency}, {port}.
"""
import re
import sys

work = sys.argv[1]
with open(f"{work}/policy-1000.toml.in") as f:
    text = f.read()
pairs = re.findall(r'^service_account = "(.*)"\napi_key = "(.*)"$', text, re.M)
# bench/setup.py's header ([zenml], [defaults], [metrics], [state]), with the cadence, store and
# state directory of this benchmark, and a Vault store instead of its file store.
header = text[: text.index("[stores.local]")]
for pattern, value in [
    (r'^every = ".*"$', 'every = "2m"'),
    (r'^retain = ".*"$', 'retain = "1m"'),
    (r'^store = ".*"$', 'store = "vault"'),
    (r'^dir = "(.*)/state"$', r'dir = "\1/state-vault"'),
]:
    header = re.sub(pattern, value, header, flags=re.M)
header += """[stores.vault]
kind = "vault"
address = "{vault}"
mount = "secret"
auth = { method = "token", token_env = "VAULT_TOKEN" }
"""

for k in range(1, 10):
    keys = [
        f'\n[[key]]\nname = "{sa}-key-{k}"\nservice_account = "{sa}"\napi_key = "key-{k}"\n'
        f'path = "bench/{sa}-key-{k}"\n'
        for sa, key in pairs
        if key == f"key-{k}"
    ]
    with open(f"{work}/policy-vault-{k}.toml.in", "w") as f:
        f.write(header + "".join(keys))
print(f"wrote policy-vault-1..9.toml.in ({len(pairs) // 10} keys each)", file=sys.stderr)
