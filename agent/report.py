"""The slice report: what an audit found, in the JSON contract of the design, and as a table.

Two forms. The local report (:meth:`SliceReport.to_dict`, :meth:`SliceReport.write_json`) keeps
each slice's member study uids, for a reviewer with access to the sidecar's volume; the file is
private to the agent's user (0600). The export form (:meth:`SliceReport.for_export`,
``to_dict(export=True)``) is what leaves the sidecar (Pushgateway, summary, a copy a user sends
on): members are reduced to the probabilities of the ten most probable, with no study uid, and the
window keeps its counts but not its first and last study times.

A slice's ``tokens`` are its validated names: each was chosen on the fold that fitted the slicer
and checked on the held-out fold (``auroc``, ``p_value``: how well its presence separates the
slice's members from the rest of their class). Those that failed are kept apart, in
``rejected_tokens``. ``findings`` group the slices that are one failure (members or names
overlap; :mod:`agent.findings`); ``slices`` stay as they were, each finding naming its
``sub_slices`` by id.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.errors import AgentError

__all__ = ["EXPORT_MEMBERS", "Finding", "Member", "SliceReport", "SliceResult", "TokenResult", "Window"]

EXPORT_MEMBERS = 10
"""Members whose probabilities the export form keeps (without their study uids)."""


@dataclass(frozen=True)
class TokenResult:
    """A word or bigram that sets a slice apart.

    ``ds`` and ``r_attr`` are measured where the token was chosen; ``auroc`` and ``p_value``
    (one-sided Mann-Whitney, Bonferroni-adjusted over the slice's candidate tokens) on the
    held-out fold. Baseline tokens are not validated (None).
    """

    token: str
    ds: float
    r_attr: float | None = None
    auroc: float | None = None
    p_value: float | None = None


@dataclass(frozen=True)
class Member:
    """A study in a slice; ``study_uid`` is empty in the export form."""

    study_uid: str
    probability: float


@dataclass(frozen=True)
class SliceResult:
    rank: int
    id: str
    size: int
    error_rate: float
    rest_error_rate: float
    p_value: float
    error_precision_at_10: float
    n_tested: int
    members: tuple[Member, ...]
    tokens: tuple[TokenResult, ...]
    slice_class: str | int | None = None
    rejected_tokens: tuple[TokenResult, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One failure: slices whose members or validated names overlap, merged.

    ``sub_slices`` are slice ids, ranked by size and effect; ``error_rate`` and ``p_value``
    (Bonferroni already applied) are those of the finding's most significant sub-slice; ``size``
    counts the distinct studies in all of them; ``tokens`` are their validated names, best
    separation first.
    """

    rank: int
    id: str
    size: int
    error_rate: float
    p_value: float
    tokens: tuple[TokenResult, ...]
    sub_slices: tuple[str, ...]


@dataclass(frozen=True)
class Window:
    n: int
    n_errors: int
    start: str | None
    end: str | None


@dataclass(frozen=True)
class SliceReport:
    model: str
    target_class: str | int
    modalities: tuple[str, ...]
    window: Window
    slices: tuple[SliceResult, ...]
    baseline_tokens: tuple[TokenResult, ...]
    slicer: str = "error_aware"
    r_attr_space: str | None = None
    embedder: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    findings: tuple[Finding, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceReport:
        """Rebuild a :class:`SliceReport` from its JSON form (the inverse of ``SliceReport.to_dict``)."""

        def tokens(items: Sequence[Mapping[str, Any]]) -> tuple[TokenResult, ...]:
            return tuple(
                TokenResult(
                    text(t["token"]), float(t["ds"]), t.get("r_attr"), t.get("auroc"), t.get("p_value")
                )
                for t in items
            )

        def text(value: Any) -> str:
            """A field that must be text (a token, the model): a file edited by hand or corrupt
            fails here, not in every scrape that reads it."""
            if isinstance(value, str):
                return value
            raise TypeError(f"expected text, got {type(value).__name__}")

        def time(value: Any) -> str | None:
            if value is not None:
                datetime.fromisoformat(text(value).replace("Z", "+00:00"))  # ValueError if not ISO
            return value

        def nan(value: Any) -> float:
            return float("nan") if value is None else float(value)

        try:
            w = data["window"]
            slices = tuple(
                SliceResult(
                    rank=int(s["rank"]),
                    id=str(s["id"]),
                    size=int(s["size"]),
                    error_rate=nan(s["error_rate"]),
                    rest_error_rate=nan(s["rest_error_rate"]),
                    p_value=nan(s["p_value"]),
                    error_precision_at_10=nan(s["error_precision_at_10"]),
                    n_tested=int(s.get("n_tested", 0)),
                    members=tuple(
                        Member(str(m.get("study_uid", "")), float(m["probability"]))
                        for m in s.get("members", ())
                    ),
                    tokens=tokens(s.get("tokens", ())),
                    slice_class=s.get("slice_class"),
                    rejected_tokens=tokens(s.get("rejected_tokens", ())),
                )
                for s in data["slices"]
            )
            findings = tuple(
                Finding(
                    rank=int(f["rank"]),
                    id=str(f["id"]),
                    size=int(f["size"]),
                    error_rate=nan(f["error_rate"]),
                    p_value=nan(f["p_value"]),
                    tokens=tokens(f.get("tokens", ())),
                    sub_slices=tuple(str(i) for i in f["sub_slices"]),
                )
                for f in data.get("findings", ())
            )
            return cls(
                model=text(data["model"]),
                target_class=data["target_class"],
                modalities=tuple(data["modalities"]),
                window=Window(int(w["n"]), int(w["n_errors"]), time(w.get("start")), time(w.get("end"))),
                slices=slices,
                baseline_tokens=tokens(data.get("baseline_tokens", ())),
                slicer=data.get("slicer", "error_aware"),
                r_attr_space=data.get("r_attr_space"),
                embedder=data.get("embedder", ""),
                notes=tuple(data.get("notes", ())),
                findings=findings,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise AgentError(
                f"not a slice report: {err!r}; expected the JSON that `slice-agent audit` writes"
            ) from err

    def with_slice_ids(self, ids: Sequence[str]) -> SliceReport:
        """This report with its slices renamed (a tracker's ids), and its findings following them.

        A finding's id follows its first sub-slice's, so it is as stable as that slice's track.

        >>> s = SliceResult(1, "s-1", 2, 0.5, 0.1, 0.01, 0.5, 1, (), ())
        >>> f = Finding(1, "f-1", 2, 0.5, 0.01, (), ("s-1",))
        >>> r = SliceReport("m", 1, (), Window(3, 1, None, None), (s,), (), findings=(f,))
        >>> r2 = r.with_slice_ids(["s-abc"])
        >>> r2.slices[0].id, r2.findings[0].id, r2.findings[0].sub_slices
        ('s-abc', 'f-abc', ('s-abc',))
        """
        if len(ids) != len(self.slices):
            raise AgentError(f"expected {len(self.slices)} slice ids, got {len(ids)}")
        rename = {s.id: new for s, new in zip(self.slices, ids, strict=True)}
        findings = []
        for f in self.findings:
            subs = tuple(rename.get(i, i) for i in f.sub_slices)
            findings.append(replace(f, id=finding_id(subs[0]) if subs else f.id, sub_slices=subs))
        return replace(
            self,
            slices=tuple(replace(s, id=new) for s, new in zip(self.slices, ids, strict=True)),
            findings=tuple(findings),
        )

    def for_export(self) -> SliceReport:
        """This report as it may leave the sidecar: no member study uid, no study time.

        >>> r = SliceReport("m", 1, ("report",), Window(3, 1, "2026-11-23T08:00:00Z", None), (), ())
        >>> s = SliceResult(1, "s-1", 2, 0.5, 0.1, 0.01, 0.5, 1, (Member("1.2.3", 0.9),), ())
        >>> replace(r, slices=(s,)).for_export().slices[0].members, r.for_export().window.start
        ((Member(study_uid='', probability=0.9),), None)
        """
        return replace(
            self,
            window=replace(self.window, start=None, end=None),
            slices=tuple(
                replace(s, members=tuple(Member("", m.probability) for m in s.members[:EXPORT_MEMBERS]))
                for s in self.slices
            ),
        )

    def to_dict(self, *, export: bool = False) -> dict[str, Any]:
        """The JSON form: local (with members) or, with ``export``, the form that may leave."""
        out = asdict(self.for_export() if export else self)
        out["modalities"] = list(self.modalities)
        out["notes"] = list(self.notes)
        if export:
            for s in out["slices"]:
                s["members"] = [{"probability": m["probability"]} for m in s["members"]]
        return _finite(out)

    def write_json(self, path: str | Path, *, export: bool = False) -> None:
        """Write the report, readable by the agent's user only (0600), replacing any older file."""
        data = (json.dumps(self.to_dict(export=export), indent=2) + "\n").encode("utf-8")
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, 0o600)  # an older file may have been created with wider permissions
            fh.write(data)

    def table(self) -> str:
        """A fixed-width text table of the slices, for a terminal."""
        head = f"{'rank':>4}  {'size':>5}  {'error':>6}  {'rest':>6}  {'p-value':>8}  {'err@10':>6}  tokens"
        lines = [
            f"model {self.model}, target class {self.target_class!r}, modalities "
            f"{'+'.join(self.modalities)}, window n={self.window.n} ({self.window.n_errors} errors)",
            head,
            "-" * len(head),
        ]
        for s in self.slices:
            words = ", ".join(t.token for t in s.tokens) or "-"
            lines.append(
                f"{s.rank:>4}  {s.size:>5}  {s.error_rate:>6.2f}  {s.rest_error_rate:>6.2f}  "
                f"{s.p_value:>8.1e}  {s.error_precision_at_10:>6.2f}  {words}"
            )
        if not self.slices:
            lines.append("no significant error slice")
        for f in self.findings:
            names = ", ".join(f"{t.token} ({t.auroc:.2f})" for t in f.tokens if t.auroc is not None) or "-"
            ranks = [s.rank for s in self.slices if s.id in f.sub_slices]
            lines.append(
                f"finding {f.rank}: {f.size} studies, error {f.error_rate:.2f}, p {f.p_value:.1e}, "
                f"slices {', '.join(map(str, ranks))}; names (held-out AUROC): {names}"
            )
        lines.append("baseline (all errors): " + (", ".join(t.token for t in self.baseline_tokens) or "-"))
        return "\n".join(lines)


def finding_id(slice_id: str) -> str:
    """A finding's id from its first sub-slice's: ``s-…`` becomes ``f-…``."""
    return "f-" + slice_id.removeprefix("s-")


def _finite(value: Any) -> Any:
    """JSON has no NaN: replace non-finite floats by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
