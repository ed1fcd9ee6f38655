"""Benchmark the viewer (issue 4): MPR and rendered frames, imaging-cloud against Orthanc.

Measures, in one run, on a real 140-slice CT and a synthetic 512x512x300 CT:

1. In process (``mpr/`` alone): volume assembly (decode included), orthogonal thin slices
   and 160 mm MIPs per plane, window + JPEG / window + PNG of an axial 512² slice.
2. Over HTTP, in a private network namespace (the script re-executes itself under
   ``unshare --net``), imaging-cloud and Orthanc loaded with the same data by ``storescu``:
   the first rendered frame of a hot study (frames not requested before, each endpoint in a
   freshly started server whose study was opened by rendering one frame), rendered frames
   per second (1 and 2 keep-alive clients), and MPR over HTTP on the synthetic series.

Medians everywhere; goals and ratios are printed in a table; raw numbers go to
``bench/results/viewer-<time>.json``. See bench/README.md.

Usage: ``make bench`` or ``.venv/bin/python bench/viewer.py [--skip-http] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.run import (  # noqa: E402
    IMAGING_CLOUD,
    MB,
    NETNS_ENV,
    ORTHANC,
    RESULTS_DIR,
    DataSet,
    ImagingCloudServer,
    Target,
    auth_headers,
    console,
    enter_private_network,
    environment,
    ingest,
    make_data_set,
)
from imaging_cloud.synthetic import StudySpec, ct_series  # noqa: E402
from mpr.display import encode, to_display  # noqa: E402
from mpr.reslice import Mode, Plane, orthogonal, plane_geometry  # noqa: E402
from mpr.volume import Volume, assemble_volume  # noqa: E402
from mpr.window import Window  # noqa: E402
from tests.support.orthanc import LOOPBACK, OrthancServer  # noqa: E402

REAL_CT = Path("/work/shared/dicom-samples/ct/philips_ingenuity_head_phantom_axial_1mm")
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
WINDOW = Window(40.0, 400.0)
WINDOW_PARAM = "40,400"
JPEG, PNG = "image/jpeg", "image/png"
MAGIC = {JPEG: b"\xff\xd8\xff", PNG: b"\x89PNG"}

# Goals of issue 4 (seconds or frames/s; ratios are imaging-cloud time / Orthanc time).
GOAL_ASSEMBLY_S = 0.5
GOAL_THIN_S = 0.005
GOAL_MIP_S = 0.015
GOAL_FIRST_FRAME_S = 0.020
GOAL_JPEG_RATIO = 0.5
GOAL_PNG_RATIO = 0.2
GOAL_FPS = 300.0


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--skip-http", action="store_true", help="in-process (mpr/) part only, no servers"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="volume assemblies after the first call, and frames/s passes (>= 3; default 5)",
    )
    parser.add_argument("--ct-slices", type=int, default=300, help="synthetic CT slices")
    parser.add_argument("--ct-size", type=int, default=512, help="synthetic CT rows = columns")
    parser.add_argument("--real-ct", type=Path, default=REAL_CT, help="folder of the real CT")
    parser.add_argument("--mip-mm", type=float, default=160.0, help="MIP slab thickness")
    parser.add_argument(
        "--positions", type=int, default=15, help="plane positions timed per plane (default 15)"
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    if args.positions < 3:
        parser.error("--positions must be at least 3")
    return args


def enter_own_private_network() -> None:
    """Like bench.run.enter_private_network, but re-executes *this* script."""
    if os.environ.get(NETNS_ENV) != "1":
        if shutil.which("unshare") is None:
            sys.exit("bench: `unshare` (util-linux) is needed to isolate the servers")
        command = ["unshare", "--net"]
        if os.geteuid() != 0:
            command.append("--map-root-user")
        command += ["--", sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
        os.execvpe("unshare", command, {**os.environ, NETNS_ENV: "1"})
    enter_private_network()  # inside the namespace already: brings `lo` up, checks it is alone


# -- statistics -------------------------------------------------------------------------------


@dataclass
class Samples:
    """Durations in seconds of one measure, in the order taken."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p90(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, float | int]:
        return {
            "n": len(self.seconds),
            "median": self.median,
            "p90": self.p90,
            "min": min(self.seconds),
            "max": max(self.seconds),
        }


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def spread(low: float, high: float, count: int) -> list[float]:
    """``count`` positions strictly inside ``[low, high]``, mostly between slices."""
    return [float(v) for v in np.linspace(low, high, count + 2)[1:-1]]


# -- data -------------------------------------------------------------------------------------


