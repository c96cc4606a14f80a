"""Hostile image files through the access boundary: each is refused (or read) within its time limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hostile_files import dataset as _dataset
from hostile_files import rle_bomb as _rle_bomb
from hostile_files import write as _write

from agent.audit import embed_samples
from agent.dicom import read_header, read_pixels
from agent.errors import ImageRefusedError
from agent.events import REASONS
from agent.images import IMAGE_REFUSED, REFUSED_MESSAGE, ImageAccess, pixel_bits
from agent.sample import Sample

#: A case still running after this long hangs (a FIFO read blocks forever); the boundary's own time
#: limit is asserted separately. Generous: a loaded 2-core machine must not fail a correct reader.
LIMIT_SECONDS = 60.0
#: Peak RSS of a process that imports the agent and is handed the RLE bomb.
BOMB_RSS_BOUND_MIB = 200

REPO = Path(__file__).resolve().parents[2]


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    """Run ``call`` in a thread; fail (not hang) when it does not return within the limit."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed back to the test
            box["error"] = err

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(LIMIT_SECONDS)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"still running after {LIMIT_SECONDS} s: the reader hangs"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value"), elapsed


def _refused(call: Callable[[], object]) -> float:
    """Assert that ``call`` is refused, uniformly, within the limit; return the seconds it took."""
    start = time.monotonic()
    with pytest.raises(ImageRefusedError) as info:
        _timed(call)
    assert info.value.reason == IMAGE_REFUSED and str(info.value) == REFUSED_MESSAGE
    return time.monotonic() - start


@pytest.fixture(scope="module", autouse=True)
def _decoders_imported(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Read one image before any case is timed: the first read imports pydicom's pixel decoders."""
    folder = tmp_path_factory.mktemp("warm")
    path = _write(_dataset(8, 8), folder / "warm.dcm", np.zeros((8, 8), dtype=np.uint16))
    read_pixels(path, size=8, access=ImageAccess(roots=(folder,)))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


@pytest.fixture
def access(root: Path) -> ImageAccess:
    return ImageAccess(roots=(root,), time_limit_seconds=30.0)


@pytest.fixture
def good(root: Path) -> Path:
    pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) % 4096
    return _write(_dataset(64, 48), root / "good.dcm", pixels)


def test_a_good_image_under_the_root_reads(access, good):
    out, elapsed = _timed(lambda: read_pixels(good, size=32, access=access))
    assert isinstance(out, np.ndarray) and out.shape == (32, 32) and out.max() > 0.5
    assert elapsed < access.time_limit_seconds
    assert read_header(good, access=access)["Modality"] == "CR"
    assert read_pixels(good.as_uri(), size=32, access=access).shape == (32, 32)


def test_without_roots_every_path_is_refused(good):
    for access in (None, ImageAccess()):
        _refused(lambda a=access: read_pixels(good, access=a))  # type: ignore[misc]
        _refused(lambda a=access: read_header(good, access=a))  # type: ignore[misc]


def test_a_fifo_is_refused_at_once_and_never_blocks(access, root):
    fifo = root / "scan.dcm"
    os.mkfifo(fifo)
    _refused(lambda: read_pixels(fifo, access=access))
    _refused(lambda: read_header(fifo, access=access))


def test_symlinks_out_of_the_root_are_refused_and_inside_it_followed(access, root, good, tmp_path):
    outside = _write(_dataset(8, 8), tmp_path / "outside.dcm", np.ones((8, 8), dtype=np.uint16))
    (root / "escape.dcm").symlink_to(outside)
    (root / "dev.dcm").symlink_to("/dev/zero")
    (root / "alias.dcm").symlink_to(good)
    for name in ("escape.dcm", "dev.dcm"):
        _refused(lambda n=name: read_pixels(root / n, access=access))  # type: ignore[misc]
    _refused(lambda: read_pixels(root / ".." / "outside.dcm", access=access))
    assert read_pixels(root / "alias.dcm", size=16, access=access).shape == (16, 16)


@pytest.mark.parametrize(
    "path", ["/proc/self/status", "/proc/self/mem", "/dev/zero", "/dev/urandom", "/dev/stdin"]
)
def test_proc_and_dev_paths_are_refused_even_under_a_root_of_slash(path):
    for access in (ImageAccess(roots=(Path("/tmp"),)), ImageAccess(roots=(Path("/"),))):
        _refused(lambda a=access: read_pixels(path, access=a))  # type: ignore[misc]
        _refused(lambda a=access: read_header(path, access=a))  # type: ignore[misc]


def test_missing_unreadable_and_non_dicom_files_are_refused_alike(access, root, good):
    (root / "notes.txt").write_text("not a DICOM file\n" * 40)
    (root / "empty.dcm").write_bytes(b"")
    locked = root / "locked.dcm"
    locked.write_bytes(good.read_bytes())
    locked.chmod(0)
    messages = set()
    names = ["absent.dcm", "notes.txt", "empty.dcm"] + (["locked.dcm"] if os.geteuid() != 0 else [])
    for name in names:
        with pytest.raises(ImageRefusedError) as info:
            read_pixels(root / name, access=access)
        messages.add((info.value.reason, str(info.value)))
    assert messages == {(IMAGE_REFUSED, REFUSED_MESSAGE)}


