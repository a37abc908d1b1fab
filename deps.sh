#!/bin/sh
# deps.sh: install the Debian packages diffuse needs to build, test and draw (when run as root);
# otherwise say which are missing. Used by README's quick start and by .ci/run.
set -u
PACKAGES="lua5.4 liblua5.4-dev lua-busted luarocks gcc g++ make pkg-config python3 librsvg2-bin"
missing=""
for p in $PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "deps.sh: installing$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null \
    || { echo "deps.sh: apt-get failed" >&2; exit 1; }
else
  echo "deps.sh: missing Debian packages:$missing" >&2
  echo "deps.sh: run as root, or: sudo apt-get install$missing" >&2
  exit 1
fi
