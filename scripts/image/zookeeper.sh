#!/usr/bin/env bash
# Builds a ZooKeeper 3.8 image for the chart's embedded server (zookeeper.embedded), without
# a container engine, from this machine's Debian packages:
#   $CORRAL_IMAGES/zookeeper.tar (default /var/tmp/corral-images), tagged zookeeper:3.8 by
#   default (docker.io/library/zookeeper:3.8 once containerd has normalised it), which is what
#   the chart's values name (zookeeper.embedded.image), so the chart needs no change.
#
# Usage: scripts/image/zookeeper.sh [--tag NAME:TAG]   (prints the archive's path; FORCE=1
#   rebuilds). About 15 s; the archive is about 63 MiB.
#
# What is inside, and why:
#   - ZooKeeper from Debian's zookeeper package (3.8.0): /usr/share/java/zookeeper.jar and
#     the jars its manifest's Class-Path names (netty, jute, slf4j, jetty, jackson, ...),
#     followed recursively, with slf4j-simple for logging to the console;
#   - a JRE made with jlink from Debian's openjdk-17-jdk-headless, with the modules jdeps
#     finds in those jars plus jdk.management (ZooKeeper's OS metrics), jdk.security.auth
#     (SASL/JAAS) and jdk.crypto.ec (TLS), less AWT's native libraries: about 45 MiB,
#     where Debian's whole headless JRE is about 200;
#   - dash as /bin/sh for the two small scripts below, glibc and the libraries the JVM links.
#
# It behaves as the official image (docker.io/library/zookeeper:3.8) does for the chart's
# StatefulSet, which replaces it where a registry is reachable (set
# zookeeper.embedded.image.tag to 3.8 and pull it): the same ENTRYPOINT /docker-entrypoint.sh
# and CMD zkServer.sh start-foreground, user zookeeper (1000:1000), configuration
# /conf/zoo.cfg (ZOO_CONF_DIR), data /data, transaction logs /datalog, logs /logs
# (ZOO_LOG_DIR), the JVM's scratch files in /tmp, ZK_SERVER_HEAP (MiB) as -Xmx (default
# 1000, as zkEnv.sh), SERVER_JVMFLAGS and JVMFLAGS passed on, ZOO_MY_ID written to
# /data/myid when missing. It runs with a read-only root filesystem: it writes only to
# /data, /datalog, /logs and /tmp. Unlike the official entrypoint, it does not generate
# zoo.cfg from ZOO_* variables: it ships a standalone /conf/zoo.cfg (the chart mounts its
# own over it), and the ZOO_* configuration variables other than those above are ignored.
# Logs go to the console (stderr), as the official image's logback configuration sends them
# to the console.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

tag="zookeeper:3.8"
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

jdk=/usr/lib/jvm/java-17-openjdk-amd64
main_jar=/usr/share/java/zookeeper.jar
log_jar=/usr/share/java/slf4j-simple.jar
# The admin server's jetty needs the servlet API, which Debian's jetty9 jars do not name in
# their Class-Path (Debian's own zookeeper cannot start it either): added to the classpath.
servlet_jar=/usr/share/java/servlet-api.jar
uid=1000
gid=1000
# Beyond what jdeps finds (it cannot see classes loaded by name): see above.
extra_modules=jdk.management,jdk.security.auth,jdk.crypto.ec
base_debs="dash libc6 libgcc-s1 libstdc++6 zlib1g"

for f in "$main_jar" "$log_jar" "$servlet_jar"; do
  [ -f "$f" ] || die "$f is missing: apt-get install zookeeper libslf4j-java libservlet-api-java"
done
if [ ! -x "$jdk/bin/jlink" ] || [ ! -d "$jdk/jmods" ]; then
  die "no jlink and jmods in $jdk: apt-get install openjdk-17-jdk-headless"
fi

