"""Rule-based object detector for ShapesWorld images: the judge's eyes, no learned model.

Pipeline per image:

1. background: the median colour of the border pixels (robust to a generator's tinted background);
   their spread measures the image's noise, which sets a Gaussian denoising (none for crisp images);
2. foreground: pixels farther than ``FOREGROUND_DELTA`` from it in CIE Lab (a perceptual-ish space,
   so blurry or off-hue colours from a small model still land on the right palette entry);
3. objects: 8-connected components of the foreground (``scipy.ndimage.label``), dropping those
   smaller than a minimum area so stray pixels are not counted; a component holding two large
   single-colour parts (touching objects) is split by colour; each object's mask is then re-cut
   at the midpoint between background and its own colour, so blur neither grows nor shrinks it;
4. colour: the nearest palette colour to the median colour of the object's most saturated half;
5. shape: nearest prototype in a small geometric feature space (box fill ratio, solidity against
   the convex hull, up-down and left-right mirror overlap, aspect); prototypes are the renderer's
   own masks at the object's size, passed through steps 1-3 with the same smoothing;
6. confidence: how well the blob matches a *clean instance* of the class it was given, the product of
   the shape score (falls with the distance to the best prototype and with the margin to the
   runner-up) and a plausibility in [0, 1] (:func:`plausibility`) made of three linear ramps:

   * size: the blob's longer side over the longer side of ShapesWorld's smallest object at this
     image size (:func:`smallest_object_side`); 0 at half of it or less, 1 from 60 % on. A 4 px blob
     in a 32 px image (one decoder tile) is no object;
   * fit: the best IoU of the blob with the renderer's own mask of the class (:func:`shape_mask`)
     drawn at the blob's size, any small offset; 0 at IoU 0.55, 1 from 0.8. Below the smallest
     object size the IoU needed rises by half the shortfall, since few pixels match a template by
     chance more easily. Holes, bites, fragments and stray tiles all lower the IoU;
   * isolation: the share of the 1 px ring around the blob that shows a colour other than the
     background or a blend of background and the blob's own colour (:func:`_contact`); 1 up to
     0.3, 0 from 0.6. A real object stands on background (or touches one neighbour along a side,
     about a quarter of its ring); a blob in a clutter of other colours is mosaic, not object.

   Why: GenEval's detector reports no confident object in garbage, while colour blobs in a random
   mosaic of decoder tiles match the shape features often enough that, without this, an untrained
   generator scored 0.18-0.21 overall (single_object 0.5-0.67) and up to 100 % on a tag. With it,
   random-tile mosaics score 0 on every tag, while ground-truth renderings (32 and 64 px) keep their
   exact masks (plausibility 1) and tokenizer round trips, whose masks stay within IoU ~0.88 of the
   template, keep their scores. GenEval's thresholds (0.3, and 0.9 for counting) act as upstream.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from segros.data.shapes import BACKGROUND, PALETTE, SHAPES, shape_mask, size_px
from segros.eval.geneval import Detection

FOREGROUND_DELTA = 22.0  # Lab distance from the background above which a pixel is an object
MIN_AREA_FRACTION = 0.005  # components below this share of the image (and below 6 px) are noise
FEATURE_WEIGHTS = np.array([2.0, 2.0, 1.0, 0.5, 1.0])
CONF_SCALE = 0.5  # feature distance at which confidence has dropped to 1/e
MARGIN_TEMPERATURE = 0.01
EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
SIZE_RAMP = (0.5, 0.6)  # blob side / smallest object side: not an object .. fully plausible
IOU_RAMP = (0.55, 0.8)  # IoU with the class's ideal mask: not that class .. a clean instance
SMALL_IOU_PENALTY = 0.5  # below the smallest size, the IoU needed grows by this x the shortfall
CONTACT_RAMP = (0.3, 0.6)  # share of the ring touching foreign colour: isolated .. part of a clutter


def _linear(c: np.ndarray) -> np.ndarray:
    """sRGB gamma decoding of values in 0..1."""
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


_LINEAR_U8 = _linear(np.arange(256) / 255.0)  # lookup table for uint8 images


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of sRGB values in 0..255, any leading shape."""
    rgb = np.asarray(rgb)
    c = _LINEAR_U8[rgb] if rgb.dtype == np.uint8 else _linear(rgb.astype(np.float64) / 255.0)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


