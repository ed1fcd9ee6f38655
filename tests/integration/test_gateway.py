"""Gateway -> cloud over real HTTP: forwarding, confirmation by checksum, outages, audit,
heartbeats and alerts, send-back into a PACS, and the TLS link."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pydicom
import pytest
import trustme
import uvicorn

from cloud.monitoring import AlertMonitor, AlertPolicy
from collectors.storage_scp import ReceivedObject, SinkResult, StorageSCP
from gateway.cloud_link import CloudLink, CloudLinkError, Upload
from gateway.config import PacsPeer
from gateway.forwarder import Forwarder
from gateway.monitor import audit_studies, send_heartbeat
from gateway.send_back import run_send_backs
from gateway.spool import Spool
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import client, free_port, http_base


def _study(patient_id: str = "GW-1", slices: int = 6) -> list[bytes]:
    spec = StudySpec(patient=PatientSpec(patient_id=patient_id, patient_name="Zhao^Liu"))
    return [to_part10(ds) for ds in ct_series(spec, slices=slices, size=32)]


def _uid(data: bytes, keyword: str) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)[keyword].value)


@pytest.fixture
def hospital(node: Node) -> str:
    return node.archive.hospitals.add_hospital("H1", "First People's Hospital", ae_title="H1GW")


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool")
    yield spool
    spool.close()


def _forwarder(node: Node, spool: Spool, credential: str, **kwargs: Any) -> Forwarder:
    link = CloudLink(http_base(node), credential)
    return Forwarder(spool, link, retry_base_seconds=0.01, **kwargs)


def _drain(forwarder: Forwarder, rounds: int = 50) -> None:
    for _ in range(rounds):
        if not forwarder.spool.status().queued:
            return
        forwarder.forward_once()
        time.sleep(0.02)


def test_forwarded_study_is_in_the_cloud_bit_exact_and_owned(
    node: Node, hospital: str, spool: Spool
) -> None:
    objects = _study()
    for data in objects:
        assert spool.accept(data, "test").status == 0
    forwarder = _forwarder(node, spool, hospital, batch_count=4)
    _drain(forwarder)
    assert spool.status().sent == len(objects) and spool.status().queued == 0
    study = _uid(objects[0], "StudyInstanceUID")
    stored = node.archive.locate(study)
    assert sorted(hashlib.sha256(node.archive.read(s)).hexdigest() for s in stored) == sorted(
        hashlib.sha256(d).hexdigest() for d in objects
    )
    [row] = [h for h in node.archive.hospitals.all() if h.hospital_id == "H1"]
    manifest = node.archive.hospitals.study_manifest(row, study)
    assert len(manifest) == len(objects)


def test_resending_is_harmless(node: Node, hospital: str, spool: Spool) -> None:
    objects = _study()
    for data in objects:
        spool.accept(data, "test")
    forwarder = _forwarder(node, spool, hospital)
    # a lost confirmation: the same batch goes out twice
    forwarder.link.stow(
        [
            Upload(spool.object_path(e.sha256), e.sop_instance_uid, e.sha256)
            for e in spool.due(100, 10**9)
        ]
    )
    _drain(forwarder)
    assert spool.status().sent == len(objects)
    assert len(node.archive.locate(_uid(objects[0], "StudyInstanceUID"))) == len(objects)


def test_other_content_under_a_held_uid_is_quarantined_not_overwritten(
    node: Node, hospital: str, spool: Spool
) -> None:
    [original, *_] = _study()
    node.archive.store(original, source="pacs")
    altered = pydicom.dcmread(io.BytesIO(original))
    altered.PatientName = "Changed^Name"
    buffer = io.BytesIO()
    altered.save_as(buffer, enforce_file_format=True)
    spool.accept(buffer.getvalue(), "test")
    _drain(_forwarder(node, spool, hospital))
    status = spool.status()
    assert status.quarantined == 1 and status.queued == 0
    [item] = spool.quarantined()
    assert "other content" in item["reason"]
    [stored] = node.archive.locate(_uid(original, "StudyInstanceUID"))
    assert node.archive.read(stored) == original


def test_object_the_cloud_refuses_is_quarantined_with_the_status(
    node: Node, hospital: str, spool: Spool
) -> None:
    [data, *_] = _study()
    truncated = data[:-100]  # pixel data shorter than Rows x Columns says
    spool.accept(truncated, "test")
    _drain(_forwarder(node, spool, hospital))
    [item] = spool.quarantined()
    assert "0xC000" in item["reason"]


def test_cloud_outage_is_retried_until_it_returns(
    sqlite_node: Node, tmp_path: Path, spool: Spool
) -> None:
    credential = sqlite_node.archive.hospitals.add_hospital("H1", "One")
    objects = _study(slices=3)
    for data in objects:
        spool.accept(data, "test")
    dead = Forwarder(
        spool, CloudLink(f"http://127.0.0.1:{free_port()}", credential), retry_base_seconds=0.01
    )
    report = dead.forward_once()
    assert report.retried == 3 and report.sent == 0
    status = spool.status()
    assert status.consecutive_failures == 1 and "ConnectError" in status.last_error
    assert status.queued == 3
    time.sleep(0.05)
    _drain(_forwarder(sqlite_node, spool, credential))
    assert spool.status().sent == 3 and spool.status().consecutive_failures == 0


def test_wrong_credential_is_refused_and_nothing_is_lost(sqlite_node: Node, spool: Spool) -> None:
    spool.accept(_study(slices=1)[0], "test")
    report = _forwarder(sqlite_node, spool, "icg_not-a-real-credential").forward_once()
    assert report.retried == 1
    assert "HTTP 401" in spool.status().last_error
    assert spool.status().queued == 1
    with client(sqlite_node) as http:
        refused = http.post(
            "/gateway-api/v1/heartbeat", json={"queued": 0}, headers={"Authorization": "Basic x"}
        )
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"


def test_audit_finds_what_the_cloud_lacks_and_sends_it_again(
    sqlite_node: Node, spool: Spool
) -> None:
    credential = sqlite_node.archive.hospitals.add_hospital("H1", "One")
    objects = _study(slices=4)
    for data in objects:
        spool.accept(data, "test")
    forwarder = _forwarder(sqlite_node, spool, credential)
    lost = spool.due(1, 10**9)
    spool.mark_sent([e.sha256 for e in lost])  # as if confirmed, but it never arrived
    _drain(forwarder)
    report = audit_studies(spool, forwarder.link, settle_seconds=0)
    assert (report.studies, report.resent) == (1, 1)
    _drain(forwarder)
    report = audit_studies(spool, forwarder.link, settle_seconds=0)
    assert (report.studies, report.matched) == (1, 1)
    study = objects[0]
    assert len(sqlite_node.archive.locate(_uid(study, "StudyInstanceUID"))) == 4


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_heartbeat_status_and_alerts_reach_log_and_webhook(
    sqlite_node: Node, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    credential = sqlite_node.archive.hospitals.add_hospital("H1", "One")
    sqlite_node.archive.hospitals.add_hospital("H2", "Two (never reports)")
    spool.accept(_study(slices=1)[0], "test")
    link = CloudLink(http_base(sqlite_node), credential)
    send_heartbeat(spool, link)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Webhook.received = []
    policy = AlertPolicy(low_disk_bytes=10**18, backlog_instances=0)  # this disk is "low"
    monitor = AlertMonitor(
        sqlite_node.archive.sessions, policy, f"http://127.0.0.1:{server.server_port}/hook"
    )
    with caplog.at_level("WARNING", logger="cloud.monitoring"):
        changes = monitor.check()
    server.shutdown()
    raised = {(c.hospital_id, c.kind) for c in changes}
    assert raised == {("H1", "low_disk"), ("H1", "backlog"), ("H2", "no_heartbeat")}
    assert {(w["hospital_id"], w["kind"]) for w in _Webhook.received} == raised
    assert "alert raised for H1" in caplog.text
    assert monitor.check() == []  # raised once, not on every check
    with client(sqlite_node) as api:
        status = {h["hospital_id"]: h for h in api.get("/api/hospitals").json()["hospitals"]}
    assert status["H1"]["gateway"]["queued"] == 1
    assert {a["kind"] for a in status["H1"]["alerts"]} == {"low_disk", "backlog"}
    assert status["H2"]["gateway"] is None
    answer = send_heartbeat(spool, link)
    assert {a["kind"] for a in answer["alerts"]} == {"low_disk", "backlog"}


def test_send_back_reaches_own_pacs_only(sqlite_node: Node, spool: Spool) -> None:
    archive = sqlite_node.archive
    credential = archive.hospitals.add_hospital("H1", "One", ae_title="H1GW")
    archive.hospitals.add_hospital("H2", "Two")
    objects = _study(slices=3)
    for data in objects:
        spool.accept(data, "test")
    forwarder = _forwarder(sqlite_node, spool, credential)
    _drain(forwarder)
    study = _uid(objects[0], "StudyInstanceUID")
    received: list[bytes] = []

    def pacs_sink(obj: ReceivedObject) -> SinkResult:
        received.append(obj.part10)
        return SinkResult(0)

    pacs = StorageSCP(pacs_sink, ae_title="PACS", port=free_port())
    pacs.start()
    try:
        with client(sqlite_node) as http:
            other = http.post("/api/hospitals/H2/send-backs", json={"study_instance_uid": study})
            assert other.status_code == 404  # never across hospitals
            queued = http.post("/api/hospitals/H1/send-backs", json={"study_instance_uid": study})
            assert queued.status_code == 202
        done = run_send_backs(
            spool, forwarder.link, PacsPeer("127.0.0.1", pacs.port, "PACS"), "H1GW"
        )
    finally:
        pacs.stop()
    assert done == 1
    got = sorted(_uid(d, "SOPInstanceUID") for d in received)
    assert got == sorted(_uid(d, "SOPInstanceUID") for d in objects)
    request = archive.hospitals.send_back(queued.json()["id"])
    assert request is not None and request.state == "done"


def test_tls_link_verifies_the_cloud_certificate(sqlite_node: Node, tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    authority.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            sqlite_node.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ssl_certfile=str(cert_file),
            ssl_keyfile=str(key_file),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    credential = sqlite_node.archive.hospitals.add_hospital("H1", "One")
    spool = Spool(tmp_path / "spool")
    try:
        spool.accept(_study(slices=1)[0], "test")
        untrusted = CloudLink(f"https://127.0.0.1:{port}", credential)
        with pytest.raises(CloudLinkError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.held(["1.2.3"])
        trusted = CloudLink(f"https://127.0.0.1:{port}", credential, ca_file=ca_file)
        _drain(Forwarder(spool, trusted))
        assert spool.status().sent == 1
        untrusted.close()
        trusted.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        spool.close()
    assert ssl.OPENSSL_VERSION  # the link used the system OpenSSL, not a stub


def test_bandwidth_limit_paces_uploads(sqlite_node: Node, spool: Spool) -> None:
    credential = sqlite_node.archive.hospitals.add_hospital("H1", "One")
    objects = _study(slices=8)  # ~8 x 2.5 kB
    for data in objects:
        spool.accept(data, "test")
    total = sum(len(d) for d in objects)
    rate = total * 2  # bytes per second: the batch must take at least half a second
    link = CloudLink(http_base(sqlite_node), credential, bandwidth_bytes_per_second=rate)
    started = time.monotonic()
    Forwarder(spool, link).forward_once()
    assert time.monotonic() - started >= 0.45
    assert spool.status().sent == len(objects)


def test_cli_prints_only_the_credential_and_the_spool_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imaging_cloud.cli import main

    data = tmp_path / "cloud"
    assert (
        main(
            [
                "admin",
                "add-hospital",
                "--data-dir",
                str(data),
                "--hospital-id",
                "H9",
                "--name",
                "Nine",
            ]
        )
        == 0
    )
    credential = capsys.readouterr().out
    assert credential.startswith("icg_") and credential.count("\n") == 1
    assert (
        main(
            [
                "admin",
                "add-hospital",
                "--data-dir",
                str(data),
                "--hospital-id",
                "H9",
                "--name",
                "Again",
            ]
        )
        == 1
    )
    assert "already registered" in capsys.readouterr().err
    spool = Spool(tmp_path / "spool")
    spool.accept(_study(slices=1)[0], "test")
    spool.accept(b"junk", "folder:/in/junk.dcm")
    spool.close()
    assert main(["gateway", "status", "--spool-dir", str(tmp_path / "spool")]) == 0
    out = capsys.readouterr().out
    assert "queued        1" in out and "quarantined   1" in out
    assert "folder:/in/junk.dcm: not a DICOM Part-10 file" in out
    assert main(["gateway", "status", "--spool-dir", str(tmp_path / "nowhere")]) == 2
    assert "not a gateway spool" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/gateway-api/v1/heartbeat", {"queued": -1}, 400),
        ("POST", "/gateway-api/v1/heartbeat", {"queued": "many"}, 400),
        ("POST", "/gateway-api/v1/instances/held", {"sop_instance_uids": ["1.2"] * 1001}, 400),
        ("POST", "/gateway-api/v1/studies/1.2.3/reconcile", {"instances": {"1.2": "nothex"}}, 400),
        ("POST", "/gateway-api/v1/studies/..%2F..%2Fetc/reconcile", {"instances": {}}, 404),
        ("POST", "/gateway-api/v1/studies/1.2.x/reconcile", {"instances": {}}, 400),
        ("GET", "/gateway-api/v1/studies/1.2.3/manifest", None, 404),
        ("GET", "/gateway-api/v1/send-backs/999/instances", None, 404),
        ("POST", "/gateway-api/v1/send-backs/999", {"ok": True}, 404),
        ("POST", "/api/hospitals/NOPE/send-backs", {"study_instance_uid": "1.2.3"}, 404),
        ("POST", "/api/hospitals/H1/send-backs", {"study_instance_uid": "x'; drop"}, 400),
    ],
)
def test_hostile_gateway_api_requests_are_refused_precisely(
    sqlite_node: Node, method: str, path: str, body: Any, status: int
) -> None:
    credential = sqlite_node.archive.hospitals.add_hospital("H1", "One")
    with client(sqlite_node) as http:
        # The gateway API takes the gateway's credential; the operators' API a staff sign-in.
        gateway = {"Authorization": f"Bearer {credential}"} if "gateway-api" in path else {}
        response = http.request(method, path, json=body, headers=gateway)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"]
        # nobody else's credential works, and no request changed what is stored
        assert http.get("/api/hospitals").json()["hospitals"][0]["studies"] == 0


def test_a_gateway_cannot_see_or_take_another_hospitals_study(sqlite_node: Node) -> None:
    archive = sqlite_node.archive
    first = archive.hospitals.add_hospital("H1", "One")
    second = archive.hospitals.add_hospital("H2", "Two")
    [data] = _study(slices=1)
    with client(sqlite_node) as http:
        boundary = "b0undary"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        stored = http.post(
            "/dicom-web/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Authorization": f"Bearer {first}",
            },
        )
        assert stored.status_code == 200
        study, sop = _uid(data, "StudyInstanceUID"), _uid(data, "SOPInstanceUID")
        other = {"Authorization": f"Bearer {second}"}
        assert (
            http.get(f"/gateway-api/v1/studies/{study}/manifest", headers=other).status_code == 404
        )
        held = http.post(
            "/gateway-api/v1/instances/held", json={"sop_instance_uids": [sop]}, headers=other
        )
        assert held.json() == {"instances": {}}
        mine = http.post(
            "/gateway-api/v1/instances/held",
            json={"sop_instance_uids": [sop]},
            headers={"Authorization": f"Bearer {first}"},
        )
        assert mine.json()["instances"] == {sop: hashlib.sha256(data).hexdigest()}
        wrong = http.post(
            "/dicom-web/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Authorization": "Bearer icg_forged",
            },
        )
        assert wrong.status_code == 401


def test_pull_decisions_fall_back_to_the_spool_while_the_cloud_is_down(
    tmp_path: Path,
) -> None:
    from gateway.config import GatewayConfig
    from gateway.service import Gateway

    gateway = Gateway(
        GatewayConfig(
            cloud_url=f"http://127.0.0.1:{free_port()}",
            credential="icg_x",
            spool_dir=tmp_path / "spool",
            hospital_id="H1",
        )
    )
    objects = _study(slices=2)
    study = _uid(objects[0], "StudyInstanceUID")
    assert gateway.wanted(study, 2)
    for data in objects:
        gateway.accept(data, "test")
    assert not gateway.wanted(study, 2)  # all in the spool: do not ask the PACS again
    assert gateway.wanted(study, 3)
    gateway.spool.close()
