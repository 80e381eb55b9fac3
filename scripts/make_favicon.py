"""Draw the service's icon: `favicon.svg` and the same shape as `favicon.ico` (PNG 16 and 32).

The icon is geometry (a rounded blue square holding a white list: three bullets, three lines),
so both files come from one description here, without an image library. The output is
committed in `src/tutorials/api/docs_assets/`; run this again only to change the icon:

    python scripts/make_favicon.py
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "tutorials" / "api" / "docs_assets"
BLUE = (0x1F, 0x5F, 0xA8)
WHITE = (0xFF, 0xFF, 0xFF)
#: On a 32 x 32 canvas: (x, y, width, height, corner radius, colour), drawn in order.
SHAPES = [
    (0, 0, 32, 32, 7, BLUE),
    *[(6, y, 4, 4, 1, WHITE) for y in (7, 14, 21)],
    *[(12, y, 14, 4, 1, WHITE) for y in (7, 14, 21)],
]


def svg() -> str:
    rects = "".join(
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{r}" fill="#{bytes(c).hex()}"/>'
        for x, y, w, h, r, c in SHAPES
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">{rects}</svg>\n'


def _inside(px: float, py: float, shape: tuple[int, int, int, int, int, object]) -> bool:
    x, y, w, h, r, _ = shape
    if not (x <= px < x + w and y <= py < y + h):
        return False
    cx = min(max(px, x + r), x + w - r)  # nearest point of the inner rectangle
    cy = min(max(py, y + r), y + h - r)
    return (px - cx) ** 2 + (py - cy) ** 2 <= r * r


def pixels(size: int, samples: int = 4) -> bytes:
    """RGBA rows, each pixel's coverage of each shape averaged over samples x samples points."""
    scale = 32 / size
    rows = bytearray()
    for row in range(size):
        rows.append(0)  # PNG filter: none
        for column in range(size):
            colour, alpha = [0.0, 0.0, 0.0], 0.0
            for shape in SHAPES:
                hits = sum(
                    _inside(
                        (column + (i + 0.5) / samples) * scale,
                        (row + (j + 0.5) / samples) * scale,
                        shape,
                    )
                    for i in range(samples)
                    for j in range(samples)
                )
                cover = hits / samples**2
                if cover:  # "over" compositing of this shape onto what is below
                    new_alpha = cover + alpha * (1 - cover)
                    colour = [
                        (shape[5][k] * cover + colour[k] * alpha * (1 - cover)) / new_alpha  # type: ignore[index]
                        for k in range(3)
                    ]
                    alpha = new_alpha
            rows += bytes([*(round(v) for v in colour), round(alpha * 255)])
    return bytes(rows)


def png(size: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels(size), 9))
        + chunk(b"IEND", b"")
    )


def ico(sizes: tuple[int, ...] = (16, 32)) -> bytes:
    """An ICO file whose images are PNGs (supported by every browser that asks for one)."""
    images = [png(size) for size in sizes]
    offset = 6 + 16 * len(images)
    head = struct.pack("<HHH", 0, 1, len(images))
    entries = b""
    for size, image in zip(sizes, images, strict=True):
        entries += struct.pack("<BBBBHHII", size, size, 0, 0, 1, 32, len(image), offset)
        offset += len(image)
    return head + entries + b"".join(images)


if __name__ == "__main__":
    (OUT / "favicon.svg").write_text(svg(), encoding="utf-8")
    (OUT / "favicon.ico").write_bytes(ico())
    print(f"wrote {OUT / 'favicon.svg'} and {OUT / 'favicon.ico'}")
