#!/usr/bin/env bash
# Installs the Debian 12 packages Parley builds and tests with.
# Does nothing when they are all present; needs root (or sudo) otherwise.
set -euo pipefail

packages=(
  build-essential cmake pkg-config python3
  libuv1-dev libhttp-parser-dev libprotobuf-c-dev protobuf-c-compiler
  liblmdb-dev zlib1g-dev libsqlite3-dev libsodium-dev libssl-dev libcjson-dev
  clang libclang-rt-14-dev
  nodejs npm
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# nodejs/npm may come from elsewhere (e.g. a preinstalled Node); accept any working node+npm.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || filtered+=("$p"); done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
