"""Which image codecs this Pillow build has, and which format a file's first bytes say it is.

A Pillow built from source without a codec's headers (pillow-simd on a bare machine) silently lacks that codec:
WebP, AVIF and compressed TIFF files then fail as if they were damaged. `missing_codecs` names what is absent,
`sniff_format` tells a file that is fine from one that is not, so the message can blame the build, not the file.
`python -m pipeline.codecs` prints the codecs and exits 1 when one is missing (scripts/venv.sh runs it).
Imports only Pillow: it runs before the rest of the environment is trusted.
"""

from __future__ import annotations

import sys

from PIL import features

# Pillow feature -> what a user loses without it. Every one ships in stock Pillow's wheels.
REQUIRED_CODECS = {
    "jpg": "JPEG",
    "zlib": "PNG",
    "libtiff": "compressed TIFF (LZW, deflate, JPEG-in-TIFF)",
    "webp": "WebP",
    "avif": "AVIF",
    "jpg_2000": "JPEG 2000",
    "littlecms2": "ICC colour profiles",
}
FIX = "run scripts/venv.sh again or pip install pillow"

# format name (as `sniff_format` returns it) -> the Pillow feature that decodes it
FORMAT_CODEC = {"JPEG": "jpg", "PNG": "zlib", "WEBP": "webp", "AVIF": "avif", "JPEG2000": "jpg_2000"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def missing_codecs() -> list[str]:
    """Features of `REQUIRED_CODECS` that this Pillow build lacks (an empty list: every codec is there)."""
    return [name for name in REQUIRED_CODECS if not features.check(name)]


def missing_message(format_name: str) -> str:
    """The user-facing line for a file whose format this Pillow build cannot decode."""
    if format_name == "HEIF":
        return "HEIC/HEIF support is not installed: pip install pillow-heif (the project's heic extra)"
    label = {"WEBP": "WebP", "TIFF": "Compressed TIFF (libtiff)", "JPEG2000": "JPEG 2000"}.get(format_name, format_name)
    return f"{label} support is missing from this Pillow build: {FIX}"


def heif_available() -> bool:
    """True when pillow-heif is installed (the optional `heic` extra) and registered with Pillow."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def sniff_format(head: bytes) -> str | None:
    """The format the first bytes (16 or more) of a file announce, or None when they match none known here."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    return None


def codec_missing_for(format_name: str | None) -> bool:
    """True when `format_name` (from `sniff_format`) needs a decoder this Pillow build or environment lacks."""
    if format_name == "HEIF":
        return not heif_available()
    feature = FORMAT_CODEC.get(format_name or "")
    return feature is not None and not features.check(feature)


def main() -> int:
    missing = missing_codecs()
    for name, label in REQUIRED_CODECS.items():
        print(f"{'ok     ' if name not in missing else 'MISSING'} {name:<11} {label}")
    heif = "ok     " if heif_available() else "absent "
    print(f"{heif} heif        HEIC/HEIF (optional: pillow-heif, the heic extra)")
    if missing:
        print(f"this Pillow build lacks {', '.join(missing)}: {FIX}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
