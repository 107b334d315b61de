# syntax=docker/dockerfile:1
#
# MONASSURANCE: one image for the API and the document worker.
#
#   docker build -t monassurance .
#   docker run … monassurance                          # the API (monassurance-api serve)
#   docker run … monassurance monassurance-worker      # a document worker
#   docker run … monassurance monassurance-api migrate # apply migrations and exit
#
# Configuration comes from the environment (see .env.example); docker-compose.yml at the
# top level starts the whole production-like stack with it. The image's HEALTHCHECK probes
# the API; a worker container overrides it (docker-compose.yml does) to probe its own
# /health on WORKER_HTTP_ADDR.

# Matches the toolchain the project builds and tests with (edition 2024 needs >= 1.85).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The registry, git checkouts and target directory live in BuildKit cache mounts, so a
# rebuild after a source change recompiles only the workspace crates. The binaries are
# copied out of the cached target directory, which is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin monassurance-api --bin monassurance-worker \
    && install -D -m 0755 target/release/monassurance-api /out/monassurance-api \
    && install -D -m 0755 target/release/monassurance-worker /out/monassurance-worker

# ---- runtime -------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# wkhtmltopdf renders PDFs (Debian's 0.12.6 runs headless through Qt's offscreen
# platform); it needs fonts to lay text out. ca-certificates for TLS to S3 or Postgres,
# curl for the health checks, tini as PID 1 so SIGTERM reaches the process (a worker
# drains its in-flight jobs on it) and zombies of killed wkhtmltopdf children are reaped.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        curl \
        fonts-dejavu-core \
        tini \
        wkhtmltopdf \
    && rm -rf /var/lib/apt/lists/* \
    && wkhtmltopdf --version

# An unprivileged user; DATA_DIR (its home) and Qt's runtime directory are its own.
RUN groupadd --system --gid 10001 monassurance \
    && useradd --system --uid 10001 --gid monassurance \
        --home-dir /var/lib/monassurance --no-create-home --shell /usr/sbin/nologin monassurance \
    && install -d -o monassurance -g monassurance -m 0750 /var/lib/monassurance \
    && install -d -o monassurance -g monassurance -m 0700 /run/monassurance

COPY --from=build /out/monassurance-api /out/monassurance-worker /usr/local/bin/

# Container defaults: listen on every interface (the API on 8000, a worker's /health and
# /metrics on 8001). Everything else comes from the environment at run time.
ENV BIND_ADDR=0.0.0.0:8000 \
    WORKER_HTTP_ADDR=0.0.0.0:8001 \
    DATA_DIR=/var/lib/monassurance \
    WKHTMLTOPDF_PATH=/usr/bin/wkhtmltopdf \
    QT_QPA_PLATFORM=offscreen \
    XDG_RUNTIME_DIR=/run/monassurance

WORKDIR /var/lib/monassurance
USER 10001:10001
EXPOSE 8000 8001

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/health"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["monassurance-api", "serve"]
