# The orderflow binary in a small image. Build: docker build -t orderflow .
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p orderflow && cp target/release/orderflow /orderflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/orderflow orderflow && mkdir -p /var/lib/orderflow && chown orderflow /var/lib/orderflow
COPY --from=build /orderflow /usr/local/bin/orderflow
USER orderflow
WORKDIR /var/lib/orderflow
ENV ORDERFLOW_LISTEN=0.0.0.0:8080 ORDERFLOW_DATA_DIR=/var/lib/orderflow/data
EXPOSE 8080
# Readiness, not liveness: "healthy" means the bus and store answer and every role runs (GET /readyz).
# A role that ends makes the process exit non-zero, so a restart policy brings it back.
HEALTHCHECK CMD curl -fs http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["orderflow"]
CMD ["serve"]
