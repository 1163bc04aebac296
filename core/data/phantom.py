"""Synthetic frontal chest-radiograph phantom: the embedded demo data set (normal vs pleural effusion)."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from scipy.ndimage import gaussian_filter

DESCRIPTION = "SYNTHETIC phantom made by cxr-transfer; not a real radiograph"
LABEL_NORMAL, LABEL_EFFUSION = "Normal", "Pleural Effusion"
MANIFEST_COLUMNS = ("image_id", "path", "label", "patient_id", "view", "mask_path", "synthetic")
EFFUSION_SIDES = (None, "left", "right", "both")
CONFOUNDERS = ("high_diaphragm", "basal_haze", "rounded_angle")
# Densities (arbitrary units, ~1 = brightest bone/soft-tissue stack); relative values set the contrast.
_BODY, _LUNG_AIR, _HEART, _SPINE, _RIB, _CLAVICLE, _TUBE = 0.62, 0.42, 0.06, 0.10, 0.06, 0.10, 0.35
_L_GLYPH = ("10000", "10000", "10000", "10000", "10000", "10000", "11111")
_R_GLYPH = ("11110", "10001", "10001", "11110", "10100", "10010", "10001")


@dataclass(frozen=True)
class PhantomParams:
    """Every knob of realism and difficulty; tune these (not the code) against a trained model's AUC."""
    effusion_min: float = 0.05      # smallest effusion height / lung height: just fills the costophrenic angle
    effusion_max: float = 0.50      # largest: half the lung field
    effusion_skew: float = 2.0      # Beta(1, skew) over [min, max]; >1 makes most effusions small and subtle
    effusion_contrast: float = 0.80  # share of lung air replaced by fluid (1 = full soft-tissue density)
    effusion_fade: float = 0.15     # effusions below this size are fainter (thin fluid layer), down to 40%
    effusion_edge: float = 0.04     # width of the soft meniscus edge (normalised units, image = 2 wide)
    meniscus_rise: float = 0.8      # how far fluid climbs the lateral wall, relative to its height + a floor
    bilateral_prob: float = 0.25    # share of effusion patients with fluid on both sides
    confounder_prob: float = 0.30   # both classes: high hemidiaphragm, basal soft-tissue haze, rounded angle
    confounder_strength: float = 1.0  # scales how effusion-like the confounders look
    line_prob: float = 0.30         # central line overlay, same rate in both classes (no shortcut)
    ng_tube_prob: float = 0.20      # nasogastric tube overlay, same rate in both classes
    marker_prob: float = 0.85       # "L"/"R" side marker in a top corner
    ecg_prob: float = 0.25          # ECG lead circles
    ap_prob: float = 0.20           # AP view (bigger heart, higher clavicles), same rate in both classes
    multi_image_prob: float = 0.30  # share of patients with 2-3 images (tests patient-level splitting)
    anatomy_jitter: float = 1.0     # scales between-patient variation of body/lung/heart geometry
    shift: float = 0.04             # max per-image translation (normalised units)
    rotation_deg: float = 5.0       # max per-image rotation
    gamma_range: tuple[float, float] = (0.75, 1.35)  # exposure / processing curve variation
    noise_range: tuple[float, float] = (0.01, 0.05)  # Gaussian noise sd on the 0-1 intensity scale
    blur_range: tuple[float, float] = (0.3, 1.2)     # Gaussian blur sigma in pixels at 256 px
    lung_texture: float = 0.10      # amplitude of smooth lung "vascular marking" texture


