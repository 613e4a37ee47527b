# Sourced by .ci/run: the Docker path of internal/pglocal, tested for real.
#
# No container registry is reachable from CI, so the image is built here
# FROM scratch out of an npm server bundle (see pgmatrix.sh), the glibc
# libraries ldd names, /bin/sh, a postgres user and a world-writable /tmp,
# and tagged postgres:<major> so that dockertest finds it without pulling.
# Its entrypoint takes the official image's interface: "postgres -c ..." as
# the command, initdb on first start, POSTGRES_HOST_AUTH_METHOD=trust.

DOCKERD_PID=""

# docker_start starts dockerd unless one answers already. No bridge and no
# iptables: the containers use the host's network, so every connection
# stays on 127.0.0.1.
docker_start() {
  if ! command -v dockerd >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
  fi
  if docker info >/dev/null 2>&1; then
    echo "ci: a Docker daemon answers already"
    return 0
  fi
  local state
  state=$(mktemp -d)
  dockerd --bridge=none --iptables=false --ip6tables=false \
    --exec-root "$state/exec" --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  echo "ci: dockerd did not come up; its log:"
  tail -n 30 "$state/dockerd.log"
  return 1
}

# docker_stop stops the dockerd that docker_start started, by its PID.
docker_stop() {
  [ -n "$DOCKERD_PID" ] || return 0
  kill "$DOCKERD_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 30); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || { DOCKERD_PID=""; return 0; }
    sleep 1
  done
  echo "ci: dockerd $DOCKERD_PID still running after 30s; killing it"
  kill -9 "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
}

# docker_image BINDIR TAG builds the image TAG from the bundle whose bin
# directory is BINDIR.
docker_image() {
  local bin=$1 tag=$2
  local native ctx
  native=$(cd "$bin/.." && pwd)
  ctx=$(mktemp -d)
  mkdir -p "$ctx/usr/local/pgsql" "$ctx/bin" "$ctx/etc" "$ctx/tmp"
  chmod 1777 "$ctx/tmp"
  cp -a "$native/bin" "$native/lib" "$native/share" "$ctx/usr/local/pgsql/"
  cp -L /bin/sh "$ctx/bin/sh"
  # Every library outside the bundle that its programs or /bin/sh load.
  local lib
  for lib in $( { ldd "$native"/bin/* /bin/sh 2>/dev/null || true; } |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | grep -v "^$native" | sort -u); do
    mkdir -p "$ctx$(dirname "$lib")"
    cp -L "$lib" "$ctx$lib"
  done
  echo 'postgres:x:999:999:PostgreSQL:/tmp:/bin/sh' >"$ctx/etc/passwd"
  echo 'postgres:x:999:' >"$ctx/etc/group"
  cat >"$ctx/entrypoint.sh" <<'EOF'
#!/bin/sh
# initdb on first start, then the server with the command's -c settings.
set -e
[ "$1" = postgres ] && shift
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U postgres -A "${POSTGRES_HOST_AUTH_METHOD:-trust}" --encoding UTF8 --locale=C --no-sync >/dev/null
fi
exec postgres -D "$PGDATA" "$@"
EOF
  chmod 755 "$ctx/entrypoint.sh"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY . /
ENV PATH=/usr/local/pgsql/bin PGDATA=/tmp/pgdata
USER 999:999
STOPSIGNAL SIGINT
ENTRYPOINT ["/entrypoint.sh"]
CMD ["postgres"]
EOF
  rm -f "$ctx/.dockerignore"
  printf 'Dockerfile\n' >"$ctx/.dockerignore"
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
}

# pg_docker builds postgres:<major> from the newest bundle of the matrix and
# runs the Docker path's tests with no server binaries to be found.
pg_docker() {
  local version bin major start rc=0
  version=${PG_VERSIONS##* }
  major=${version%%.*}
  bin=$(pg_install "$version")
  start=$SECONDS
  docker_start || return 1
  docker_image "$bin" "postgres:$major" || { docker_stop; return 1; }
  echo "ci: Docker path with image postgres:$major (built from $version)"
  # WALHOOK_TEST_PG_DOCKER=1 takes the Docker path even though binaries are
  # installed; the test fails unless the server it got runs in a container.
  WALHOOK_TEST_PG_DOCKER=1 WALHOOK_TEST_PG_IMAGE="postgres:$major" WALHOOK_TEST_PG_BINDIR= \
    go test -count=1 -v -run 'Docker' ./internal/pglocal || rc=1
  # Every other package that talks to PostgreSQL, through the container
  # (crash tests included: Restart signals and restarts it).
  # shellcheck disable=SC2046
  WALHOOK_TEST_PG_DOCKER=1 WALHOOK_TEST_PG_IMAGE="postgres:$major" WALHOOK_TEST_PG_BINDIR= \
    go test -count=1 $(pg_packages | grep -v '/internal/pglocal$') || rc=1
  # The demo end to end: PostgreSQL through dockertest, walhook, a receiver.
  WALHOOK_TEST_PG_DOCKER=1 WALHOOK_TEST_PG_IMAGE="postgres:$major" WALHOOK_TEST_PG_BINDIR= \
    go run ./cmd/walhook demo || rc=1
  docker_stop
  echo "ci: Docker path took $((SECONDS - start))s"
  return $rc
}
