"""Images from the PACS by UID, over DICOMweb (WADO-RS).

:class:`PacsClient` fetches one instance by its Study, Series and SOP Instance UIDs from the
DICOMweb root configured in ``pacs.base_url``, with the configured credentials. Nothing else
decides where a request goes: the UIDs are checked to be DICOM UIDs (digits and dots, at most
64 characters) before a URL is built, and a URL inside an event is never followed, so an event
cannot make the agent request another host or path (no server-side request forgery).

The download is bounded before anything is parsed: a declared ``Content-Length`` over
``images.max_file_bytes`` is refused unread, the body is read in chunks and refused as soon as it
passes that size or ``pacs.fetch_time_limit_seconds``, and a deflated data set (whose inflated
size the download size does not bound) is refused before pydicom reads it. The instance is then
written back to Part 10 bytes and read through the one image access boundary
(:func:`agent.dicom.read_pixels`, :func:`agent.dicom.read_header`): the same pixel cap and time
limit as a file under the image roots.

A failed fetch raises :class:`PacsError` with a bounded ``reason`` (a metric label), whether it
is worth retrying, and the server's ``Retry-After`` when it sent one. :class:`RetryPolicy` says
when to try again and when to give up; the arrival embedder keeps the schedule in the store.
"""

from __future__ import annotations

import email.policy
import io
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import numpy as np
import numpy.typing as npt
import pydicom
import requests

from agent.config import PacsSettings
from agent.dicom import read_header, read_pixels
from agent.errors import PACS_REASONS, AgentError
from agent.events import DICOM_UID
from agent.images import ImageAccess, file_meta_syntax, refuse

__all__ = [
    "PACS_REASONS",
    "FetchedImage",
    "PacsClient",
    "PacsError",
    "RetryPolicy",
    "check_uid",
    "uids_of",
]

log = logging.getLogger(__name__)


_DEFLATED = b"1.2.840.10008.1.2.1.99"
_CHUNK = 1 << 16
#: One instance, in the transfer syntax it is stored in (no transcoding by the PACS).
_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _single_part(content_type: str, body: bytes) -> bytes:
    r"""The one part of a WADO-RS answer (``multipart/related``, or a bare ``application/dicom``).

    >>> _single_part('multipart/related; type="application/dicom"; boundary=b1',
    ...              b"--b1\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b1--\r\n")
    b'DICM'
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/dicom":
        return body
    if media != "multipart/related":
        raise PacsError(
            f"the PACS answered {media or 'no content type'}, not multipart/related",
            reason="pacs_bad_response",
            retryable=False,
        )
    try:
        message = BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
        )
        parts = [p for p in message.iter_parts()] if message.is_multipart() else []
    except Exception as err:  # the parser recurses into nested parts: 3,000 levels deep raised
        raise PacsError(
            f"the PACS answered a multipart body that cannot be parsed ({type(err).__name__})",
            reason="pacs_bad_response",
            retryable=False,
        ) from err
    if len(parts) != 1:
        raise PacsError(
            f"the PACS answered {len(parts)} parts for one instance",
            reason="pacs_bad_response",
            retryable=False,
        )
    payload = parts[0].get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise PacsError("the PACS answered an empty part", reason="pacs_bad_response", retryable=False)
    return payload


class PacsError(AgentError, ConnectionError):
    """The PACS did not deliver an instance.

    Parameters
    ----------
    message
        For people: what failed and what to check. It never carries a UID or a credential.
    reason
        One of :data:`PACS_REASONS`.
    retryable
        Whether a later try can succeed (down, slow, not yet stored); ``False`` for a
        configuration problem (no base URL, credentials refused).
    retry_after_seconds
        The server's ``Retry-After`` hint, when it sent one.
    """

    def __init__(
        self, message: str, *, reason: str, retryable: bool = True, retry_after_seconds: float | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_seconds = retry_after_seconds


def check_uid(uid: object, what: str) -> str:
    """``uid`` when it is a DICOM UID (digits and dots, at most 64 characters); else :class:`ValueError`.

    >>> check_uid("1.2.840.113619.2.55", "study")
    '1.2.840.113619.2.55'
    >>> check_uid("1.2/../../admin", "study")
    Traceback (most recent call last):
    ...
    ValueError: expected a DICOM UID for the study (digits and dots, at most 64 characters), got another value
    """
    if not isinstance(uid, str) or len(uid) > 64 or not DICOM_UID.match(uid):
        raise ValueError(
            f"expected a DICOM UID for the {what} (digits and dots, at most 64 characters), got another value"
        )
    return uid


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for fetches that failed, capped, with a deadline to give up.

    Parameters
    ----------
    initial_seconds
        Wait after the first failure.
    multiplier
        Each further wait is this many times the previous one.
    max_seconds
        Longest wait between two tries.
    give_up_after_seconds
        Time since the first failure after which no further try is scheduled.

    Examples
    --------
    >>> policy = RetryPolicy(initial_seconds=5, multiplier=2, max_seconds=60, give_up_after_seconds=600)
    >>> [policy.delay(n) for n in range(1, 6)]
    [5.0, 10.0, 20.0, 40.0, 60.0]
    >>> policy.next_try(first_failure=0.0, failures=1, now=0.0)
    5.0
    >>> policy.next_try(first_failure=0.0, failures=3, now=590.0) is None
    True
    """

    initial_seconds: float = 5.0
    multiplier: float = 2.0
    max_seconds: float = 600.0
    give_up_after_seconds: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if not (
            self.initial_seconds > 0 and self.multiplier >= 1 and self.max_seconds >= self.initial_seconds
        ):
            raise ValueError(
                "expected initial_seconds > 0, multiplier >= 1 and max_seconds >= initial_seconds, got "
                f"{self.initial_seconds}, {self.multiplier}, {self.max_seconds}"
            )
        if not self.give_up_after_seconds > 0:
            raise ValueError(f"expected give_up_after_seconds > 0, got {self.give_up_after_seconds}")

    @classmethod
    def from_settings(cls, settings: PacsSettings) -> RetryPolicy:
        """The retry policy of the ``pacs`` settings section."""
        return cls(
            initial_seconds=settings.retry_initial_seconds,
            multiplier=settings.retry_multiplier,
            max_seconds=settings.retry_max_seconds,
            give_up_after_seconds=settings.give_up_after_seconds,
        )

    def delay(self, failures: int, error: PacsError | None = None) -> float:
        """Seconds to wait after ``failures`` consecutive failures (at least 1).

        The server's ``Retry-After`` is honoured when it asks for longer, up to ``max_seconds``.
        """
        if failures < 1:
            raise ValueError(f"expected failures >= 1, got {failures}")
        exponent = min(failures - 1, 1024)
        wait = min(self.max_seconds, self.initial_seconds * self.multiplier**exponent)
        hint = error.retry_after_seconds if error is not None else None
        if hint is not None and math.isfinite(hint) and hint > wait:
            wait = min(hint, self.max_seconds)
        return float(wait)

    def next_try(
        self, *, first_failure: float, failures: int, now: float, error: PacsError | None = None
    ) -> float | None:
        """When (on the clock of ``now``) to try again, or ``None`` to give up.

        A failure that is not retryable, or a next try past ``give_up_after_seconds`` since the
        first failure, gives up: the caller counts reason ``pacs_gave_up`` (or the error's own).
        """
        if error is not None and not error.retryable:
            return None
        at = now + self.delay(failures, error)
        if at - first_failure > self.give_up_after_seconds:
            return None
        return at


