# syntax=docker/dockerfile:1
#
# Keel's container image: one binary, every role.
#
#   docker build -t keel .
#   docker run --rm keel migrate            # one-shot: apply the migrations
#   docker run --rm -p 8080:8080 keel       # `keel serve`: public API :8080, admin :9000
#
# `serve` defaults to KEEL_ENV=prod, which refuses the development secrets: set DATABASE_URL,
# KEEL_JWT_SECRET and KEEL_ADMIN_TOKEN at run time (docker-compose.yml shows a complete
# environment). No secret is baked into any layer.
#
# Three build stages, so that a source change recompiles Keel and not its ~400 dependencies:
#
#   chef     the Rust toolchain plus cargo-chef (pinned), shared by the next two
#   planner  `cargo chef prepare`: reduces the manifests (Cargo.toml, Cargo.lock, .cargo/) to a
#            recipe.json; the recipe changes only when the dependencies do
#   build    `cargo chef cook` builds the dependencies from the recipe alone (a layer that stays
#            cached while recipe.json is unchanged), then the sources are copied in and only
#            Keel itself is compiled
#
# With no Docker engine at hand, the same sequence was run outside Docker on a copy of the build
# context (what .dockerignore lets through), on 2 shared cores: `cargo chef prepare` under 1 s;
# `cargo chef cook --release --locked --bin keel` 13.6 min (the machine was busy with other
# builds; deps.md's clean release build is 3 min 20 s on idle cores); then, sources copied over
# the skeleton, `cargo build --release --locked --bin keel` compiled Keel alone, no dependency,
# in 4 min — what a source change costs in Docker (that step starts from the cooked layer).

# ---- chef: toolchain + cargo-chef -------------------------------------------------------------
FROM rust:1.95-trixie AS chef
# Pinned, and --locked to its own lock file, so that the tool does not change under a rebuild.
RUN cargo install --locked cargo-chef --version 0.1.78
WORKDIR /src

# ---- planner: the dependency recipe -----------------------------------------------------------
FROM chef AS planner
# What is copied is decided by .dockerignore (target/, .git/, tests, docs, deploy files are left
# out). The whole context is read here, but only recipe.json leaves this stage.
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---- build: dependencies (cached layer), then Keel --------------------------------------------
FROM chef AS build
# The checked SQL macros read the committed .sqlx/ query data: no database at build time.
ENV SQLX_OFFLINE=true
COPY --from=planner /src/recipe.json recipe.json
# The dependencies, compiled into /src/target inside this layer: Docker's layer cache (which a
# CI builder can export with --cache-to) keeps it while recipe.json is unchanged. The registry
# is a cache mount, so that a changed recipe downloads only the crates that are new; the target
# directory is deliberately *not* a cache mount any more: the cooked dependencies must be in the
# layer, or the next stage would not see them and `--cache-to` would not carry them.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --release --locked --recipe-path recipe.json --bin keel
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked --bin keel \
    && cp target/release/keel /usr/local/bin/keel

# ---- runtime ----------------------------------------------------------------------------------
# The same Debian release as the builder: the binary links against its glibc.
FROM debian:trixie-slim AS runtime
# ca-certificates: the system trust store. Today's binary does not read it (sqlx's rustls uses
# compiled-in webpki roots; the OTLP exporter is built without TLS), but a TLS client of a later
# chapter that uses the platform's roots will, and it is small.
# DL3008 (pin apt package versions) is ignored on purpose: Debian's archive keeps only the current
# version of a package, so a pinned version breaks the build at the next security update;
# ca-certificates should always be the current one anyway.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 keel \
    && useradd --system --uid 10001 --gid keel --no-create-home --shell /usr/sbin/nologin keel \
    && install -d -o keel -g keel -m 0750 /var/lib/keel
COPY --from=build /usr/local/bin/keel /usr/local/bin/keel
# The one directory the process may write: relative paths land here (KEEL_MAILBOX_DIR's default,
# `mailbox`, when SMTP_URL is unset), and a volume mounted here starts owned by 10001 (compose's
# `keel seed` report).
WORKDIR /var/lib/keel

# In a container the admin listener (/healthz, /readyz, /metrics, /admin/flags) must be reachable
# from outside the container (probes, Prometheus); the binary's default is 127.0.0.1:9000.
ENV KEEL_HTTP_ADDR=0.0.0.0:8080 \
    KEEL_ADMIN_ADDR=0.0.0.0:9000
EXPOSE 8080 9000

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# Liveness for `docker ps` and compose, without adding curl to the image: bash's /dev/tcp sends
# GET /healthz to the admin port (taken from KEEL_ADMIN_ADDR) on loopback and expects a 200 status
# line. Kubernetes ignores HEALTHCHECK and uses its own probes: /healthz (liveness) and /readyz
# (readiness) on port 9000. The one-shot roles (`migrate`, `seed`) exit before it matters.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["bash", "-c", "addr=${KEEL_ADMIN_ADDR:-127.0.0.1:9000}; exec 3<>/dev/tcp/127.0.0.1/${addr##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["keel"]
CMD ["serve"]
