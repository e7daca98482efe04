"""Pictures of matches: query and result side by side with their inlier correspondences."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from glocal.io.images import load_image


def draw_matches(
    query_path: Path,
    result_path: Path,
    matches: npt.NDArray,
    box: tuple[float, float, float, float] | None = None,
    height: int = 320,
    max_lines: int = 80,
) -> npt.NDArray[np.uint8]:
    """Side-by-side RGB picture; ``matches`` (M, 4) = x_q, y_q, x_db, y_db in original pixels.

    The query box, if any, is drawn in yellow; inlier lines in green (at most ``max_lines``, evenly sampled).
    """
    q = load_image(query_path, max_side=None)
    r = load_image(result_path, max_side=None)
    sq = height / q.pixels.shape[0]
    sr = height / r.pixels.shape[0]
    qa = cv2.resize(q.pixels, (max(1, round(q.pixels.shape[1] * sq)), height), interpolation=cv2.INTER_AREA)
    ra = cv2.resize(r.pixels, (max(1, round(r.pixels.shape[1] * sr)), height), interpolation=cv2.INTER_AREA)
    canvas = np.ascontiguousarray(np.hstack([qa, np.full((height, 8, 3), 255, np.uint8), ra]))
    dx = qa.shape[1] + 8
    if box is not None:
        x1, y1, x2, y2 = (int(round(v * sq)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (255, 210, 0), 2)
    m = np.asarray(matches, np.float32).reshape(-1, 4)
    if len(m) > max_lines:
        m = m[np.linspace(0, len(m) - 1, max_lines).round().astype(int)]
    for xq, yq, xr, yr in m:
        p1 = (int(round(xq * sq)), int(round(yq * sq)))
        p2 = (int(round(xr * sr)) + dx, int(round(yr * sr)))
        cv2.line(canvas, p1, p2, (40, 220, 40), 1, cv2.LINE_AA)
        cv2.circle(canvas, p1, 2, (255, 60, 60), -1)
        cv2.circle(canvas, p2, 2, (255, 60, 60), -1)
    return canvas


def save_rgb(path: Path, rgb: npt.NDArray[np.uint8], quality: int = 85) -> None:
    """Write an RGB array as JPEG/PNG (by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params):
        raise OSError(f"{path}: could not write image")
