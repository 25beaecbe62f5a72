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
