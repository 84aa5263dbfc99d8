# syntax=docker/dockerfile:1
# Multi-stage build: compile with the locked dependency set, ship only the binary on a small
# non-root runtime image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked && cp target/release/jwtgate /jwtgate

# distroless/cc: glibc and CA certificates, no shell, runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /jwtgate /usr/local/bin/jwtgate
USER nonroot
EXPOSE 8080 9901
# No shell in the image: the binary asks its own admin listener (server.admin_listen).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/jwtgate", "health", "--config", "/etc/jwtgate/jwtgate.toml"]
# Mount the configuration at /etc/jwtgate/jwtgate.toml; listen on 0.0.0.0 inside the container.
ENTRYPOINT ["/usr/local/bin/jwtgate", "run"]
CMD ["--config", "/etc/jwtgate/jwtgate.toml"]
