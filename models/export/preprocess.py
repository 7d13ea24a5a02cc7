"""edgevit's preprocessing in numpy: the reference for runtime/src/preprocess.rs.

Resize to cover, center crop, bilinear with half-pixel centers, luma
0.299 R + 0.587 G + 0.114 B, then (v / 255 - mean) / std, all in float32.
"""

import numpy as np
from PIL import Image


def load(path):
    """8-bit pixels as [H, W] (gray) or [H, W, 3] (RGB), alpha dropped."""
    img = Image.open(path)
    if img.mode in ("L", "LA", "I;16", "I"):
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))


def preprocess(pixels, width, height, channels, mean, std, layout="nchw"):
    """One image as float32 [C, H, W] (nchw) or [H, W, C] (nhwc)."""
    px = pixels.astype(np.float32)
    if px.ndim == 2:
        px = px[:, :, None] if channels == 1 else np.repeat(px[:, :, None], 3, axis=2)
    h, w = px.shape[:2]
    s = max(np.float32(width) / np.float32(w), np.float32(height) / np.float32(h))
    off_x = np.float32((w * s - width) / 2)
    off_y = np.float32((h * s - height) / 2)

    def axis(n_out, off, n_in):
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5) + off) / s - np.float32(0.5)
        src = np.clip(src, 0, n_in - 1).astype(np.float32)
        i0 = np.floor(src).astype(np.int64)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    x0, x1, fx = axis(width, off_x, w)
    y0, y1, fy = axis(height, off_y, h)
    fx = fx[None, :, None]
    fy = fy[:, None, None]
    one = np.float32(1)
    top = px[y0][:, x0] * (one - fx) + px[y0][:, x1] * fx
    bottom = px[y1][:, x0] * (one - fx) + px[y1][:, x1] * fx
    v = top * (one - fy) + bottom * fy
    if channels == 1 and v.shape[2] == 3:
        v = (np.float32(0.299) * v[..., 0] + np.float32(0.587) * v[..., 1] + np.float32(0.114) * v[..., 2])[..., None]
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    out = ((v / np.float32(255) - mean) / std).astype(np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1) if layout == "nchw" else out)
