# syntax=docker/dockerfile:1
# jelou-relay: a static binary in a scratch image.
#
#   docker build -t jelou-relay .
#
# Without a registry (CI): build the binary on the host and stand it in for the
# builder stage, whose /out holds the image's whole root filesystem:
#   buildah bud --isolation chroot --build-context builder=DIR -t jelou-relay .

ARG RUST_VERSION=1.95

# --- dependency cache: cargo-chef cooks dependencies in their own layer -------------
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- builder: a static glibc binary, plus what a scratch image needs --------------
FROM chef AS builder
ENV RUSTFLAGS="-C target-feature=+crt-static"
COPY --from=planner /src/recipe.json recipe.json
# .cargo/ trims the Swagger UI that utoipa-swagger-ui unpacks while dependencies cook.
COPY .cargo/ .cargo/
RUN cargo chef cook --release --locked --target x86_64-unknown-linux-gnu --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-gnu --bin jelou-relay \
 && mkdir -p /out/etc/ssl/certs \
 && cp target/x86_64-unknown-linux-gnu/release/jelou-relay /out/jelou-relay \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nrelay:x:10001:10001:jelou-relay:/nonexistent:/sbin/nologin\n' > /out/etc/passwd \
 && printf 'root:x:0:\nrelay:x:10001:\n' > /out/etc/group

# --- runtime ---------------------------------------------------------------------------
FROM scratch AS runtime
COPY --from=builder /out/ /
COPY config/ /app/config/
WORKDIR /app
USER 10001:10001
ENV APP_ENVIRONMENT=production \
    JELOU_RELAY_CONFIG_DIR=/app/config
# 8080: callers. 9090: admin (/metrics), not for callers.
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/jelou-relay", "healthcheck"]
ENTRYPOINT ["/jelou-relay"]
CMD ["serve"]
