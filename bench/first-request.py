#!/usr/bin/env python3
"""Start-up to the first request: how long after exec the rotator opens its first connection.

  first-request.py BIN POLICY_TEMPLATE COMMAND...

Listens on a free loopback port, writes POLICY_TEMPLATE with {zenml} replaced by that address, runs
`BIN COMMAND... -c POLICY`, and prints the milliseconds from just before the exec to the accept of
the first connection (parsing the policy, the runtime, the HTTP clients and the login's connect).
The connection is then closed and the rotator killed.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

binary, template, command = sys.argv[1], sys.argv[2], sys.argv[3:]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
listener.settimeout(30)
with open(template) as f:
    policy = f.read().replace("{zenml}", f"http://127.0.0.1:{listener.getsockname()[1]}")
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "policy.toml")
    with open(path, "w") as f:
        f.write(policy.replace("{state}", tmp))
    start = time.perf_counter()
    child = subprocess.Popen([binary, *command, "-c", path],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn, _ = listener.accept()
    elapsed = time.perf_counter() - start
    conn.close()
    child.kill()
    child.wait()
print(f"{elapsed * 1000:.2f}")