@dataclass
class CtData:
    """One CT series: on disk for storescu, in memory (file bytes) for the in-process part."""

    key: str
    label: str
    data_set: DataSet
    blobs: list[bytes]

    def datasets(self) -> list[Dataset]:
        """Fresh pydicom datasets (nothing decoded or cached yet) from the file bytes."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [pydicom.dcmread(io.BytesIO(blob)) for blob in self.blobs]


def load_ct(key: str, label: str, folder: Path, data_set: DataSet) -> CtData:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    return CtData(key, label, data_set, [p.read_bytes() for p in paths])


def synthetic_ct(root: Path, args: argparse.Namespace) -> CtData:
    label = f"synthetic CT {args.ct_slices} x {args.ct_size}²"
    folder = root / "synthetic"
    data_set = make_data_set(
        "synthetic",
        label,
        folder,
        ct_series(StudySpec(), slices=args.ct_slices, size=args.ct_size),
    )
    return load_ct("synthetic", label, folder, data_set)


def real_ct(folder: Path) -> CtData:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    if not paths:
        raise RuntimeError(f"no files in {folder}")
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    size = f"{first.Rows}²" if first.Rows == first.Columns else f"{first.Rows}x{first.Columns}"
    label = f"real CT {len(paths)} x {size}"
    data_set = DataSet(
        key="real",
        label=label,
        folder=folder,
        instances=len(paths),
        bytes=sum(p.stat().st_size for p in paths),
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
    )
    return load_ct("real", label, folder, data_set)


# -- 1. in process ----------------------------------------------------------------------------


@dataclass
class InProcess:
    label: str
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    assembly_first: float
    assembly: Samples
    thin: dict[str, Samples]
    mip: dict[str, Samples]
    jpeg: Samples
    png: Samples
    jpeg_bytes: int
    png_bytes: int
    plane_sizes: dict[str, tuple[int, int]]


def time_assembly(ct: CtData, repeats: int) -> tuple[float, Samples, Volume]:
    """The first assembly of this process for ``ct``, then ``repeats`` more (decode included).

    Every call gets datasets freshly read by pydicom (untimed), so nothing decoded by one call
    is reused by the next.
    """
    first, samples, volume = 0.0, Samples(), None
    for run in range(repeats + 1):
        datasets = ct.datasets()
        started = time.perf_counter()
        volume = assemble_volume(datasets)
        seconds = time.perf_counter() - started
        if run == 0:
            first = seconds
        else:
            samples.seconds.append(seconds)
        del datasets
    assert volume is not None
    return first, samples, volume


def time_planes(
    volume: Volume, plane: Plane, positions: Sequence[float], mode: Mode, thickness: float
) -> Samples:
    samples = Samples()
    for position in positions:
        started = time.perf_counter()
        orthogonal(volume, plane, position, mode=mode, thickness_mm=thickness)
        samples.seconds.append(time.perf_counter() - started)
    return samples


def time_display(pixels: np.ndarray, media_type: str, count: int) -> tuple[Samples, int]:
    size = len(encode(to_display(pixels, WINDOW), media_type))  # first call: not timed
    samples = Samples()
    for _ in range(count):
        started = time.perf_counter()
        encode(to_display(pixels, WINDOW), media_type)
        samples.seconds.append(time.perf_counter() - started)
    return samples, size


def bench_in_process(ct: CtData, args: argparse.Namespace) -> InProcess:
    console.rule(f"in process (mpr/): {ct.label}")
    first, assembly, volume = time_assembly(ct, args.repeats)
    console.log(
        f"  volume {volume.voxels.shape} {volume.voxels.dtype}, spacing {volume.spacing} mm: "
        f"assembly first call {first * 1000:.0f} ms, median of {args.repeats} more "
        f"{assembly.median * 1000:.0f} ms"
    )
    thin: dict[str, Samples] = {}
    mip: dict[str, Samples] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for plane in PLANES:
        geometry = plane_geometry(volume, plane)
        low, high = geometry.position_range_mm
        orthogonal(volume, plane, (low + high) / 2)  # first call of the plane: not timed
        positions = spread(low, high, args.positions)
        thin[plane] = time_planes(volume, plane, positions, "thin", 0.0)
        mip[plane] = time_planes(volume, plane, positions, "mip", args.mip_mm)
        sizes[plane] = (geometry.rows, geometry.columns)
        console.log(
            f"  {plane} {geometry.rows}x{geometry.columns} px: thin {thin[plane].median * 1000:.2f}"
            f" ms, MIP {args.mip_mm:g} mm {mip[plane].median * 1000:.2f} ms "
            f"(medians of {args.positions} positions)"
        )
    low, high = plane_geometry(volume, "axial").position_range_mm
    pixels = orthogonal(volume, "axial", (low + high) / 2).pixels
    count = max(args.positions, 10)
    jpeg, jpeg_bytes = time_display(pixels, JPEG, count)
    png, png_bytes = time_display(pixels, PNG, count)
    console.log(
        f"  axial {pixels.shape[0]}x{pixels.shape[1]} {pixels.dtype} → window {WINDOW_PARAM}: "
        f"+JPEG {jpeg.median * 1000:.2f} ms ({jpeg_bytes:,} B), "
        f"+PNG {png.median * 1000:.2f} ms ({png_bytes:,} B)"
    )
    return InProcess(
        label=ct.label,
        shape=tuple(int(v) for v in volume.voxels.shape),
        spacing_mm=tuple(float(v) for v in volume.spacing),
        assembly_first=first,
        assembly=assembly,
        thin=thin,
        mip=mip,
        jpeg=jpeg,
        png=png,
        jpeg_bytes=jpeg_bytes,
        png_bytes=png_bytes,
        plane_sizes=sizes,
    )


# -- HTTP client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


class KeepAlive(http.client.HTTPConnection):
    """One HTTP/1.1 keep-alive connection (http.client: little client work per request).

    ``connects`` counts TCP connections made, so a server closing the connection after a
    response (which http.client silently reopens) shows up in the results. A request on a
    reused connection that the server closed while it was idle (Orthanc's default
    ``KeepAliveTimeout`` is 1 s) is sent again once on a new connection; ``retries`` counts
    those.
    """

    def __init__(self, base_url: str, token: str = "") -> None:
        parts = urlsplit(base_url)
        super().__init__(parts.hostname or LOOPBACK, parts.port, timeout=600)
        self.auth = auth_headers(token)  # sent with every request (imaging-cloud only)
        self.connects = 0
        self.retries = 0

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1

    def call(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Reply:
        headers = {**self.auth, **headers}
        for attempt in (1, 2):
            reused = self.sock is not None
            try:
                self.request(method, path, body=body or None, headers=headers)
                response = self.getresponse()
                data = response.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.close()
                if not reused or attempt == 2:
                    raise
                self.retries += 1
                continue
            fields = {name.lower(): value for name, value in response.getheaders()}
            return Reply(response.status, fields.get("content-type", ""), data, fields)
        raise AssertionError("unreachable")

    def fetch(self, path: str, accept: str) -> Reply:
        return self.call("GET", path, {"Accept": accept, "Accept-Encoding": "identity"})

    def fetch_ok(self, path: str, accept: str) -> Reply:
        reply = self.fetch(path, accept)
        if reply.status != 200:
            raise RuntimeError(f"GET {path} ({accept}) → {reply.status}: {reply.body[:300]!r}")
        return reply


# -- 2. HTTP: servers and data ----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A rendered-image URL on one server, timed in a freshly started process."""

    key: str
    server: str
    label: str
    accept: str
    template: str  # {study} {series} {sop} {orthanc_id}
    open_path: str  # what "opening the study" requests before the first frame
    params: tuple[tuple[str, str], ...] = ()

    def path(self, study: str, series: str, sop: str, orthanc_id: str = "") -> str:
        path = self.template.format(study=study, series=series, sop=sop, orthanc_id=orthanc_id)
        return f"{path}?{urlencode(self.params)}" if self.params else path