@dataclass(frozen=True)
class Anatomy:
    """One patient's habitus, shared by all of their images so follow-up films look alike but not identical.

    Pairs are (image-left = patient's right, image-right = patient's left); units are normalised (image spans -1..1).
    """
    scale: float
    body_hw: float
    neck_hw: float
    shoulder_y: float
    lung_top: float
    lung_bottom: tuple[float, float]  # height of each costophrenic angle
    lung_lat: tuple[float, float]     # lateral reach of each lung at its base
    mediast_hw: float
    dome_h: tuple[float, float]       # diaphragm dome height above the costophrenic angle
    heart: tuple[float, float, float, float]  # centre x, centre y, radius x, radius y
    spine_hw: float
    rib_spacing: float
    rib_phase: float
    clavicle_y: float
    tissue: float                     # soft-tissue thickness (habitus)

    @classmethod
    def sample(cls, rng: np.random.Generator, params: PhantomParams = PhantomParams()) -> "Anatomy":
        def u(lo: float, hi: float) -> float:  # uniform around the middle, width scaled by anatomy_jitter
            return float((lo + hi) / 2 + (rng.random() - 0.5) * (hi - lo) * params.anatomy_jitter)
        bottom_r = u(0.36, 0.46)
        return cls(scale=u(0.92, 1.04), body_hw=u(0.80, 0.92), neck_hw=u(0.17, 0.22), shoulder_y=u(-0.80, -0.70),
                   lung_top=u(-0.68, -0.58), lung_bottom=(bottom_r, bottom_r + u(0.02, 0.07)),
                   lung_lat=(u(0.66, 0.76), u(0.66, 0.76)), mediast_hw=u(0.08, 0.11),
                   dome_h=(u(0.13, 0.21), u(0.12, 0.19)),
                   heart=(u(0.12, 0.17), u(0.12, 0.18), u(0.27, 0.33), u(0.18, 0.23)),
                   spine_hw=u(0.055, 0.07), rib_spacing=u(0.115, 0.135), rib_phase=u(0.0, 1.0),
                   clavicle_y=u(-0.62, -0.55), tissue=u(0.88, 1.1))


@dataclass(frozen=True)
class Distractors:
    """Overlays and look-alikes drawn with the same probabilities for both classes, so none is a label shortcut."""
    line: bool = False
    ng_tube: bool = False
    marker: str | None = None         # "L" or "R"
    ecg_leads: int = 0
    confounder: str | None = None     # one of CONFOUNDERS

    @classmethod
    def sample(cls, rng: np.random.Generator, params: PhantomParams = PhantomParams()) -> "Distractors":
        d = rng.random(8)  # a fixed number of draws keeps later draws independent of these outcomes
        return cls(line=bool(d[0] < params.line_prob), ng_tube=bool(d[1] < params.ng_tube_prob),
                   marker=("L" if d[3] < 0.5 else "R") if d[2] < params.marker_prob else None,
                   ecg_leads=2 + int(d[5] * 3) if d[4] < params.ecg_prob else 0,
                   confounder=CONFOUNDERS[int(d[7] * 3)] if d[6] < params.confounder_prob else None)


def _rows(Y: np.ndarray, lo: float, hi: float) -> slice:
    """Image rows whose patient-space Y reaches [lo, hi]: lungs and ribs are drawn only in this band, for speed."""
    rows = np.flatnonzero((Y.max(1) >= lo) & (Y.min(1) <= hi))
    return slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else slice(0, 0)


