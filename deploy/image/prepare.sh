#!/bin/sh
# Build time, as root: the image's user and the one folder it may write. The image's code, config and
# archives stay root-owned and read-only for that user; everything TorchServe, the workers and the health
# check write (keys, logs, unpacked archives, video temp files, HOME) lies under $APP_HOME/var, which the
# entrypoint lays out at start (so that a volume mounted over it works as well).
# tests/server/test_image.py runs this script too, with APP_HOME in a temporary folder.
set -eu
: "${APP_HOME:=/srv/deepfake}"
: "${APP_UID:=10001}"

# A numeric user of our own, group 0: Kubernetes verifies runAsNonRoot only against a numeric uid, and
# group 0 lets OpenShift's arbitrary uids (always in group 0) write the same folder.
if ! getent passwd "$APP_UID" >/dev/null; then
    useradd --uid "$APP_UID" --gid 0 --no-create-home --home-dir "$APP_HOME/var/home" \
        --shell /usr/sbin/nologin deepfake
fi
mkdir -p "$APP_HOME/var"
chown "$APP_UID:0" "$APP_HOME/var"
chmod 0770 "$APP_HOME/var"
