#!/usr/bin/env bash
# install-deb.sh COMMAND PACKAGE: installs the Debian PACKAGE unless COMMAND is
# already on PATH. Used by make targets so a fresh machine needs only Go and make.
set -euo pipefail
cmd="$1" pkg="$2"
command -v "$cmd" >/dev/null 2>&1 && exit 0
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
echo "installing Debian package $pkg (for $cmd)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
command -v "$cmd" >/dev/null
