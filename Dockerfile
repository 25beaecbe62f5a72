# One image build for every Revmesh binary. Charts reference the images by name
# only; there is no container engine on the development machines.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim AS runtime-base
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates iptables \
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
# container; `sidecar run` runs as uid 1337, whose traffic is never captured.
FROM runtime-base AS sidecar
COPY --from=build /src/target/release/sidecar /usr/local/bin/sidecar
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/sidecar"]

FROM runtime-base AS graphql-gateway
COPY --from=build /src/target/release/graphql-gateway /usr/local/bin/graphql-gateway
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/graphql-gateway"]
