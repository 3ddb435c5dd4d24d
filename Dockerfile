# The lockstep image: a static (musl) binary on Alpine, with `ssh` for SSH Git remotes.
#   docker build -t lockstep .
#   lockstep install --apply --set image.repository=REGISTRY/lockstep --set image.tag=TAG
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev cmake make perl clang
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lockstep \
 && strip target/release/lockstep

FROM alpine:3.22
RUN apk add --no-cache openssh-client ca-certificates \
 && adduser -D -H -u 65532 lockstep
COPY --from=build /src/target/release/lockstep /usr/local/bin/lockstep
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lockstep"]
CMD ["controller", "--leader-elect"]