INSTANCE = "/studies/{study}/series/{series}/instances/{sop}"
QIDO = "/dicom-web/studies/{study}/series/{series}/instances"
VIEWER_STUDY = "/viewer-api/studies/{study}"
ENDPOINTS = (
    Endpoint(
        "viewer-jpeg",
        IMAGING_CLOUD,
        "/viewer-api …/frames/1/rendered, window=40,400, JPEG",
        JPEG,
        "/viewer-api" + INSTANCE + "/frames/1/rendered",
        VIEWER_STUDY,
        (("window", WINDOW_PARAM),),
    ),
    Endpoint(
        "viewer-png",
        IMAGING_CLOUD,
        "/viewer-api …/frames/1/rendered, window=40,400, PNG",
        PNG,
        "/viewer-api" + INSTANCE + "/frames/1/rendered",
        VIEWER_STUDY,
        (("window", WINDOW_PARAM),),
    ),
    Endpoint(
        "dicomweb-jpeg",
        IMAGING_CLOUD,
        "DICOMweb …/rendered, JPEG",
        JPEG,
        "/dicom-web" + INSTANCE + "/rendered",
        QIDO,
    ),
    Endpoint(
        "dicomweb-png",
        IMAGING_CLOUD,
        "DICOMweb …/rendered, PNG",
        PNG,
        "/dicom-web" + INSTANCE + "/rendered",
        QIDO,
    ),
    Endpoint(
        "dicomweb-jpeg",
        ORTHANC,
        "DICOMweb …/rendered, JPEG",
        JPEG,
        "/dicom-web" + INSTANCE + "/rendered",
        QIDO,
    ),
    Endpoint(
        "dicomweb-png",
        ORTHANC,
        "DICOMweb …/rendered, PNG",
        PNG,
        "/dicom-web" + INSTANCE + "/rendered",
        QIDO,
    ),
    Endpoint(
        "preview-png",
        ORTHANC,
        "native /instances/{id}/preview, PNG",
        PNG,
        "/instances/{orthanc_id}/preview",
        QIDO,
    ),
)


@dataclass(frozen=True)
class Node:
    """A running server: its base URL, and the bench user's token (imaging-cloud only)."""

    url: str
    token: str = ""


ServerStarter = Callable[[], AbstractContextManager[Node]]


@dataclass
class Servers:
    """How to (re)start each server on its loaded data, and what the data is called there."""

    start: dict[str, ServerStarter]
    versions: dict[str, str]
    sop_order: list[str]  # real CT instances in display order (imaging-cloud's viewer API)
    orthanc_ids: dict[str, str]  # SOP Instance UID -> Orthanc instance ID
    ingest_seconds: dict[str, dict[str, float]]


