#!/usr/bin/env python3
"""Packs a few files into a one-layer container image archive in `docker save` format, which
`ctr images import` loads under the name given (scripts/k8s-node.sh: the test node's pause
and busybox images; no container engine or registry is needed).

    pack-image.py OUT.tar NAME:TAG --entrypoint '["/pause"]' \
        --file /path/on/host:/pause:0755 --dir /etc:0755 --symlink /bin/sh:busybox

Reproducible: every mtime is 0 and every owner root, so the same inputs give the same
archive and digests. Python 3 standard library only.
"""

import argparse
import hashlib
import io
import json
import sys
import tarfile


def entry(name, kind, mode=0o755):
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer(args):
    items = []
    for spec in args.dir:
        path, _, mode = spec.partition(":")
        items.append((path, entry(path, tarfile.DIRTYPE, int(mode or "755", 8)), None))
    for spec in args.file:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            sys.exit(f"pack-image.py: --file SRC:DEST[:MODE], got {spec!r}")
        with open(parts[0], "rb") as f:
            data = f.read()
        info = entry(parts[1], tarfile.REGTYPE, int(parts[2] if len(parts) == 3 else "755", 8))
        info.size = len(data)
        items.append((parts[1], info, data))
    for spec in args.symlink:
        path, _, target = spec.partition(":")
        info = entry(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        items.append((path, info, None))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for _, info, data in sorted(items, key=lambda i: i[0]):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("name", help="NAME:TAG, e.g. corral.local/pause:1")
    p.add_argument("--entrypoint", default="null", help="JSON list")
    p.add_argument("--cmd", default="null", help="JSON list")
    p.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE]")
    p.add_argument("--dir", action="append", default=[], help="DEST[:MODE]")
    p.add_argument("--symlink", action="append", default=[], help="DEST:TARGET")
    args = p.parse_args()

    layer_tar = layer(args)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": json.loads(args.entrypoint),
            "Cmd": json.loads(args.cmd),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "pack-image.py"}],
    }
    config_json = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_json).hexdigest() + ".json"
    layer_dir = diff_id.split(":")[1]
    manifest = [
        {
            "Config": config_name,
            "RepoTags": [args.name],
            "Layers": [f"{layer_dir}/layer.tar"],
        }
    ]
    files = [
        (config_name, config_json),
        (f"{layer_dir}/layer.tar", layer_tar),
        ("manifest.json", json.dumps(manifest).encode()),
    ]
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as tar:
        info = entry(layer_dir, tarfile.DIRTYPE)
        tar.addfile(info)
        for name, data in files:
            info = entry(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
