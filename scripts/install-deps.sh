#!/bin/sh
# Installs what `make demo` and `make test` need, when it is missing:
# Debian packages (redis, nginx, node, a C compiler) and the redis Python
# client. Does nothing when everything is there.
#   install-deps.sh demo   only what the demo needs (python3)
#   install-deps.sh        everything the tests need
#   install-deps.sh bench  everything the tests need, plus wrk and
#                          redis-benchmark (`make bench`)
set -eu

missing=""
need() { # command, Debian package
    command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
need python3 python3
need curl curl
if [ "${1:-}" != demo ]; then
    need redis-server redis-server
    need nginx nginx-light
    need node nodejs
    need gcc gcc
    need nm binutils
fi
if [ "${1:-}" = bench ]; then
    need redis-benchmark redis-tools
    need wrk wrk
fi

if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "install-deps: installing$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ "${1:-}" != demo ] && ! python3 -c 'import redis' 2>/dev/null; then
    echo "install-deps: installing the redis Python client"
    python3 -m pip install --quiet redis
fi
