# syntax=docker/dockerfile:1
# The corral image: one binary, for both the controller and the agent.
#   docker build -t ghcr.io/corral-dev/corral:0.1.0 .
# The binary links only glibc, libm and libgcc_s (ldd on a release build); TLS is rustls,
# so there is no OpenSSL to ship. The runtime is debian:bookworm-slim rather than
# distroless because the agent starts the workloads' commands inside its own container:
# they need a shell and coreutils (the examples run /bin/sh, head, tr and sleep). Mount
# anything else they need with the chart's agent.extraVolumes.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
    && install -D -m 0755 target/release/corral /out/corral

FROM debian:bookworm-slim
COPY --from=build /out/corral /usr/local/bin/corral
# An unprivileged user (65532, as distroless' nonroot), for the controller. The agent
# writes cgroup files, which are root's: the chart runs it as uid 0 (runAsUser: 0),
# without privileged mode.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/corral"]
