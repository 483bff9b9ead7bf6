"""Files that act on the machine when read naively: pickles that run a call, an image that decodes to 90
megapixels. Each is real and valid in its format; resnet_lite must refuse them in one line."""
import builtins
import os
import struct
import zlib


class Payload:
    """Pickles as a call of `fn(*args)`: what unpickling it runs."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker):
    """name -> (payload, the global its protocol-2 pickle names): each creates `marker` when plain pickle reads it."""
    return {"os.system": (Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
            "open": (Payload(builtins.open, str(marker), "w"), "io.open"),
            "exec": (Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "__builtin__.exec")}


def png_of(width, height) -> bytes:
    """A real, valid 1-bit PNG of width x height black pixels: a few KB for any size (zlib of zero rows)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes(1 + (width + 7) // 8) * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
