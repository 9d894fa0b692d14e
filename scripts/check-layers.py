#!/usr/bin/env python3
"""check-layers.py BUILD_DIR - no file includes a header from a folder above its own.

The layers are docs/architecture.md's map, written out below. Includes are resolved
the way the compiler resolves them: every translation unit in BUILD_DIR's
compile_commands.json is run through the compiler again with -H -fsyntax-only, whose
output names every header opened and by which file (its depth), so an include that the
compiler finds through a different directory than its name suggests is judged by where
it really is. Each edge (a project file including a project header) is checked:
the including file's folder must be allowed to use the header's folder.
Exit 0 when every edge is allowed, 1 otherwise (each offending edge printed)."""

import json
import os
import shlex
import subprocess
import sys

# Folder -> the folders it may include from (besides itself). Generated protobuf
# headers (BUILD/proto) and system headers are open to all. The order is the map's,
# bottom to top.
LAYERS = {
    "include": [],
    "src/common": [],
    "src/crypto": ["src/common"],
    "src/ws": ["src/common"],
    "src/server/net": ["src/ws", "src/common"],
    "src/server/store": ["src/common"],
    "src/server/store/log": ["src/server/store", "src/common"],
    "src/server/store/lmdb": ["src/server/store/log", "src/server/store", "src/common"],
    "src/server/bus": ["src/server/store", "src/common"],
    "src/server/core": ["src/server/bus", "src/server/store", "src/server/net", "src/ws", "src/common"],
    "src/server/services": ["src/server/core", "src/server/bus", "src/server/store", "src/server/net",
                            "src/ws", "src/crypto", "src/common"],
    "src/server": ["src/server/services", "src/server/core", "src/server/bus", "src/server/store",
                   "src/server/net", "src/ws", "src/crypto", "src/common"],
    "src/client": ["include", "src/ws", "src/crypto", "src/common"],
}
# Tools and tests sit above everything and may use any layer.
TOP = ("tools/", "tests/")


def folder_of(rel):
    d = os.path.dirname(rel)
    return d if d in LAYERS else None


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check-layers.py BUILD_DIR")
    build = os.path.abspath(sys.argv[1])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(build, "compile_commands.json")) as f:
        commands = json.load(f)

    def rel(path):
        p = os.path.relpath(os.path.realpath(path), root)
        return None if p.startswith("..") or p.startswith(os.path.relpath(build, root)) else p

    edges, units = set(), 0
    for c in commands:
        src = rel(c["file"])
        if not src:
            continue
        args = c["arguments"] if "arguments" in c else shlex.split(c["command"])
        # drop the output, keep the flags and the source; only preprocess what it includes
        out, skip = [], False
        for a in args:
            if skip:
                skip = False
                continue
            if a == "-o":
                skip = True
                continue
            if a == "-c":
                continue
            out.append(a)
        run = subprocess.run(out + ["-H", "-fsyntax-only"], cwd=c["directory"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if run.returncode != 0:
            print(run.stderr, file=sys.stderr)
            sys.exit("check-layers: %s does not compile" % src)
        units += 1
        stack = [src]  # stack[d]: the file open at depth d
        for line in run.stderr.splitlines():
            dots = len(line) - len(line.lstrip("."))
            if dots == 0 or not line[dots:].startswith(" "):
                continue
            header = line[dots + 1:].strip()
            del stack[dots:]
            includer = stack[-1]
            stack.append(rel(os.path.join(c["directory"], header)) or "")
            if includer and stack[-1]:
                edges.add((includer, stack[-1]))

    bad = []
    for includer, header in sorted(edges):
        if includer.startswith(TOP):
            continue
        src_dir, hdr_dir = folder_of(includer), folder_of(header)
        if src_dir is None:
            bad.append("%s: its folder is not on the map (scripts/check-layers.py)" % includer)
        elif hdr_dir is None:
            bad.append("%s includes %s, whose folder is not on the map" % (includer, header))
        elif hdr_dir != src_dir and hdr_dir not in LAYERS[src_dir]:
            bad.append("%s includes %s: %s may not use %s" % (includer, header, src_dir, hdr_dir))
    for b in sorted(set(bad)):
        print("check-layers: " + b)
    print("check-layers: %d translation units, %d includes between project files, %d not allowed"
          % (units, len(edges), len(set(bad))))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
