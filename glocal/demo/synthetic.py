"""A small landmark-like benchmark built from the photos scikit-image ships (no download needed).

Each "landmark" is one sample photo. Its query is the photo with a box around the object; its database
copies are the photo under a known transform: viewpoint (homography), scale + rotation, crop, illumination,
blur + JPEG, occlusion. Mild ones are "easy" positives, strong ones "hard"; a copy shrunk to a small part
of an unrelated scene is "junk" (ignored), as in the revisited Oxford protocol. Distractors are crops of
the other sample photos, under random transforms too. Ground truth is written in the revisited format
(``gnd_demo.pkl``: ``imlist``, ``qimlist``, ``gnd`` with ``easy``/``hard``/``junk``/``bbx``).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

LANDMARKS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "motorcycle", "immunohistochemistry",
             "hubble_deep_field", "coins")
DISTRACTORS = ("retina", "cell", "brick", "grass", "gravel", "moon", "page", "text", "clock", "colorwheel",
               "logo", "horse")
#: transform name -> difficulty ("easy" / "hard" positives, "junk" = ignored)
TRANSFORMS = {
    "scale_rotate": "easy",
    "illumination": "easy",
    "blur_jpeg": "easy",
    "homography": "hard",
    "crop_occlusion": "hard",
    "small_rotated": "hard",
    "tiny_in_scene": "junk",
}


def sample_photo(name: str) -> npt.NDArray[np.uint8]:
    """One scikit-image sample photo as RGB uint8."""
    import skimage.data as data

    img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = (img * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img.astype(np.uint8))


def _warp(img: npt.NDArray, H: npt.NDArray, size: tuple[int, int], background: npt.NDArray) -> npt.NDArray:
    w, h = size
    warped = cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpPerspective(np.full(img.shape[:2], 255, np.uint8), H, (w, h), flags=cv2.INTER_NEAREST)
    bg = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(mask[..., None] > 0, warped, bg)


def _similarity(scale: float, angle_deg: float, src_size: tuple[int, int], dst_size: tuple[int, int]) -> npt.NDArray:
    """3x3 matrix rotating/scaling about the source centre and centring the result in the destination."""
    (sw, sh), (dw, dh) = src_size, dst_size
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    T1 = np.array([[1, 0, -sw / 2], [0, 1, -sh / 2], [0, 0, 1]])
    T2 = np.array([[1, 0, dw / 2], [0, 1, dh / 2], [0, 0, 1]])
    return T2 @ R @ T1


def transform(img: npt.NDArray, kind: str, rng: np.random.Generator, background: npt.NDArray) -> npt.NDArray:
    """Apply one named transform of :data:`TRANSFORMS` (randomised by ``rng``)."""
    h, w = img.shape[:2]
    if kind == "scale_rotate":
        s, ang = rng.uniform(0.6, 0.8), rng.uniform(-15, 15)
        return _warp(img, _similarity(s, ang, (w, h), (w, h)), (w, h), background)
    if kind == "illumination":
        gamma = rng.choice([0.5, 1.8])
        out = 255.0 * (img / 255.0) ** gamma
        out = out * rng.uniform(0.7, 1.1) + rng.uniform(-20, 20)
        size = (int(w * 1.25), int(h * 1.25))
        return cv2.resize(np.clip(out, 0, 255).astype(np.uint8), size, interpolation=cv2.INTER_CUBIC)
    if kind == "blur_jpeg":
        out = cv2.GaussianBlur(img, (0, 0), 1.2)
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 25])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    if kind == "homography":
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        jitter = rng.uniform(0.2, 0.33, size=(4, 2)) * np.float32([w, h])
        signs = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
        dst = src + signs * jitter * rng.choice([0.3, 1.0], size=(4, 1))
        return _warp(img, cv2.getPerspectiveTransform(src, np.float32(dst)), (w, h), background)
    if kind == "crop_occlusion":
        x0, y0 = int(rng.uniform(0.05, 0.25) * w), int(rng.uniform(0.05, 0.25) * h)
        out = img[y0 : y0 + int(0.6 * h), x0 : x0 + int(0.6 * w)].copy()
        ch, cw = out.shape[:2]
        for _ in range(4):
            ow, oh = int(rng.uniform(0.15, 0.3) * cw), int(rng.uniform(0.15, 0.3) * ch)
            ox, oy = int(rng.uniform(0, cw - ow)), int(rng.uniform(0, ch - oh))
            out[oy : oy + oh, ox : ox + ow] = rng.integers(0, 255, 3)
        return cv2.resize(out, (int(cw * 1.3), int(ch * 1.3)), interpolation=cv2.INTER_CUBIC)
    if kind == "small_rotated":
        s, ang = rng.uniform(0.3, 0.4), rng.uniform(40, 90) * rng.choice([-1, 1])
        out = _warp(img, _similarity(s, ang, (w, h), (w, h)), (w, h), background)
        out = cv2.GaussianBlur(out, (0, 0), 0.8)
        return np.clip(out + rng.normal(0, 10, out.shape), 0, 255).astype(np.uint8)
    if kind == "tiny_in_scene":
        s = rng.uniform(0.12, 0.16)
        bw, bh = background.shape[1], background.shape[0]
        H = _similarity(s, 0.0, (w, h), (bw, bh))
        H[:2, 2] += rng.uniform(-0.3, 0.3, 2) * np.float32([bw, bh])
        return _warp(img, H, (bw, bh), background)
    raise ValueError(f"unknown transform {kind!r}; known: {', '.join(TRANSFORMS)}")


@dataclass(frozen=True)
class DemoBenchmark:
    """Paths and ground truth of a generated benchmark."""

    root: Path
    db_names: list[str]
    query_names: list[str]
    gnd: list[dict]

    @property
    def db_paths(self) -> list[Path]:
        return [self.root / "jpg" / f"{n}.jpg" for n in self.db_names]

    @property
    def query_paths(self) -> list[Path]:
        return [self.root / "jpg" / f"{n}.jpg" for n in self.query_names]


def make_benchmark(root: Path, seed: int = 0, distractor_variants: int = 3) -> DemoBenchmark:
    """Write the benchmark under ``root`` (``jpg/`` + ``gnd_demo.pkl``) and return its description."""
    rng = np.random.default_rng(seed)
    jpg = Path(root) / "jpg"
    jpg.mkdir(parents=True, exist_ok=True)
    backgrounds = [sample_photo(n) for n in ("grass", "gravel", "brick", "moon")]

    def save(name: str, img: npt.NDArray) -> None:
        cv2.imwrite(str(jpg / f"{name}.jpg"), np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])

    db_names: list[str] = []
    kinds: list[tuple[str, str]] = []  # (landmark or "", difficulty)
    for lm in LANDMARKS:
        img = sample_photo(lm)
        for t, difficulty in TRANSFORMS.items():
            bg = backgrounds[int(rng.integers(len(backgrounds)))]
            if t == "tiny_in_scene":
                bg = sample_photo(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))])
                bg = cv2.resize(bg, (640, int(640 * bg.shape[0] / bg.shape[1])))
            db_names.append(f"{lm}_{t}")
            kinds.append((lm, difficulty))
            save(db_names[-1], transform(img, t, rng, bg))
    for d in DISTRACTORS:
        img = sample_photo(d)
        h, w = img.shape[:2]
        for v in range(distractor_variants):
            x0, y0 = int(rng.uniform(0, 0.3) * w), int(rng.uniform(0, 0.3) * h)
            crop = img[y0 : y0 + int(0.7 * h), x0 : x0 + int(0.7 * w)]
            t = ("scale_rotate", "illumination", "homography")[v % 3]
            bg = backgrounds[int(rng.integers(len(backgrounds)))]
            db_names.append(f"distractor_{d}_{v}")
            kinds.append(("", "distractor"))
            save(db_names[-1], transform(crop, t, rng, bg))

    order = rng.permutation(len(db_names))  # interleave so positives are not adjacent by index
    db_names = [db_names[i] for i in order]
    kinds = [kinds[i] for i in order]
    query_names, gnd = [], []
    for lm in LANDMARKS:
        img = sample_photo(lm)
        h, w = img.shape[:2]
        name = f"query_{lm}"
        save(name, img)
        query_names.append(name)
        bbx = [round(0.1 * w, 1), round(0.1 * h, 1), round(0.9 * w, 1), round(0.9 * h, 1)]
        gnd.append({
            "bbx": bbx,
            "easy": [i for i, (owner, dif) in enumerate(kinds) if owner == lm and dif == "easy"],
            "hard": [i for i, (owner, dif) in enumerate(kinds) if owner == lm and dif == "hard"],
            "junk": [i for i, (owner, dif) in enumerate(kinds) if owner == lm and dif == "junk"],
        })
    with open(Path(root) / "gnd_demo.pkl", "wb") as f:
        pickle.dump({"imlist": db_names, "qimlist": query_names, "gnd": gnd}, f)
    return DemoBenchmark(Path(root), db_names, query_names, gnd)