class RunningImagingCloud(AbstractContextManager[Node]):
    """A new ``imaging-cloud serve`` process on existing data; ``with`` gives its URL, token."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.server = ImagingCloudServer(workdir, timeout)

    def __enter__(self) -> Node:
        try:
            self.server.__enter__()
        except BaseException:
            console.print(f"[red]imaging-cloud log:[/]\n{self.server.log_tail()}")
            raise
        return Node(self.server.base_url, self.server.token)

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is not None:
            console.print(f"[red]imaging-cloud log:[/]\n{self.server.log_tail()}")
        self.server.stop()


class RunningOrthanc(AbstractContextManager[Node]):
    """A new Orthanc process on existing storage; ``with`` gives its base URL."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.server = OrthancServer(startup_timeout=timeout, workdir=workdir)

    def __enter__(self) -> Node:
        self.server.start()
        return Node(self.server.base_url)

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is not None:
            console.print(f"[red]Orthanc log:[/]\n{self.server.log_tail()}")
        self.server.stop()


def load_imaging_cloud(
    workdir: Path, data: Sequence[CtData], real: CtData, args: argparse.Namespace
) -> tuple[list[str], dict[str, float], str]:
    server = ImagingCloudServer(workdir, args.startup_timeout)
    seconds = {}
    try:
        with server:
            target = Target(
                IMAGING_CLOUD, server.aet, server.dicom_port, server.dicomweb_url, "", server.token
            )
            for ct in data:
                seconds[ct.key] = ingest(target, ct.data_set).seconds
                console.log(f"  storescu → {IMAGING_CLOUD}: {ct.label} in {seconds[ct.key]:.1f} s")
            connection = KeepAlive(server.base_url, server.token)
            study = connection.fetch_ok(VIEWER_STUDY.format(study=real.data_set.study_uid), "*/*")
            connection.close()
    except BaseException:
        console.print(f"[red]imaging-cloud log ({server.log_path}):[/]\n{server.log_tail()}")
        raise
    series = [
        s
        for s in json.loads(study.body)["series"]
        if s["series_instance_uid"] == real.data_set.series_uid
    ]
    order = [item["sop_instance_uid"] for item in series[0]["instances"]] if series else []
    if len(order) != real.data_set.instances:
        raise RuntimeError(f"viewer API lists {len(order)} instances of {real.label}")
    return order, seconds, f"imaging-cloud {_version('imaging-cloud')}"


def load_orthanc(
    workdir: Path, data: Sequence[CtData], real: CtData, args: argparse.Namespace
) -> tuple[dict[str, str], dict[str, float], str]:
    seconds, ids = {}, {}
    with RunningOrthanc(workdir, args.startup_timeout) as node:
        base_url = node.url
        connection = KeepAlive(base_url)
        system = json.loads(connection.fetch_ok("/system", "application/json").body)
        plugin = json.loads(connection.fetch_ok("/plugins/dicom-web", "application/json").body)
        version = f"Orthanc {system['Version']}, DICOMweb plugin {plugin.get('Version', '?')}"
        target = Target(
            ORTHANC, system["DicomAet"], system["DicomPort"], base_url + "/dicom-web", ""
        )
        for ct in data:
            seconds[ct.key] = ingest(target, ct.data_set).seconds
            console.log(f"  storescu → {ORTHANC}: {ct.label} in {seconds[ct.key]:.1f} s")
        for path in sorted(p for p in real.data_set.folder.rglob("*") if p.is_file()):
            sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            answer = connection.call("POST", "/tools/lookup", {}, sop.encode())
            found = [i["ID"] for i in json.loads(answer.body) if i.get("Type") == "Instance"]
            if len(found) != 1:
                raise RuntimeError(f"Orthanc /tools/lookup {sop}: {found}")
            ids[sop] = found[0]
        connection.close()
    return ids, seconds, version


def prepare_servers(
    workdir: Path, data: Sequence[CtData], real: CtData, args: argparse.Namespace
) -> Servers:
    console.rule("loading both servers with storescu")
    order, ic_seconds, ic_version = load_imaging_cloud(workdir / "imaging-cloud", data, real, args)
    ids, orthanc_seconds, orthanc_version = load_orthanc(workdir / "orthanc", data, real, args)
    if set(ids) != set(order):
        raise RuntimeError("imaging-cloud and Orthanc do not hold the same real-CT instances")
    return Servers(
        start={
            IMAGING_CLOUD: lambda: RunningImagingCloud(
                workdir / "imaging-cloud", args.startup_timeout
            ),
            ORTHANC: lambda: RunningOrthanc(workdir / "orthanc", args.startup_timeout),
        },
        versions={IMAGING_CLOUD: ic_version, ORTHANC: orthanc_version},
        sop_order=order,
        orthanc_ids=ids,
        ingest_seconds={IMAGING_CLOUD: ic_seconds, ORTHANC: orthanc_seconds},
    )


# -- 2a/2b. first frames of a hot study, frames per second ------------------------------------


@dataclass
class EndpointResult:
    server: str
    key: str
    label: str
    accept: str
    warm_up_seconds: float  # opening the study + the one frame rendered to warm it
    first_frames: Samples
    content_types: dict[str, int]
    median_bytes: int
    x_window: list[str]
    fps_one: list[float]
    fps_two: list[float]
    connections: dict[str, int]


