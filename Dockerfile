# The lockstep image: a static (musl) binary on Alpine, with `ssh` for SSH Git remotes, `helm` for
# charts and `kustomize` for overlays (the versions scripts/peers.env pins).
#   docker build -t lockstep .
#   lockstep install --apply --set image.repository=REGISTRY/lockstep --set image.tag=TAG
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev cmake make perl clang
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lockstep \
 && strip target/release/lockstep

FROM golang:1.26-alpine AS helm
ARG HELM_VERSION=v3.22.0
RUN CGO_ENABLED=0 go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
      "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
ARG KUSTOMIZE_VERSION=v5.8.1
RUN CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
      "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}"

FROM alpine:3.22
RUN apk add --no-cache openssh-client ca-certificates \
 && adduser -D -H -u 65532 lockstep
COPY --from=build /src/target/release/lockstep /usr/local/bin/lockstep
COPY --from=helm /go/bin/helm /go/bin/kustomize /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lockstep"]
CMD ["controller", "--leader-elect"]