COLOR_NAMES = list(PALETTE)
PALETTE_LAB = srgb_to_lab(np.array(list(PALETTE.values()), dtype=np.uint8))
PALETTE_HALF_NORM = 0.5 * (PALETTE_LAB**2).sum(-1)


def _features(mask: np.ndarray) -> np.ndarray:
    """Geometric features of a tight-cropped mask: fill, solidity, up-down, left-right, aspect."""
    h, w = mask.shape
    area = mask.sum()
    edge = mask & ~ndimage.binary_erosion(mask)
    ys, xs = np.nonzero(edge)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull = ConvexHull(corners).volume
    except QhullError:
        hull = float(h * w)
    ud = (mask & mask[::-1]).sum() / (mask | mask[::-1]).sum()
    lr = (mask & mask[:, ::-1]).sum() / (mask | mask[:, ::-1]).sum()
    return np.array([area / (h * w), min(area / hull, 1.0), ud, lr, min(h, w) / max(h, w)])


@functools.lru_cache(maxsize=2048)
def _prototypes(side: int, sigma: float) -> np.ndarray:
    """Features of every shape as the detector itself sees it when drawn about ``side`` px wide.

    Each shape is rendered crisp at ``side - 1 .. side + 1`` px and passed through
    :func:`_extract` with smoothing ``sigma``, so prototypes carry the same effects as detections.
    Array of shape (shapes, 3, features).
    """
    protos = []
    for s in SHAPES:
        row = []
        for d in (side - 1, side, side + 1):
            patch = shape_mask(s, max(d, 4))
            canvas = np.empty((patch.shape[0] + 8, patch.shape[1] + 8, 3), dtype=np.uint8)
            canvas[:] = BACKGROUND
            canvas[4:-4, 4:-4][patch] = PALETTE["red"]
            found, _ = _extract(canvas, 1, sigma)
            row.append(_features(found[0][0]) if found else _features(patch))
        protos.append(row)
    return np.array(protos)


def classify_shape(mask: np.ndarray, sigma: float = 0.0) -> tuple[str, float]:
    """Shape class and confidence in (0, 1] for a tight-cropped mask extracted with ``sigma``."""
    feats = _features(mask)
    protos = _prototypes(max(mask.shape), sigma)
    dist = np.sqrt((((protos - feats) * FEATURE_WEIGHTS) ** 2).sum(-1)).min(-1)
    order = np.argsort(dist)
    best, second = dist[order[0]], dist[order[1]]
    margin = 1.0 / (1.0 + np.exp(-(second**2 - best**2) / MARGIN_TEMPERATURE))
    return SHAPES[order[0]], float(np.exp(-((best / CONF_SCALE) ** 2)) * margin)


def nearest_colors(lab: np.ndarray) -> np.ndarray:
    """Index into the palette of the nearest colour (Lab distance) for every pixel."""
    # |x - p|^2 = |x|^2 - 2 x.p + |p|^2; the first term does not change the argmin
    return (PALETTE_HALF_NORM - lab @ PALETTE_LAB.T).argmin(-1)


def _parts(component: np.ndarray, labels: np.ndarray, strong: np.ndarray, min_area: int) -> list[np.ndarray]:
    """Split a component by colour if two colours each cover a large share of its strong pixels.

    Only strong pixels (far from the background) vote, so blurred rims, whose mixed colours can
    look like another palette entry, never split an object. Every pixel of the component then
    goes to the nearest voting region.
    """
    core = component & strong
    counts = np.bincount(labels[core], minlength=len(COLOR_NAMES))
    big = [c for c in np.flatnonzero(counts) if counts[c] >= max(min_area / 2, 0.25 * core.sum())]
    if len(big) < 2:
        return [component]
    seeds = np.zeros(component.shape, dtype=np.int32)
    for i, c in enumerate(big, start=1):
        seeds[core & (labels == c)] = i
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[iy, ix]
    return [component & (owner == i) for i in range(1, len(big) + 1)]