def _check_image(reply: Reply, endpoint: Endpoint, path: str) -> None:
    if reply.status != 200:
        raise RuntimeError(f"{endpoint.server} GET {path} → {reply.status}: {reply.body[:300]!r}")
    kind = reply.content_type.split(";")[0].strip().lower()
    if not reply.body.startswith(MAGIC.get(kind, b"?")):
        raise RuntimeError(f"{endpoint.server} GET {path}: body is not {kind!r}")


def _fetch_all(
    connection: KeepAlive,
    endpoint: Endpoint,
    paths: list[str],
    barrier: threading.Barrier,
    errors: list[BaseException],
) -> None:
    """One client of a frames/s pass: wait for the start, then request ``paths`` in order."""
    barrier.wait()
    try:
        for path in paths:
            _check_image(connection.fetch(path, endpoint.accept), endpoint, path)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def _frames_per_second(
    node: Node, endpoint: Endpoint, paths: list[str], clients: int, repeats: int
) -> tuple[list[float], tuple[int, int]]:
    """``repeats`` passes over all ``paths``, split between ``clients`` keep-alive clients."""
    connections = [KeepAlive(node.url, node.token) for _ in range(clients)]
    for connection in connections:
        connection.connect()
    rates = []
    for _ in range(repeats):
        barrier = threading.Barrier(clients + 1)
        errors: list[BaseException] = []

        threads = [
            threading.Thread(
                target=_fetch_all,
                args=(connections[i], endpoint, paths[i::clients], barrier, errors),
            )
            for i in range(clients)
        ]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        if errors:
            raise RuntimeError(f"{endpoint.server} {endpoint.key}: {errors[0]}")
        rates.append(len(paths) / seconds)
    made = sum(c.connects for c in connections), sum(c.retries for c in connections)
    for connection in connections:
        connection.close()
    return rates, made


def bench_endpoint(
    servers: Servers, endpoint: Endpoint, real: CtData, args: argparse.Namespace
) -> EndpointResult:
    study, series = real.data_set.study_uid, real.data_set.series_uid
    paths = [
        endpoint.path(study, series, sop, servers.orthanc_ids[sop]) for sop in servers.sop_order
    ]
    with servers.start[endpoint.server]() as node:
        connection = KeepAlive(node.url, node.token)
        started = time.perf_counter()
        connection.fetch_ok(endpoint.open_path.format(study=study, series=series), "*/*")
        warm = connection.fetch(paths[0], endpoint.accept)
        warm_up = time.perf_counter() - started
        _check_image(warm, endpoint, paths[0])
        first = Samples()
        types: dict[str, int] = {}
        sizes, windows = [], set()
        for path in paths[1:]:
            seconds, reply = timed(lambda path=path: connection.fetch(path, endpoint.accept))  # type: ignore[misc]
            _check_image(reply, endpoint, path)
            first.seconds.append(seconds)
            types[reply.content_type] = types.get(reply.content_type, 0) + 1
            sizes.append(len(reply.body))
            windows.add(reply.headers.get("x-window", "-"))
        first_connects = connection.connects, connection.retries
        connection.close()
        fps_one, one_connects = _frames_per_second(node, endpoint, paths, 1, args.repeats)
        fps_two, two_connects = _frames_per_second(node, endpoint, paths, 2, args.repeats)
    result = EndpointResult(
        server=endpoint.server,
        key=endpoint.key,
        label=endpoint.label,
        accept=endpoint.accept,
        warm_up_seconds=warm_up,
        first_frames=first,
        content_types=types,
        median_bytes=int(statistics.median(sizes)),
        x_window=sorted(windows),
        fps_one=fps_one,
        fps_two=fps_two,
        connections={
            "first_frames": first_connects[0],
            "fps_1": one_connects[0],
            "fps_2": two_connects[0],
            "retries": first_connects[1] + one_connects[1] + two_connects[1],
        },
    )
    console.log(
        f"  {endpoint.server:13} {endpoint.label}: first frames median "
        f"{first.median * 1000:.1f} ms (p90 {first.p90 * 1000:.1f}, n={len(first.seconds)}), "
        f"{', '.join(types)}, {result.median_bytes:,} B; frames/s 1 client "
        f"{statistics.median(fps_one):.0f}, 2 clients {statistics.median(fps_two):.0f}"
    )
    return result


# -- 2c. MPR over HTTP ------------------------------------------------------------------------


@dataclass
class MprHttp:
    label: str
    open_seconds: float
    cold_axial: float
    cold_bytes: int
    thin: dict[str, Samples]
    mip: dict[str, Samples]
    revalidation: Samples  # If-None-Match with the current ETag: index work alone, no pixels
    connections: int


def _mpr_path(study: str, series: str, **params: object) -> str:
    query = urlencode({key: str(value) for key, value in params.items()})
    return f"/viewer-api/studies/{study}/series/{series}/mpr?{query}"


def _timed_mpr(connection: KeepAlive, path: str, plane: str) -> float:
    seconds, reply = timed(lambda: connection.fetch(path, JPEG))
    if reply.status != 200 or not reply.body.startswith(MAGIC[JPEG]):
        raise RuntimeError(
            f"GET {path} → {reply.status} {reply.content_type}: {reply.body[:300]!r}"
        )
    geometry = json.loads(reply.headers.get("x-mpr-geometry", "{}"))
    if geometry.get("plane") != plane:
        raise RuntimeError(f"GET {path}: X-MPR-Geometry {geometry}")
    return seconds


