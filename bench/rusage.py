#!/usr/bin/env python3
"""Runs a command and prints what it cost as one JSON line (the command's stdout goes to OUT):

  rusage.py OUT -- CMD ARGS...

{"exit": N, "wall_s": ..., "user_s": ..., "sys_s": ..., "maxrss_kb": ..., "sleeps": ...}: the child's
own user and system CPU time (getrusage of the waited-for child), how many times it went to sleep
(voluntary context switches: each wait for an answer is one), and its peak resident set: VmHWM from
/proc/PID/status, read every 5 ms until it exits (the high-water mark only grows, so the last read
is the peak up to a few ms before exit). Not ru_maxrss: that one also counts the pages of this
Python process that the child shared between fork and exec (~14 MB), more than a small program uses.
"""
import json
import os
import subprocess
import sys
import time

out, cmd = sys.argv[1], sys.argv[3:]
start = time.perf_counter()
hwm = 0
with open(out, "wb") as f:
    child = subprocess.Popen(cmd, stdout=f)
    status_file = f"/proc/{child.pid}/status"
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open(status_file) as s:
                for line in s:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.005)
wall = time.perf_counter() - start
print(json.dumps({
    "exit": os.waitstatus_to_exitcode(status),
    "wall_s": round(wall, 3),
    "user_s": usage.ru_utime,
    "sys_s": usage.ru_stime,
    "maxrss_kb": hwm,
    "sleeps": usage.ru_nvcsw,
}))
