#!/usr/bin/env bash
# Build the stand-in for the Dockerfile's base image (no registry can be reached from CI): debootstrap bookworm
# (the official python:X.Y-slim-bookworm images' Debian, whose apt pins the Dockerfile uses), the tag's Python,
# and the host's CA certificates so pip works in builds. Python 3.11 is bookworm's own python3; bookworm has no
# other, so for 3.13 this host's build (pyenv's, made on bookworm) is copied in, as the official images build
# theirs into the image, with the libraries its modules link.
# Usage: standin-base.sh TAG CACHE_TARBALL. The rootfs tarball is cached; the import is skipped when TAG exists.
set -euo pipefail
TAG="$1"
CACHE="$2"
case "$TAG" in
    python:3.11*) PYTHON=debian ;;
    python:3.13*) PYTHON=3.13 ;;
    *) echo "standin-base: no stand-in for $TAG (Python 3.11 or 3.13)" >&2; exit 1 ;;
esac

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "standin-base: $TAG already present"
    exit 0
fi

if [ ! -s "$CACHE" ]; then
    ROOT="$(mktemp -d)"
    trap 'rm -rf "$ROOT"' EXIT
    if [ "$PYTHON" = debian ]; then
        include=python3,python3-venv,ca-certificates
    else
        host=""  # pyenv's build first (a pyenv shim on PATH is no interpreter), then one on PATH
        if command -v pyenv >/dev/null 2>&1; then
            for candidate in "$(pyenv root)"/versions/"$PYTHON"*/bin/python"$PYTHON"; do
                [ -x "$candidate" ] && host=$candidate
            done
        fi
        [ -n "$host" ] || host=$(command -v "python$PYTHON" || true)
        if [ -z "$host" ] || ! "$host" -c pass 2>/dev/null; then
            echo "standin-base: no python$PYTHON on this host to copy in" >&2
            exit 1
        fi
        include=ca-certificates,libssl3,libffi8,libsqlite3-0,libuuid1,libbz2-1.0,libexpat1,liblzma5,libncursesw6
        include=$include,libreadline8,libtinfo6,zlib1g,libgdbm6
    fi
    echo "standin-base: debootstrap bookworm into $ROOT"
    debootstrap --variant=minbase --include="$include" bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$ROOT" update-ca-certificates >/dev/null
    # The official python images put the interpreter at /usr/local/bin/python; the Dockerfile relies on that.
    if [ "$PYTHON" = debian ]; then
        ln -sf /usr/bin/python3 "$ROOT/usr/local/bin/python"
    else
        prefix=$("$host" -c 'import sys; print(sys.base_prefix)')
        echo "standin-base: Python $PYTHON from $prefix"
        mkdir -p "$ROOT$prefix"
        tar -C "$prefix" --exclude="python$PYTHON/site-packages/*" --exclude="python$PYTHON/test" \
            --exclude=__pycache__ -cf - bin lib | tar -C "$ROOT$prefix" -xf -
        dir=$prefix  # its path stays readable by the image's unprivileged user (a prefix under /root)
        while [ "$dir" != / ]; do chmod o+rx "$ROOT$dir"; dir=$(dirname "$dir"); done
        ln -sf "$prefix/bin/python$PYTHON" "$ROOT/usr/local/bin/python"
        ln -sf "$prefix/bin/python$PYTHON" "$ROOT/usr/local/bin/python3"
        chroot "$ROOT" /usr/local/bin/python -c "import ssl, ctypes, sqlite3, venv, ensurepip"
    fi
    chroot "$ROOT" apt-get clean
    mkdir -p "$(dirname "$CACHE")"
    tar -C "$ROOT" -cf "$CACHE.tmp" . && mv "$CACHE.tmp" "$CACHE"
fi

echo "standin-base: importing $CACHE as $TAG"
docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    "$CACHE" "$TAG" >/dev/null
