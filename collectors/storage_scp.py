"""C-ECHO / C-STORE SCP: receives DICOM over the network and hands each object to a sink.

The SCP knows nothing of where objects go: the cloud node gives it a sink that ingests into
the archive, the hospital gateway one that spools. Each received object is passed on as the
exact bytes the peer sent (wrapped in Part-10 File Meta), never decoded and re-encoded.
Given a Query/Retrieve provider, the same AE also answers C-FIND, C-GET and C-MOVE.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from collectors.intake import UNEXPECTED_FAILURE, SinkResult
from collectors.part10 import file_meta_header
from collectors.qr_scp import QUERY_RETRIEVE_SOP_CLASSES, QueryRetrieveProvider, QueryRetrieveSCP

logger = logging.getLogger(__name__)

# Transfer syntaxes accepted for storage: uncompressed, deflate, JPEG family, JPEG-LS,
# JPEG 2000, HTJ2K, RLE and the MPEG/HEVC video syntaxes.
STORAGE_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG-2 MP@ML
    "1.2.840.10008.1.2.4.101",  # MPEG-2 MP@HL
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible HP@4.1
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 HP@4.2 2D video
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 HP@4.2 3D video
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo HP@4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile
]


__all__ = ["ReceivedObject", "Sink", "SinkResult", "StorageSCP"]


@dataclass(frozen=True)
class ReceivedObject:
    """One object received by C-STORE, with who sent it."""

    part10: bytes
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae_title: str
    peer_address: str

    @property
    def origin(self) -> str:
        return f"dimse:{self.calling_ae_title}@{self.peer_address}"


Sink = Callable[[ReceivedObject], SinkResult]


class StorageSCP:
    """A pynetdicom AE serving C-ECHO and C-STORE (and Q/R) on one port, in background threads.

    With ``qr_provider`` it also answers Patient and Study Root C-FIND, C-GET and C-MOVE, and
    accepts the storage SCP role a C-GET requestor proposes for its sub-operations.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        ae_title: str = "IMAGINGCLOUD",
        host: str = "127.0.0.1",
        port: int = 11112,
        max_pdu_size: int = 1048576,
        qr_provider: QueryRetrieveProvider | None = None,
    ) -> None:
        self._sink = sink
        self._qr = None if qr_provider is None else QueryRetrieveSCP(qr_provider)
        self._host = host
        self._port = port
        self._server: Any = None
        self._ae = AE(ae_title=ae_title)
        self._ae.maximum_pdu_size = max_pdu_size
        self._ae.maximum_associations = 64
        self._ae.network_timeout = 60
        self._ae.dimse_timeout = 120
        self._ae.add_supported_context(Verification)
        # C-GET sends over the requestor's association, so it must be allowed to be SCP there.
        reverse_roles = {"scu_role": True, "scp_role": True} if self._qr else {}
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self._ae.add_supported_context(
                    context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, **reverse_roles
                )
        if self._qr is not None:
            for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
                self._ae.add_supported_context(sop_class)
        self.ready = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in background threads; return once the socket listens."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _disable_nagle),
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
        ]
        if self._qr is not None:
            handlers += self._qr.handlers()
        self._server = self._ae.start_server(
            (self._host, self._port), block=False, evt_handlers=handlers
        )
        self.ready.set()
        logger.info("DICOM SCP %s listening on %s:%d", self._ae.ae_title, self._host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ready.clear()

    def _handle_store(self, event: Any) -> Dataset | int:
        request = event.request
        requestor = event.assoc.requestor
        try:
            sop_class = str(request.AffectedSOPClassUID)
            sop_instance = str(request.AffectedSOPInstanceUID)
            calling = str(requestor.ae_title).strip()
            context = event.context.transfer_syntax
            header = file_meta_header(sop_class, sop_instance, str(context), calling)
            received = ReceivedObject(
                part10=header + event.encoded_dataset(include_meta=False),
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                calling_ae_title=calling,
                peer_address=str(requestor.address),
            )
            result = self._sink(received)
        except Exception:
            logger.exception("C-STORE sink failed unexpectedly")
            result = SinkResult(UNEXPECTED_FAILURE, "unexpected error while storing")
        if result.status == 0x0000:
            return 0x0000
        status = Dataset()
        status.Status = result.status
        if result.error_comment:
            status.ErrorComment = result.error_comment[:64]  # LO: at most 64 characters
        return status


def _disable_nagle(event: Any) -> None:
    # A C-STORE response is a small write followed by a read: with Nagle on, a peer that
    # delays ACKs adds ~40 ms to every object.
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _handle_echo(_event: Any) -> int:
    return 0x0000
