# walhook container image: a static binary on distroless, running as non-root.
#
#   docker build -t walhook --build-arg VERSION=$(git describe --tags --always) .
#   docker run --rm -e WALHOOK_DATABASE_URL=postgres://... \
#     -v $PWD/walhook.yaml:/etc/walhook/walhook.yaml:ro -p 9187:9187 walhook
#
# Not built in CI here (no Docker daemon); keep it plain.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X github.com/walhook/walhook.Version=${VERSION}" \
      -o /out/walhook ./cmd/walhook

# distroless/static carries CA certificates and tzdata and nothing else; the
# :nonroot tag runs as uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/walhook /usr/local/bin/walhook
USER nonroot:nonroot
# Inside a container the metrics and health endpoints must listen beyond
# loopback to be scraped and probed.
ENV WALHOOK_LISTEN=0.0.0.0:9187 \
    WALHOOK_CONFIG=/etc/walhook/walhook.yaml
EXPOSE 9187
# walhook exits 0 on SIGTERM after draining (--shutdown-timeout, default
# 30s): give the container runtime a longer stop timeout than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/walhook"]
CMD ["run"]