def bench_mpr_http(servers: Servers, ct: CtData, args: argparse.Namespace) -> MprHttp:
    study, series = ct.data_set.study_uid, ct.data_set.series_uid
    with servers.start[IMAGING_CLOUD]() as node:
        connection = KeepAlive(node.url, node.token)
        opened, _ = timed(lambda: connection.fetch_ok(VIEWER_STUDY.format(study=study), "*/*"))
        cold_path = _mpr_path(study, series, plane="axial", window=WINDOW_PARAM)
        cold, reply = timed(lambda: connection.fetch(cold_path, JPEG))
        if reply.status != 200:
            raise RuntimeError(f"GET {cold_path} → {reply.status}: {reply.body[:300]!r}")
        info = json.loads(
            connection.fetch_ok(
                f"/viewer-api/studies/{study}/series/{series}/volume", "application/json"
            ).body
        )
        thin: dict[str, Samples] = {}
        mip: dict[str, Samples] = {}
        for plane in PLANES:
            low, high = info["planes"][plane]["position_range_mm"]
            positions = spread(low, high, args.positions)
            thin[plane] = Samples(
                [
                    _timed_mpr(
                        connection,
                        _mpr_path(
                            study, series, plane=plane, position=f"{p:.3f}", window=WINDOW_PARAM
                        ),
                        plane,
                    )
                    for p in positions
                ]
            )
            mip[plane] = Samples(
                [
                    _timed_mpr(
                        connection,
                        _mpr_path(
                            study,
                            series,
                            plane=plane,
                            position=f"{p:.3f}",
                            mode="mip",
                            thickness=f"{args.mip_mm:g}",
                            window=WINDOW_PARAM,
                        ),
                        plane,
                    )
                    for p in positions
                ]
            )
            console.log(
                f"  MPR over HTTP {plane}: thin {thin[plane].median * 1000:.1f} ms, "
                f"MIP {args.mip_mm:g} mm {mip[plane].median * 1000:.1f} ms"
            )
        revalidation = _revalidations(connection, cold_path, args.positions)
        connects = connection.connects
        connection.close()
    console.log(
        f"  cold /mpr?plane=axial (read + assemble + reslice): {cold:.2f} s; "
        f"304 revalidation {revalidation.median * 1000:.1f} ms"
    )
    return MprHttp(ct.label, opened, cold, len(reply.body), thin, mip, revalidation, connects)


def _revalidations(connection: KeepAlive, path: str, count: int) -> Samples:
    """Time ``If-None-Match`` requests answered 304: the per-request work besides pixels."""
    etag = connection.fetch_ok(path, JPEG).headers.get("etag", "")
    samples = Samples()
    for _ in range(count):
        headers = {"Accept": JPEG, "If-None-Match": etag}
        seconds, reply = timed(lambda: connection.call("GET", path, headers))  # noqa: B023
        if reply.status != 304:
            raise RuntimeError(f"GET {path} with If-None-Match {etag} → {reply.status}")
        samples.seconds.append(seconds)
    return samples


# -- report -----------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.2f}" if seconds < 0.01 else f"{seconds * 1000:,.1f}"


def _value(value: float | None, unit: str) -> str:
    if unit == "ms":
        return _ms(value)
    return "-" if value is None else f"{value:,.0f}"


def _met(ok: bool | None) -> str:
    if ok is None:
        return "-"
    return "[green]met[/]" if ok else "[red]NOT met[/]"


def in_process_table(results: list[InProcess], args: argparse.Namespace) -> Table:
    table = Table(title=f"In process (mpr/ alone), medians; window {WINDOW_PARAM}")
    table.add_column("Measure")
    table.add_column("Unit")
    for result in results:
        table.add_column(result.label, justify="right")
    table.add_column("Goal", justify="right")
    table.add_column("Met?", justify="center")

    def row(label: str, values: list[float], goal: float | None, goal_text: str = "") -> None:
        checks = "-" if goal is None else " / ".join(_met(v < goal) for v in values)
        table.add_row(label, "ms", *(_ms(v) for v in values), goal_text or "-", checks)

    row("Volume assembly, first call", [r.assembly_first for r in results], None)
    row(
        f"Volume assembly, median of {args.repeats}",
        [r.assembly.median for r in results],
        GOAL_ASSEMBLY_S,
        f"< {GOAL_ASSEMBLY_S * 1000:.0f} ms",
    )
    for plane in PLANES:
        row(
            f"Thin slice, {plane}",
            [r.thin[plane].median for r in results],
            GOAL_THIN_S,
            f"< {GOAL_THIN_S * 1000:g} ms",
        )
    for plane in PLANES:
        row(
            f"MIP {args.mip_mm:g} mm, {plane}",
            [r.mip[plane].median for r in results],
            GOAL_MIP_S,
            f"< {GOAL_MIP_S * 1000:g} ms",
        )
    row("Window + JPEG, axial slice", [r.jpeg.median for r in results], None)
    row("Window + PNG, axial slice", [r.png.median for r in results], None)
    return table