def test_truncated_dicom_is_refused(access, root, good):
    raw = good.read_bytes()
    for cut in (100, 200, len(raw) // 2, len(raw) - 10):
        (root / f"cut{cut}.dcm").write_bytes(raw[:cut])
        _refused(lambda c=cut: read_pixels(root / f"cut{c}.dcm", access=access))  # type: ignore[misc]


def test_a_file_over_the_size_cap_is_refused_unread(root, good):
    access = ImageAccess(roots=(root,), max_file_bytes=good.stat().st_size - 1)
    _refused(lambda: read_pixels(good, access=access))


def test_the_rle_bomb_is_refused_from_its_header(access, root):
    bomb = _rle_bomb(root / "bomb.dcm")
    assert bomb.stat().st_size < 5 * 2**20
    header = pydicom.dcmread(bomb, stop_before_pixels=True)
    assert pixel_bits(header) == 16384 * 16384 * 8 > access.max_pixel_bits
    _refused(lambda: read_pixels(bomb, access=access))  # from its header: see the memory test
    assert read_header(bomb, access=access)["Modality"] == "CR"  # the header alone is harmless


def test_the_rle_bomb_costs_bounded_memory(root):
    bomb = _rle_bomb(root / "bomb.dcm")
    # VmHWM, not ru_maxrss: on Linux ru_maxrss after exec still holds the forked test runner's peak.
    script = f"""
import json, time
from pathlib import Path
from agent.dicom import read_pixels
from agent.errors import ImageRefusedError
from agent.images import ImageAccess
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
before = hwm()
start = time.monotonic()
try:
    read_pixels({str(bomb)!r}, access=ImageAccess(roots=(Path({str(root)!r}),)))
    outcome = "read"
except ImageRefusedError as err:
    outcome = err.reason
print(json.dumps({{"outcome": outcome, "seconds": time.monotonic() - start,
                  "before_kib": before, "peak_kib": hwm()}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outcome"] == IMAGE_REFUSED
    assert result["seconds"] < 1.0
    assert result["peak_kib"] / 1024 < BOMB_RSS_BOUND_MIB, result
    assert (result["peak_kib"] - result["before_kib"]) / 1024 < 64, result  # the refusal itself


def test_a_16_bit_strip_reads_without_a_huge_canvas(access, root):
    strip = np.tile(np.arange(30_000, dtype=np.uint16) % 4096, (2, 1))
    path = _write(_dataset(2, 30_000), root / "strip.dcm", strip)
    out, elapsed = _timed(lambda: read_pixels(path, size=64, access=access))
    assert isinstance(out, np.ndarray) and out.shape == (64, 64) and out.dtype == np.float32
    assert elapsed < access.time_limit_seconds
    assert out[:31].max() == 0 and out[33:].max() == 0 and out[31:33].max() > 0.5  # centred, thin


def test_multi_frame_reads_the_first_frame_and_the_cap_counts_every_frame(root):
    frames = np.stack([np.full((32, 32), v, dtype=np.uint16) for v in (0, 4095, 4095)])
    frames[0, :16] = 4095
    path = _write(_dataset(32, 32, frames=3), root / "multi.dcm", frames)
    roomy = ImageAccess(roots=(root,))
    out, _ = _timed(lambda: read_pixels(path, size=32, access=roomy))
    assert isinstance(out, np.ndarray) and out[:16].min() == 1.0 and out[16:].max() == 0.0
    tight = ImageAccess(roots=(root,), max_pixel_bits=32 * 32 * 16 * 3 - 1)
    _refused(lambda: read_pixels(path, size=32, access=tight))


def test_a_deflated_data_set_is_refused_before_it_is_inflated(access, root):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dataset(8, 8, tsyntax=DeflatedExplicitVRLittleEndian)
    path = _write(ds, root / "deflated.dcm", np.ones((8, 8), dtype=np.uint16))
    _refused(lambda: read_header(path, access=access))


def test_an_image_over_its_time_limit_is_refused(root, good):
    hurried = ImageAccess(roots=(root,), time_limit_seconds=1e-9)
    _refused(lambda: read_pixels(good, access=hurried))


def test_embed_samples_dead_letters_refused_images_as_image_refused(access, good, root):
    assert IMAGE_REFUSED in REASONS

    class Zero:
        name = "zero"
        image_dim = text_dim = 4
        shared_space = False

        def embed_images(self, images):
            return np.zeros((len(images), 4), dtype=np.float32)

        def embed_texts(self, texts):
            return np.zeros((len(texts), 4), dtype=np.float32)

    def sample(uid: str, image: str) -> Sample:
        return Sample(study_uid=uid, model="m", prediction=1, label=1, timestamp=None, image=image)  # type: ignore[arg-type]

    os.mkfifo(root / "fifo.dcm")
    samples = [sample("s0", str(good)), sample("s1", str(root / "fifo.dcm")), sample("s2", "/etc/passwd")]
    emb = embed_samples(samples, ("image",), Zero(), images=access)  # type: ignore[arg-type]
    assert [(p.where, p.reason) for p in emb.problems] == [
        ("study s1", IMAGE_REFUSED),
        ("study s2", IMAGE_REFUSED),
    ]
    assert np.isfinite(emb.blocks["image"][0]).all() and np.isnan(emb.blocks["image"][1:]).all()
