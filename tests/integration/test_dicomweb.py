"""Images fetched by UID from a real Orthanc with its DICOMweb plugin (Debian ``orthanc``,
``orthanc-dicomweb``), started on 127.0.0.1 by ``deploy/orthanc/orthanc-local``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from harness import Orthanc
from pydicom.data import get_testdata_file

from agent.config import PacsSettings
from agent.dicom import read_header, read_pixels
from agent.errors import ImageRefusedError
from agent.images import ImageAccess
from agent.pacs import PacsClient, PacsError, RetryPolicy

#: The image time limit where a test is not about it: a loaded 2-core machine must not fail a read.
LOADED_MACHINE_SECONDS = 120.0


def ct_small() -> Path:
    return Path(str(get_testdata_file("CT_small.dcm")))


def test_fetch_by_uid_gives_the_pixels_and_header_of_a_local_read(orthanc: Orthanc) -> None:
    uids = orthanc.upload(ct_small())
    access = ImageAccess(time_limit_seconds=LOADED_MACHINE_SECONDS)
    client = PacsClient(PacsSettings(base_url=orthanc.base_url), access)

    fetched = client.fetch(*uids)

    local = ct_small().read_bytes()
    np.testing.assert_array_equal(fetched.pixels, read_pixels(local, access=access))
    assert fetched.header == read_header(local, access=access)
    assert fetched.pixels.shape == (224, 224)


def test_unknown_instance_is_a_retryable_not_found(orthanc: Orthanc) -> None:
    study, series, _ = orthanc.upload(ct_small())
    client = PacsClient(
        PacsSettings(base_url=orthanc.base_url), ImageAccess(time_limit_seconds=LOADED_MACHINE_SECONDS)
    )

    with pytest.raises(PacsError) as caught:
        client.fetch(study, series, "1.2.3.4")

    assert caught.value.reason == "pacs_not_found"
    assert caught.value.retryable


def test_an_instance_over_the_byte_cap_is_refused(orthanc: Orthanc) -> None:
    uids = orthanc.upload(ct_small())
    client = PacsClient(PacsSettings(base_url=orthanc.base_url), ImageAccess(max_file_bytes=4096))

    with pytest.raises(ImageRefusedError):
        client.fetch(*uids)


def test_a_stopped_pacs_gives_a_clear_retryable_error(orthanc: Orthanc) -> None:
    uids = orthanc.upload(ct_small())
    client = PacsClient(
        PacsSettings(base_url=orthanc.base_url, connect_timeout_seconds=2),
        ImageAccess(time_limit_seconds=LOADED_MACHINE_SECONDS),
    )
    assert client.fetch(*uids).n_bytes > 0

    orthanc.stop()
    with pytest.raises(PacsError) as caught:
        client.fetch(*uids)

    error = caught.value
    assert error.reason == "pacs_unavailable"
    assert error.retryable
    assert "pacs.base_url" in str(error)
    assert uids[0] not in str(error)
    policy = RetryPolicy(initial_seconds=5, multiplier=2, max_seconds=60, give_up_after_seconds=600)
    assert policy.next_try(first_failure=0.0, failures=1, now=0.0, error=error) == 5.0


def test_uids_that_are_not_uids_never_reach_the_pacs(orthanc: Orthanc) -> None:
    client = PacsClient(
        PacsSettings(base_url=orthanc.base_url), ImageAccess(time_limit_seconds=LOADED_MACHINE_SECONDS)
    )

    for bad in ("../../system", "1.2/../..", "http://169.254.169.254/latest", "1." * 40):
        with pytest.raises(ValueError, match="expected a DICOM UID"):
            client.fetch(bad, "1.2", "1.3")