def _result(results: list[EndpointResult], server: str, key: str) -> EndpointResult | None:
    return next((r for r in results if r.server == server and r.key == key), None)


def http_table(results: list[EndpointResult], real: CtData) -> Table:
    table = Table(
        title=f"Over HTTP, {real.label}, medians (one keep-alive client unless said)",
        caption="ms: lower is better, ratio = imaging-cloud / Orthanc time; "
        "frames/s: higher is better, ratio = imaging-cloud / Orthanc rate",
    )
    for name, justify in (
        ("Measure", "left"),
        ("Unit", "left"),
        (IMAGING_CLOUD, "right"),
        (ORTHANC, "right"),
        ("ratio ic/Orthanc", "right"),
        ("Goal", "right"),
        ("Met?", "center"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]

    def pair(
        label: str,
        unit: str,
        ours_key: str,
        theirs_key: str | None,
        value: Callable[[EndpointResult], float],
        goal: tuple[str, Callable[[float, float | None], bool]] | None = None,
    ) -> None:
        ours = _result(results, IMAGING_CLOUD, ours_key)
        theirs = _result(results, ORTHANC, theirs_key) if theirs_key else None
        mine = value(ours) if ours else None
        other = value(theirs) if theirs else None
        ratio = None if mine is None or not other else mine / other
        met = None
        if goal is not None and mine is not None:
            met = goal[1](mine, ratio) if "x" not in goal[0] or ratio is not None else None
        table.add_row(
            label,
            unit,
            _value(mine, unit),
            _value(other, unit),
            "-" if ratio is None else f"{ratio:.3f}x",
            "-" if goal is None else goal[0],
            _met(met),
        )

    def first(r: EndpointResult) -> float:
        return r.first_frames.median

    def one(r: EndpointResult) -> float:
        return statistics.median(r.fps_one)

    def two(r: EndpointResult) -> float:
        return statistics.median(r.fps_two)

    n = max((len(r.first_frames.seconds) for r in results), default=0)
    pair(
        f"First frame (hot study), /viewer-api rendered JPEG, n={n}",
        "ms",
        "viewer-jpeg",
        None,
        first,
        (f"< {GOAL_FIRST_FRAME_S * 1000:g} ms", lambda v, _: v < GOAL_FIRST_FRAME_S),
    )
    pair(
        "First frame, DICOMweb /rendered JPEG (both)",
        "ms",
        "dicomweb-jpeg",
        "dicomweb-jpeg",
        first,
        (f"≤ {GOAL_JPEG_RATIO:.2f}x", lambda _, r: r is not None and r <= GOAL_JPEG_RATIO),
    )
    pair(
        "First frame, PNG: /viewer-api vs Orthanc /preview",
        "ms",
        "viewer-png",
        "preview-png",
        first,
        (f"≤ {GOAL_PNG_RATIO:.2f}x", lambda _, r: r is not None and r <= GOAL_PNG_RATIO),
    )
    pair("First frame, DICOMweb /rendered PNG (both)", "ms", "dicomweb-png", "dicomweb-png", first)
    for clients, getter in (("1 client", one), ("2 clients", two)):
        pair(
            f"Frames/s, {clients}, /viewer-api JPEG",
            "frames/s",
            "viewer-jpeg",
            None,
            getter,
            (f"≥ {GOAL_FPS:.0f}", lambda v, _: v >= GOAL_FPS),
        )
        pair(
            f"Frames/s, {clients}, DICOMweb JPEG (both)",
            "frames/s",
            "dicomweb-jpeg",
            "dicomweb-jpeg",
            getter,
        )
        pair(
            f"Frames/s, {clients}, PNG: /viewer-api vs /preview",
            "frames/s",
            "viewer-png",
            "preview-png",
            getter,
        )
        pair(
            f"Frames/s, {clients}, DICOMweb PNG (both)",
            "frames/s",
            "dicomweb-png",
            "dicomweb-png",
            getter,
        )
    return table


def mpr_table(result: MprHttp, in_process: InProcess | None, args: argparse.Namespace) -> Table:
    table = Table(
        title=f"MPR over HTTP (imaging-cloud), {result.label}, JPEG, window {WINDOW_PARAM}",
        caption=f"medians of {args.positions} positions per plane, no If-None-Match; "
        "in-process column = orthogonal() alone, no windowing/encoding/HTTP",
    )
    table.add_column("Measure")
    table.add_column("HTTP median ms", justify="right")
    table.add_column("HTTP p90 ms", justify="right")
    table.add_column("in process ms", justify="right")
    table.add_row(
        "Cold /mpr?plane=axial (read + assemble + reslice)", _ms(result.cold_axial), "-", "-"
    )
    for mode, samples, local in (
        ("thin", result.thin, in_process.thin if in_process else None),
        (f"MIP {args.mip_mm:g} mm", result.mip, in_process.mip if in_process else None),
    ):
        for plane in PLANES:
            table.add_row(
                f"Warm {mode}, {plane}",
                _ms(samples[plane].median),
                _ms(samples[plane].p90),
                _ms(local[plane].median) if local else "-",
            )
    table.add_row(
        "Revalidation → 304 (If-None-Match; index and ETag only)",
        _ms(result.revalidation.median),
        _ms(result.revalidation.p90),
        "-",
    )
    return table


def machine() -> dict[str, Any]:
    facts = environment()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        facts["cpu"] = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
        )
    except (OSError, StopIteration):
        facts["cpu"] = "?"
    facts["affinity_cpus"] = len(os.sched_getaffinity(0))
    facts["python_implementation"] = platform.python_implementation()
    facts["packages"] = {
        name: _version(name)
        for name in (
            "imaging-cloud",
            "numpy",
            "scipy",
            "pydicom",
            "simplejpeg",
            "pillow",
            "uvicorn",
            "fastapi",
        )
    }
    facts["loadavg"] = os.getloadavg()
    return facts


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def print_machine(facts: dict[str, Any], versions: dict[str, str] | None = None) -> None:
    packages = ", ".join(f"{k} {v}" for k, v in facts["packages"].items())
    load = ", ".join(f"{v:.2f}" for v in facts["loadavg"])
    console.print(
        f"machine: {facts['cpus']} cores ({facts['affinity_cpus']} usable), {facts['cpu']}, "
        f"kernel {facts['kernel']}, Python {facts['python']}; load average now {load}"
    )
    console.print(f"packages: {packages}; {facts['storescu']}")
    for name, version in (versions or {}).items():
        console.print(f"{name}: {version}")


