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
when to try again and when to give up; the stream runtime keeps the schedule.
"""

from __future__ import annotations

import io
import logging
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from agent.config import PacsSettings
from agent.dicom import read_header, read_pixels
from agent.errors import AgentError, ImageRefusedError
from agent.images import ImageAccess, refuse

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

#: Every reason a fetch can fail for; bounded, so it can be a metric label.
PACS_REASONS = (
    "pacs_not_configured",
    "pacs_unavailable",
    "pacs_timeout",
    "pacs_not_found",
    "pacs_unauthorized",
    "pacs_bad_response",
    "pacs_gave_up",
)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DEFLATED = b"1.2.840.10008.1.2.1.99"
_CHUNK = 1 << 16


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
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
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
    except (TypeError, ValueError):
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
        A ``requests.Session`` to use (tests); by default a new one.
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
        self._local = threading.local()
        self._client: DICOMwebClient | None = None
        if settings.base_url is None:
            return
        session = session if session is not None else requests.Session()
        password = self._password()
        if settings.username is not None:
            session.auth = (settings.username, password or "")
        if settings.ca_bundle is not None:
            session.verify = str(settings.ca_bundle)
        session.trust_env = False  # no proxy or netrc from the environment decides where requests go
        session.max_redirects = 0  # a redirect would leave the configured root
        self._client = DICOMwebClient(
            settings.base_url.rstrip("/"),
            session=session,
            callback=self._bound_body,
            timeout=(settings.connect_timeout_seconds, settings.read_timeout_seconds),
        )
        self._client.set_http_retry_params(retry=False)  # retries are scheduled by RetryPolicy

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

    def _bound_body(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        """Response hook: read the body within the byte cap and the fetch time limit, or refuse."""
        if response.status_code >= 300:
            return response
        limit = self.access.max_file_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response.close()
            refuse(f"the PACS declared {declared} bytes, over images.max_file_bytes={limit}")
        deadline = getattr(self._local, "deadline", None)
        body = bytearray()
        for chunk in response.iter_content(_CHUNK):
            body += chunk
            if len(body) > limit:
                response.close()
                refuse(f"the PACS sent more than images.max_file_bytes={limit}")
            if deadline is not None and time.monotonic() > deadline:
                response.close()
                raise PacsError(
                    "the PACS sent the instance too slowly (over pacs.fetch_time_limit_seconds); "
                    "check its load and the network",
                    reason="pacs_timeout",
                )
        if _DEFLATED in body[:4096]:
            refuse("deflated data set from the PACS: its inflated size is not bounded by the download")
        # requests has no public way to hand back a body read in bounded chunks.
        response._content = bytes(body)
        response._content_consumed = True
        return response

    def fetch_bytes(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance as DICOM Part 10 bytes, bounded by ``images.max_file_bytes``.

        Raises
        ------
        PacsError
            The PACS is not configured, down, slow, refuses the credentials, or has no such instance.
        ImageRefusedError
            The instance is over the byte cap, or deflated.
        ValueError
            A UID is not a DICOM UID.
        """
        uids = (
            check_uid(study_uid, "study"),
            check_uid(series_uid, "series"),
            check_uid(sop_uid, "instance"),
        )
        if self._client is None:
            raise PacsError(
                "no PACS is configured: set pacs.base_url to fetch images by UID",
                reason="pacs_not_configured",
                retryable=False,
            )
        self._local.deadline = time.monotonic() + self.settings.fetch_time_limit_seconds
        try:
            ds = self._client.retrieve_instance(*uids)
        except (PacsError, ImageRefusedError):
            raise
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
        except requests.HTTPError as err:
            raise self._http_error(err) from err
        except requests.RequestException as err:
            raise PacsError(
                f"the PACS request failed ({type(err).__name__})", reason="pacs_unavailable"
            ) from err
        except (ValueError, IndexError, pydicom.errors.InvalidDicomError) as err:
            raise PacsError(
                f"the PACS answered with something that is not one DICOM instance ({type(err).__name__})",
                reason="pacs_bad_response",
            ) from err
        finally:
            self._local.deadline = None
        out = io.BytesIO()
        try:
            ds.save_as(out, enforce_file_format=True)
        except Exception as err:  # pydicom raises many types on a data set it cannot write
            raise PacsError(
                f"the instance from the PACS cannot be written as DICOM ({type(err).__name__})",
                reason="pacs_bad_response",
                retryable=False,
            ) from err
        return out.getvalue()

    def _http_error(self, err: requests.HTTPError) -> PacsError:
        status = err.response.status_code if err.response is not None else 0
        hint = _retry_after(err.response)
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
