#!/usr/bin/env python3
"""A counting reverse proxy for the benchmark's request counts (never on a timed run).

  count-proxy.py UPSTREAM_URL PORT_FILE COUNT_FILE

Listens on a free loopback port (written to PORT_FILE), forwards every request to UPSTREAM_URL
with keep-alive, and on SIGTERM writes one line per request kind to COUNT_FILE:
"<count> <METHOD> <path with ids replaced by {id}>".
"""
import collections
import http.client
import http.server
import re
import signal
import sys
import threading
import urllib.parse

UPSTREAM = urllib.parse.urlparse(sys.argv[1])
PORT_FILE, COUNT_FILE = sys.argv[2], sys.argv[3]
COUNTS = collections.Counter()
LOCK = threading.Lock()
LOCAL = threading.local()
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def upstream():
    if getattr(LOCAL, "conn", None) is None:
        LOCAL.conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=120)
    return LOCAL.conn


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        path = urllib.parse.urlparse(self.path).path
        kind = UUID.sub("{id}", path)
        kind = re.sub(r"/api_keys/key-\d+", "/api_keys/{name}", kind)
        with LOCK:
            COUNTS[f"{self.command} {kind}"] += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        for attempt in range(2):
            try:
                conn = upstream()
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                LOCAL.conn = None
                if attempt:
                    raise
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = forward


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def stop(*_):
    with open(COUNT_FILE, "w") as f:
        for kind, n in sorted(COUNTS.items()):
            f.write(f"{n} {kind}\n")
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, stop)
with open(PORT_FILE, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
