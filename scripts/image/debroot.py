#!/usr/bin/env python3
"""Copy installed Debian packages' files from this machine into a root filesystem directory.

The image scripts use it instead of a base image (there is no registry to pull one from):
  debroot.py --root DIR [--with-deps] [--ldd] PACKAGE...
  debroot.py --list [--with-deps] PACKAGE...

For each package (and, with --with-deps, every package its Depends and Pre-Depends pull in,
the first installed alternative of each), the files `dpkg -L` lists are copied to DIR at
the same paths, as debootstrap would unpack them, but:
  - merged /usr: DIR gets this machine's top-level symlinks (bin -> usr/bin, ...) and each
    file goes to its real place, so /bin/sh and /usr/bin/sh are one file, as here;
  - diverted files (dpkg-divert) are taken from where this machine keeps them;
  - the alternatives (/etc/alternatives, update-alternatives) whose choice is a copied file
    are copied too, so awk -> mawk works;
  - documentation is left out as in debian:*-slim images (/usr/share/doc but copyright
    files, man, info, locale, lintian, groff);
  - files a package lists but this machine lacks (left out by its own dpkg excludes, or
    removed) are skipped.
Maintainer scripts are not run: whatever they would create (users, caches) the calling
script writes itself. With --ldd, every ELF file in DIR is checked with ldd and any shared
library it needs that DIR lacks is copied from where this machine resolves it (for files
that are not from packages, such as a jlink'ed JRE); then ld.so.cache is written with
`ldconfig -r DIR`. Prints the packages copied, one a line.

Python 3 standard library only. Run as root (it copies setuid files and root-only files).
"""

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys

EXCLUDE = [
    re.compile(r"^/usr/share/(man|info|locale|lintian|linda|groff|bug)(/|$)"),
    # Documentation but the licences, as debian:*-slim keeps them.
    re.compile(r"^/usr/share/doc/[^/]+/(?!copyright$).+"),
]


def die(msg):
    print(f"debroot.py: {msg}", file=sys.stderr)
    sys.exit(2)


def dpkg_query(fmt, *pkgs):
    return subprocess.run(["dpkg-query", "-W", "-f", fmt, *pkgs], check=True,
                          capture_output=True, text=True).stdout


def installed_packages():
    """name -> (binary:Package, Depends, Pre-Depends); and virtual name -> [names]."""
    pkgs, provides = {}, {}
    out = dpkg_query("${Package}\t${binary:Package}\t${db:Status-Abbrev}\t${Provides}\t"
                     "${Depends}\t${Pre-Depends}\n")
    for line in out.splitlines():
        name, binpkg, status, prov, dep, pre = line.split("\t")
        if not status.startswith("ii"):
            continue
        pkgs[name] = (binpkg, dep, pre)
        for p in filter(None, (x.strip() for x in prov.split(","))):
            provides.setdefault(p.split()[0].split(":")[0], []).append(name)
    return pkgs, provides


def closure(roots, with_deps):
    pkgs, provides = installed_packages()
    done, todo = [], list(roots)
    seen = set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if name not in pkgs:
            die(f"package {name} is not installed here")
        done.append(name)
        if not with_deps:
            continue
        _, dep, pre = pkgs[name]
        for clause in filter(None, (c.strip() for c in f"{pre},{dep}".split(","))):
            chosen = None
            for alt in clause.split("|"):
                alt = alt.strip().split()[0].split(":")[0]  # drop version and :any
                if alt in pkgs:
                    chosen = alt
                elif alt in provides:
                    chosen = sorted(provides[alt])[0]
                if chosen:
                    break
            if chosen is None:
                die(f"{name} depends on {clause!r}, which is not installed here")
            todo.append(chosen)
    return [pkgs[n][0] for n in sorted(done)]


def diversions():
    """path -> (diverted-to, diverting package)."""
    out = subprocess.run(["dpkg-divert", "--list"], check=True, capture_output=True,
                         text=True).stdout
    d = {}
    for line in out.splitlines():
        m = re.fullmatch(r"(?:local )?diversion of (\S+) to (\S+)(?: by (\S+))?", line)
        if m:
            d[m.group(1)] = (m.group(2), m.group(3))
    return d


def real_path(path):
    """Where this machine keeps path: its directory resolved (merged /usr), name kept."""
    d, base = os.path.split(path)
    return os.path.join(os.path.realpath(d), base)


def copy_entry(src, dst):
    """Copy one file, symlink or directory (not its contents) from src to dst."""
    st = os.lstat(src)
    if os.path.lexists(dst) and not stat.S_ISDIR(st.st_mode):
        os.unlink(dst)  # never write through: replace
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if stat.S_ISDIR(st.st_mode):
        os.makedirs(dst, exist_ok=True)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    else:
        return False
    return True


def top_symlinks(root):
    """This machine's merged-/usr links at / (bin -> usr/bin, ...), made in root."""
    os.makedirs(root, exist_ok=True)
    for name in sorted(os.listdir("/")):
        p = os.path.join("/", name)
        if os.path.islink(p) and os.readlink(p).startswith("usr/"):
            dst = os.path.join(root, name)
            if not os.path.lexists(dst):
                os.symlink(os.readlink(p), dst)
            os.makedirs(os.path.join(root, os.readlink(p)), exist_ok=True)


