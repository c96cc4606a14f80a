"""The classifier under audit in the image benchmark: a ResNet-18 trained from scratch.

As in the seed paper's bootstrap, every iteration trains a fresh torchvision ResNet-18 (no
pretrained weights) on the simulated radiographs with random horizontal flips and rotations
of up to ±10 degrees, normalised by the training set's mean and standard deviation. The
network reads one grey channel (its first convolution takes one input plane instead of three);
otherwise it is the standard architecture. Images are resized to :attr:`TrainConfig.input_size`
before they enter it, which is what keeps CPU training affordable.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = ["Classifier", "TrainConfig", "train_classifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of one training run.

    Parameters
    ----------
    input_size
        Side, in pixels, of the square the network reads (the simulated DICOMs are larger).
    epochs, batch_size, learning_rate, weight_decay
        Adam on binary cross-entropy.
    max_rotation
        Largest random rotation, in degrees, applied to a training image.
    flips
        Random horizontal flips of training images.
    threads
        Torch CPU threads while training and predicting; None leaves torch's setting alone.
        On a machine shared with other jobs, 1 is often faster than 2.
    device
        Torch device, such as ``"cpu"`` or ``"cuda"``.
    """

    input_size: int = 64
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    max_rotation: float = 10.0
    flips: bool = True
    threads: int | None = None
    device: str = "cpu"


def _as_tensor(images: npt.NDArray[np.uint16] | npt.NDArray[np.floating[Any]], size: int) -> torch.Tensor:
    """``(n, h, w)`` 12-bit or [0, 1] images to a float ``(n, 1, size, size)`` tensor in [0, 1]."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(images)
    scale = 4095.0 if np.issubdtype(arr.dtype, np.integer) else 1.0
    x = torch.from_numpy(arr.astype(np.float32) / scale).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


def _augment(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random flips and rotations of a batch, each image its own (bilinear, border-padded)."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(config.max_rotation)
    flip = torch.ones(n)
    if config.flips:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Classifier:
    """A trained binary classifier: probability that an image shows the target class."""

    def __init__(self, network: Any, mean: float, std: float, config: TrainConfig) -> None:
        self.network = network
        self.mean = mean
        self.std = std
        self.config = config

    def predict_proba(
        self, images: npt.NDArray[np.uint16], *, batch_size: int = 128
    ) -> npt.NDArray[np.float64]:
        """Probability of the target class for each ``(h, w)`` image of ``images``."""
        import torch

        threads = torch.get_num_threads()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        try:
            x = (_as_tensor(images, self.config.input_size) - self.mean) / self.std
            self.network.eval()
            out = []
            with torch.inference_mode():
                for start in range(0, len(x), batch_size):
                    batch = x[start : start + batch_size].to(self.config.device)
                    out.append(torch.sigmoid(self.network(batch)[:, 0]).float().cpu())
            return np.concatenate([o.numpy() for o in out]).astype(np.float64)
        finally:
            torch.set_num_threads(threads)


def train_classifier(
    images: npt.NDArray[np.uint16], labels: npt.NDArray[np.integer[Any]], config: TrainConfig, *, seed: int
) -> Classifier:
    """Train a ResNet-18 from scratch on ``(n, h, w)`` images and 0/1 labels.

    Randomness (initial weights, batch order, augmentation) comes from ``seed`` only: torch's
    global generator is forked for the duration, so the caller's is left as it was.
    """
    import torch
    import torch.nn.functional as F
    import torchvision

    labels = np.asarray(labels)
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected as many labels as images (and some), got {len(labels)} and {len(images)}")
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = torchvision.models.resnet18(weights=None, num_classes=1)
            network.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            torch.nn.init.kaiming_normal_(network.conv1.weight, mode="fan_out", nonlinearity="relu")
        network = network.to(config.device)
        generator = torch.Generator().manual_seed(seed)
        x = _as_tensor(images, config.input_size)
        mean, std = float(x.mean()), float(x.std()) + 1e-6
        x = (x - mean) / std
        y = torch.from_numpy(labels.astype(np.float32))
        optimiser = torch.optim.Adam(
            network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        steps = config.epochs * math.ceil(len(x) / config.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.learning_rate, total_steps=steps)
        network.train()
        for epoch in range(config.epochs):
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for start in range(0, len(x), config.batch_size):
                idx = order[start : start + config.batch_size]
                batch = _augment(x[idx], config, generator).to(config.device)
                optimiser.zero_grad()
                loss = F.binary_cross_entropy_with_logits(network(batch)[:, 0], y[idx].to(config.device))
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * len(idx)
            log.debug("epoch %d: loss %.4f", epoch + 1, total / len(x))
    finally:
        torch.set_num_threads(threads)
    log.info("trained ResNet-18 on %d images in %.1f s", len(x), time.perf_counter() - started)
    return Classifier(network, mean, std, config)
