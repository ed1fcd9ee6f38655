"""Benchmark the hospital gateway end to end: storescu -> gateway -> cloud, against Orthanc.

Measures, for one 300-slice 512x512 16-bit CT series sent by one DCMTK ``storescu``:

1. imaging-cloud: ``storescu`` -> ``imaging-cloud gateway serve`` (C-STORE SCP, durable
   spool, batched STOW-RS forwarding confirmed by SHA-256) -> ``imaging-cloud serve``.
   "Acknowledged" = storescu exited (the gateway answered every C-STORE); "end to end" =
   the cloud's gateway API manifest of the study lists every instance.
2. Orthanc reference, same pipeline shape: ``storescu`` -> Orthanc A ("gateway") ->
   ``POST /peers/cloud/store`` (synchronous) -> Orthanc B ("cloud"); end to end = B holds
   every instance.

Both clocks start right before storescu. The gateway's peak RSS (``VmHWM``) is read from
/proc just before it is stopped. Runs inside a private network namespace like
bench/run.py (this script re-executes itself under ``unshare --net``). See bench/README.md.

Usage: ``make bench`` or ``.venv/bin/python bench/gateway.py [--only imaging-cloud|Orthanc]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pydicom
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.run import (  # noqa: E402
    DURABILITY,
    IMAGING_CLOUD,
    MB,
    NETNS_ENV,
    NODELAY_ENV,
    ORTHANC,
    RESULTS_DIR,
    SERVER_NAMES,
    DataSet,
    ImagingCloudServer,
    Target,
    check_storescu,
    console,
    enter_private_network,
    environment,
    make_data_set,
    storescu_command,
)
from imaging_cloud.synthetic import StudySpec, ct_series  # noqa: E402
from tests.support.orthanc import LOOPBACK, OrthancServer, free_port  # noqa: E402

HOSPITAL_ID = "H1"
GATEWAY_AET = "H1GW"
CREDENTIAL_ENV = "IMAGING_CLOUD_GATEWAY_CREDENTIAL"
MANIFEST_PATH = "/gateway-api/v1/studies/{study}/manifest"
POLL_SECONDS = 0.1

GATEWAY_DURABILITY = {
    IMAGING_CLOUD: (
        "gateway: before each C-STORE response the object is written to a temp file, "
        "fsync'd, renamed and its directory fsync'd, and journaled in SQLite (WAL, "
        "synchronous=FULL) (gateway/spool.py); cloud: " + DURABILITY[IMAGING_CLOUD]
    ),
    ORTHANC: "both Orthancs (gateway A and cloud B): " + DURABILITY[ORTHANC],
}
PIPELINE = {
    IMAGING_CLOUD: "streaming: the gateway forwards batches (32 objects / 32 MB) while storescu "
    "is still sending",
    ORTHANC: "store-then-forward: peers/cloud/store starts after storescu finished, "
    "then sends one instance per HTTP POST",
}


# -- command line and network namespace ---------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SERVER_NAMES, help="benchmark one pipeline only")
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--ct-size", type=int, default=512)
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument(
        "--forward-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the cloud to hold every instance",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


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


# -- /proc ----------------------------------------------------------------------------------


def peak_rss_kb(pid: int) -> int:
    """``VmHWM`` (peak resident set size, kB) of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def executable_of(pid: int) -> str:
    return os.path.realpath(f"/proc/{pid}/exe")


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def check_process(pid: int, expected: str, what: str) -> str:
    """The pid must run ``expected`` itself (not through a wrapper) and have no children."""
    exe = executable_of(pid)
    if not Path(exe).name.startswith(expected):
        raise RuntimeError(f"{what} pid {pid} runs {exe}, expected {expected}")
    children = children_of(pid)
    if children:
        raise RuntimeError(f"{what} pid {pid} has child processes {children}; RSS would miss them")
    return exe


# -- data -----------------------------------------------------------------------------------


def generate_ct(root: Path, args: argparse.Namespace) -> tuple[DataSet, set[str]]:
    data = make_data_set(
        "ct",
        f"CT {args.ct_slices} x {args.ct_size}² 16-bit",
        root / "ct",
        ct_series(StudySpec(), slices=args.ct_slices, size=args.ct_size),
    )
    sop_uids = {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for path in sorted(data.folder.rglob("*"))
        if path.is_file()
    }
    if len(sop_uids) != data.instances:
        raise RuntimeError(f"{len(sop_uids)} SOP Instance UIDs for {data.instances} files")
    return data, sop_uids