@dataclass(frozen=True)
class FetchedImage:
    """An instance fetched from the PACS: display-ready pixels and the whitelisted header."""

    pixels: npt.NDArray[np.float32]
    header: dict[str, str]
    n_bytes: int


def _retry_after(response: requests.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):  # a date no clock reaches: no advice
        return None


class PacsClient:
    """Fetch instances by UID from the configured DICOMweb root.

    Parameters
    ----------
    settings
        The ``pacs`` section: base URL, credentials, timeouts.
    access
        The image access boundary: ``max_file_bytes`` bounds the download; the pixel cap and
        time limit bound the decode.
    size
        Side of the square pixel array returned.
    session
        A ``requests.Session`` to use (tests); by default a new one. The client sets its
        authentication, certificates, proxies and redirects.
    """

    def __init__(
        self,
        settings: PacsSettings,
        access: ImageAccess,
        *,
        size: int = 224,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.access = access
        self.size = size
        self._session: requests.Session | None = None
        self._root = settings.base_url.rstrip("/") if settings.base_url is not None else None
        if self._root is None:
            return
        session = session if session is not None else requests.Session()
        password = self._password()
        if settings.username is not None:
            session.auth = (settings.username, password or "")
        if settings.ca_bundle is not None:
            session.verify = str(settings.ca_bundle)
        session.trust_env = False  # no proxy or netrc from the environment decides where requests go
        session.max_redirects = 0  # a redirect would leave the configured root
        self._session = session

    @property
    def configured(self) -> bool:
        """Whether a PACS is configured (``pacs.base_url``)."""
        return self._session is not None

    def _password(self) -> str | None:
        if self.settings.password is not None:
            return self.settings.password.get_secret_value()
        if self.settings.password_file is not None:
            try:
                return self.settings.password_file.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise PacsError(
                    f"cannot read pacs.password_file ({type(err).__name__}); check the mounted secret",
                    reason="pacs_not_configured",
                    retryable=False,
                ) from err
        return None

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        """The body, read in chunks within the byte cap and the fetch time limit, or refused."""
        limit = self.access.max_file_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            refuse(f"the PACS declared {declared} bytes, over images.max_file_bytes={limit}")
        body = bytearray()
        for chunk in response.iter_content(_CHUNK):
            body += chunk
            if len(body) > limit:
                refuse(f"the PACS sent more than images.max_file_bytes={limit}")
            if time.monotonic() > deadline:
                raise PacsError(
                    "the PACS sent the instance too slowly (over pacs.fetch_time_limit_seconds); "
                    "check its load and the network",
                    reason="pacs_timeout",
                )
        return bytes(body)

    def _get(self, url: str) -> tuple[str, bytes]:
        """GET ``url`` under the root; the Content-Type and the bounded body, or a :class:`PacsError`."""
        if self._session is None:
            raise PacsError(
                "no PACS is configured: set pacs.base_url to fetch images by UID",
                reason="pacs_not_configured",
                retryable=False,
            )
        deadline = time.monotonic() + self.settings.fetch_time_limit_seconds
        try:
            with self._session.get(
                url,
                headers={"Accept": _ACCEPT},
                stream=True,
                allow_redirects=False,
                timeout=(self.settings.connect_timeout_seconds, self.settings.read_timeout_seconds),
            ) as response:
                if response.status_code >= 300:
                    raise self._http_error(response)
                return response.headers.get("Content-Type", ""), self._read_body(response, deadline)
        except requests.Timeout as err:
            raise PacsError(
                "the PACS did not answer in time (pacs.read_timeout_seconds); check its load and the network",
                reason="pacs_timeout",
            ) from err
        except requests.ConnectionError as err:
            raise PacsError(
                "cannot connect to the PACS at pacs.base_url; check that it is up and reachable",
                reason="pacs_unavailable",
            ) from err
        except requests.RequestException as err:
            raise PacsError(
                f"the PACS request failed ({type(err).__name__})", reason="pacs_unavailable"
            ) from err

    def fetch_bytes(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance as DICOM Part 10 bytes, bounded by ``images.max_file_bytes``.

        WADO-RS ``GET {base}/studies/{study}/series/{series}/instances/{instance}``: the only
        request this client makes, to the configured root and nowhere else.

        Raises
        ------
        PacsError
            The PACS is not configured, down, slow, refuses the credentials, or has no such instance.
        agent.errors.ImageRefusedError
            The instance is over the byte cap, or deflated.
        ValueError
            A UID is not a DICOM UID.
        """
        study, series, sop = (
            check_uid(study_uid, "study"),
            check_uid(series_uid, "series"),
            check_uid(sop_uid, "instance"),
        )
        content_type, body = self._get(f"{self._root}/studies/{study}/series/{series}/instances/{sop}")
        data = _single_part(content_type, body)
        try:  # the file meta's own syntax: a long UID before it hides it from a look at the head
            syntax = file_meta_syntax(io.BytesIO(data))
        except Exception:  # not DICOM: dcmread below says so, as a bad response
            syntax = None
        if syntax == _DEFLATED.decode() or _DEFLATED in data[:4096]:
            refuse("deflated data set from the PACS: its inflated size is not bounded by the download")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
        except Exception as err:  # pydicom raises many types on data it cannot read or write
            raise PacsError(
                f"the PACS answered with something that is not one DICOM instance ({type(err).__name__})",
                reason="pacs_bad_response",
                retryable=False,
            ) from err
        return out.getvalue()

    @staticmethod
    def _http_error(response: requests.Response) -> PacsError:
        status = response.status_code
        hint = _retry_after(response)
        if status == 404:
            return PacsError(
                "the PACS has no such instance (yet): HTTP 404",
                reason="pacs_not_found",
                retry_after_seconds=hint,
            )
        if status in (401, 403):
            return PacsError(
                f"the PACS refused the credentials: HTTP {status}; check pacs.username and its password",
                reason="pacs_unauthorized",
                retryable=False,
            )
        if status in (408, 429) or status >= 500:
            return PacsError(
                f"the PACS is unavailable or busy: HTTP {status}",
                reason="pacs_unavailable",
                retry_after_seconds=hint,
            )
        return PacsError(
            f"the PACS refused the request: HTTP {status}", reason="pacs_bad_response", retryable=False
        )

    def fetch(self, study_uid: str, series_uid: str, sop_uid: str) -> FetchedImage:
        """Fetch an instance and read it through the image access boundary.

        Only the returned arrays and whitelisted header leave; the bytes are not kept.
        """
        data = self.fetch_bytes(study_uid, series_uid, sop_uid)
        header = read_header(data, access=self.access)
        pixels = read_pixels(data, self.size, access=self.access)
        log.debug("fetched an instance of %d bytes from the PACS", len(data))
        return FetchedImage(pixels=pixels, header=header, n_bytes=len(data))


def uids_of(event: Mapping[str, object]) -> tuple[str, str, str] | None:
    """The (study, series, instance) UIDs of an inference event's fields, when it carries all three."""
    study, series, sop = event.get("study_uid"), event.get("series_uid"), event.get("image_uid")
    if isinstance(study, str) and isinstance(series, str) and isinstance(sop, str):
        return study, series, sop
    return None
