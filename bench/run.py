"""Benchmark imaging-cloud against Orthanc on the same data, in one run.

Measures, for each server:

1. C-STORE ingest from one DCMTK ``storescu`` process (one association per data set) of
   (a) a 300-slice 512x512 16-bit CT series and (b) 2,000 small secondary-capture
   instances: instances/s and MB/s of file bytes, wall-clock of the storescu run;
2. WADO-RS retrieval of the whole CT series as multipart/related application/dicom
   (``transfer-syntax=*``): MB/s of response body, best of 3.

Everything runs inside a private network namespace (the script re-executes itself under
``unshare --net``), so both servers are reachable only from loopback. See bench/README.md.

Usage: ``make bench`` or ``.venv/bin/python bench/run.py [--only orthanc|imaging-cloud]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pydicom
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from imaging_cloud.synthetic import StudySpec, ct_series, secondary_capture, write_files  # noqa: E402
from tests.support.orthanc import LOOPBACK, OrthancServer, free_ports  # noqa: E402

NETNS_ENV = "IMAGING_CLOUD_BENCH_NETNS"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
IMAGING_CLOUD = "imaging-cloud"
ORTHANC = "Orthanc"
SERVER_NAMES = (IMAGING_CLOUD, ORTHANC)
SCU_AET = "BENCHSCU"
MB = 1_000_000
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
NODELAY_ENV = {"TCP_NODELAY": "1"}
# Security is on by default (issue 5): the bench signs in as this platform admin, created in the
# node's data dir with the CLI, and sends its token on every /dicom-web and /viewer-api call.
BENCH_USER = "bench-admin"
BENCH_PASSWORD = "bench-password-0123"

DURABILITY = {
    IMAGING_CLOUD: (
        "`imaging-cloud serve` defaults: each blob written to a temp file, fsync, rename, "
        "fsync of the directory (cloud/blobstore.py); SQLite index in WAL mode with "
        "synchronous=FULL (cloud/database.py)"
    ),
    ORTHANC: (
        "Orthanc defaults: SyncStorageArea=true (fsync of each stored file), built-in "
        "SQLite index, StorageCompression=false, MaximumStorageCacheSize=128 MB, "
        "MaximumPduLength=16384"
    ),
}

console = Console(highlight=False, log_path=False, width=None if sys.stdout.isatty() else 110)


# -- command line and network namespace ---------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SERVER_NAMES, help="benchmark one server only")
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--ct-size", type=int, default=512)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="WADO-RS runs (best is kept)")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


def enter_private_network() -> None:
    """Re-execute under ``unshare --net`` unless already there; then bring ``lo`` up."""
    if os.environ.get(NETNS_ENV) != "1":
        if shutil.which("unshare") is None:
            sys.exit("bench: `unshare` (util-linux) is needed to isolate the servers")
        command = ["unshare", "--net"]
        if os.geteuid() != 0:
            command.append("--map-root-user")
        command += ["--", sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
        os.execvpe("unshare", command, {**os.environ, NETNS_ENV: "1"})
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(["ip", "-o", "link"], check=True, capture_output=True, text=True)
    names = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    if names != ["lo"]:
        sys.exit(f"bench: expected a namespace with only `lo`, found {names}")


# -- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    key: str
    label: str
    folder: Path
    instances: int
    bytes: int
    study_uid: str
    series_uid: str


def make_data_set(key: str, label: str, folder: Path, datasets: Iterator[Any]) -> DataSet:
    paths = write_files(datasets, folder)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return DataSet(
        key=key,
        label=label,
        folder=folder,
        instances=len(paths),
        bytes=sum(path.stat().st_size for path in paths),
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
    )


def generate_data(root: Path, args: argparse.Namespace) -> tuple[DataSet, DataSet]:
    ct = make_data_set(
        "ct",
        f"CT {args.ct_slices} x {args.ct_size}² 16-bit",
        root / "ct",
        ct_series(StudySpec(), slices=args.ct_slices, size=args.ct_size),
    )
    small = make_data_set(
        "small",
        f"{args.small_count} small SC",
        root / "small",
        secondary_capture(StudySpec(), count=args.small_count),
    )
    return ct, small


# -- servers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    aet: str
    dicom_port: int
    dicomweb_url: str
    version: str
    token: str = ""  # Bearer token for imaging-cloud; Orthanc runs without authentication

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.token)


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def imaging_cloud_command() -> str:
    executable = Path(sys.executable).with_name("imaging-cloud")
    return str(executable) if executable.exists() else "imaging-cloud"


def admin_cli(data_dir: Path, action: str, *options: str) -> str:
    """``imaging-cloud admin <action> --data-dir <data_dir> <options>``; its stdout."""
    command = [imaging_cloud_command(), "admin", action, "--data-dir", str(data_dir), *options]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"admin {action} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def create_user(
    data_dir: Path, username: str, password: str, role: str, hospital: str | None = None
) -> None:
    options = ["--username", username, "--password", password, "--role", role]
    admin_cli(data_dir, "create-user", *options, *(["--hospital", hospital] if hospital else []))


def sign_in(base_url: str, username: str, password: str) -> str:
    """``POST /api/auth/token``: the access token."""
    response = httpx.post(
        f"{base_url}/api/auth/token",
        data={"username": username, "password": password},
        timeout=30.0,
    )
    if response.status_code != 200:
        raise RuntimeError(f"sign-in as {username} → {response.status_code}: {response.text[:300]}")
    return str(response.json()["access_token"])


class ImagingCloudServer:
    """``imaging-cloud serve`` on loopback, with its own data dir and free ports."""

    def __init__(self, workdir: Path, startup_timeout: float, aet: str = "IMAGINGCLOUD") -> None:
        self.workdir = workdir
        self.startup_timeout = startup_timeout
        self.aet = aet
        self.http_port = 0
        self.dicom_port = 0
        self.token = ""  # the bench platform admin's, after __enter__
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.workdir / "imaging-cloud.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.token)

    def command(self) -> list[str]:
        return [
            imaging_cloud_command(),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--http-host",
            LOOPBACK,
            "--http-port",
            str(self.http_port),
            "--dicom-port",
            str(self.dicom_port),
            "--ae-title",
            self.aet,
        ]

    def __enter__(self) -> ImagingCloudServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        created = self.workdir / "bench-user-created"  # once per data dir (servers restart)
        if not created.exists():
            create_user(self.data_dir, BENCH_USER, BENCH_PASSWORD, "platform_admin")
            created.touch()
        self.http_port, self.dicom_port = free_ports(2)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **NODELAY_ENV},
            start_new_session=True,
        )
        try:
            self._wait_until_up()
            self.token = sign_in(self.base_url, BENCH_USER, BENCH_PASSWORD)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_up(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"imaging-cloud exited ({self._process.returncode})")
                if _healthy(client, f"{self.base_url}/healthz"):
                    return
                time.sleep(0.2)
        raise RuntimeError(f"imaging-cloud /healthz not 200 after {self.startup_timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def started_imaging_cloud(workdir: Path, args: argparse.Namespace) -> Iterator[Target]:
    server = ImagingCloudServer(workdir / "imaging-cloud", args.startup_timeout)
    try:
        with server:
            yield Target(
                IMAGING_CLOUD, server.aet, server.dicom_port, server.dicomweb_url, "", server.token
            )
    except BaseException:
        console.print(f"[red]imaging-cloud log ({server.log_path}):[/]\n{server.log_tail()}")
        raise


@contextmanager
def started_orthanc(workdir: Path, args: argparse.Namespace) -> Iterator[Target]:
    with OrthancServer(
        startup_timeout=args.startup_timeout, workdir=workdir / "orthanc"
    ) as orthanc:
        version = _orthanc_versions(orthanc.base_url)
        yield Target(ORTHANC, orthanc.aet, orthanc.dicom_port, orthanc.dicomweb_url, version)


def _orthanc_versions(base_url: str) -> str:
    core = httpx.get(f"{base_url}/system").json()["Version"]
    plugin = httpx.get(f"{base_url}/plugins/dicom-web").json().get("Version", "?")
    return f"Orthanc {core}, DICOMweb plugin {plugin}"


STARTERS: dict[str, Callable[[Path, argparse.Namespace], Any]] = {
    IMAGING_CLOUD: started_imaging_cloud,
    ORTHANC: started_orthanc,
}


# -- ingest ---------------------------------------------------------------------------------


@dataclass
class Ingest:
    seconds: float
    instances: int
    bytes: int
    associations: int
    max_send_pdv: int  # PDV size the server granted storescu
    transfer_syntax: str  # what storescu sent in
    visible_after: float  # extra seconds after storescu exited until QIDO listed them all

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds


def storescu_command(target: Target, data: DataSet) -> list[str]:
    return [
        "storescu",
        "-v",
        "-aet",
        SCU_AET,
        "-aec",
        target.aet,
        "+sd",
        LOOPBACK,
        str(target.dicom_port),
        str(data.folder),
    ]


def ingest(target: Target, data: DataSet) -> Ingest:
    command = storescu_command(target, data)
    env = {**os.environ, **NODELAY_ENV}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    check_storescu(target, data, result.returncode, output)
    return Ingest(
        seconds=seconds,
        instances=data.instances,
        bytes=data.bytes,
        associations=output.count("Association Accepted"),
        max_send_pdv=int(_search(r"Max Send PDV: (\d+)", output) or 0),
        transfer_syntax=_search(r"Converting transfer syntax: .* -> (.*)", output) or "?",
        visible_after=wait_for_instances(target, data),
    )


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1).strip() if match else None


def check_storescu(target: Target, data: DataSet, returncode: int, output: str) -> None:
    """storescu must exit 0, use one association and get a success for every file."""
    stored = output.count("Received Store Response (Success)")
    associations = output.count("Association Accepted")
    problem = None
    if returncode != 0:
        problem = f"exited {returncode}"
    elif associations != 1:
        problem = f"used {associations} associations, expected 1"
    elif stored != data.instances:
        problem = f"got {stored} successful C-STORE responses, expected {data.instances}"
    if problem:
        tail = "\n".join(output.splitlines()[-15:])
        raise RuntimeError(f"storescu -> {target.name} {problem}:\n{tail}")


def wait_for_instances(target: Target, data: DataSet, timeout: float = 120.0) -> float:
    """Seconds from storescu's exit until QIDO lists every instance (0 if at once)."""
    started = time.perf_counter()
    first = True
    with httpx.Client(timeout=60.0, headers=target.headers) as client:
        while True:
            asked = time.perf_counter() - started
            found = count_instances(client, target.dicomweb_url, data)
            if found == data.instances:
                return 0.0 if first else asked
            if found > data.instances or asked > timeout:
                raise RuntimeError(f"{target.name} holds {found}/{data.instances} instances")
            first = False
            time.sleep(0.5)


