#!/usr/bin/env bash
# Build the stand-in for the Dockerfile's base image (no registry can be reached from CI):
# debootstrap bookworm plus Debian's python3, with the host's CA certificates so pip works in builds.
# Usage: standin-base.sh TAG CACHE_TARBALL. The rootfs tarball is cached; the import is skipped when TAG exists.
set -euo pipefail
TAG="$1"
CACHE="$2"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "standin-base: $TAG already present"
    exit 0
fi

if [ ! -s "$CACHE" ]; then
    ROOT="$(mktemp -d)"
    trap 'rm -rf "$ROOT"' EXIT
    echo "standin-base: debootstrap bookworm into $ROOT"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$ROOT" update-ca-certificates >/dev/null
    # The official python images put the interpreter at /usr/local/bin/python; the Dockerfile relies on that.
    ln -sf /usr/bin/python3 "$ROOT/usr/local/bin/python"
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
