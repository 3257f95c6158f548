#!/usr/bin/env python3
"""The suite's leak check (invariant 4): no secret the tests created or saw appears in anything a
rotator process wrote.

The tests record both sides under $ZR_TRANSCRIPTS (see tests/common/transcript.rs):
  out/<pid>.log      what the processes wrote: stdout, stderr, daemon logs, metrics textfiles,
                     plan/inventory JSON, audit files, the files left in state directories
                     (a journal entry of a rotation a test leaves in flight on purpose without
                     its value: that is the value's durable copy; listed in inflight/<pid>.txt)
  secrets/<pid>.txt  one secret per line: key values (and the secret inside each), passwords, tokens

Usage: scan-transcripts.py DIR. Exit 0 when nothing leaked; 1 with the place of every leak (the
file, the line, and a fingerprint of the secret, never the secret); 2 when there is nothing to
scan (a check that saw no secrets or no output proves nothing).

The matching is GNU grep's fixed-string search over all secrets at once (Aho-Corasick), so a few
thousand secrets over tens of megabytes take seconds. `--self-test` plants a secret and checks it
is found, in plain text and inside a longer line.
"""

import hashlib
import os
import subprocess
import sys
import tempfile


def read_secrets(directory):
    secrets = set()
    sdir = os.path.join(directory, "secrets")
    for name in sorted(os.listdir(sdir)) if os.path.isdir(sdir) else []:
        with open(os.path.join(sdir, name), encoding="utf-8", errors="replace") as f:
            secrets.update(line.strip() for line in f if line.strip())
    return secrets


def outputs(directory):
    odir = os.path.join(directory, "out")
    if not os.path.isdir(odir):
        return []
    return [os.path.join(odir, n) for n in sorted(os.listdir(odir))]


def in_flight(directory):
    """Journal entries the tests left holding a value in flight (recorded without it)."""
    idir = os.path.join(directory, "inflight")
    paths = []
    for name in sorted(os.listdir(idir)) if os.path.isdir(idir) else []:
        with open(os.path.join(idir, name), encoding="utf-8", errors="replace") as f:
            paths.extend(line.strip() for line in f if line.strip())
    return paths


def fingerprint(secret):
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def scan(directory):
    """(secrets, files, bytes, leaks); each leak is (file, line, fingerprint)."""
    secrets = read_secrets(directory)
    files = outputs(directory)
    size = sum(os.path.getsize(f) for f in files)
    if not secrets or not files:
        return secrets, files, size, None
    with tempfile.NamedTemporaryFile("w", delete=False) as patterns:
        patterns.write("\n".join(sorted(secrets)) + "\n")
    try:
        # -a: logs are text, but a damaged one must not turn into "binary file matches".
        found = subprocess.run(
            ["grep", "-a", "-H", "-F", "-o", "-n", "-f", patterns.name, "--", *files],
            stdout=subprocess.PIPE,
            check=False,
        )
    finally:
        os.unlink(patterns.name)
    if found.returncode not in (0, 1):
        raise SystemExit(f"grep failed with exit code {found.returncode}")
    leaks = []
    for line in found.stdout.decode("utf-8", errors="replace").splitlines():
        path, lineno, match = line.split(":", 2)
        leaks.append((path, int(lineno), fingerprint(match)))
    return secrets, files, size, leaks


def self_test():
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "out"))
        os.makedirs(os.path.join(d, "secrets"))
        planted = "ZENKEY_" + "c2VsZi10ZXN0LXZhbHVl" * 3
        with open(os.path.join(d, "secrets", "1.txt"), "w") as f:
            f.write(planted + "\nanother-secret-never-written\n")
        with open(os.path.join(d, "out", "1.log"), "w") as f:
            f.write("clean line\nvalue=" + planted + "; trailing\n")
        _, _, _, leaks = scan(d)
        assert leaks == [(os.path.join(d, "out", "1.log"), 2, fingerprint(planted))], leaks
        with open(os.path.join(d, "out", "1.log"), "w") as f:
            f.write("clean line only\n")
        _, _, _, leaks = scan(d)
        assert leaks == [], leaks
    print("scan-transcripts self-test: a planted secret is found, a clean transcript passes")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    secrets, files, size, leaks = scan(sys.argv[1])
    if leaks is None:
        print(
            f"leak check: nothing to scan ({len(secrets)} secrets, {len(files)} transcripts "
            f"under {sys.argv[1]}): was the suite run with ZR_TRANSCRIPTS set?",
            file=sys.stderr,
        )
        return 2
    print(
        f"leak check: {len(secrets)} secrets searched in {len(files)} transcripts "
        f"({size / 1e6:.1f} MB): {len(leaks)} found"
    )
    inflight = in_flight(sys.argv[1])
    if inflight:
        print(
            f"  ({len(inflight)} journal entries of rotations left in flight on purpose were "
            "scanned without their value, which is the durable copy by design)"
        )
    for path, lineno, fp in leaks:
        print(f"  LEAK {path}:{lineno}: secret {fp}", file=sys.stderr)
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