# -- result ---------------------------------------------------------------------------------


@dataclass
class PipelineResult:
    name: str
    version: str
    pipeline: str
    durability: str
    instances: int
    bytes: int
    acknowledged_seconds: float  # clock start -> storescu exited (every C-STORE answered)
    end_to_end_seconds: float  # clock start -> the cloud holds every instance
    gateway_peak_rss_kb: int
    cloud_peak_rss_kb: int
    gateway_executable: str
    cloud_executable: str
    storescu: dict[str, Any] = field(default_factory=dict)
    forwarding: dict[str, Any] = field(default_factory=dict)

    @property
    def acknowledged_instances_per_s(self) -> float:
        return self.instances / self.acknowledged_seconds

    @property
    def acknowledged_mb_per_s(self) -> float:
        return self.bytes / MB / self.acknowledged_seconds

    @property
    def end_to_end_instances_per_s(self) -> float:
        return self.instances / self.end_to_end_seconds

    @property
    def end_to_end_mb_per_s(self) -> float:
        return self.bytes / MB / self.end_to_end_seconds

    @property
    def gateway_peak_rss_mb(self) -> float:
        return self.gateway_peak_rss_kb * 1024 / MB

    @property
    def cloud_peak_rss_mb(self) -> float:
        return self.cloud_peak_rss_kb * 1024 / MB


def run_storescu(target: Target, data: DataSet) -> dict[str, Any]:
    """Send the series over one association; check every C-STORE succeeded."""
    command = storescu_command(target, data)
    result = subprocess.run(
        command, env={**os.environ, **NODELAY_ENV}, capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    check_storescu(target, data, result.returncode, output)
    return {
        "command": " ".join(command),
        "associations": output.count("Association Accepted"),
        "max_send_pdv": int(_search(r"Max Send PDV: (\d+)", output) or 0),
    }


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1).strip() if match else None


# -- imaging-cloud: gateway + cloud ---------------------------------------------------------


def imaging_cloud_executable() -> str:
    executable = Path(sys.executable).with_name("imaging-cloud")
    return str(executable) if executable.exists() else "imaging-cloud"


