"""A PACS that answers with hostile bodies, served by a real HTTP server on 127.0.0.1: every answer
is a PacsError or a refused image, bounded in memory, never another exception."""

from __future__ import annotations

import http.server
import io
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from agent.config import PacsSettings
from agent.errors import ImageRefusedError
from agent.images import ImageAccess
from agent.pacs import PacsClient, PacsError, _retry_after

Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture
def pacs() -> Iterator[Callable[[Answer], PacsClient]]:
    servers: list[_Server] = []

    def start(answer: Answer) -> PacsClient:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                answer(self)

        server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        base = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        return PacsClient(PacsSettings(base_url=base), ImageAccess(max_file_bytes=1 << 20))

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _send(body: bytes, content_type: str = "application/dicom") -> Answer:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # the over-long UID, on purpose
def test_a_deflated_instance_is_refused_wherever_its_syntax_lies(pacs):
    """A 5,000-character instance UID pushed the deflated syntax past the head that was looked
    at: 0.4 MB from the PACS inflated to 400 MB in memory (1.6 GB peak). The file meta is read."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1." + "2" * 5000
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.add_new(0x00091010, "OB", b"\0" * (8 << 20))  # 8 MiB of zeros deflate to a few KB
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert len(data) < 1 << 20 and data.find(b"1.2.840.10008.1.2.1.99") > 4096
    client = pacs(_send(data))
    with pytest.raises(ImageRefusedError):
        client.fetch_bytes("1.2.3", "1.2.3.4", "1.2.3.4.5")


def test_a_multipart_body_nested_beyond_the_parser_is_a_bad_response(pacs):
    nested = b"".join(
        b'--b%d\r\nContent-Type: multipart/related; boundary="b%d"\r\n\r\n' % (i, i + 1) for i in range(3000)
    )
    client = pacs(_send(nested, 'multipart/related; type="application/dicom"; boundary="b0"'))
    with pytest.raises(PacsError) as err:
        client.fetch_bytes("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert err.value.reason == "pacs_bad_response"


@pytest.mark.parametrize(
    "value", ["Mon, 01 Jan 99999999999999999999 00:00:00 GMT", "Mon, 01 Jan 10000 00:00:00 GMT", "soon"]
)
def test_a_retry_after_no_clock_reaches_is_no_advice(value):
    """A date beyond any clock raised OverflowError, out of every handler of a fetch."""
    response = requests.Response()
    response.headers["Retry-After"] = value
    assert _retry_after(response) is None


def test_a_bare_dicom_answer_still_reads(pacs):
    """The check reads the file meta of an ordinary instance and lets it through."""
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert pydicom.dcmread(io.BytesIO(pacs(_send(data)).fetch_bytes("1.2.3", "1.2.3.4", "1.2.3.4.5")))
