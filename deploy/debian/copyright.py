#!/usr/bin/env python3
"""Writes the package's debian/copyright (machine-readable format 1.0) to stdout.

  copyright.py

zenml-rotator is Apache-2.0. Its binary also links, statically, every Rust crate it depends on:
they are listed with their own license expressions, read from `cargo metadata` (normal
dependencies only, for the host platform, as in the release build).
"""
import datetime
import json
import os
import subprocess

host = next(
    line.split(": ", 1)[1]
    for line in subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout.splitlines()
    if line.startswith("host: ")
)
meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", host],
    capture_output=True, text=True, check=True,
).stdout)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = meta["resolve"]["root"]

linked, todo = set(), [root]
while todo:
    for dep in nodes[todo.pop()]["deps"]:
        normal = any(k["kind"] is None for k in dep["dep_kinds"])
        if normal and dep["pkg"] not in linked:
            linked.add(dep["pkg"])
            todo.append(dep["pkg"])

crates = sorted(
    (packages[i]["name"], packages[i]["version"], packages[i].get("license") or "see the crate")
    for i in linked
)
print("""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: zenml-rotator
Comment: The binary /usr/bin/zenml-rotator statically links the Rust crates listed
 below, each under its own license (the SPDX expression after its name); their
 authors and license texts are in each crate's source on crates.io.
 .""")
for name, version, lic in crates:
    print(f" {name} {version}: {lic}")
year = datetime.datetime.fromtimestamp(
    int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or datetime.datetime.now().timestamp(), datetime.timezone.utc
).year
print(f"""
Files: *
Copyright: {year} zenml-rotator contributors
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this file except in compliance with the License.
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
 WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 License for the specific language governing permissions and limitations
 under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can
 be found in "/usr/share/common-licenses/Apache-2.0".""")
