#!/usr/bin/env python3
"""Pack a root filesystem directory into a container image archive, without a container engine.

The archive is in `docker save` format (manifest.json, repositories, the config as
<digest>.json, the single layer as <digest>/layer.tar), which `ctr images import` (containerd
1.6 and later), `docker load`, `podman load` and `kind load image-archive` all accept, with
full names such as ghcr.io/corral-dev/corral:0.1.0 kept as given. (containerd 1.6 imports an
OCI layout only under the name in its io.containerd.image.name annotation, or needs
--base-name; the docker format carries the whole name in RepoTags, so it needs nothing.)

Reproducible: entries are sorted by path, every mtime is --mtime (SOURCE_DATE_EPOCH, else 0),
owners come from --chown (root:root by default), never from the files on disk, and user and
group names are left empty, so two builds of the same tree and options give the same layer,
config and image digests, byte for byte the same archive.

The tree may hold regular files, directories, symlinks (stored as they are, never followed)
and hardlinks (files with more than one link inside the tree: the first path in sorted order
holds the data, the others are hardlink entries to it). Permission bits are kept, setuid,
setgid and sticky included. Device nodes, sockets and FIFOs are refused: the runtime
provides /dev. Extended attributes (file capabilities, SELinux labels) are not stored.

Python 3 standard library only.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import re
import stat
import sys
import tarfile
import tempfile

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def die(msg):
    print(f"pack.py: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_owner(text, what):
    m = re.fullmatch(r"(\d+):(\d+)", text)
    if not m:
        die(f"{what}: expected UID:GID (numbers), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_chown(text):
    """PATH=UID:GID, for PATH and everything below it."""
    if "=" not in text:
        die(f"--chown: expected PATH=UID:GID, got {text!r}")
    path, owner = text.rsplit("=", 1)
    path = "/" + path.strip("/")
    return path, parse_owner(owner, "--chown")


def owner_of(rel, default, chowns):
    """The owner of /rel: the longest --chown prefix that covers it, else the default."""
    best, best_len = default, -1
    abs_path = "/" + rel if rel else "/"
    for prefix, owner in chowns:
        if prefix == "/" or abs_path == prefix or abs_path.startswith(prefix + "/"):
            if len(prefix) > best_len:
                best, best_len = owner, len(prefix)
    return best


def walk_sorted(root):
    """Relative paths of everything below root (not root itself), sorted, parents first.

    Sorted by path components, so "a/b" comes before "a.b" (byte order of whole paths would
    put "a.b" between "a" and "a/b"); either is deterministic, this one keeps a directory's
    entries right after it."""
    out = []

    def rec(rel_parts):
        d = os.path.join(root, *rel_parts) if rel_parts else root
        for name in sorted(os.listdir(d), key=os.fsencode):
            parts = rel_parts + [name]
            out.append("/".join(parts))
            full = os.path.join(root, *parts)
            if stat.S_ISDIR(os.lstat(full).st_mode):
                rec(parts)

    rec([])
    return out


def build_layer(rootfs, out, mtime, default_owner, chowns):
    """Write the layer tar to the binary file `out`. Returns the number of entries."""
    seen_inodes = {}  # (dev, ino) -> first path, for hardlinks
    count = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in walk_sorted(rootfs):
            full = os.path.join(rootfs, rel)
            st = os.lstat(full)
            info = tarfile.TarInfo(rel)
            info.mtime = mtime
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = owner_of(rel, default_owner, chowns)
            info.uname = info.gname = ""
            data = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen_inodes[key]
                else:
                    if st.st_nlink > 1:
                        seen_inodes[key] = rel
                    info.type = tarfile.REGTYPE
                    info.size = st.st_size
                    data = full
            else:
                die(f"{full}: not a regular file, directory or symlink (device, socket or "
                    "FIFO); the runtime provides /dev, leave such files out of the tree")
            if data is None:
                tar.addfile(info)
            else:
                with open(data, "rb") as f:
                    tar.addfile(info, f)
            count += 1
    return count


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes what goes through it (and keeps nothing)."""

    def __init__(self, sink=None):
        self.h = hashlib.sha256()
        self.size = 0
        self.sink = sink

    def writable(self):
        return True

    def tell(self):
        # tarfile asks where it starts; nothing seeks.
        return self.size

    def write(self, b):
        self.h.update(b)
        self.size += len(b)
        if self.sink is not None:
            self.sink.write(b)
        return len(b)


def arch_default():
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}.get(m, m)


