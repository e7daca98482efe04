"""A small landmark-like benchmark built from the photos scikit-image ships (no download needed), hard enough
that the default method does not verify every query at the top, so a regression shows as a drop.

Each "landmark" is one sample photo, or one part of a photo whose other part is kept as a look-alike
distractor (tissue, galaxies and coins: the same texture, different content). Its query is the landmark with a
box around the object; its database copies are the landmark under a known change:

- easy: moderate scale + rotation, illumination (gamma), blur + JPEG;
- hard: a perspective warp; a plane turned 58-66 degrees out of the image and shrunk (:func:`oblique`); a
  night shot (dark gamma, colour cast, sensor noise, JPEG); the same at 40-50 % of its size (far at dusk);
  the landmark at 22-32 % of the side of a cluttered scene with other objects; a crop with occlusions; a
  small rotated blurred noisy copy; for the motorcycle, the second view of scikit-image's stereo pair (a
  real change of viewpoint);
- junk (ignored, as in the revisited protocol): a tiny copy in an unrelated scene.

Negatives: the other sample photos (crops under random transforms), the look-alike parts above, and two
copies of the mirror image of each photo landmark (same colours and layout, no consistent geometry).
Ground truth is written in the revisited format (``gnd_demo.pkl``: ``imlist``, ``qimlist``, ``gnd`` with
``easy``/``hard``/``junk``/``bbx``). Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed
writes the same files.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Region = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the photo

#: landmark -> (source photo, region of the landmark, region of its look-alike negative or None)
LANDMARKS: dict[str, tuple[str, Region, Region | None]] = {
    "astronaut": ("astronaut", (0, 0, 1, 1), None),
    "camera": ("camera", (0, 0, 1, 1), None),
    "coffee": ("coffee", (0, 0, 1, 1), None),
    "chelsea": ("chelsea", (0, 0, 1, 1), None),
    "rocket": ("rocket", (0, 0, 1, 1), None),
    "motorcycle": ("motorcycle", (0, 0, 1, 1), None),
    "tissue": ("immunohistochemistry", (0, 0, 0.55, 1), (0.55, 0, 1, 1)),
    "galaxies": ("hubble_deep_field", (0, 0, 0.55, 1), (0.55, 0, 1, 1)),
    "coins": ("coins", (0, 0, 0.55, 1), (0.55, 0, 1, 1)),
}
DISTRACTORS = ("retina", "cell", "brick", "grass", "gravel", "moon", "page", "text", "clock", "colorwheel",
               "logo", "horse")
#: transform name -> difficulty ("easy" / "hard" positives, "junk" = ignored)
TRANSFORMS = {
    "scale_rotate": "easy",
    "illumination": "easy",
    "blur_jpeg": "easy",
    "homography": "hard",
    "oblique": "hard",
    "night": "hard",
    "far_at_dusk": "hard",
    "in_clutter": "hard",
    "crop_occlusion": "hard",
    "small_rotated": "hard",
    "tiny_in_scene": "junk",
}
MIN_SIDE = 480  # landmarks smaller than this (the coins part) are enlarged so their copies keep detail


def sample_photo(name: str) -> npt.NDArray[np.uint8]:
    """One scikit-image sample photo as RGB uint8 (``motorcycle``: the left view of the stereo pair,
    ``motorcycle_right``: its right view)."""
    import skimage.data as data

    if name.startswith("motorcycle"):
        img = data.stereo_motorcycle()[1 if name.endswith("_right") else 0]
    else:
        img = getattr(data, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = (img * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img.astype(np.uint8))


def photo_region(name: str, region: Region) -> npt.NDArray[np.uint8]:
    """The part ``region`` of a sample photo, enlarged when its shorter side is under :data:`MIN_SIDE`."""
    img = sample_photo(name)
    h, w = img.shape[:2]
    x0, y0, x1, y1 = region
    out = img[int(y0 * h): int(y1 * h), int(x0 * w): int(x1 * w)]
    short = min(out.shape[:2])
    if short < MIN_SIDE:
        f = MIN_SIDE / short
        out = cv2.resize(out, (round(out.shape[1] * f), round(out.shape[0] * f)), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(out)


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


def oblique(size: tuple[int, int], angle_deg: float, axis: str = "y") -> npt.NDArray:
    """Homography of the image plane turned ``angle_deg`` about its vertical (``y``) or horizontal (``x``)
    centre line, seen by a pinhole camera of focal length = image width at distance 1.2 widths, rescaled to
    fill ``size``: ``x' = K R (x - c)`` projected, with ``K = diag(f, f, 1)`` (a plane rotation of 60 degrees
    foreshortens one side to about half its length)."""
    w, h = size
    a = np.deg2rad(angle_deg)
    if axis == "y":
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    else:
        R = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    f, dist = float(w), 1.2 * w
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    pts = np.c_[corners - np.float32([w / 2, h / 2]), np.zeros(4)] @ R.T + np.array([0, 0, dist])
    proj = f * pts[:, :2] / pts[:, 2:3]
    proj -= proj.min(axis=0)
    proj *= 0.95 * min(w / proj[:, 0].max(), h / proj[:, 1].max())
    proj += (np.float32([w, h]) - proj.max(axis=0)) / 2
    return cv2.getPerspectiveTransform(corners, np.float32(proj))


def _jpeg(img: npt.NDArray, quality: int) -> npt.NDArray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def clutter_scene(rng: np.random.Generator, size: tuple[int, int] = (800, 600), objects: int = 4) -> npt.NDArray:
    """A busy scene: one distractor photo as background with crops of other distractor photos pasted on it."""
    w, h = size
    names = rng.permutation(len(DISTRACTORS))
    scene = cv2.resize(sample_photo(DISTRACTORS[names[0]]), (w, h), interpolation=cv2.INTER_LINEAR)
    for k in names[1: 1 + objects]:
        obj = sample_photo(DISTRACTORS[k])
        s = rng.uniform(0.2, 0.35) * w / obj.shape[1]
        H = _similarity(s, rng.uniform(-30, 30), (obj.shape[1], obj.shape[0]), (w, h))
        H[:2, 2] += rng.uniform(-0.35, 0.35, 2) * np.float32([w, h])
        scene = _warp(obj, H, (w, h), scene)
    return scene


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
        return _jpeg(cv2.GaussianBlur(img, (0, 0), 1.2), 25)
    if kind == "homography":
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        jitter = rng.uniform(0.2, 0.33, size=(4, 2)) * np.float32([w, h])
        signs = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
        dst = src + signs * jitter * rng.choice([0.3, 1.0], size=(4, 1))
        return _warp(img, cv2.getPerspectiveTransform(src, np.float32(dst)), (w, h), background)
    if kind == "oblique":
        angle = rng.uniform(58, 66) * rng.choice([-1, 1])
        shrink = _similarity(rng.uniform(0.65, 0.85), 0.0, (w, h), (w, h))
        H = shrink @ oblique((w, h), angle, str(rng.choice(["x", "y"])))
        return _warp(img, H, (w, h), background)
    if kind == "night":
        gains = np.float32([1.0, rng.uniform(0.6, 0.8), rng.uniform(0.3, 0.5)])[rng.permutation(3)]
        out = 255.0 * (img / 255.0) ** rng.uniform(2.4, 3.0) * gains * rng.uniform(0.5, 0.7)
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), 0.8) + rng.normal(0, 16, img.shape)
        return _jpeg(np.clip(out, 0, 255).astype(np.uint8), 60)
    if kind == "far_at_dusk":
        small = _warp(img, _similarity(rng.uniform(0.4, 0.5), rng.uniform(-10, 10), (w, h), (w, h)), (w, h), background)
        return transform(small, "night", rng, background)
    if kind == "in_clutter":
        scene = clutter_scene(rng)
        sw, sh = scene.shape[1], scene.shape[0]
        s = rng.uniform(0.22, 0.32) * min(sw / w, sh / h)
        H = _similarity(s, rng.uniform(-25, 25), (w, h), (sw, sh))
        H[:2, 2] += rng.uniform(-0.25, 0.25, 2) * np.float32([sw, sh])
        return _jpeg(_warp(img, H, (sw, sh), scene), 80)
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


def make_benchmark(root: Path, seed: int = 0, distractor_variants: int = 2) -> DemoBenchmark:
    """Write the benchmark under ``root`` (``jpg/`` + ``gnd_demo.pkl``) and return its description."""
    rng = np.random.default_rng(seed)
    jpg = Path(root) / "jpg"
    jpg.mkdir(parents=True, exist_ok=True)
    backgrounds = [sample_photo(n) for n in ("grass", "gravel", "brick", "moon")]

    def save(name: str, img: npt.NDArray) -> None:
        cv2.imwrite(str(jpg / f"{name}.jpg"), np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])

    def background() -> npt.NDArray:
        return backgrounds[int(rng.integers(len(backgrounds)))]

    db_names: list[str] = []
    kinds: list[tuple[str, str]] = []  # (landmark or "", difficulty)
    for lm, (photo, region, lookalike) in LANDMARKS.items():
        img = photo_region(photo, region)
        for t, difficulty in TRANSFORMS.items():
            bg = background()
            if t == "tiny_in_scene":
                bg = sample_photo(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))])
                bg = cv2.resize(bg, (640, int(640 * bg.shape[0] / bg.shape[1])))
            db_names.append(f"{lm}_{t}")
            kinds.append((lm, difficulty))
            save(db_names[-1], transform(img, t, rng, bg))
        if photo == "motorcycle":  # the stereo pair's other view: a real change of viewpoint
            db_names.append(f"{lm}_second_view")
            kinds.append((lm, "hard"))
            save(db_names[-1], sample_photo("motorcycle_right"))
        if lookalike is not None:  # the photo's other part: same texture, different content
            other = photo_region(photo, lookalike)
            for v, t in enumerate(("scale_rotate", "illumination")):
                db_names.append(f"lookalike_{lm}_{v}")
                kinds.append(("", "distractor"))
                save(db_names[-1], transform(other, t, rng, background()))
        else:  # the mirror image: same colours and layout, no consistent geometry
            for v, t in enumerate(("scale_rotate", "illumination")):
                db_names.append(f"mirror_{lm}_{v}")
                kinds.append(("", "distractor"))
                save(db_names[-1], transform(np.ascontiguousarray(img[:, ::-1]), t, rng, background()))
    for d in DISTRACTORS:
        img = sample_photo(d)
        h, w = img.shape[:2]
        for v in range(distractor_variants):
            x0, y0 = int(rng.uniform(0, 0.3) * w), int(rng.uniform(0, 0.3) * h)
            crop = img[y0 : y0 + int(0.7 * h), x0 : x0 + int(0.7 * w)]
            t = ("scale_rotate", "illumination", "homography")[v % 3]
            db_names.append(f"distractor_{d}_{v}")
            kinds.append(("", "distractor"))
            save(db_names[-1], transform(crop, t, rng, background()))

    order = rng.permutation(len(db_names))  # interleave so positives are not adjacent by index
    db_names = [db_names[i] for i in order]
    kinds = [kinds[i] for i in order]
    query_names, gnd = [], []
    for lm, (photo, region, _) in LANDMARKS.items():
        img = photo_region(photo, region)
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
