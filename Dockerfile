# One image build for every Revmesh binary; what users build and push to
# their own registry, one target per image:
#   docker build --target sidecar --build-arg REVMESH_PROXY_VERSION=1.25.2 -t REGISTRY/revmesh/sidecar:1.25.2 .
# Nodes with no registry (the node tests) get the same images from
# tests/harness/images.py instead; see docs/images.md.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim AS runtime-base
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM runtime-base AS webhook
COPY --from=build /src/target/release/webhook /usr/local/bin/webhook
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/webhook"]

FROM runtime-base AS meshctl
COPY --from=build /src/target/release/meshctl /usr/local/bin/meshctl
ENTRYPOINT ["/usr/local/bin/meshctl"]

FROM runtime-base AS control-plane
COPY --from=build /src/target/release/control-plane /usr/local/bin/control-plane
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/control-plane"]

# The proxy image: `sidecar init` runs as root with NET_ADMIN in the init
# container and calls iptables-restore (Debian's default, the nf_tables
# variant); `sidecar run` runs as uid 1337, whose traffic is never captured.
# REVMESH_PROXY_VERSION is the version the proxy reports to its control
# plane and on /server_info: give each tag its own, so an upgrade shows
# which pods moved.
FROM runtime-base AS sidecar
RUN apt-get update && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
ARG REVMESH_PROXY_VERSION=dev
ENV REVMESH_PROXY_VERSION=${REVMESH_PROXY_VERSION}
LABEL io.revmesh.proxy-version=${REVMESH_PROXY_VERSION}
COPY --from=build /src/target/release/sidecar /usr/local/bin/sidecar
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/sidecar"]

# The demo workload: `serve` (echoes the caller's mesh identity), `load`
# (steady request stream with failure records on :9090/stats), `get`.
FROM runtime-base AS mesh-app
COPY --from=build /src/target/release/mesh-app /usr/local/bin/mesh-app
USER 1000:1000
ENTRYPOINT ["/usr/local/bin/mesh-app"]
CMD ["serve"]

FROM runtime-base AS graphql-gateway
COPY --from=build /src/target/release/graphql-gateway /usr/local/bin/graphql-gateway
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/graphql-gateway"]