def add_bytes(tar, name, data, mtime):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def main():
    p = argparse.ArgumentParser(
        prog="pack.py",
        description="Pack a root filesystem directory into a one-layer image archive in "
        "`docker save` format, for `ctr -n k8s.io images import FILE` (containerd 1.6+), "
        "`docker load` or `kind load image-archive`, reproducibly: sorted entries, fixed "
        "mtimes, owners from --chown (root by default), so the same tree and options always "
        "give the same digests.",
        epilog="Example: pack.py --rootfs /tmp/pause-root --tag registry.k8s.io/pause:3.10 "
        "--entrypoint /pause --user 65535:65535 --out pause.tar. Prints the image's config "
        "digest (its ID, as `ctr images ls` shows it as the config's digest) on stdout.")
    p.add_argument("--rootfs", required=True, help="the directory to pack, as the image's /")
    p.add_argument("--tag", required=True, action="append",
                   help="NAME:TAG, e.g. ghcr.io/corral-dev/corral:0.1.0 (repeatable)")
    p.add_argument("--out", required=True, help="the archive to write (replaced atomically)")
    p.add_argument("--entrypoint", action="append", default=None, metavar="ARG",
                   help="the entrypoint, one argument per option (repeatable)")
    p.add_argument("--cmd", action="append", default=None, metavar="ARG",
                   help="the default arguments, one per option (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="an environment variable (repeatable); PATH defaults to Docker's "
                   "usual one unless given")
    p.add_argument("--user", help="UID:GID (or a name the image's /etc/passwd knows)")
    p.add_argument("--workdir", help="the working directory")
    p.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]",
                   help="an exposed port, e.g. 2181/tcp (repeatable; documentation only)")
    p.add_argument("--label", action="append", default=[], metavar="K=V",
                   help="an image label (repeatable)")
    p.add_argument("--volume", action="append", default=[], metavar="PATH",
                   help="a declared volume, e.g. /data (repeatable)")
    p.add_argument("--chown", action="append", default=[], metavar="PATH=UID:GID",
                   help="owner of PATH and everything below it (repeatable; the longest "
                   "matching PATH wins)")
    p.add_argument("--owner", default="0:0", metavar="UID:GID",
                   help="owner of everything else (default 0:0); the files' owners on disk "
                   "are never used")
    p.add_argument("--mtime", type=int,
                   default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                   help="mtime of every entry and the image's creation time, in seconds "
                   "since the epoch (default: SOURCE_DATE_EPOCH, else 0)")
    p.add_argument("--arch", default=arch_default(),
                   help="the image's architecture (default: this machine's, %(default)s)")
    p.add_argument("--gzip", action="store_true",
                   help="store the layer gzip-compressed (deterministically: no name, mtime "
                   "0); smaller archive and content store, slower to build")
    a = p.parse_args()

    rootfs = os.path.abspath(a.rootfs)
    if not os.path.isdir(rootfs):
        die(f"--rootfs {a.rootfs}: not a directory")
    default_owner = parse_owner(a.owner, "--owner")
    chowns = [parse_chown(c) for c in a.chown]
    for t in a.tag:
        # NAME:TAG with an explicit tag; a registry port (host:5000/x) is not a tag.
        if ":" not in t.rsplit("/", 1)[-1] or "@" in t:
            die(f"--tag {t}: expected NAME:TAG")
    env = list(a.env)
    for e in env:
        if "=" not in e:
            die(f"--env {e}: expected K=V")
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    labels = {}
    for lbl in a.label:
        if "=" not in lbl:
            die(f"--label {lbl}: expected K=V")
        k, v = lbl.split("=", 1)
        labels[k] = v

    out_dir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(out_dir, exist_ok=True)

    # The layer goes to a temporary file first: its digest names it in the archive.
    with tempfile.TemporaryFile(dir=out_dir) as layer_tmp:
        diff = HashingWriter(layer_tmp if not a.gzip else None)
        if a.gzip:
            comp = HashingWriter(layer_tmp)
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=comp, mtime=0,
                               compresslevel=6)
            tee = HashingWriter(gz)
            entries = build_layer(rootfs, tee, a.mtime, default_owner, chowns)
            gz.close()
            diff_id, blob_digest, blob_size = tee.h.hexdigest(), comp.h.hexdigest(), comp.size
            raw_size = tee.size
        else:
            entries = build_layer(rootfs, diff, a.mtime, default_owner, chowns)
            diff_id = blob_digest = diff.h.hexdigest()
            blob_size = raw_size = diff.size

        created = datetime.datetime.fromtimestamp(
            a.mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        cfg = {"Env": env}
        if a.entrypoint:
            cfg["Entrypoint"] = a.entrypoint
        if a.cmd:
            cfg["Cmd"] = a.cmd
        if a.user:
            cfg["User"] = a.user
        if a.workdir:
            cfg["WorkingDir"] = a.workdir
        if a.expose:
            cfg["ExposedPorts"] = {
                (x if "/" in x else x + "/tcp"): {} for x in sorted(a.expose)}
        if a.volume:
            cfg["Volumes"] = {v: {} for v in sorted(a.volume)}
        if labels:
            cfg["Labels"] = dict(sorted(labels.items()))
        config = {
            "architecture": a.arch,
            "os": "linux",
            "created": created,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": created, "created_by": "scripts/image/pack.py"}],
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = hashlib.sha256(config_bytes).hexdigest()

        layer_name = f"{blob_digest}/layer.tar" + (".gz" if a.gzip else "")
        manifest = [{"Config": f"{config_digest}.json", "RepoTags": list(a.tag),
                     "Layers": [layer_name]}]
        repositories = {}
        for t in a.tag:
            name, tag = t.rsplit(":", 1)
            repositories.setdefault(name, {})[tag] = blob_digest

        tmp_out = a.out + ".tmp"
        layer_tmp.seek(0)
        with open(tmp_out, "wb") as f, \
                tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            d = tarfile.TarInfo(blob_digest)
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, a.mtime
            tar.addfile(d)
            layer_info = tarfile.TarInfo(layer_name)
            layer_info.size, layer_info.mtime, layer_info.mode = blob_size, a.mtime, 0o644
            tar.addfile(layer_info, layer_tmp)
            add_bytes(tar, f"{config_digest}.json", config_bytes, a.mtime)
            add_bytes(tar, "manifest.json",
                      json.dumps(manifest, separators=(",", ":")).encode(), a.mtime)
            add_bytes(tar, "repositories",
                      json.dumps(repositories, sort_keys=True, separators=(",", ":")).encode(),
                      a.mtime)
        os.replace(tmp_out, a.out)

    size = os.path.getsize(a.out)
    print(f"pack.py: {a.out}: {', '.join(a.tag)}: {entries} entries, layer "
          f"{raw_size / 1048576:.1f} MiB"
          + (f" ({blob_size / 1048576:.1f} MiB gzipped)" if a.gzip else "")
          + f", archive {size / 1048576:.1f} MiB", file=sys.stderr)
    print(f"sha256:{config_digest}")


if __name__ == "__main__":
    main()
