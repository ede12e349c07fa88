# firecrest-ci container images, built from one Dockerfile (RELEASING.md).
#
# The build context is not this repository but a directory that .ci/image
# lays out from prebuilt, static files; nothing is compiled or pulled here:
#
#   linux-<arch>/firecrest-ci   the static release binary (.ci/static-check)
#   linux-<arch>/busybox        Debian's busybox-static (shell variant only)
#   linux-<arch>/bash           Debian's bash-static (shell variant only)
#   common/etc/ssl/certs/ca-certificates.crt   the build machine's CA bundle
#   common/tmp/                 an empty directory, mode 1777
#   shell/bin/                  busybox applet links (sh, sed, setsid, ...)
#
#   .ci/image                   builds both targets as firecrest-ci:dev and
#                               firecrest-ci:dev-shell
#
# Targets:
#   image (default, last)  the binary and the CA bundle on an empty base, the
#                          binary as the exec-form entrypoint: the GitHub
#                          Action and plain `docker run`
#   shell                  the same plus busybox and bash, no entrypoint: GitLab
#                          (script: runs through a shell in the image), Jenkins
#                          `inside`, and the local backend (its batch script is bash)
#
# The binary is fully static (glibc with +crt-static, .cargo/config.toml) and
# never uses glibc's NSS, so it needs no /etc/passwd, resolver library or
# loader, and runs under any --user. It installs its own SIGINT/SIGTERM/SIGHUP
# handlers, so as PID 1 (how a GitHub Docker action runs it) it still cancels
# the Slurm job when the container is stopped. With the firecrest backend it
# starts no child processes, so PID 1 has nothing to reap.
#
# TARGETARCH is set by BuildKit for each platform of a multi-platform build;
# the default serves the legacy builder that .ci/image uses.

FROM scratch AS shell
ARG TARGETARCH=amd64
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="firecrest-ci (with shell)" \
      org.opencontainers.image.description="Run CI jobs on HPC clusters through FirecREST v2 and Slurm; variant with a POSIX shell (busybox) and bash for GitLab CI" \
      org.opencontainers.image.source="https://github.com/firecrest-ci/firecrest-ci" \
      org.opencontainers.image.url="https://github.com/firecrest-ci/firecrest-ci" \
      org.opencontainers.image.documentation="https://github.com/firecrest-ci/firecrest-ci#readme" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY common/ /
COPY shell/bin/ /bin/
COPY linux-${TARGETARCH}/busybox linux-${TARGETARCH}/bash /bin/
COPY linux-${TARGETARCH}/firecrest-ci /usr/local/bin/firecrest-ci
ENV PATH=/usr/local/bin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["/usr/local/bin/firecrest-ci"]

# Default image: nothing but the binary, a CA bundle and a writable /tmp.
# No USER: a GitHub Docker action must write to the runner's workspace, which
# the runner mounts owned by its own user, and runs containers as root anyway.
FROM scratch AS image
ARG TARGETARCH=amd64
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
COPY common/ /
COPY linux-${TARGETARCH}/firecrest-ci /usr/local/bin/firecrest-ci
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
ENTRYPOINT ["/usr/local/bin/firecrest-ci"]