def inside(root, path):
    return os.path.join(root, path.lstrip("/"))


def copy_packages(root, binpkgs):
    divs = diversions()
    copied = set()
    out = subprocess.run(["dpkg-query", "-L", *binpkgs], check=True, capture_output=True,
                         text=True).stdout
    # dpkg-query -L prints one list after the other; which package a path came from matters
    # only for diversions, so look the owner up for diverted paths alone.
    for path in sorted(set(out.splitlines())):
        if not path.startswith("/") or path == "/." or any(e.search(path) for e in EXCLUDE):
            continue
        src = path
        if path in divs:
            # The diverting package's own file is at path; any other package's is where
            # the diversion sends it.
            r = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
            owners = set()
            for line in r.stdout.splitlines():
                if not line.startswith("diversion by ") and ": " in line:
                    owners.update(o.strip() for o in line.split(": ", 1)[0].split(","))
            if divs[path][1] not in owners:
                src = divs[path][0]
        src = real_path(src)
        if not os.path.lexists(src):
            continue
        if copy_entry(src, inside(root, src)):
            copied.add(src)
    return copied


def copy_alternatives(root, copied):
    """The update-alternatives links whose current choice was copied."""
    adir = "/var/lib/dpkg/alternatives"
    if not os.path.isdir(adir):
        return
    for name in sorted(os.listdir(adir)):
        with open(os.path.join(adir, name)) as f:
            lines = f.read().split("\n")
        links = [(name, lines[1])]  # master: name, link
        i = 2
        while i + 1 < len(lines) and lines[i]:
            links.append((lines[i], lines[i + 1]))
            i += 2
        for alt, link in links:
            alt_link = f"/etc/alternatives/{alt}"
            if not os.path.islink(alt_link):
                continue
            target = real_path(os.path.realpath(alt_link))
            if target not in copied and os.path.realpath(alt_link) not in copied:
                continue
            copy_entry(alt_link, inside(root, alt_link))
            link = real_path(link)
            if os.path.islink(link) and not any(e.search(link) for e in EXCLUDE):
                copy_entry(link, inside(root, link))


def elf_files(root):
    for d, dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    yield p


def ldd_close(root):
    """Copy the shared libraries the ELF files in root need but root lacks."""
    names = {n for _, _, files in os.walk(root) for n in files}
    changed = True
    while changed:
        changed = False
        for f in sorted(elf_files(root)):
            r = subprocess.run(["ldd", f], capture_output=True, text=True)
            if r.returncode != 0:
                continue  # static, or not a program or library for this machine
            for line in r.stdout.splitlines():
                if "not found" in line:
                    # A library the program loads itself before this one, from its own
                    # directory (the JVM's libjvm.so for its other libraries), is fine.
                    if line.split()[0] in names:
                        continue
                    die(f"{f}: {line.strip()}")
                m = re.search(r"(?:=> )?(/\S+) \(0x", line)
                if not m:
                    continue
                lib = m.group(1)
                if lib.startswith(root + "/"):
                    continue  # found inside root already (an $ORIGIN rpath)
                # The name as asked for (often a symlink) and the file it resolves to.
                for p in (real_path(lib), os.path.realpath(lib)):
                    if not os.path.lexists(inside(root, p)):
                        copy_entry(p, inside(root, p))
                        changed = True


def main():
    ap = argparse.ArgumentParser(
        prog="debroot.py",
        description="Copy installed Debian packages' files from this machine into a root "
        "filesystem directory, as debootstrap would unpack them (without maintainer "
        "scripts and documentation).")
    ap.add_argument("--root", help="the root filesystem directory")
    ap.add_argument("--with-deps", action="store_true",
                    help="also every package the given ones depend on (Depends, Pre-Depends)")
    ap.add_argument("--ldd", action="store_true",
                    help="then copy the shared libraries any ELF file in the root lacks, "
                    "and write its ld.so.cache")
    ap.add_argument("--list", action="store_true",
                    help="only print the packages (with --with-deps, their closure) and their "
                    "versions, one a line; copy nothing")
    ap.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                    help="leave out the paths this matches (re.search), as well as the docs")
    ap.add_argument("packages", nargs="*")
    a = ap.parse_args()
    binpkgs = closure(a.packages, a.with_deps) if a.packages else []
    if a.list:
        if binpkgs:
            sys.stdout.write(dpkg_query("${binary:Package} ${Version}\n", *binpkgs))
        return
    if not a.root:
        die("--root is required")
    root = os.path.abspath(a.root)
    top_symlinks(root)
    EXCLUDE.extend(re.compile(x) for x in a.exclude)
    if binpkgs:
        copied = copy_packages(root, binpkgs)
        copy_alternatives(root, copied)
    if a.ldd:
        ldd_close(root)
        os.makedirs(inside(root, "/etc"), exist_ok=True)
        subprocess.run(["ldconfig", "-r", root], check=True)
        # ldconfig's aux-cache records inodes and times: it would make builds differ.
        aux = inside(root, "/var/cache/ldconfig/aux-cache")
        if os.path.exists(aux):
            os.unlink(aux)
    for p in binpkgs:
        print(p)


if __name__ == "__main__":
    main()
