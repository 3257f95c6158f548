#!/usr/bin/env python3
"""Runs a command and prints what it cost, as one JSON line on stderr's behalf (stdout goes to OUT):

  rusage.py OUT -- CMD ARGS...

{"exit": N, "wall_s": ..., "user_s": ..., "sys_s": ..., "maxrss_kb": ...}: the child's own user and
system CPU time and peak resident set (getrusage of the waited-for child: ru_maxrss is VmHWM).
"""
import json
import os
import subprocess
import sys
import time

out, cmd = sys.argv[1], sys.argv[3:]
start = time.perf_counter()
with open(out, "wb") as f:
    child = subprocess.Popen(cmd, stdout=f)
    _, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - start
print(json.dumps({
    "exit": os.waitstatus_to_exitcode(status),
    "wall_s": round(wall, 3),
    "user_s": usage.ru_utime,
    "sys_s": usage.ru_stime,
    "maxrss_kb": usage.ru_maxrss,
}))