# The jars: zookeeper.jar, slf4j-simple, the servlet API, and every jar their manifests' Class-Path name,
# recursively (Debian's jars name their dependencies by absolute path). Missing ones are
# left out: Debian's zookeeper.jar names jline.jar, which only the CLI needs.
jars="$(python3 - "$main_jar" "$log_jar" "$servlet_jar" <<'EOF'
import os, sys, zipfile
todo, seen = list(sys.argv[1:]), []
while todo:
    jar = todo.pop(0)
    if jar in seen or not os.path.exists(jar):
        continue
    seen.append(jar)
    with zipfile.ZipFile(jar) as z:
        try:
            mf = z.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
        except KeyError:
            continue
    # Manifest lines continue on lines that start with one space.
    mf = mf.replace("\r\n", "\n").replace("\n ", "")
    for line in mf.split("\n"):
        if line.startswith("Class-Path:"):
            for entry in line.split(":", 1)[1].split():
                p = entry if entry.startswith("/") else os.path.join(os.path.dirname(jar), entry)
                todo.append(os.path.normpath(p))
print("\n".join(sorted(seen)))
EOF
)"
mapfile -t jar_list <<<"$jars"
# One dpkg-query for all the jars: each call reads every package's file list (about 0.2 s
# on a busy machine, which a call per jar made most of an up-to-date check).
mapfile -t jar_files < <(readlink -f "${jar_list[@]}")
jar_debs="$(dpkg-query -S "${jar_files[@]}" | cut -d: -f1 | sort -u)"

out="$images_dir/zookeeper.tar"
inputs_text "tag $tag modules+ $extra_modules"
inputs_text "jars ${jar_list[*]}"
# shellcheck disable=SC2086 # one word per package
inputs_debs $base_debs $jar_debs openjdk-17-jdk-headless openjdk-17-jre-headless
inputs_file "$image_lib_dir/debroot.py"
inputs_done "$out" && exit 0

mkdir -p "$images_dir"
work="$(mktemp -d "$images_dir/.zookeeper.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

# shellcheck disable=SC2086
# Not glibc's character set converters (gconv, 8 MiB): Java converts with its own.
"$image_lib_dir/debroot.py" --root "$root" --exclude '/gconv(/|$)' $base_debs >/dev/null
for j in "${jar_list[@]}"; do
  # The name the manifests use (often a symlink to a versioned file) and the file itself.
  for p in "$j" "$(readlink -f "$j")"; do
    mkdir -p "$root$(dirname "$p")"
    cp -P "$p" "$root$p"
  done
done
for d in $jar_debs; do
  c="/usr/share/doc/$d/copyright"
  [ ! -f "$c" ] || install -D -m 0644 "$c" "$root$c"
done

classpath="$(IFS=:; echo "${jar_list[*]}")"
modules="$("$jdk/bin/jdeps" --multi-release 17 --ignore-missing-deps --print-module-deps \
  --class-path "$classpath" "${jar_list[@]}")"
jre=/usr/lib/jvm/zookeeper-jre
"$jdk/bin/jlink" --module-path "$jdk/jmods" --add-modules "$modules,$extra_modules" \
  --strip-debug --no-man-pages --no-header-files --compress=2 --output "$root$jre"
# java.desktop is there for java.beans (jackson and jetty, the admin server's), which needs
# none of AWT's native libraries; without them, no X11, fonts or sound libraries either.
for lib in awt awt_headless awt_xawt fontmanager javajpeg jawt jsound lcms mlib_image \
  splashscreen; do
  rm "$root$jre/lib/lib$lib.so"
done
ln -s "$jre/bin/java" "$root/usr/bin/java"
# Every library the JVM and dash link, and ld.so.cache.
"$image_lib_dir/debroot.py" --root "$root" --ldd >/dev/null

cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
zookeeper:x:$uid:$gid::/home/zookeeper:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
zookeeper:x:$gid:
nogroup:x:65534:
EOF
mkdir -p "$root"/{conf,data,datalog,logs,tmp,proc,sys,dev,etc,root,usr/local/bin}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
# The official image's standalone configuration, for running the image without a mounted
# zoo.cfg (the chart mounts its own over this file).
cat >"$root/conf/zoo.cfg" <<'EOF'
dataDir=/data
dataLogDir=/datalog
tickTime=2000
initLimit=5
syncLimit=2
autopurge.snapRetainCount=3
autopurge.purgeInterval=0
maxClientCnxns=60
standaloneEnabled=true
admin.enableServer=true
clientPort=2181
EOF

cat >"$root/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# As the official image's entrypoint, less generating zoo.cfg (this image ships one) and
# less switching user (run it as zookeeper, 1000:1000, as the chart does).
set -e
if [ -n "${ZOO_MY_ID:-}" ] && [ ! -f "$ZOO_DATA_DIR/myid" ]; then
  echo "$ZOO_MY_ID" >"$ZOO_DATA_DIR/myid"
fi
exec "$@"
EOF
cat >"$root/usr/local/bin/zkServer.sh" <<EOF
#!/bin/sh
# zkServer.sh start-foreground, as ZooKeeper's own with zkEnv.sh's defaults: the server in
# the foreground, with ZK_SERVER_HEAP (MiB) as its heap and logs on the console.
set -e
case "\${1:-start-foreground}" in
  start-foreground) ;;
  print-cmd) print=1 ;;
  version) exec java -cp "$main_jar:$log_jar:$servlet_jar" org.apache.zookeeper.version.VersionInfoMain ;;
  *) echo "zkServer.sh: only start-foreground, print-cmd and version in this image" >&2; exit 2 ;;
esac
cfg="\${ZOO_CONF_DIR:-/conf}/\${2:-zoo.cfg}"
set -- java "-Dzookeeper.log.dir=\${ZOO_LOG_DIR:-/logs}" \\
  "-Dzookeeper.log.file=zookeeper-server.log" \\
  -Dorg.slf4j.simpleLogger.showDateTime=true \\
  "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd HH:mm:ss,SSS" \\
  -XX:+HeapDumpOnOutOfMemoryError "-XX:HeapDumpPath=\${ZOO_LOG_DIR:-/logs}" \\
  "-XX:ErrorFile=\${ZOO_LOG_DIR:-/logs}/hs_err_pid%p.log" \\
  "-XX:OnOutOfMemoryError=kill -9 %p" \\
  "-Xmx\${ZK_SERVER_HEAP:-1000}m" \${SERVER_JVMFLAGS:-} \${JVMFLAGS:-} \\
  -cp "$main_jar:$log_jar:$servlet_jar" org.apache.zookeeper.server.quorum.QuorumPeerMain "\$cfg"
if [ -n "\${print:-}" ]; then echo "\$@"; exit 0; fi
exec "\$@"
EOF
chmod 0755 "$root/docker-entrypoint.sh" "$root/usr/local/bin/zkServer.sh"

"$pack" --rootfs "$root" --tag "$tag" \
  --entrypoint /docker-entrypoint.sh --cmd zkServer.sh --cmd start-foreground \
  --user "$uid:$gid" --expose 2181 --expose 2888 --expose 3888 --expose 8080 \
  --env "JAVA_HOME=$jre" --env ZOO_CONF_DIR=/conf --env ZOO_DATA_DIR=/data \
  --env ZOO_DATA_LOG_DIR=/datalog --env ZOO_LOG_DIR=/logs \
  --volume /data --volume /datalog --volume /logs \
  --chown "/conf=$uid:$gid" --chown "/data=$uid:$gid" --chown "/datalog=$uid:$gid" \
  --chown "/logs=$uid:$gid" --out "$out" >/dev/null
inputs_stamp "$out"
say "${#jar_list[@]} jars, modules $modules,$extra_modules, $(du -sm "$root" | cut -f1) MiB unpacked"
echo "$out"
