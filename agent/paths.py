"""Paths the agent writes: names made safe as path components, and files private to its user.

Names come from events, so a name may be ``..``, hold a separator, be empty, or be longer than a
file name may be. :func:`safe_component` turns any of them into one component that stays inside
the folder it is joined to, whatever the file system.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path
from typing import IO

__all__ = ["MAX_COMPONENT_CHARS", "open_private", "private_folder", "safe_component"]

#: Longest component returned, in characters (all ASCII, so also in bytes); file systems allow 255.
MAX_COMPONENT_CHARS = 100

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_DIGEST_CHARS = 12


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]


def safe_component(name: str, *, max_chars: int = MAX_COMPONENT_CHARS) -> str:
    """``name`` as one safe path component: ASCII letters, digits and ``._+-`` only.

    Every other run of characters becomes ``_`` (accents are dropped first, so ``"Pneumothorax
    é"`` keeps its letters). The result never is ``.`` or ``..``, never starts with ``.`` or
    ``-``, is never empty, and has at most ``max_chars`` characters. When anything had to change,
    a short digest of the original name is appended, so two distinct names never map to the same
    component (``"a/b"`` and ``"a_b"`` differ), and a long name is cut with its digest kept.

    Parameters
    ----------
    name
        Any model or class name.
    max_chars
        Longest result; at least 32.

    Examples
    --------
    >>> safe_component("cxr-ptx_v2.1")
    'cxr-ptx_v2.1'
    >>> safe_component("..")
    'name-5ec1f7e700f3'
    >>> safe_component("../etc/passwd")
    'etc_passwd-7fef78f53440'
    >>> len(safe_component("x" * 1000))
    100
    """
    if max_chars < 32:
        raise ValueError(f"expected max_chars >= 32, got {max_chars}")
    text = str(name)
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", ascii_text).lstrip(".-_")
    if text and cleaned == text and len(text) <= max_chars:
        return text
    stem = cleaned.rstrip("._") or "name"
    stem = stem[: max_chars - _DIGEST_CHARS - 1].rstrip("._-") or "name"
    return f"{stem}-{_digest(text)}"


def private_folder(path: Path) -> Path:
    """Create ``path`` and any missing parents readable by the agent's user only (0700); folders
    that exist already are left as they are (they may be shared). Returns ``path``."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode is masked by the umask
    return path


def open_private(path: Path, mode: str = "a") -> IO[str]:
    """Open a text file for writing (``"a"`` or ``"w"``), created 0600 in a private folder."""
    private_folder(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    return os.fdopen(fd, mode, encoding="utf-8")
