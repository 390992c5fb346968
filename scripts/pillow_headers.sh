#!/usr/bin/env bash
# `bash scripts/pillow_headers.sh check`: can pillow-simd be built here with every codec stock Pillow has?
# Exit 0 when the headers are all there (installing Debian's -dev packages first when run as root with apt-get);
# else exit 1 and print, on one line, what is missing and what to install. Used by scripts/venv.sh.
# Pillow builds AVIF only against libavif >= 1.0 (its setup.py reads AVIF_VERSION_MAJOR); Debian 12 ships 0.11.
set -uo pipefail
debian_packages="libjpeg62-turbo-dev zlib1g-dev libtiff-dev libwebp-dev liblcms2-dev libopenjp2-7-dev libavif-dev"
include_dirs="/usr/include /usr/include/*-linux-gnu* /usr/local/include ${CONDA_PREFIX:+$CONDA_PREFIX/include}"

header() {  # the first include directory holding $1 (a glob), or nothing
  local dir match
  for dir in $include_dirs; do  # (globbed: multiarch folders)
    for match in $dir/$1; do
      [ -f "$match" ] && { echo "$match"; return; }
    done
  done
}

missing_headers() {
  local name found
  for name in jpeglib.h zlib.h tiff.h webp/decode.h lcms2.h "openjpeg-2.*/openjpeg.h" avif/avif.h; do
    found=$(header "$name")
    if [ -z "$found" ]; then
      echo -n "$name "
    elif [ "$name" = avif/avif.h ] && ! grep -qE "#define AVIF_VERSION_MAJOR ([1-9]|[1-9][0-9])$" "$found"; then
      echo -n "libavif>=1.0 (found $(grep -oE '#define AVIF_VERSION_(MAJOR|MINOR|PATCH) [0-9]+' "$found" \
        | awk '{print $3}' | paste -sd.)) "
    fi
  done
}

debian_avif_candidate() {  # the libavif-dev version apt would install, e.g. 0.11.1-1+deb12u1 (empty if unknown)
  apt-cache policy libavif-dev 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v none
}

[ "${1:-}" = "check" ] || { echo "usage: $0 check" >&2; exit 2; }
missing=$(missing_headers)
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  candidate=$(debian_avif_candidate)
  if [ -z "$candidate" ]; then
    apt-get update -qq >/dev/null 2>&1
    candidate=$(debian_avif_candidate)
  fi
  if [ -n "$candidate" ] && [ "${candidate%%.*}" -lt 1 ] 2>/dev/null; then  # installing would not give AVIF
    echo "${missing}(this system's libavif-dev is $candidate; Pillow's AVIF needs libavif >= 1.0)"
    exit 1
  fi
  echo "pillow_headers: apt-get install -y $debian_packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $debian_packages >/dev/null 2>&1
  missing=$(missing_headers)
  [ -z "$missing" ] && exit 0
fi
echo "${missing}(Debian/Ubuntu: sudo apt-get install $debian_packages; other systems: the same libraries' headers)"
exit 1