def add_hospital(data_dir: Path) -> str:
    result = subprocess.run(
        [
            imaging_cloud_executable(),
            "admin",
            "add-hospital",
            "--data-dir",
            str(data_dir),
            "--hospital-id",
            HOSPITAL_ID,
            "--name",
            "Hospital One",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"add-hospital failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


class GatewayProcess:
    """``imaging-cloud gateway serve`` with its own spool and a free DICOM port."""

    def __init__(self, workdir: Path, cloud_url: str, credential: str, timeout: float) -> None:
        self.workdir = workdir
        self.cloud_url = cloud_url
        self.credential = credential
        self.startup_timeout = timeout
        self.dicom_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def spool_dir(self) -> Path:
        return self.workdir / "spool"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    def __enter__(self) -> GatewayProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                imaging_cloud_executable(),
                "gateway",
                "serve",
                "--cloud-url",
                self.cloud_url,
                "--spool-dir",
                str(self.spool_dir),
                "--hospital-id",
                HOSPITAL_ID,
                "--dicom-port",
                str(self.dicom_port),
                "--ae-title",
                GATEWAY_AET,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **NODELAY_ENV, CREDENTIAL_ENV: self.credential},
            start_new_session=True,
        )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_up(self) -> None:
        assert self.process is not None
        echo = ["echoscu", "-aec", GATEWAY_AET, LOOPBACK, str(self.dicom_port)]
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.process.returncode})")
            if subprocess.run(echo, capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"gateway C-ECHO not answered after {self.startup_timeout:.0f} s")

    def status(self) -> dict[str, Any]:
        command = [imaging_cloud_executable(), "gateway", "status", "--json"]
        result = subprocess.run(
            [*command, "--spool-dir", str(self.spool_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return {"error": f"gateway status exited {result.returncode}: {result.stderr.strip()}"}
        return dict(json.loads(result.stdout))

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
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

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def held_in_cloud(client: httpx.Client, cloud_url: str, credential: str, study: str) -> set[str]:
    """SOP Instance UIDs the cloud's gateway API says it holds of ``study``."""
    response = client.get(
        cloud_url + MANIFEST_PATH.format(study=study),
        headers={"Authorization": f"Bearer {credential}"},
    )
    if response.status_code == 404:
        return set()
    response.raise_for_status()
    return {item["sop_instance_uid"] for item in response.json()["instances"]}


def bench_imaging_cloud(
    workdir: Path, data: DataSet, sop_uids: set[str], args: argparse.Namespace
) -> PipelineResult:
    console.rule(f"{IMAGING_CLOUD}: storescu → gateway → cloud")
    cloud = ImagingCloudServer(workdir / "cloud", args.startup_timeout)
    credential = add_hospital(cloud.workdir / "data")  # ImagingCloudServer serves <workdir>/data
    gateway: GatewayProcess | None = None
    try:
        with cloud:
            gateway = GatewayProcess(
                workdir / "gateway", cloud.base_url, credential, args.startup_timeout
            )
            with gateway:
                assert gateway.process is not None and cloud._process is not None
                gateway_pid, cloud_pid = gateway.process.pid, cloud._process.pid
                gateway_exe = check_process(gateway_pid, "python", "gateway")
                cloud_exe = check_process(cloud_pid, "python", "cloud")
                console.log(
                    f"cloud up on {cloud.base_url} (pid {cloud_pid}), gateway {GATEWAY_AET}@"
                    f"{LOOPBACK}:{gateway.dicom_port} (pid {gateway_pid}, {gateway_exe})"
                )
                target = Target(IMAGING_CLOUD, GATEWAY_AET, gateway.dicom_port, "", "")
                console.log(f"  storescu → gateway: {data.label} ({data.bytes / MB:.1f} MB)")
                started = time.perf_counter()
                storescu = run_storescu(target, data)
                acknowledged = time.perf_counter() - started
                console.log(f"  acknowledged by the gateway after {acknowledged:.2f} s")
                held_at_ack, end_to_end = wait_for_cloud(
                    gateway, cloud.base_url, credential, data, sop_uids, started, args
                )
                status = gateway.status()
                gateway_rss, cloud_rss = peak_rss_kb(gateway_pid), peak_rss_kb(cloud_pid)
            console.log(f"gateway stopped; spool status: {_brief_status(status)}")
    except BaseException:
        if gateway is not None:
            console.print(f"[red]gateway log ({gateway.log_path}):[/]\n{gateway.log_tail()}")
        console.print(f"[red]cloud log ({cloud.log_path}):[/]\n{cloud.log_tail()}")
        raise
    return PipelineResult(
        name=IMAGING_CLOUD,
        version=_package_version(),
        pipeline=PIPELINE[IMAGING_CLOUD],
        durability=GATEWAY_DURABILITY[IMAGING_CLOUD],
        instances=data.instances,
        bytes=data.bytes,
        acknowledged_seconds=acknowledged,
        end_to_end_seconds=end_to_end,
        gateway_peak_rss_kb=gateway_rss,
        cloud_peak_rss_kb=cloud_rss,
        gateway_executable=gateway_exe,
        cloud_executable=cloud_exe,
        storescu=storescu,
        forwarding={"held_in_cloud_at_acknowledgement": held_at_ack, "gateway_status": status},
    )


def wait_for_cloud(
    gateway: GatewayProcess,
    cloud_url: str,
    credential: str,
    data: DataSet,
    sop_uids: set[str],
    started: float,
    args: argparse.Namespace,
) -> tuple[int, float]:
    """Poll the manifest until the cloud holds every instance: (held at first poll, seconds)."""
    held_at_ack: int | None = None
    with httpx.Client(timeout=30.0) as client:
        while True:
            held = held_in_cloud(client, cloud_url, credential, data.study_uid)
            elapsed = time.perf_counter() - started
            if held_at_ack is None:
                held_at_ack = len(held)
                console.log(f"  first poll: the cloud holds {held_at_ack}/{data.instances}")
            if held == sop_uids:
                console.log(f"  the cloud holds all {data.instances} after {elapsed:.2f} s")
                return held_at_ack, elapsed
            if held - sop_uids:
                raise RuntimeError(f"the cloud holds unexpected instances: {held - sop_uids}")
            assert gateway.process is not None
            if gateway.process.poll() is not None:
                raise RuntimeError(f"the gateway exited ({gateway.process.returncode})")
            if elapsed > args.forward_timeout:
                raise RuntimeError(
                    f"the cloud holds {len(held)}/{data.instances} instances after "
                    f"{elapsed:.0f} s; gateway status: {_brief_status(gateway.status())}"
                )
            time.sleep(POLL_SECONDS)


def _brief_status(status: dict[str, Any]) -> str:
    keys = ("queued", "sent", "quarantined", "consecutive_failures", "last_error", "error")
    return ", ".join(f"{key}={status[key]!r}" for key in keys if key in status)


def _package_version() -> str:
    try:
        return metadata.version("imaging-cloud")
    except metadata.PackageNotFoundError:
        return "?"


# -- Orthanc reference ----------------------------------------------------------------------


def bench_orthanc(
    workdir: Path, data: DataSet, sop_uids: set[str], args: argparse.Namespace
) -> PipelineResult:
    del sop_uids  # Orthanc's IDs are hashes of the UIDs; the instance count is checked
    console.rule(f"{ORTHANC}: storescu → Orthanc A → peers/cloud/store → Orthanc B")
    timeout = args.startup_timeout
    with OrthancServer(aet="CLOUD", startup_timeout=timeout, workdir=workdir / "cloud") as cloud:
        peers = {"OrthancPeers": {"cloud": [f"{cloud.base_url}/"]}}
        with OrthancServer(
            aet="GATEWAY",
            config_overrides=peers,
            startup_timeout=timeout,
            workdir=workdir / "gateway",
        ) as gateway:
            try:
                return _orthanc_pipeline(gateway, cloud, data, args)
            except BaseException:
                console.print(f"[red]Orthanc A log ({gateway.log_path}):[/]\n{gateway.log_tail()}")
                console.print(f"[red]Orthanc B log ({cloud.log_path}):[/]\n{cloud.log_tail()}")
                raise


def _orthanc_pipeline(
    gateway: OrthancServer, cloud: OrthancServer, data: DataSet, args: argparse.Namespace
) -> PipelineResult:
    assert gateway._process is not None and cloud._process is not None
    gateway_pid, cloud_pid = gateway._process.pid, cloud._process.pid
    gateway_exe = check_process(gateway_pid, "Orthanc", "Orthanc A")
    cloud_exe = check_process(cloud_pid, "Orthanc", "Orthanc B")
    version = _orthanc_version(gateway.base_url)
    console.log(
        f"Orthanc A {gateway.aet}@{LOOPBACK}:{gateway.dicom_port} (pid {gateway_pid}) → "
        f"peer Orthanc B {cloud.base_url} (pid {cloud_pid}); Orthanc {version}"
    )
    target = Target(ORTHANC, gateway.aet, gateway.dicom_port, gateway.dicomweb_url, version)
    with httpx.Client(timeout=args.forward_timeout) as client:
        console.log(f"  storescu → Orthanc A: {data.label} ({data.bytes / MB:.1f} MB)")
        started = time.perf_counter()
        storescu = run_storescu(target, data)
        acknowledged = time.perf_counter() - started
        console.log(f"  acknowledged by Orthanc A after {acknowledged:.2f} s")
        lookup = client.post(f"{gateway.base_url}/tools/lookup", content=data.study_uid)
        lookup.raise_for_status()
        studies = [item["ID"] for item in lookup.json() if item.get("Type") == "Study"]
        if len(studies) != 1:
            raise RuntimeError(f"Orthanc A lookup of {data.study_uid}: {lookup.json()}")
        answer = client.post(f"{gateway.base_url}/peers/cloud/store", content=studies[0])
        answer.raise_for_status()
        instances = client.get(f"{cloud.base_url}/studies/{studies[0]}/instances")
        instances.raise_for_status()
        end_to_end = time.perf_counter() - started
        held = len(instances.json())
        if held != data.instances:
            raise RuntimeError(f"Orthanc B holds {held}/{data.instances} after the transfer")
        console.log(f"  Orthanc B holds all {held} after {end_to_end:.2f} s")
    return PipelineResult(
        name=ORTHANC,
        version=version,
        pipeline=PIPELINE[ORTHANC],
        durability=GATEWAY_DURABILITY[ORTHANC],
        instances=data.instances,
        bytes=data.bytes,
        acknowledged_seconds=acknowledged,
        end_to_end_seconds=end_to_end,
        gateway_peak_rss_kb=peak_rss_kb(gateway_pid),
        cloud_peak_rss_kb=peak_rss_kb(cloud_pid),
        gateway_executable=gateway_exe,
        cloud_executable=cloud_exe,
        storescu=storescu,
        forwarding={"peer_store_answer": _json_or_text(answer)},
    )


def _orthanc_version(base_url: str) -> str:
    return str(httpx.get(f"{base_url}/system").json()["Version"])


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


# -- report ---------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str, bool]] = [
    ("Acknowledged by the gateway", "inst/s", "acknowledged_instances_per_s", True),
    ("Acknowledged by the gateway", "MB/s", "acknowledged_mb_per_s", True),
    ("End to end (cloud holds all)", "inst/s", "end_to_end_instances_per_s", True),
    ("End to end (cloud holds all)", "MB/s", "end_to_end_mb_per_s", True),
    ("Gateway peak RSS (VmHWM)", "MB", "gateway_peak_rss_mb", False),
]


def results_table(results: dict[str, PipelineResult], data: DataSet) -> Table:
    table = Table(
        title=f"Gateway pipeline, {data.label} ({data.bytes / MB:.1f} MB), one run",
        caption="higher is better, except peak RSS: lower is better",
    )
    table.add_column("Measure")
    table.add_column("Unit")
    for name in SERVER_NAMES:
        table.add_column(name, justify="right")
    table.add_column("ratio ic/Orthanc", justify="right")
    for label, unit, attribute, higher_is_better in ROWS:
        values = {
            name: getattr(results[name], attribute) if name in results else None
            for name in SERVER_NAMES
        }
        ours, theirs = values[IMAGING_CLOUD], values[ORTHANC]
        ratio = "-" if ours is None or not theirs else f"{ours / theirs:.2f}x"
        if not higher_is_better:
            ratio += " (lower is better)"
            label += " ↓"
        table.add_row(
            label,
            unit,
            *("-" if values[name] is None else f"{values[name]:,.1f}" for name in SERVER_NAMES),
            ratio,
        )
    return table


def print_report(results: dict[str, PipelineResult], data: DataSet) -> None:
    console.print()
    console.print(results_table(results, data))
    console.print(
        "MB = 10^6 bytes (RSS: VmHWM kB x 1024 / 10^6). Throughput: file bytes / seconds from "
        "storescu's start. storescu, gateways and clouds run with TCP_NODELAY=1."
    )
    for result in results.values():
        console.print(f"[bold]{result.name}[/] {result.version}")
        console.print(f"  pipeline: {result.pipeline}")
        console.print(f"  durability: {result.durability}")
        console.print(
            f"  acknowledged {result.acknowledged_seconds:.2f} s, end to end "
            f"{result.end_to_end_seconds:.2f} s; cloud peak RSS {result.cloud_peak_rss_mb:.1f} MB "
            f"(information); gateway process {result.gateway_executable}"
        )
        if result.name == IMAGING_CLOUD:
            forwarding = result.forwarding
            console.print(
                f"  cloud held {forwarding['held_in_cloud_at_acknowledgement']} instances when "
                f"storescu finished; gateway spool after: "
                f"{_brief_status(forwarding['gateway_status'])}"
            )
    if IMAGING_CLOUD in results:
        rss = results[IMAGING_CLOUD].gateway_peak_rss_mb
        verdict = "[green]met[/]" if rss < 200 else "[red]NOT met[/]"
        console.print(f"goal: gateway peak RSS < 200 MB: {rss:.1f} MB → {verdict}")


def save_results(results: dict[str, PipelineResult], data: DataSet) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / time.strftime("gateway-%Y%m%d-%H%M%S.json")
    payload = {
        "environment": environment(),
        "data_set": {**asdict(data), "folder": str(data.folder)},
        "results": {
            name: {
                **asdict(result),
                **{attribute: getattr(result, attribute) for _, _, attribute, _ in ROWS},
                "cloud_peak_rss_mb": result.cloud_peak_rss_mb,
            }
            for name, result in results.items()
        },
    }
    path.write_text(json.dumps(payload, indent=2))
    return path


# -- main -----------------------------------------------------------------------------------

BENCHES = {IMAGING_CLOUD: bench_imaging_cloud, ORTHANC: bench_orthanc}


def run(args: argparse.Namespace, workdir: Path) -> None:
    console.log(f"generating data in {workdir}")
    data, sop_uids = generate_ct(workdir / "input", args)
    console.log(f"  {data.label}: {data.instances} files, {data.bytes / MB:.1f} MB")
    names = [args.only] if args.only else list(SERVER_NAMES)
    results = {name: BENCHES[name](workdir / name, data, sop_uids, args) for name in names}
    print_report(results, data)
    console.log(f"raw results: {save_results(results, data)}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    enter_own_private_network()
    workdir = Path(tempfile.mkdtemp(prefix="imaging-cloud-bench-gateway-"))
    try:
        run(args, workdir)
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
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
