"""A simulated chest X-ray source: cases, pixels in which their attributes are visible, DICOM files.

Each :class:`Case` is one radiograph of one study: a view (PA, AP portable or lateral), support
devices, findings (pneumothorax, cardiomegaly, pleural effusion), the patient's sex and age and
the scanner. :func:`render` draws it, :func:`write_dicom` writes a real DICOM Part 10 file
(CR, 12-bit MONOCHROME2, explicit VR little endian) whose header agrees with the picture, and
:func:`case_report` writes the radiology report with the phrase grammar of
:func:`agent.simulate.textstream.radiology_report`.

What the pixels show, so that a classifier trained on them can learn (and be misled by) it:

* view: a frontal film has two lung fields either side of the mediastinum; a lateral film one
  lung field, the heart in front and the vertebral column behind; an AP portable film is
  magnified (a wider heart and mediastinum), rotated a little, noisier and flatter in contrast,
  with the scapulae over the upper lungs;
* support devices: thin radio-opaque lines (chest tube, endotracheal tube, central line,
  enteric tube) and a pacemaker generator with its leads;
* cardiomegaly: a heart wider than half the chest (frontal) or filling the retrosternal and
  retrocardiac spaces (lateral);
* pneumothorax: a band along the apex and the lateral chest wall of one lung with no lung
  markings, bounded by a thin pleural line;
* pleural effusion: a blunted costophrenic angle under a meniscus.

Images are small (:attr:`ImageSpec.size`, 128 pixels by default) so that training a ResNet-18
on a thousand of them stays within reach of a laptop CPU. Everything is deterministic: a case
is drawn from a ``numpy.random.Generator`` and rendered from its own seed. Names, patient ids
and report headers are invented, so that the audit's scrubbing is exercised on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import gaussian_filter, map_coordinates

from agent.simulate.textstream import DEVICE_KINDS, radiology_report

__all__ = [
    "CR_IMAGE_STORAGE",
    "Case",
    "ImageSpec",
    "Population",
    "burn_in_annotation",
    "case_report",
    "draw_case",
    "draw_cases",
    "render",
    "write_dicom",
]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
"""SOP Class UID of Computed Radiography Image Storage."""

_UID_ROOT = "1.2.826.0.1.3680043.10.1042."
_FIRST = ("Jane", "John", "Maria", "Wei", "Amir", "Olga", "Kwame", "Priya", "Lars", "Sofia", "Hiro", "Nadia")
_LAST = ("Doe", "Okafor", "Larsen", "Nguyen", "Schmidt", "Haddad", "Kowalski", "Tanaka", "Moreau", "Silva")
_SCANNERS = ("Philips", "Siemens", "Carestream", "Agfa", "Fujifilm")
_SERIES = {"PA": "CHEST PA", "AP": "CHEST PORTABLE AP", "LL": "CHEST LAT"}
_MAX_VALUE = 4095  # 12 bits stored


@dataclass(frozen=True)
class Case:
    """One simulated radiograph and what it shows.

    Sides are the patient's (``"left"``, ``"right"``; an effusion may be ``"bilateral"``); on a
    frontal film the patient's right is on the viewer's left, as radiographs are displayed.
    Severities are in [0, 1] and scale how large the finding is drawn.
    """

    uid: str
    seed: int
    view: str
    devices: tuple[tuple[str, str], ...] = ()
    pneumothorax: str | None = None
    pneumothorax_size: float = 0.0
    cardiomegaly: bool = False
    cardiomegaly_size: float = 0.0
    effusion: str | None = None
    effusion_size: float = 0.0
    sex: str = "F"
    age: int = 60
    manufacturer: str = "Philips"
    name: str = "Doe^Jane"
    patient_id: str = "MRN0000000"

    @property
    def frontal(self) -> bool:
        """A PA or AP film."""
        return self.view != "LL"

    @property
    def lateral(self) -> bool:
        """A lateral film."""
        return self.view == "LL"

    @property
    def portable(self) -> bool:
        """An AP portable film."""
        return self.view == "AP"

    @property
    def has_devices(self) -> bool:
        """At least one support device is visible."""
        return bool(self.devices)

    @property
    def finding(self) -> bool:
        """At least one of pneumothorax, cardiomegaly or pleural effusion."""
        return self.pneumothorax is not None or self.cardiomegaly or self.effusion is not None


@dataclass(frozen=True)
class Population:
    """How often each attribute occurs in the simulated population (probabilities).

    ``device_rate`` is per view: portable AP films are taken at the bedside, where devices are
    common. Severities are drawn uniformly from their ranges.
    """

    views: tuple[tuple[str, float], ...] = (("PA", 0.5), ("AP", 0.25), ("LL", 0.25))
    device_rate: tuple[tuple[str, float], ...] = (("PA", 0.3), ("AP", 0.45), ("LL", 0.3))
    pneumothorax: float = 0.2
    cardiomegaly: float = 0.25
    effusion: float = 0.2
    bilateral_effusion: float = 0.3
    pneumothorax_size: tuple[float, float] = (0.15, 1.0)
    cardiomegaly_size: tuple[float, float] = (0.15, 1.0)
    effusion_size: tuple[float, float] = (0.15, 1.0)
    female: float = 0.5


@dataclass(frozen=True)
class ImageSpec:
    """How images are drawn. ``size`` is the side in pixels (small, to keep CPU training cheap)."""

    size: int = 128
    noise: float = 0.02
    portable_noise: float = 0.035
    texture: float = 0.05
    markings: float = 0.10
    device_brightness: float = 0.5
    jitter: float = 0.03


def _weighted(rng: np.random.Generator, items: Sequence[tuple[str, float]]) -> str:
    names = [n for n, _ in items]
    p = np.array([w for _, w in items], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def draw_case(rng: np.random.Generator, index: int, population: Population = Population()) -> Case:
    """Draw one case from ``population``.

    Examples
    --------
    >>> case = draw_case(np.random.default_rng(0), 0)
    >>> case.view in ("PA", "AP", "LL"), case.uid.startswith("1.2.826.")
    (True, True)
    """
    view = _weighted(rng, population.views)
    n_devices = 0
    if rng.random() < dict(population.device_rate)[view]:
        n_devices = 1 + int(rng.random() < 0.35)
    kinds = rng.choice(len(DEVICE_KINDS), size=n_devices, replace=False)
    devices = tuple(
        (DEVICE_KINDS[int(k)], "left" if DEVICE_KINDS[int(k)] == "pacemaker" else _side(rng))
        for k in sorted(kinds)
    )
    ptx = _side(rng) if rng.random() < population.pneumothorax else None
    cardio = bool(rng.random() < population.cardiomegaly)
    eff: str | None = None
    if rng.random() < population.effusion:
        eff = "bilateral" if rng.random() < population.bilateral_effusion else _side(rng)
    female = bool(rng.random() < population.female)
    return Case(
        uid=f"{_UID_ROOT}{int(rng.integers(10**8, 10**9))}.{index}",
        seed=int(rng.integers(2**31 - 1)),
        view=view,
        devices=devices,
        pneumothorax=ptx,
        pneumothorax_size=_uniform(rng, population.pneumothorax_size) if ptx else 0.0,
        cardiomegaly=cardio,
        cardiomegaly_size=_uniform(rng, population.cardiomegaly_size) if cardio else 0.0,
        effusion=eff,
        effusion_size=_uniform(rng, population.effusion_size) if eff else 0.0,
        sex="F" if female else "M",
        age=int(np.clip(rng.normal(62, 16), 18, 97)),
        manufacturer=_SCANNERS[int(rng.integers(len(_SCANNERS)))],
        name=f"{_LAST[int(rng.integers(len(_LAST)))]}^{_FIRST[int(rng.integers(len(_FIRST)))]}",
        patient_id=f"MRN{int(rng.integers(10**6, 10**7))}",
    )


def _side(rng: np.random.Generator) -> str:
    return "left" if rng.random() < 0.5 else "right"


def draw_cases(
    rng: np.random.Generator,
    n: int,
    where: Callable[[Case], bool] = lambda case: True,
    *,
    population: Population = Population(),
    start: int = 0,
    max_draws: int = 1000,
) -> list[Case]:
    """Draw ``n`` cases from ``population`` conditioned on ``where`` (by rejection).

    Parameters
    ----------
    max_draws
        Draws allowed per accepted case before giving up with a ``ValueError`` (a condition
        that the population almost never meets).

    Examples
    --------
    >>> cases = draw_cases(np.random.default_rng(0), 5, lambda c: c.lateral and c.cardiomegaly)
    >>> all(c.lateral and c.cardiomegaly for c in cases), len(cases)
    (True, 5)
    """
    out: list[Case] = []
    draws = 0
    while len(out) < n:
        case = draw_case(rng, start + draws, population)
        draws += 1
        if where(case):
            out.append(case)
        elif draws > max_draws * max(n, 1):
            raise ValueError(
                f"expected the population to meet the condition now and then, got {len(out)} of {n} "
                f"cases in {draws} draws; loosen the condition or change the Population rates"
            )
    return out


# ----------------------------------------------------------------------------------- drawing


@dataclass
class _Canvas:
    """Normalised coordinates ``x`` (left to right) and ``y`` (top to bottom) in [0, 1]."""

    size: int
    x: np.ndarray = field(init=False)
    y: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        grid = (np.arange(self.size) + 0.5) / self.size
        self.y, self.x = np.meshgrid(grid, grid, indexing="ij")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, soft: float = 0.01) -> np.ndarray:
        """Soft mask of an ellipse: 1 inside, 0 outside, a ramp of width ``soft`` between."""
        r = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return np.clip((1.0 - r) * min(rx, ry) / soft + 0.5, 0.0, 1.0)

    def polyline(self, points: np.ndarray, width: float) -> np.ndarray:
        """Soft mask of a curve through ``points`` (``(k, 2)`` as x, y), about ``width`` wide."""
        return self.curves([(points, 1.0)], width)

    def curves(self, lines: Sequence[tuple[np.ndarray, float]], width: float) -> np.ndarray:
        """Soft masks of several curves, each with its peak weight, summed: splatted, then blurred.

        Points are laid along each curve half a pixel apart and blurred by a Gaussian of
        standard deviation ``width / 2``; the result is scaled so that an isolated curve peaks
        at its weight.
        """
        acc = np.zeros((self.size, self.size))
        for points, weight in lines:
            n = max(2, int(2 * self.size * _length(points)) + 1)
            dense = _resample(points, n) * self.size - 0.5
            cols, rows = np.round(dense[:, 0]).astype(int), np.round(dense[:, 1]).astype(int)
            keep = (rows >= 0) & (rows < self.size) & (cols >= 0) & (cols < self.size)
            spacing = self.size * _length(points) / max(n - 1, 1)
            np.add.at(acc, (rows[keep], cols[keep]), weight * spacing)
        sigma = max(width / 2.0 * self.size, 0.5)
        return np.asarray(gaussian_filter(acc, sigma) * math.sqrt(2 * math.pi) * sigma)


def _length(points: np.ndarray) -> float:
    return float(np.sum(np.linalg.norm(np.diff(points, axis=0), axis=1)))


def _resample(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points spaced evenly along the polyline (linear interpolation)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(t, cum, points[:, 0]), np.interp(t, cum, points[:, 1])], axis=1)


def _bezier(p0: Sequence[float], p1: Sequence[float], p2: Sequence[float], n: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    a, b, c = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return np.asarray((1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field_ = gaussian_filter(rng.normal(size=(size, size)), sigma=sigma)
    return np.asarray(field_ / (field_.std() + 1e-9))


def _markings(
    rng: np.random.Generator, canvas: _Canvas, hilum: tuple[float, float], spread: float
) -> np.ndarray:
    """Branching vessel shadows that fan out from the hilum and fade toward the periphery."""
    lines = []
    for _ in range(9):
        angle = rng.uniform(-math.pi, math.pi)
        length = rng.uniform(0.15, 0.32)
        bend = rng.normal(0, 0.05, size=2)
        end = (hilum[0] + spread * length * math.cos(angle), hilum[1] + length * math.sin(angle))
        mid = ((hilum[0] + end[0]) / 2 + bend[0], (hilum[1] + end[1]) / 2 + bend[1])
        lines.append((_bezier(hilum, mid, end, 12), float(rng.uniform(0.5, 1.0))))
    return np.minimum(canvas.curves(lines, 0.012), 1.0)


def _lung_field(
    canvas: _Canvas, cx: float, top: float, bottom: float, half_width: float
) -> tuple[np.ndarray, np.ndarray]:
    """One frontal lung: a rounded apex, straight-ish walls and a domed base; also its depth map.

    The depth map is 0 at the lung's outer edge and grows inward, which is what a pneumothorax
    band (along the apex and the lateral wall) and the meniscus of an effusion are cut from.
    """
    cy = (top + bottom) / 2
    ry = (bottom - top) / 2
    mask = canvas.ellipse(cx, cy, half_width, ry, soft=0.008)
    nx = (canvas.x - cx) / half_width
    ny = (canvas.y - cy) / ry
    depth = 1.0 - np.sqrt(nx**2 + ny**2)
    return mask, depth


@dataclass
class _Layers:
    """Grey levels in [0, 1] built up by painting, bright = dense (bone, metal)."""

    image: np.ndarray

    def paint(self, mask: np.ndarray, value: float | np.ndarray) -> None:
        self.image = self.image * (1.0 - mask) + mask * value

    def add(self, mask: np.ndarray, amount: float) -> None:
        self.image = self.image + mask * amount


def _frontal(case: Case, spec: ImageSpec, rng: np.random.Generator) -> np.ndarray:
    c = _Canvas(spec.size)
    portable = case.portable
    magnify = 1.1 if portable else 1.0
    layers = _Layers(np.full(c.x.shape, 0.04))
    layers.paint(c.ellipse(0.5, 0.6, 0.45, 0.58, soft=0.04), 0.42)  # torso soft tissue
    layers.paint(c.ellipse(0.5, 0.03, 0.1, 0.1, soft=0.03), 0.42)  # neck
    # Two lungs; the patient's right lung is on the viewer's left.
    lungs = {"right": (0.31, 0.135), "left": (0.69, 0.13)}
    top, bottom = 0.14, 0.8
    markings = _markings(rng, c, (0.4, 0.45), 1.0) + _markings(rng, c, (0.6, 0.45), 1.0)
    texture = _smooth_noise(rng, spec.size, 1.2)
    lung_value = 0.13 + spec.texture * texture + spec.markings * markings
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for side, (cx, hw) in lungs.items():
        mask, depth = _lung_field(c, cx, top, bottom, hw)
        masks[side] = (mask, depth)
        layers.paint(mask, lung_value)
    # Ribs: faint oblique arcs over the lungs.
    both = np.maximum(masks["left"][0], masks["right"][0])
    ribs = 0.5 + 0.5 * np.sin(2 * math.pi * (c.y * 9.0 + 0.8 * np.abs(c.x - 0.5) ** 1.5 * 6))
    layers.add(both * ribs, 0.05)
    # Pneumothorax: along the apex and lateral wall the lung is collapsed away, no markings.
    if case.pneumothorax is not None:
        mask, depth = masks[case.pneumothorax]
        width = 0.2 + 0.4 * case.pneumothorax_size
        outer_x = 1.0 if case.pneumothorax == "left" else -1.0
        cx = lungs[case.pneumothorax][0]
        # Thicker at the apex and laterally than medially and at the base.
        reach = width * np.clip(0.5 + 0.6 * (c.x - cx) * outer_x / 0.13 - 0.4 * (c.y - 0.45), 0.05, 1.2)
        band = mask * (depth < reach)
        layers.paint(band, 0.06 + spec.texture * 0.15 * texture)
        edge = mask * np.exp(-((depth - reach) ** 2) / (2 * 0.02**2)) * (depth > 0.02)
        layers.add(edge, 0.25)
    # Mediastinum and heart; the heart sits more to the patient's left (viewer's right).
    heart_w = (0.125 + 0.09 * case.cardiomegaly_size if case.cardiomegaly else 0.115) * magnify
    heart_w += rng.normal(0, 0.01)
    layers.paint(c.ellipse(0.5, 0.3, 0.06 * magnify, 0.25, soft=0.01), 0.62)
    layers.paint(c.ellipse(0.53, 0.63, heart_w, 0.13 * magnify, soft=0.012), 0.66)
    layers.add(c.ellipse(0.5, 0.5, 0.03, 0.5, soft=0.01), 0.08)  # spine through the mediastinum
    # Effusion: blunted costophrenic angle under a meniscus that rises along the lateral wall.
    sides = {"bilateral": ("left", "right")}.get(
        case.effusion or "", (case.effusion,) if case.effusion else ()
    )
    for side in sides:
        mask, _ = masks[side]
        cx = lungs[side][0]
        outer = (c.x - cx) * (1.0 if side == "left" else -1.0) / 0.135
        level = (
            bottom - (0.08 + 0.16 * case.effusion_size) * np.clip(0.3 + 0.7 * (outer + 1) / 2, 0, 1) ** 0.7
        )
        fluid = mask * np.clip((c.y - level) / 0.01, 0.0, 1.0)
        layers.paint(fluid, 0.5)
    # Diaphragm and abdomen below the lungs; clavicles across the top.
    layers.paint(c.ellipse(0.5, 1.05, 0.48, 0.22, soft=0.02) * (c.y > 0.78), 0.48)
    clav_y = 0.1 if portable else 0.14
    for sign in (-1.0, 1.0):
        layers.add(
            c.polyline(
                _bezier(
                    (0.5 + sign * 0.05, clav_y + 0.03),
                    (0.5 + sign * 0.2, clav_y - 0.02),
                    (0.5 + sign * 0.36, clav_y + 0.01),
                ),
                0.02,
            ),
            0.25,
        )
    if portable:  # scapulae over the upper lateral lungs
        for cx in (0.2, 0.8):
            layers.add(c.ellipse(cx, 0.3, 0.07, 0.14, soft=0.03), 0.07)
    _devices(case, c, layers, spec, frontal=True)
    return layers.image


def _lateral(case: Case, spec: ImageSpec, rng: np.random.Generator) -> np.ndarray:
    c = _Canvas(spec.size)
    layers = _Layers(np.full(c.x.shape, 0.04))
    layers.paint(c.ellipse(0.5, 0.6, 0.36, 0.58, soft=0.04), 0.46)  # chest seen from the side
    layers.paint(c.ellipse(0.45, 0.08, 0.2, 0.12, soft=0.04), 0.5)  # raised arms
    markings = _markings(rng, c, (0.52, 0.45), 0.9)
    texture = _smooth_noise(rng, spec.size, 1.2)
    lung = c.ellipse(0.52, 0.48, 0.27, 0.34, soft=0.01)
    diaphragm = 0.74 + 0.1 * (c.x - 0.3)  # lower behind: the posterior costophrenic sulcus
    lung = lung * np.clip((diaphragm - c.y) / 0.01, 0.0, 1.0)
    layers.paint(lung, 0.17 + spec.texture * texture + spec.markings * 0.8 * markings)
    if case.pneumothorax is not None:  # anterior apical lucency: subtle on a lateral film
        band = lung * c.ellipse(0.38, 0.22, 0.12 + 0.12 * case.pneumothorax_size, 0.12, soft=0.02)
        layers.paint(band, 0.06)
    # Heart in front, low; an enlarged one fills the retrosternal and retrocardiac spaces.
    size = case.cardiomegaly_size if case.cardiomegaly else 0.0
    heart_w = 0.13 + 0.08 * size + rng.normal(0, 0.01)
    layers.paint(c.ellipse(0.34 + 0.06 * size, 0.64, heart_w, 0.15 + 0.03 * size, soft=0.012), 0.62)
    # Vertebral bodies behind, sternum in front.
    for k in range(9):
        layers.paint(c.ellipse(0.8, 0.18 + k * 0.085, 0.05, 0.032, soft=0.008), 0.72)
    layers.add(c.polyline(np.array([[0.18, 0.2], [0.16, 0.45], [0.17, 0.62]]), 0.015), 0.2)
    if case.effusion is not None:  # fluid in the posterior sulcus
        level = diaphragm - (0.08 + 0.15 * case.effusion_size) * np.clip((c.x - 0.45) / 0.3, 0, 1)
        layers.paint(lung * np.clip((c.y - level) / 0.01, 0.0, 1.0), 0.5)
    layers.paint(np.clip((c.y - diaphragm) / 0.01, 0, 1) * c.ellipse(0.5, 0.6, 0.36, 0.58, soft=0.04), 0.5)
    _devices(case, c, layers, spec, frontal=False)
    return layers.image


def _devices(case: Case, c: _Canvas, layers: _Layers, spec: ImageSpec, *, frontal: bool) -> None:
    """Radio-opaque tubes, lines and a pacemaker: bright thin curves and a bright box."""
    bright = spec.device_brightness
    for kind, side in case.devices:
        sx = (1.0 if side == "left" else -1.0) if frontal else 0.0
        if kind == "chest_tube":
            pts = _bezier((0.5 + sx * 0.43, 0.7), (0.5 + sx * 0.4, 0.35), (0.5 + sx * 0.2, 0.2))
            if not frontal:
                pts = _bezier((0.7, 0.72), (0.66, 0.4), (0.5, 0.2))
            layers.add(c.polyline(pts, 0.018), bright)
        elif kind == "endotracheal_tube":
            x = 0.5 if frontal else 0.42
            layers.add(c.polyline(np.array([[x, 0.0], [x, 0.26]]), 0.02), bright)
        elif kind == "central_line":
            if frontal:
                pts = _bezier((0.5 + sx * 0.15, 0.02), (0.5 + sx * 0.1, 0.22), (0.47, 0.38))
            else:
                pts = _bezier((0.5, 0.02), (0.45, 0.22), (0.42, 0.4))
            layers.add(c.polyline(pts, 0.012), bright)
        elif kind == "enteric_tube":
            x = 0.49 if frontal else 0.62
            end = (0.62, 0.95) if frontal else (0.5, 0.95)
            layers.add(c.polyline(_bezier((x, 0.0), (x, 0.75), end), 0.012), bright)
        elif kind == "pacemaker":
            gx, gy = (0.76, 0.18) if frontal else (0.24, 0.2)
            layers.add(c.ellipse(gx, gy, 0.05, 0.035, soft=0.006), bright * 1.4)
            for end in ((0.47, 0.55), (0.52, 0.66)):
                mid = (0.6, 0.25) if frontal else (0.35, 0.3)
                tip = end if frontal else (end[0] - 0.1, end[1])
                layers.add(c.polyline(_bezier((gx, gy), mid, tip), 0.01), bright * 0.8)


def render(case: Case, spec: ImageSpec = ImageSpec()) -> npt.NDArray[np.uint16]:
    """Draw ``case`` as a ``spec.size`` square of 12-bit grey levels (bright = dense).

    The same case and spec always give the same pixels.

    Examples
    --------
    >>> case = draw_case(np.random.default_rng(0), 0)
    >>> img = render(case, ImageSpec(size=64))
    >>> img.shape, img.dtype, int(img.max()) <= 4095
    ((64, 64), dtype('uint16'), True)
    >>> bool((render(case, ImageSpec(size=64)) == img).all())
    True
    """
    rng = np.random.default_rng(case.seed)
    grey = _frontal(case, spec, rng) if case.frontal else _lateral(case, spec, rng)
    # Positioning: a small shift and scale for everyone, a rotation for portable films.
    angle = math.radians(rng.normal(0, 4.0 if case.portable else 1.0))
    scale = 1.0 + rng.normal(0, spec.jitter)
    shift = rng.normal(0, spec.jitter, size=2)
    n = spec.size
    yy, xx = np.meshgrid(np.arange(n) - n / 2, np.arange(n) - n / 2, indexing="ij")
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    src_y = cos * yy - sin * xx + n / 2 + shift[0] * n - 0.5
    src_x = sin * yy + cos * xx + n / 2 + shift[1] * n - 0.5
    grey = map_coordinates(grey, [src_y, src_x], order=1, mode="nearest")
    grey = gaussian_filter(grey, 0.6)
    if case.portable:  # bedside films: flatter contrast
        grey = 0.12 + 0.78 * grey
    noise = spec.portable_noise if case.portable else spec.noise
    grey = grey + rng.normal(0, noise, size=grey.shape)
    grey = np.clip(grey * rng.uniform(0.92, 1.05), 0.0, 1.0)
    return np.asarray(np.round(grey * _MAX_VALUE), dtype=np.uint16)


def burn_in_annotation(pixels: npt.NDArray[np.uint16], seed: int) -> npt.NDArray[np.uint16]:
    """A copy of ``pixels`` with a burned-in annotation in the upper left corner.

    A bright label block with a few dark strokes (characters), as a site stamps on its films: a
    visual marker that no report word or header field mentions. ``seed`` varies the strokes.

    Examples
    --------
    >>> img = np.zeros((64, 64), dtype=np.uint16)
    >>> marked = burn_in_annotation(img, 0)
    >>> int(marked[:4, :4].max()) > 0, int(marked[32:, 32:].max())
    (True, 0)
    """
    rng = np.random.default_rng([seed, 7])
    out = pixels.copy()
    n = pixels.shape[0]
    h, w = max(3, n // 10), max(6, n // 4)
    top, left = max(1, n // 40), max(1, n // 40)
    block = np.full((h, w), 0.92 * _MAX_VALUE)
    for x in range(1, w - 1, 3):  # one stroke per character cell, of random height
        block[1 + int(rng.integers(0, max(1, h // 2))) : h - 1, x] = 0.15 * _MAX_VALUE
    out[top : top + h, left : left + w] = np.round(block).astype(np.uint16)
    return out


# ----------------------------------------------------------------------------------- text and DICOM


def case_report(case: Case) -> str:
    """The radiology report of ``case``: its header invents identifiers; its body names what shows.

    Examples
    --------
    >>> case = Case(uid="1.2.3", seed=1, view="LL", cardiomegaly=True, name="Doe^Jane")
    >>> text = case_report(case)
    >>> text.splitlines()[0]
    'Patient: Doe Jane'
    """
    rng = np.random.default_rng([case.seed, 1])
    return radiology_report(
        rng,
        view=case.view,
        devices=case.devices,
        pneumothorax=case.pneumothorax,
        cardiomegaly=case.cardiomegaly,
        effusion=case.effusion,
        name=case.name.replace("^", " "),
    )


def _study_date(case: Case) -> date:
    return date(2026, 1, 1) + timedelta(days=case.seed % 365)


def write_dicom(case: Case, pixels: npt.NDArray[np.uint16], path: str | Path) -> Path:
    """Write ``pixels`` as a CR DICOM Part 10 file with a header that agrees with ``case``.

    The header carries ViewPosition, a SeriesDescription that says PORTABLE for AP films,
    PatientSex, PatientAge, Manufacturer, Modality and BodyPartExamined, and invented
    PatientName, PatientID, dates and UIDs (which the audit must never let out).

    Examples
    --------
    >>> import tempfile, pydicom
    >>> case = draw_case(np.random.default_rng(0), 0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = write_dicom(case, render(case, ImageSpec(size=32)), Path(d) / "x.dcm")
    ...     ds = pydicom.dcmread(path)
    >>> ds.ViewPosition == case.view, ds.Rows
    (True, 32)
    """
    path = Path(path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CR_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(case.uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_UID_ROOT + "1")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = case.uid
    ds.StudyInstanceUID = generate_uid(prefix=_UID_ROOT, entropy_srcs=[case.uid, "study"])
    ds.SeriesInstanceUID = generate_uid(prefix=_UID_ROOT, entropy_srcs=[case.uid, "series"])
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = case.view
    ds.SeriesDescription = _SERIES[case.view]
    ds.StudyDescription = "XR CHEST"
    ds.PatientName = case.name
    ds.PatientID = case.patient_id
    ds.PatientSex = case.sex
    ds.PatientAge = f"{case.age:03d}Y"
    study = _study_date(case)
    ds.PatientBirthDate = (study - timedelta(days=int(case.age * 365.25))).strftime("%Y%m%d")
    ds.StudyDate = study.strftime("%Y%m%d")
    ds.Manufacturer = case.manufacturer
    ds.ReferringPhysicianName = "Whitfield^A"
    ds.AccessionNumber = f"A{case.seed % 10**8:08d}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = _MAX_VALUE // 2 + 1
    ds.WindowWidth = _MAX_VALUE + 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
