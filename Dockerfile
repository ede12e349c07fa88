# syntax=docker/dockerfile:1
#
# firecrest-ci container images, built from one Dockerfile (RELEASING.md):
#
#   docker build -t ghcr.io/firecrest-ci/firecrest-ci:X.Y.Z .
#       the default, last stage: the static binary and a CA bundle on an empty
#       base, the binary as the exec-form entrypoint. The GitHub Action, plain
#       `docker run` and CI systems that pass the command line use it.
#   docker build --target shell -t ghcr.io/firecrest-ci/firecrest-ci:X.Y.Z-shell .
#       the same binary on debian:bookworm-slim with no entrypoint, for GitLab,
#       which runs a job's script: through a shell in the image.
#
# The binary is fully static (glibc with +crt-static, .cargo/config.toml) and
# never uses glibc's NSS, so it needs no /etc/passwd, resolver library or
# loader. It installs its own SIGINT/SIGTERM/SIGHUP handlers, so it works as
# PID 1 (a GitHub Docker action runs it that way) and cancels the Slurm job
# when the container is stopped.

ARG RUST_IMAGE=rust:1-bookworm
ARG SHELL_BASE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The release profile (Cargo.toml) uses LTO and strips symbols. Fail the build
# when the binary is not static: it would not start on an empty base.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/firecrest-ci \
      /rootfs/usr/local/bin/firecrest-ci \
 && file /rootfs/usr/local/bin/firecrest-ci | grep -Eq 'statically linked|static-pie linked'
# The final file system, laid out here so that modes survive the copy:
# the CA bundle, and a world-writable /tmp for temporary files.
RUN install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
      /rootfs/etc/ssl/certs/ca-certificates.crt \
 && mkdir -m 1777 /rootfs/tmp

# GitLab variant: a shell for script:, the same binary on PATH, no entrypoint.
FROM ${SHELL_BASE} AS shell
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="firecrest-ci (with shell)" \
      org.opencontainers.image.description="Run CI jobs on HPC clusters through FirecREST v2 and Slurm; variant with a shell for GitLab CI" \
      org.opencontainers.image.source="https://github.com/firecrest-ci/firecrest-ci" \
      org.opencontainers.image.url="https://github.com/firecrest-ci/firecrest-ci" \
      org.opencontainers.image.documentation="https://github.com/firecrest-ci/firecrest-ci#readme" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /rootfs/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /rootfs/usr/local/bin/firecrest-ci /usr/local/bin/firecrest-ci
CMD ["firecrest-ci"]

# Default image: nothing but the binary, a CA bundle and a writable /tmp.
# No USER: a GitHub Docker action must write to the runner's workspace, which
# the runner mounts owned by its own user, and runs containers as root anyway.
FROM scratch AS image
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="firecrest-ci" \
      org.opencontainers.image.description="Run CI jobs on HPC clusters through FirecREST v2 and Slurm" \
      org.opencontainers.image.source="https://github.com/firecrest-ci/firecrest-ci" \
      org.opencontainers.image.url="https://github.com/firecrest-ci/firecrest-ci" \
      org.opencontainers.image.documentation="https://github.com/firecrest-ci/firecrest-ci#readme" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /rootfs/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
ENTRYPOINT ["/usr/local/bin/firecrest-ci"]
