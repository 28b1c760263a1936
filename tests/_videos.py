"""Test videos whose frames say which frame they are: each frame's top half carries its index in binary
(10 wide blocks, bright for 1), which survives lossy codecs; the bottom half varies with the index too."""

from __future__ import annotations

import fractions

import numpy as np

BITS = 10


def index_frame(i: int, height: int, width: int) -> np.ndarray:
    img = np.full((height, width, 3), 40, np.uint8)
    bw = width // BITS
    for b in range(BITS):
        if (i >> b) & 1:
            img[: height // 2, b * bw : (b + 1) * bw] = 220
    img[height // 2 :, :, 1] = (i * 7) % 256
    return img


def read_index(img: np.ndarray) -> int:
    height, width, _ = img.shape
    bw = width // BITS
    blocks = [img[: height // 2, b * bw + bw // 4 : (b + 1) * bw - bw // 4].mean() for b in range(BITS)]
    return sum(1 << b for b, m in enumerate(blocks) if m > 130)


def write_indexed_video(
    path,
    frames: int,
    height: int,
    width: int,
    fps: int = 30,
    codec: str = "libx264",
    gop: int = 12,
    vfr=False,
) -> None:
    """``frames`` index frames; ``vfr``: irregular gaps (20, 50, 80 ms repeating) in a 1/1000 time base."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = gop
        if vfr:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        t = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i, height, width), format="rgb24")
            if vfr:
                frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
                t += 20 + (i % 3) * 30
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
