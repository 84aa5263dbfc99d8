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
# Mount the configuration at /etc/jwtgate/jwtgate.toml; listen on 0.0.0.0 inside the container.
ENTRYPOINT ["/usr/local/bin/jwtgate", "run"]
CMD ["--config", "/etc/jwtgate/jwtgate.toml"]