def count_instances(client: httpx.Client, dicomweb_url: str, data: DataSet) -> int:
    """Count distinct SOP Instance UIDs listed by QIDO, following offset paging."""
    url = f"{dicomweb_url}/studies/{data.study_uid}/series/{data.series_uid}/instances"
    seen: set[str] = set()
    while True:
        params = {"offset": str(len(seen))} if seen else {}
        response = client.get(url, params=params, headers={"Accept": "application/dicom+json"})
        if response.status_code == 204 or (response.status_code == 404 and not seen):
            return len(seen)
        response.raise_for_status()
        page = {item["00080018"]["Value"][0] for item in response.json()}
        if not page - seen:
            return len(seen)
        seen |= page


# -- WADO-RS retrieval ----------------------------------------------------------------------


@dataclass
class Retrieval:
    seconds: float
    bytes: int
    parts: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds


class DelimiterCounter:
    """Count a multipart delimiter in a byte stream, across chunk borders."""

    def __init__(self, delimiter: bytes) -> None:
        self.delimiter = delimiter
        self.count = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        keep = len(self.delimiter) - 1
        self.count += (self._tail + chunk[:keep]).count(self.delimiter)
        self.count += chunk.count(self.delimiter)
        self._tail = (self._tail + chunk)[-keep:] if len(chunk) < keep else chunk[-keep:]