def _object_masks(
    part: np.ndarray, lab: np.ndarray, background: np.ndarray, min_area: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-cut a coarse part at the midpoint between background and its own colour.

    The object's colour is the median of its pixels farthest from the background; a pixel belongs to
    the object when its projection onto the background-to-object colour axis passes halfway. A step
    edge blurred symmetrically crosses halfway where the crisp edge was, so blur neither grows nor
    shrinks the shape, and two same-coloured objects merged by blur come apart again. Yields
    ``(mask, Lab colour)`` per piece of at least ``min_area`` pixels.
    """
    dist = np.sqrt(((lab - background) ** 2).sum(-1))
    inner = part & (dist >= np.median(dist[part]))
    color = np.median(lab[inner], axis=0)
    axis = color - background
    t = ((lab - background) @ axis) / max(float(axis @ axis), 1e-6)
    refined = (t > 0.5) & ndimage.binary_dilation(part, structure=EIGHT)
    pieces, n = ndimage.label(refined, structure=EIGHT)
    for k in range(1, n + 1):
        piece = pieces == k
        if piece.sum() >= min_area:
            yield piece, color


def smoothing_for(lab: np.ndarray) -> float:
    """Gaussian sigma (px, multiple of 0.1) to denoise with, from the noise of the border pixels.

    Crisp images get none, so their shapes are read pixel-exact; noisy ones get up to 1.2 px.
    """
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    noise = 1.4826 * float(np.median(np.abs(border - np.median(border, axis=0)), axis=0).mean())
    return 0.0 if noise < 1.0 else round(min(1.2, 0.25 * noise**0.5), 1)


def _extract(
    image: np.ndarray, min_area: int, sigma: float | None = None
) -> tuple[list[tuple[np.ndarray, tuple[int, int], np.ndarray]], float]:
    """Objects of an image as ``(tight mask, (x0, y0), Lab colour)``, and the smoothing used."""
    lab = srgb_to_lab(image)
    if sigma is None:
        sigma = smoothing_for(lab)
    if sigma > 0:
        lab = ndimage.gaussian_filter(lab, sigma=(sigma, sigma, 0))
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    background = np.median(border, axis=0)
    distance = np.sqrt(((lab - background) ** 2).sum(-1))
    foreground = distance > FOREGROUND_DELTA
    strong = distance > 2 * FOREGROUND_DELTA
    labels = np.zeros(foreground.shape, dtype=np.intp)
    labels[foreground] = nearest_colors(lab[foreground])
    comps, _ = ndimage.label(foreground, structure=EIGHT)
    h, w = foreground.shape
    found = []
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        if sl is None or (comps[sl] == k).sum() < min_area:
            continue
        # work in a window one pixel larger than the component so the refined mask may grow
        win = (
            slice(max(sl[0].start - 1, 0), min(sl[0].stop + 1, h)),
            slice(max(sl[1].start - 1, 0), min(sl[1].stop + 1, w)),
        )
        component = comps[win] == k
        for part in _parts(component, labels[win], strong[win], min_area):
            for mask, color in _object_masks(part, lab[win], background, min_area):
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                tight = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
                x0, y0 = win[1].start + cols[0], win[0].start + rows[0]
                contact = _contact(tight, (x0, y0), lab, background, color)
                found.append((tight, (x0, y0), color, contact))
    return found, sigma


def _contact(
    tight: np.ndarray, origin: tuple[int, int], lab: np.ndarray, background: np.ndarray, color: np.ndarray
) -> float:
    """Share of the 1-px ring around an object that shows something other than it or the background.

    A ring pixel is *foreign* when its colour lies farther than ``FOREGROUND_DELTA`` from the
    segment between the background and the object's colour: blur rims (mixtures of the two) are not
    foreign, a neighbouring object or tile of another colour is. The image border is background.
    """
    h, w = lab.shape[:2]
    x0, y0 = origin
    th, tw = tight.shape
    ys, xs = slice(max(y0 - 1, 0), min(y0 + th + 1, h)), slice(max(x0 - 1, 0), min(x0 + tw + 1, w))
    mask = np.zeros((ys.stop - ys.start, xs.stop - xs.start), dtype=bool)
    mask[y0 - ys.start : y0 - ys.start + th, x0 - xs.start : x0 - xs.start + tw] = tight
    ring = ndimage.binary_dilation(mask, structure=EIGHT) & ~mask
    if not ring.any():
        return 0.0
    rel = lab[ys, xs][ring] - background
    axis = color - background
    t = np.clip(rel @ axis / max(float(axis @ axis), 1e-6), 0.0, 1.0)
    off = np.sqrt(((rel - t[:, None] * axis) ** 2).sum(-1))
    return float((off > FOREGROUND_DELTA).mean())


def _template_iou(tight: np.ndarray, shape: str) -> float:
    """Best IoU of a tight mask with the renderer's own ``shape`` drawn about as large, any offset.

    The template is :func:`shape_mask` at the mask's longer side and one pixel either way, slid
    over every placement where the two boxes overlap within a pixel of each other's extent.
    """
    h, w = tight.shape
    area = int(tight.sum())
    best = 0.0
    for side in (max(h, w) - 1, max(h, w), max(h, w) + 1):
        if side < 2:
            continue
        t = shape_mask(shape, side)
        th, tw = t.shape
        H, W = max(h, th) + 2, max(w, tw) + 2
        canvas = np.zeros((H + th, W + tw), dtype=bool)
        canvas[th : th + h, tw : tw + w] = tight
        t_area = int(t.sum())
        for dy in range(min(0, h - th) - 1, max(0, h - th) + 2):
            for dx in range(min(0, w - tw) - 1, max(0, w - tw) + 2):
                inter = int((canvas[th + dy : th + dy + th, tw + dx : tw + dx + tw] & t).sum())
                best = max(best, inter / (area + t_area - inter))
    return best


@functools.lru_cache(maxsize=64)
def smallest_object_side(image_side: int) -> int:
    """Longer side of ShapesWorld's smallest drawn object in an image ``image_side`` px wide."""
    return min(max(shape_mask(s, size_px("small", image_side)).shape) for s in SHAPES)


def _ramp(x: float, zero: float, one: float) -> float:
    """0 at or below ``zero``, 1 at or above ``one``, linear in between."""
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def plausibility(tight: np.ndarray, shape: str, contact: float, image_side: int) -> tuple[float, dict]:
    """How much a blob looks like a clean ShapesWorld object of class ``shape`` (0..1), and why."""
    size = max(tight.shape) / smallest_object_side(image_side)
    iou = _template_iou(tight, shape)
    factors = {
        "size": _ramp(size, *SIZE_RAMP),
        "fit": _ramp(iou - SMALL_IOU_PENALTY * max(0.0, 1.0 - size), *IOU_RAMP),
        "isolation": 1.0 - _ramp(contact, *CONTACT_RAMP),
    }
    why = {"side_ratio": size, "iou": iou, "contact": contact, **factors}
    return float(np.prod(list(factors.values()))), why


def detect(image: np.ndarray, min_area: int | None = None) -> list[Detection]:
    """Detect ShapesWorld objects in an ``(H, W, 3)`` uint8 image, most confident first."""
    image = np.asarray(image)[..., :3]
    h, w = image.shape[:2]
    if min_area is None:
        min_area = max(6, round(MIN_AREA_FRACTION * h * w))
    detections = []
    objects, sigma = _extract(image, min_area)
    for tight, (x0, y0), color, contact in objects:
        shape, confidence = classify_shape(tight, sigma)
        confidence *= plausibility(tight, shape, contact, min(h, w))[0]
        name = COLOR_NAMES[int(nearest_colors(color))]
        box = (float(x0), float(y0), float(x0 + tight.shape[1]), float(y0 + tight.shape[0]))
        detections.append(Detection(shape, name, box, confidence))
    return sorted(detections, key=lambda d: -d.confidence)


def detect_file(path: str | Path) -> list[Detection]:
    """:func:`detect` on an image file (converted to RGB)."""
    from PIL import Image

    with Image.open(path) as im:
        return detect(np.asarray(im.convert("RGB")))