def _soft(margin: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased inside-ness from a signed margin (positive inside); in place on a fresh array, for speed."""
    r = margin * (1.0 / width)
    r += 0.5
    return np.clip(r, 0.0, 1.0, out=r)


def _norm(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return np.sqrt(dx * dx + dy * dy)  # several times faster than np.hypot


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _body(X, Y, a: Anatomy, edge: float) -> np.ndarray:
    """Torso with neck and rounded shoulders; denser in the middle, as a cylinder of tissue would be."""
    hw = a.neck_hw + (a.body_hw - a.neck_hw) * np.sqrt(_smoothstep(a.shoulder_y - 0.16, a.shoulder_y + 0.10, Y))
    hw = hw - 0.04 * np.clip(Y - 0.5, 0, None)  # slight waist
    thick = np.sqrt(np.clip(1 - (X / hw) ** 2, 0, 1))
    torso = _soft(hw - np.abs(X), edge) * (0.2 + 0.8 * thick)
    arm_x = a.body_hw + 0.13 + 0.06 * (Y - a.shoulder_y)  # upper arms beside the chest, separated by an air gap
    arm_d = _norm(np.abs(X) - arm_x, np.clip(a.shoulder_y + 0.08 - Y, 0, None))
    arm = _soft(0.12 - arm_d, edge) * np.sqrt(np.clip(1 - (arm_d / 0.12) ** 2, 0, 1)) * 0.6
    return np.maximum(torso, arm) * _BODY * a.tissue


def _lung(X, Y, a: Anatomy, side: int, edge: float, high_dia: float = 0.0):
    """One lung field (soft mask) plus the geometry the effusion needs; side 0 = image left, 1 = image right."""
    xs = X * (1 if side else -1)  # mirrored: positive = lateral
    top, med, lat = a.lung_top, a.mediast_hw, a.lung_lat[side]
    bottom, dome = a.lung_bottom[side] - high_dia, a.dome_h[side] * max(0.3, 1 - 4 * high_dia)  # elevated = flatter
    t = np.clip((Y - top) / (bottom - top), 0, 1)
    lat_y = med + (lat - med) * (1 - 0.5 * (1 - np.clip(t / 0.7, 0, 1)) ** 2)  # lateral wall widens downward
    apex_x = med + 0.33 * (lat - med)
    u = np.clip((xs - med) / (lat - med), 0, 1)  # 0 medial .. 1 lateral
    # dome peaks at 35% of the width, dips medially and most at the sharp lateral costophrenic angle
    w = np.maximum((u - 0.35) / 0.65, 0.8 * (0.35 - u) / 0.35)
    base = bottom - dome * (1 - w * np.sqrt(w))
    margin = np.minimum(np.minimum(lat_y - xs, xs - med), np.minimum(Y - (top + 3.0 * (xs - apex_x) ** 2), base - Y))
    return _soft(margin, edge), xs, u, bottom, base


def _effusion(Y, u, lung: np.ndarray, bottom: float, height: float, frac: float, p: PhantomParams):
    """Dependent fluid below a meniscus that is concave upward (climbs the lateral wall); returns (opacity, mask)."""
    level = bottom - frac * height
    rise = p.meniscus_rise * (0.04 + 0.6 * frac) * height
    meniscus = level - rise * u * u * np.sqrt(u)
    depth = Y - meniscus
    opacity = _soft(depth, p.effusion_edge) * (0.7 + 0.3 * np.clip(depth / 0.15, 0, 1)) * lung
    return opacity, (lung > 0.5) & (depth > 0)


def _ribs(X, Y, a: Anatomy, edge: float) -> np.ndarray:
    """Posterior ribs (arch up then down laterally) and fainter anterior ribs (descend medially)."""
    xs = np.abs(X)
    cage = _soft(np.minimum(a.body_hw - 0.03 - xs, xs - 0.06), 0.04) * _soft(
        np.minimum(Y - a.lung_top + 0.1, max(a.lung_bottom) + 0.02 - Y - 0.3 * xs), 0.05)
    v = (Y + 0.5 * xs - 0.95 * xs ** 2) / a.rib_spacing - a.rib_phase
    v = v - 0.1 * v * np.clip(Y, 0, None)  # spacing widens towards the base
    post = _soft(np.cos(2 * np.pi * v) - 0.45, 0.2 + 6 * edge)
    w = (Y - 0.55 * xs + 0.2 * xs ** 2) / (1.3 * a.rib_spacing) - a.rib_phase * 0.7
    ant = _soft(np.cos(2 * np.pi * w) - 0.6, 0.3) * _soft(xs - 0.25, 0.1) * _soft(0.1 - Y, 0.2)
    return (post + 0.45 * ant) * cage * _RIB


def _mediastinum(X, Y, a: Anatomy, view: str, edge: float):
    """Heart (bulging to image right), aortic knob, spine with vertebrae, trachea; returns (density, heart mask)."""
    hcx, hcy, hrx, hry = a.heart
    hrx = hrx * (1.12 if view == "AP" else 1.0)  # AP magnifies the heart
    hx, hy = X - hcx, Y - hcy
    hx, hy = 0.94 * hx + 0.34 * hy, -0.34 * hx + 0.94 * hy  # long axis tilted down to the patient's left
    hy = np.minimum(hy, hy / 1.5)  # lower half is taller: it reaches down onto the diaphragm
    r = _norm(hx / hrx, hy / hry)
    heart = _soft((1 - r) * hry, edge)
    d = heart * np.sqrt(np.clip(1 - r * r, 0, 1)) * _HEART
    upper = _soft(a.mediast_hw + 0.02 - np.abs(X - 0.01), edge) * _soft(hcy - Y, 0.1) * 0.05
    knob = _soft(0.06 - _norm(X - a.mediast_hw - 0.005, Y + 0.3), edge) * 0.06
    vert = 0.75 + 0.25 * np.cos(2 * np.pi * (Y / (0.7 * a.rib_spacing) + a.rib_phase))
    spine = _soft(a.spine_hw - np.abs(X), edge) * vert * _SPINE
    trachea = _soft(0.03 - np.abs(X + 0.005 * Y), edge) * _soft(-0.28 - Y, 0.05) * 0.14
    return d + upper + knob + spine - trachea, heart


def _clavicles(X, Y, a: Anatomy, view: str, edge: float) -> np.ndarray:
    xs = np.abs(X)
    cy = a.clavicle_y - (0.08 if view == "AP" else 0.0) - 0.22 * (xs - 0.08) + 0.12 * (xs - 0.08) ** 2
    return _soft(0.02 - np.abs(Y - cy), edge) * _soft(np.minimum(xs - 0.07, 0.64 - xs), 0.03) * _CLAVICLE


def _window(Xi, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice]:
    """(rows, cols) of the image grid covering the box lo..hi (x, y): small overlays are drawn only there."""
    c = Xi[0]
    return slice(*np.searchsorted(c, [lo[1], hi[1]])), slice(*np.searchsorted(c, [lo[0], hi[0]]))


def _curve(Xi, Yi, out: np.ndarray, pts: np.ndarray, width: float, px: float, density: float) -> None:
    """Add an anti-aliased thin line along a quadratic Bezier (tube, wire) as 16 segments, each in its own window."""
    t = np.linspace(0, 1, 17)[:, None]
    p = ((1 - t) ** 2 * pts[0] + 2 * t * (1 - t) * pts[1] + t ** 2 * pts[2]).astype(np.float32)
    line = np.zeros_like(Xi)
    for a, b in zip(p[:-1], p[1:]):
        rows, cols = _window(Xi, np.minimum(a, b) - width - px, np.maximum(a, b) + width + px)
        qx, qy, (abx, aby) = Xi[rows, cols] - a[0], Yi[rows, cols] - a[1], b - a
        s = np.clip((qx * abx + qy * aby) / (abx * abx + aby * aby), 0, 1)
        cover = _soft(width / 2 - _norm(qx - s * abx, qy - s * aby), px)
        np.maximum(line[rows, cols], cover, out=line[rows, cols])
    out += line * (min(1.0, width / px) * density)


def _distractors(Xi, Yi, dis: Distractors, rng: np.random.Generator, px: float) -> np.ndarray:
    """Radiopaque lines and ECG leads in image coordinates (density to add)."""
    out = np.zeros_like(Xi)
    j = rng.uniform(-0.05, 0.05, size=8)
    if dis.line:  # subclavian/jugular central line ending near the cavo-atrial junction
        s = 1 if j[0] > 0 else -1
        pts = np.array([[s * (0.62 + j[1]), -0.75 + j[2]], [s * 0.05, -0.62 + j[3]], [0.02 * s, -0.12 + 2 * j[4]]])
        _curve(Xi, Yi, out, pts, 0.014, px, _TUBE)
    if dis.ng_tube:  # down the oesophagus, tip in the stomach under the left hemidiaphragm
        pts = np.array([[0.03 + j[5], -1.05], [0.02, 0.35], [0.32 + j[6], 0.62 + j[7]]])
        _curve(Xi, Yi, out, pts, 0.018, px, _TUBE * 0.8)
    for _ in range(dis.ecg_leads):  # electrode: ring with a central stud, drawn in its own small window
        cx, cy, r = rng.uniform(-0.75, 0.75), rng.uniform(-0.75, 0.1), rng.uniform(0.025, 0.04)
        rows, cols = _window(Xi, np.array([cx, cy]) - r - 2 * px, np.array([cx, cy]) + r + 2 * px)
        d = _norm(Xi[rows, cols] - cx, Yi[rows, cols] - cy)
        out[rows, cols] += (_soft(0.006 - np.abs(d - r), px) + _soft(0.35 * r - d, px)) * 0.3
    return out


def _marker(img: np.ndarray, letter: str, rng: np.random.Generator) -> None:
    """Burn a bright lead side-marker glyph into a top corner (on the film, so not rotated with the patient)."""
    size = img.shape[0]
    k = max(1, round(size * 0.011 * rng.uniform(0.8, 1.3)))
    glyph = np.kron(np.array([[c == "1" for c in row] for row in (_L_GLYPH if letter == "L" else _R_GLYPH)]),
                    np.ones((k, k), bool))
    right = (letter == "L") != (rng.random() < 0.1)  # "L" usually on the patient's left = image right
    y0, x0 = (int(size * v) for v in rng.uniform(0.03, 0.09, 2))
    x0 = size - glyph.shape[1] - x0 if right else x0
    region = img[y0:y0 + glyph.shape[0], x0:x0 + glyph.shape[1]]
    region[glyph] = np.maximum(region[glyph], rng.uniform(0.85, 0.98))


def _confounder(X, Y, kind: str | None, a: Anatomy, side: int, strength: float):
    """Normal-variant look-alikes: returns (hemidiaphragm elevation for `side`, extra basal density)."""
    if kind == "high_diaphragm":
        return 0.10 * strength, 0.0
    if kind == "basal_haze":  # overlapping breast / chest-wall soft tissue over one lower zone
        xs = X * (1 if side else -1)
        return 0.0, _soft(Y - a.lung_bottom[side] + 0.3, 0.25) * _soft(xs - 0.3, 0.2) * 0.14 * strength
    return 0.0, 0.0


def _thorax(X, Y, a: Anatomy, p: PhantomParams, effusion, frac: float, dis: Distractors, heart, tex, draws, edge):
    """Lung fields (air, minus fluid), hila and gastric bubble; returns (density to add, effusion mask)."""
    density, mask = np.zeros_like(X), np.zeros(X.shape, bool)
    odd = int(draws[0] * 2)  # the side a confounder affects
    for side in (0, 1):
        high, haze = _confounder(X, Y, dis.confounder if side == odd else None, a, side, p.confounder_strength)
        lung, xs, u, bottom, base = _lung(X, Y, a, side, edge, high)
        lung = lung * (1 - heart)
        height = bottom - a.lung_top
        air = lung * _LUNG_AIR * (1 - p.lung_texture * tex) * (0.85 + 0.15 * np.sqrt(u))
        if dis.confounder == "rounded_angle" and side == odd:  # pleural thickening: a tiny, fainter blunting
            blunt, _ = _effusion(Y, u, lung, bottom, height, p.effusion_min * p.confounder_strength, p)
            air = air * (1 - 0.6 * p.effusion_contrast * blunt)
        if effusion == "both" or effusion == ("right", "left")[side]:
            op, m = _effusion(Y, u, lung, bottom, height, frac, p)
            fade = 0.4 + 0.6 * min(1.0, frac / p.effusion_fade) if p.effusion_fade > 0 else 1.0
            air, mask = air * (1 - p.effusion_contrast * fade * op), mask | m
        hilum = np.exp(-((xs - a.mediast_hw - 0.08) ** 2 + Y ** 2) / 0.012) * 0.1
        density += (haze + hilum) * lung - air
        if side == 1 and draws[1] < 0.6:  # gastric air bubble with a flat air-fluid level under the left dome
            level = bottom - a.dome_h[1] + 0.1 + 0.05 * draws[2]
            bubble = _soft(np.minimum(xs - 0.2, 0.45 - xs), 0.05) * _soft(np.minimum(Y - base - 0.02, level - Y), edge)
            density -= bubble * 0.12
    return density, mask


def render_phantom(rng: np.random.Generator, *, size: int, effusion: str | None, anatomy: Anatomy,
                   params: PhantomParams = PhantomParams(), view: str = "PA", distractors: Distractors | None = None,
                   effusion_size: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image uint8 (size,size), effusion mask bool (size,size); mask all False when effusion is None).

    effusion: None, 'left', 'right' or 'both' (patient sides; the patient's left is image right). Randomness comes
    from independent child streams, so the same rng renders the identical film with or without the effusion.
    `distractors` and `effusion_size` (fraction of lung height) let a dataset plan fix them; drawn when None.
    """
    if effusion not in EFFUSION_SIDES:
        raise ValueError(f"effusion must be one of {EFFUSION_SIDES}, got {effusion!r}")
    p, a = params, anatomy
    pose_rng, eff_rng, dis_rng, tex_rng, noise_rng = rng.spawn(5)
    rot, sc, insp, gamma, noise, blur, *draws = pose_rng.random(9).tolist()
    dx, dy = (float(v) for v in pose_rng.uniform(-p.shift, p.shift, 2))  # Python floats keep the grid float32
    frac = p.effusion_min + (p.effusion_max - p.effusion_min) * eff_rng.beta(1.0, p.effusion_skew)
    frac = frac if effusion_size is None else effusion_size
    dis = Distractors.sample(dis_rng, p) if distractors is None else distractors
    c = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    Xi, Yi = np.meshgrid(c, c)  # image coordinates; patient coordinates are shifted, rotated and scaled
    px, th, s = 2.0 / size, math.radians(p.rotation_deg * (2 * rot - 1)), a.scale * (0.97 + 0.06 * sc)
    X = (math.cos(th) * (Xi - dx) + math.sin(th) * (Yi - dy)) / s
    Y = (-math.sin(th) * (Xi - dx) + math.cos(th) * (Yi - dy)) / s - 0.03 * (insp - 0.5)  # inspiration depth
    edge = max(0.008, 1.2 * px / s)
    med, heart = _mediastinum(X, Y, a, view, edge)
    tex = np.asarray(Image.fromarray(tex_rng.standard_normal((10, 10)).astype(np.float32))
                     .resize((size, size), Image.Resampling.BICUBIC))  # smooth lung texture
    density = _body(X, Y, a, edge) + med + _clavicles(X, Y, a, view, edge)
    mask = np.zeros((size, size), bool)
    b = _rows(Y, a.lung_top - 0.14, max(a.lung_bottom) + 0.06)  # every lung, rib and fluid pixel lies in here
    thorax, mask[b] = _thorax(X[b], Y[b], a, p, effusion, frac, dis, heart[b], tex[b], draws, edge)
    density[b] += thorax + _ribs(X[b], Y[b], a, edge)
    density += _distractors(Xi, Yi, dis, dis_rng, px)
    img = (1 - np.exp(-1.6 * np.clip(density, 0, None))) / (1 - math.exp(-1.6 * 0.95))  # film response
    g = p.gamma_range[0] + (p.gamma_range[1] - p.gamma_range[0]) * gamma
    img = np.exp(g * np.log(np.clip(img, 1e-4, 1)))  # exposure curve; exp-log is faster than a float power
    if dis.marker:
        _marker(img, dis.marker, dis_rng)
    img = gaussian_filter(img, (p.blur_range[0] + (p.blur_range[1] - p.blur_range[0]) * blur) * size / 256)
    img = img + noise_rng.standard_normal(img.shape, dtype=np.float32) * (
        p.noise_range[0] + (p.noise_range[1] - p.noise_range[0]) * noise)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask


@dataclass(frozen=True)
class PlannedImage:
    """One row of the demo set, decided up front so rendering order never changes the result."""
    index: int
    image_id: str
    patient_index: int
    patient_id: str
    label: str
    view: str
    effusion: str | None
    effusion_size: float
    distractors: Distractors


def plan_dataset(n_per_class: int, seed: int, params: PhantomParams = PhantomParams()) -> list[PlannedImage]:
    """Patients (some with 2-3 films sharing label and anatomy), shuffled so the classes interleave."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    patients = []
    for label in (LABEL_NORMAL, LABEL_EFFUSION):
        remaining = n_per_class
        while remaining:
            n = int(rng.integers(2, 4)) if rng.random() < params.multi_image_prob else 1
            patients.append((label, min(n, remaining)))
            remaining -= patients[-1][1]
    plan = []
    for pi, k in enumerate(rng.permutation(len(patients))):
        label, n = patients[k]
        side = "both" if rng.random() < params.bilateral_prob else ("left" if rng.random() < 0.5 else "right")
        base = params.effusion_min + (params.effusion_max - params.effusion_min) * rng.beta(1.0, params.effusion_skew)
        for _ in range(n):  # follow-up films: same side, size varies a little
            size = float(np.clip(base * rng.uniform(0.85, 1.15), params.effusion_min, params.effusion_max))
            plan.append(PlannedImage(
                index=len(plan), image_id=f"demo-{len(plan) + 1:05d}", patient_index=pi, patient_id=f"P{pi + 1:04d}",
                label=label, view="AP" if rng.random() < params.ap_prob else "PA",
                effusion=side if label == LABEL_EFFUSION else None, effusion_size=size,
                distractors=Distractors.sample(rng, params)))
    return plan


def render_planned(item: PlannedImage, *, size: int, seed: int, params: PhantomParams = PhantomParams()):
    """Render one planned image from seeds derived from (seed, patient) and (seed, image): order-independent."""
    anatomy = Anatomy.sample(np.random.default_rng(np.random.SeedSequence([seed, 1, item.patient_index])), params)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, item.index]))
    return render_phantom(rng, size=size, effusion=item.effusion, anatomy=anatomy, params=params, view=item.view,
                          distractors=item.distractors, effusion_size=item.effusion_size)


def _prepare_out_dir(out: Path) -> None:
    """Create out_dir, or clear a previous demo set in it; never touch a folder that is not ours."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()) and not (out / "SYNTHETIC.txt").is_file():
        raise ValueError(f"out_dir {out} is not empty and holds no SYNTHETIC.txt, so it is not a previous demo set; "
                         "refusing to write into it (choose an empty or new folder)")
    for sub in ("images", "masks"):
        for old in (out / sub).glob("demo-*.png") if (out / sub).is_dir() else ():
            old.unlink()
    (out / "manifest.csv").unlink(missing_ok=True)


def make_demo_dataset(out_dir: str | Path, *, n_per_class: int = 200, size: int = 256, seed: int = 0,
                      params: PhantomParams = PhantomParams(),
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Writes out_dir/images/*.png, out_dir/masks/*.png, out_dir/manifest.csv, out_dir/SYNTHETIC.txt; returns the manifest path."""
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 2048:
        raise ValueError(f"size must be an integer between 32 and 2048 pixels, got {size!r}")
    out = Path(out_dir)
    _prepare_out_dir(out)
    (out / "SYNTHETIC.txt").write_text(
        "These images are SYNTHETIC chest-radiograph phantoms, not real radiographs and not patient data: they were "
        f"drawn by core.data.phantom (cxr-transfer demo generator) with seed={seed}, size={size} px, "
        f"n_per_class={n_per_class} (Normal vs Pleural Effusion), to stand in for a credentialed data set such as "
        "MIMIC-CXR. Use them only to try the software; they say nothing about clinical performance.\n")
    for sub in ("images", "masks"):
        (out / sub).mkdir(exist_ok=True)
    info = PngInfo()
    info.add_text("Description", DESCRIPTION)
    plan = plan_dataset(n_per_class, seed, params)
    rows = []
    for done, item in enumerate(plan, 1):
        img, mask = render_planned(item, size=size, seed=seed, params=params)
        path = f"images/{item.image_id}.png"
        Image.fromarray(img).save(out / path, pnginfo=info, compress_level=1)
        mask_path = ""
        if item.effusion is not None:
            mask_path = f"masks/{item.image_id}_mask.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / mask_path, pnginfo=info, compress_level=1)
        rows.append((item.image_id, path, item.label, item.patient_id, item.view, mask_path, "1"))
        if progress is not None:
            progress(done, len(plan))
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return manifest