def multipart_boundary(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/related"):
        raise RuntimeError(f"WADO-RS answered {content_type!r}, not multipart/related")
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise RuntimeError(f"no boundary in {content_type!r}")
    return match.group(1).encode()


def retrieve_series(client: httpx.Client, target: Target, data: DataSet) -> Retrieval:
    url = f"{target.dicomweb_url}/studies/{data.study_uid}/series/{data.series_uid}"
    headers = {"Accept": WADO_ACCEPT, "Accept-Encoding": "identity"}
    size = 0
    started = time.perf_counter()
    with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        counter = DelimiterCounter(b"--" + multipart_boundary(response.headers["content-type"]))
        for chunk in response.iter_raw():
            size += len(chunk)
            counter.feed(chunk)
    seconds = time.perf_counter() - started
    return Retrieval(seconds, size, counter.count - 1)  # the close delimiter is not a part


def retrieve_best(target: Target, data: DataSet, repeats: int) -> list[Retrieval]:
    runs = []
    with httpx.Client(timeout=600.0, headers=target.headers) as client:
        for run in range(1, repeats + 1):
            retrieval = retrieve_series(client, target, data)
            if retrieval.parts != data.instances:
                raise RuntimeError(
                    f"{target.name} WADO-RS returned {retrieval.parts} parts, "
                    f"expected {data.instances}"
                )
            console.log(
                f"  WADO-RS run {run}: {retrieval.bytes / MB:.1f} MB, "
                f"{retrieval.parts} parts in {retrieval.seconds:.2f} s "
                f"→ {retrieval.mb_per_s:.1f} MB/s"
            )
            runs.append(retrieval)
    return runs


# -- one server -----------------------------------------------------------------------------


@dataclass
class ServerResult:
    name: str
    version: str
    durability: str
    ingests: dict[str, Ingest] = field(default_factory=dict)
    retrievals: list[Retrieval] = field(default_factory=list)

    @property
    def best_retrieval(self) -> Retrieval:
        return max(self.retrievals, key=lambda r: r.mb_per_s)


def measure(target: Target, data_sets: tuple[DataSet, ...], repeats: int) -> ServerResult:
    result = ServerResult(target.name, target.version, DURABILITY[target.name])
    for data in data_sets:
        console.log(f"  storescu → {target.name}: {data.label} ({data.bytes / MB:.1f} MB)")
        done = ingest(target, data)
        late = f", all visible {done.visible_after:.1f} s later" if done.visible_after else ""
        console.log(
            f"  {done.seconds:.2f} s → {done.instances_per_s:.1f} inst/s, "
            f"{done.mb_per_s:.1f} MB/s{late}"
        )
        result.ingests[data.key] = done
    result.retrievals = retrieve_best(target, data_sets[0], repeats)
    return result


def bench_server(
    name: str, workdir: Path, data_sets: tuple[DataSet, ...], args: argparse.Namespace
) -> ServerResult:
    console.rule(name)
    with STARTERS[name](workdir, args) as target:
        console.log(f"{name} up: DICOM {target.aet}@{LOOPBACK}:{target.dicom_port}")
        return measure(target, data_sets, args.repeats)


# -- report ---------------------------------------------------------------------------------


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


Metric = tuple[str, str, Callable[[ServerResult], float]]


def _ingest_metrics(data: DataSet) -> list[Metric]:
    def rate(result: ServerResult) -> float:
        return result.ingests[data.key].instances_per_s

    def throughput(result: ServerResult) -> float:
        return result.ingests[data.key].mb_per_s

    return [(f"Ingest {data.label}", "inst/s", rate), (f"Ingest {data.label}", "MB/s", throughput)]


def _retrieval_throughput(result: ServerResult) -> float:
    return result.best_retrieval.mb_per_s


def metrics(data_sets: tuple[DataSet, ...]) -> list[Metric]:
    rows = [row for data in data_sets for row in _ingest_metrics(data)]
    rows.append((f"WADO-RS {data_sets[0].label}", "MB/s", _retrieval_throughput))
    return rows


def results_table(results: dict[str, ServerResult], data_sets: tuple[DataSet, ...]) -> Table:
    table = Table(title="imaging-cloud vs Orthanc, same data, one run (higher is better)")
    table.add_column("Measure")
    table.add_column("Unit")
    for name in SERVER_NAMES:
        table.add_column(name, justify="right")
    table.add_column("ratio ic/Orthanc", justify="right")
    for label, unit, getter in metrics(data_sets):
        values = {name: getter(results[name]) if name in results else None for name in SERVER_NAMES}
        table.add_row(
            label,
            unit,
            *(_cell(values[name]) for name in SERVER_NAMES),
            _ratio(values[IMAGING_CLOUD], values[ORTHANC]),
        )
    return table


def print_report(results: dict[str, ServerResult], data_sets: tuple[DataSet, ...]) -> None:
    console.print()
    console.print(results_table(results, data_sets))
    console.print(
        "MB = 10^6 bytes. Ingest: wall-clock of one storescu run (one association), "
        "file bytes. WADO-RS: response body bytes, Accept-Encoding: identity. "
        "storescu and both servers run with TCP_NODELAY=1."
    )
    for result in results.values():
        console.print(f"[bold]{result.name}[/] {result.version}".rstrip())
        console.print(f"  durability: {result.durability}")
        for key, done in result.ingests.items():
            console.print(
                f"  storescu {key}: {done.seconds:.2f} s, {done.associations} association, "
                f"max send PDV {done.max_send_pdv}, sent as {done.transfer_syntax}"
            )
        runs = ", ".join(f"{run.mb_per_s:.0f}" for run in result.retrievals)
        console.print(f"  WADO-RS runs: {runs} MB/s")


def environment() -> dict[str, Any]:
    storescu = subprocess.run(["storescu", "--version"], capture_output=True, text=True)
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "storescu": storescu.stdout.splitlines()[0] if storescu.stdout else "?",
    }


def save_results(results: dict[str, ServerResult], data_sets: tuple[DataSet, ...]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / time.strftime("bench-%Y%m%d-%H%M%S.json")
    payload = {
        "environment": environment(),
        "data_sets": [{**asdict(d), "folder": str(d.folder)} for d in data_sets],
        "results": {name: asdict(result) for name, result in results.items()},
    }
    path.write_text(json.dumps(payload, indent=2))
    return path


# -- main -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> None:
    console.log(f"generating data in {workdir}")
    data_sets = generate_data(workdir / "input", args)
    for data in data_sets:
        console.log(f"  {data.label}: {data.instances} files, {data.bytes / MB:.1f} MB")
    names = [args.only] if args.only else list(SERVER_NAMES)
    results = {name: bench_server(name, workdir, data_sets, args) for name in names}
    print_report(results, data_sets)
    console.log(f"raw results: {save_results(results, data_sets)}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    enter_private_network()
    workdir = Path(tempfile.mkdtemp(prefix="imaging-cloud-bench-"))
    try:
        run(args, workdir)
    except (RuntimeError, OSError) as exc:
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