def print_notes(endpoints: list[EndpointResult], mpr: MprHttp | None) -> None:
    for r in endpoints:
        types = ", ".join(f"{t} x{n}" for t, n in r.content_types.items())
        fps = "/".join(f"{v:.0f}" for v in r.fps_one)
        fps2 = "/".join(f"{v:.0f}" for v in r.fps_two)
        console.print(
            f"  {r.server} {r.label} (Accept {r.accept}): returned {types}; median "
            f"{r.median_bytes:,} B; X-Window {','.join(r.x_window)}; first frames p90 "
            f"{r.first_frames.p90 * 1000:.1f} ms, max {max(r.first_frames.seconds) * 1000:.1f} ms; "
            f"open + warm frame {r.warm_up_seconds * 1000:.0f} ms; frames/s runs 1 client {fps}, "
            f"2 clients {fps2}; TCP connections {r.connections}"
        )
    if mpr is not None:
        console.print(
            f"  MPR: cold response {mpr.cold_bytes:,} B; study opened first in "
            f"{mpr.open_seconds * 1000:.0f} ms; TCP connections {mpr.connections}"
        )


def _samples_json(value: Any) -> Any:
    if isinstance(value, Samples):
        return {**value.summary(), "seconds": value.seconds}
    if isinstance(value, dict):
        return {k: _samples_json(v) for k, v in value.items()}
    return value


def _dataclass_json(result: Any) -> dict[str, Any]:
    return {f: _samples_json(getattr(result, f)) for f in result.__dataclass_fields__}


def save_results(payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / time.strftime("viewer-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


# -- main -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> None:
    facts = machine()
    print_machine(facts)
    console.log(f"generating the synthetic CT in {workdir}")
    synthetic = synthetic_ct(workdir / "input", args)
    real = real_ct(args.real_ct)
    data = [synthetic, real]
    for ct in data:
        console.log(
            f"  {ct.label}: {ct.data_set.instances} files, {ct.data_set.bytes / MB:.1f} MB "
            f"in {ct.data_set.folder}"
        )
    in_process = [bench_in_process(ct, args) for ct in data]
    endpoints: list[EndpointResult] = []
    mpr: MprHttp | None = None
    servers: Servers | None = None
    if not args.skip_http:
        servers = prepare_servers(workdir / "servers", data, real, args)
        console.rule("first frames of a hot study, frames/s (a fresh server per endpoint)")
        endpoints = [bench_endpoint(servers, endpoint, real, args) for endpoint in ENDPOINTS]
        console.rule(f"MPR over HTTP: {synthetic.label}")
        mpr = bench_mpr_http(servers, synthetic, args)
    facts["loadavg_after"] = os.getloadavg()
    console.print()
    print_machine(facts, servers.versions if servers else None)
    console.print(f"load average after: {', '.join(f'{v:.2f}' for v in facts['loadavg_after'])}")
    console.print(in_process_table(in_process, args))
    if endpoints:
        console.print(http_table(endpoints, real))
        print_notes(endpoints, mpr)
    if mpr is not None:
        console.print(mpr_table(mpr, in_process[0], args))
    payload = {
        "environment": facts,
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "versions": servers.versions if servers else {},
        "data_sets": [{**asdict(ct.data_set), "folder": str(ct.data_set.folder)} for ct in data],
        "ingest_seconds": servers.ingest_seconds if servers else {},
        "in_process": [_dataclass_json(r) for r in in_process],
        "http_endpoints": [_dataclass_json(r) for r in endpoints],
        "mpr_http": _dataclass_json(mpr) if mpr else None,
    }
    console.log(f"raw results: {save_results(payload)}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.skip_http:
        enter_own_private_network()
    workdir = Path(tempfile.mkdtemp(prefix="imaging-cloud-bench-viewer-"))
    try:
        run(args, workdir)
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        console.print(f"[red]bench failed:[/] {exc}")
        return 1
    finally:
        if args.keep:
            console.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
