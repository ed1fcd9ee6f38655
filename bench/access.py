"""What access control costs per request (issue 5): one rendered-frame route, three scopes.

One ``imaging-cloud serve`` in a private network namespace (the script re-executes itself
under ``unshare --net``, like bench/run.py). Hospital H1 sends a CT series through STOW-RS
with its gateway credential, so the study belongs to H1. Then, warm, over one keep-alive
connection, the same requests are timed for:

* a platform admin (scope: every study),
* a clinician of H1 (scope: H1's studies plus patients' grants, read from the index),
* the patient of the study (signed in with ID + one-time code from ``<data-dir>/outbox``),

namely ``/viewer-api/studies/{s}/series/{se}/instances/{sop}/frames/1/rendered`` (JPEG; every
SOP of the series in turn, no ``If-None-Match``), the same URL with ``If-None-Match``
(→ 304: access checks, audit and index look-up, no pixels) and ``/api/auth/me`` (token and
principal only), interleaved with the unauthenticated ``/healthz`` (the HTTP floor).
Then the access-control calls alone, in process. p50/p95 are printed; raw samples go to
``bench/results/access-<time>.json``. See bench/README.md.

Usage: ``make bench`` or ``.venv/bin/python bench/access.py [--passes N] [--series DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.run import (  # noqa: E402
    BENCH_PASSWORD,
    NETNS_ENV,
    RESULTS_DIR,
    ImagingCloudServer,
    admin_cli,
    console,
    create_user,
    enter_private_network,
    sign_in,
)
from bench.viewer import JPEG, MAGIC, REAL_CT, WINDOW_PARAM, KeepAlive, machine  # noqa: E402

HOSPITAL, OTHER_HOSPITAL = "H1", "H2"
CLINICIAN, OTHER_CLINICIAN = "bench-clinician-h1", "bench-clinician-h2"
STOW_BATCH = 20  # files per STOW-RS request
HEALTHZ = "/healthz"
ME = "/api/auth/me"


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, default=REAL_CT, help="folder of one series")
    parser.add_argument(
        "--passes", type=int, default=3, help="passes over every SOP of the series (default 3)"
    )
    parser.add_argument(
        "--in-process", type=int, default=500, help="calls per in-process measure (default 500)"
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0)
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
    enter_private_network()


# -- statistics -------------------------------------------------------------------------------


def percentile(seconds: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(seconds)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(seconds: list[float]) -> dict[str, float]:
    return {
        "n": len(seconds),
        "p50": statistics.median(seconds),
        "p95": percentile(seconds, 0.95),
        "min": min(seconds),
        "max": max(seconds),
    }


# -- setup ------------------------------------------------------------------------------------


def series_files(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    if not paths:
        raise RuntimeError(f"no files in {folder}")
    return paths


def stow(base_url: str, credential: str, paths: list[Path]) -> int:
    """Send ``paths`` by STOW-RS with the hospital's gateway credential; instances stored."""
    stored = 0
    with httpx.Client(timeout=300.0) as client:
        for start in range(0, len(paths), STOW_BATCH):
            boundary = uuid.uuid4().hex
            head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            parts = [head + path.read_bytes() + b"\r\n" for path in paths[start:][:STOW_BATCH]]
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            response = client.post(
                f"{base_url}/dicom-web/studies",
                content=body,
                headers={
                    "Authorization": f"Bearer {credential}",
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Accept": "application/dicom+json",
                },
            )
            if response.status_code != 200:
                raise RuntimeError(f"STOW-RS → {response.status_code}: {response.text[:500]}")
            stored += len(response.json().get("00081199", {}).get("Value", []))
    return stored


def patient_token(server: ImagingCloudServer, patient_id: str, timeout: float = 20.0) -> str:
    """Sign in as the patient: ask for a code, read it from the outbox, open a session."""
    answer = httpx.post(f"{server.base_url}/api/patient/code", json={"patient_id": patient_id})
    if answer.status_code != 202:
        raise RuntimeError(f"POST /api/patient/code → {answer.status_code}: {answer.text[:300]}")
    outbox = server.data_dir / "outbox" / "codes.jsonl"
    deadline = time.monotonic() + timeout
    code = None
    while code is None:
        if outbox.exists():
            for line in outbox.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("patient_id") == patient_id:
                    code = str(entry["code"])
        if code is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no sign-in code for patient {patient_id} in {outbox}")
            time.sleep(0.1)
    session = httpx.post(
        f"{server.base_url}/api/patient/session", json={"patient_id": patient_id, "code": code}
    )
    if session.status_code != 200:
        raise RuntimeError(f"POST /api/patient/session → {session.status_code}: {session.text}")
    return str(session.json()["access_token"])


def frame_path(study: str, series: str, sop: str) -> str:
    return (
        f"/viewer-api/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered"
        f"?window={WINDOW_PARAM}"
    )


# -- HTTP measurement -------------------------------------------------------------------------

Step = tuple[str, Callable[[], None]]


def check(status: int, expected: int, what: str, body: bytes = b"") -> None:
    if status != expected:
        raise RuntimeError(f"{what} → {status} (expected {expected}): {body[:300]!r}")


def measure_http(
    base_url: str,
    tokens: dict[str, str],
    study: str,
    series: str,
    order: list[str],
    passes: int,
) -> dict[str, list[float]]:
    """Interleave every measure for every SOP (rotating their order), ``passes`` times."""
    plain = KeepAlive(base_url)  # /healthz: no token
    clients = {name: KeepAlive(base_url, token) for name, token in tokens.items()}
    etags: dict[str, str] = {}
    samples: dict[str, list[float]] = {}

    def timed(key: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        samples.setdefault(key, []).append(time.perf_counter() - started)
        return result

    def healthz() -> None:
        reply = timed("healthz", lambda: plain.fetch(HEALTHZ, "application/json"))
        check(reply.status, 200, HEALTHZ, reply.body)

    def steps_for(name: str, client: KeepAlive, sop: str) -> list[Step]:
        path = frame_path(study, series, sop)

        def frame() -> None:
            reply = timed(f"frame/{name}", lambda: client.fetch(path, JPEG))
            check(reply.status, 200, f"{name} GET {path}", reply.body)
            if not reply.body.startswith(MAGIC[JPEG]):
                raise RuntimeError(f"{name} GET {path}: not a JPEG")
            etags[sop] = reply.headers["etag"]

        def revalidate() -> None:
            headers = {"Accept": JPEG, "If-None-Match": etags[sop]}
            reply = timed(f"304/{name}", lambda: client.call("GET", path, headers))
            check(reply.status, 304, f"{name} GET {path} If-None-Match", reply.body)

        def me() -> None:
            reply = timed(f"me/{name}", lambda: client.fetch(ME, "application/json"))
            check(reply.status, 200, f"{name} GET {ME}", reply.body)

        return [(f"frame/{name}", frame), (f"304/{name}", revalidate), (f"me/{name}", me)]

    # Warm-up, not timed: every frame once (page cache, code paths), each principal once.
    first = next(iter(clients.values()))
    for sop in order:
        check(first.fetch(frame_path(study, series, sop), JPEG).status, 200, "warm-up")
    for name, client in clients.items():
        check(client.fetch(f"/viewer-api/studies/{study}", "*/*").status, 200, f"{name} open")
    samples.clear()
    for _ in range(passes):
        for index, sop in enumerate(order):
            # The frame must be fetched (ETag) before its revalidation; principals and
            # /healthz take turns going first, so no one always meets a fresh connection state.
            groups: list[list[Step]] = [[("healthz", healthz)]] + [
                steps_for(name, client, sop) for name, client in clients.items()
            ]
            shift = index % len(groups)
            for group in groups[shift:] + groups[:shift]:
                for _, step in group:
                    step()
    for client in [plain, *clients.values()]:
        client.close()
    return samples


# -- in process: the access-control calls alone -----------------------------------------------


def measure_in_process(
    data_dir: Path, tokens: dict[str, str], study: str, count: int
) -> dict[str, list[float]]:
    """Token check, principal resolution and the study check, as the routes call them (the
    audit write is left out: it changes the index)."""
    from cloud.archive import Archive
    from cloud.identity import TokenSigner
    from viewer_api.access_deps import _resolve

    archive = Archive.open(data_dir)
    signer = TokenSigner(data_dir / "keys" / "token.key")
    samples: dict[str, list[float]] = {}
    try:
        for name, token in tokens.items():
            claims = signer.claims(token)
            who = _resolve(archive, claims)
            archive.access.require_study(who, "live_view", study)  # first call: not timed
            for _ in range(count):
                started = time.perf_counter()
                signer.claims(token)
                decoded = time.perf_counter()
                _resolve(archive, claims)
                resolved = time.perf_counter()
                archive.access.require_study(who, "live_view", study)
                done = time.perf_counter()
                samples.setdefault(f"token/{name}", []).append(decoded - started)
                samples.setdefault(f"principal/{name}", []).append(resolved - decoded)
                samples.setdefault(f"study/{name}", []).append(done - resolved)
                samples.setdefault(f"all/{name}", []).append(done - started)
    finally:
        archive.close()
    return samples


# -- report -----------------------------------------------------------------------------------

PRINCIPALS = {
    "admin": "platform admin (scope: everything)",
    "clinician": f"clinician of {HOSPITAL} (scope: hospital)",
    "patient": "the study's patient (scope: patient)",
}
HTTP_ROWS = (
    ("frame", "GET …/frames/1/rendered (JPEG, new frame)"),
    ("304", "same URL, If-None-Match → 304 (no pixels)"),
    ("me", f"GET {ME} (token + principal only)"),
)
IN_PROCESS_ROWS = (
    ("token", "token check (JWT HS256 decode)"),
    ("principal", "principal from claims (_resolve)"),
    ("study", "require_study (study owner + scope)"),
    ("all", "all three"),
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def http_table(stats: dict[str, dict[str, float]]) -> Table:
    table = Table(
        title="Access control over HTTP, warm, one keep-alive connection per principal",
        caption="ms; Δ = p50 minus the /healthz p50 (HTTP floor) or minus the platform "
        "admin's p50 on the same row",
    )
    for name in ("Request", "Principal", "n", "p50 ms", "p95 ms", "Δ healthz", "Δ admin"):
        table.add_column(name, justify="left" if name in ("Request", "Principal") else "right")
    floor = stats["healthz"]
    table.add_row(
        f"GET {HEALTHZ}",
        "none (no token)",
        f"{floor['n']:.0f}",
        _ms(floor["p50"]),
        _ms(floor["p95"]),
        "-",
        "-",
    )
    for key, label in HTTP_ROWS:
        admin = stats[f"{key}/admin"]
        for name, who in PRINCIPALS.items():
            row = stats[f"{key}/{name}"]
            table.add_row(
                label,
                who,
                f"{row['n']:.0f}",
                _ms(row["p50"]),
                _ms(row["p95"]),
                f"{(row['p50'] - floor['p50']) * 1000:+.2f}",
                "-" if name == "admin" else f"{(row['p50'] - admin['p50']) * 1000:+.2f}",
            )
    return table


def in_process_table(stats: dict[str, dict[str, float]], count: int) -> Table:
    table = Table(
        title=f"Access-control calls alone, in process ({count} calls each), µs",
        caption="over HTTP the token check runs on the event loop, the principal, "
        "require_study and the audit record each in a worker thread (the audit record is "
        "not timed here)",
    )
    table.add_column("Step")
    for who in PRINCIPALS.values():
        table.add_column(f"{who} p50 / p95", justify="right")
    for key, label in IN_PROCESS_ROWS:
        table.add_row(
            label,
            *(
                f"{stats[f'{key}/{name}']['p50'] * 1e6:.0f} / "
                f"{stats[f'{key}/{name}']['p95'] * 1e6:.0f}"
                for name in PRINCIPALS
            ),
        )
    return table


def save_results(payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / time.strftime("access-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


# -- main -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> None:
    facts = machine()
    paths = series_files(args.series)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    study, series, patient_id = (
        str(first.StudyInstanceUID),
        str(first.SeriesInstanceUID),
        str(first.PatientID),
    )
    server = ImagingCloudServer(workdir / "imaging-cloud", args.startup_timeout)
    credential = admin_cli(
        server.data_dir, "add-hospital", "--hospital-id", HOSPITAL, "--name", "Hospital One"
    )
    admin_cli(server.data_dir, "add-hospital", "--hospital-id", OTHER_HOSPITAL, "--name", "Two")
    create_user(server.data_dir, CLINICIAN, BENCH_PASSWORD, "clinician", HOSPITAL)
    create_user(server.data_dir, OTHER_CLINICIAN, BENCH_PASSWORD, "clinician", OTHER_HOSPITAL)
    try:
        with server:
            console.log(f"imaging-cloud up on {server.base_url}; STOW-RS as {HOSPITAL}")
            stored = stow(server.base_url, credential, paths)
            if stored != len(paths):
                raise RuntimeError(f"STOW-RS stored {stored}/{len(paths)} instances")
            console.log(f"  {stored} instances of {args.series.name} stored for {HOSPITAL}")
            tokens = {
                "admin": server.token,  # the bench platform admin (bench.run)
                "clinician": sign_in(server.base_url, CLINICIAN, BENCH_PASSWORD),
                "patient": patient_token(server, patient_id),
            }
            admin = KeepAlive(server.base_url, tokens["admin"])
            listing = json.loads(admin.fetch_ok(f"/viewer-api/studies/{study}", "*/*").body)
            order = [
                item["sop_instance_uid"]
                for s in listing["series"]
                if s["series_instance_uid"] == series
                for item in s["instances"]
            ]
            if len(order) != len(paths):
                raise RuntimeError(f"the viewer API lists {len(order)}/{len(paths)} instances")
            # Scope is enforced: no token → 401, a clinician of another hospital → 403.
            path = frame_path(study, series, order[0])
            other = sign_in(server.base_url, OTHER_CLINICIAN, BENCH_PASSWORD)
            denied = {}
            for who, token in (("no token", ""), (f"clinician of {OTHER_HOSPITAL}", other)):
                client = KeepAlive(server.base_url, token)
                denied[who] = client.fetch(path, JPEG).status
                client.close()
            admin.close()
            if denied != {"no token": 401, f"clinician of {OTHER_HOSPITAL}": 403}:
                raise RuntimeError(f"expected 401 and 403 outside the scope, got {denied}")
            console.log(f"  outside the scope: {denied}")
            console.log(f"  timing {args.passes} passes over {len(order)} frames")
            http = measure_http(server.base_url, tokens, study, series, order, args.passes)
            local = measure_in_process(server.data_dir, tokens, study, args.in_process)
    except BaseException:
        console.print(f"[red]imaging-cloud log ({server.log_path}):[/]\n{server.log_tail()}")
        raise
    http_stats = {key: summary(values) for key, values in http.items()}
    local_stats = {key: summary(values) for key, values in local.items()}
    facts["loadavg_after"] = os.getloadavg()
    console.print()
    load = ", ".join(f"{v:.2f}" for v in facts["loadavg"])
    after = ", ".join(f"{v:.2f}" for v in facts["loadavg_after"])
    console.print(
        f"machine: {facts['cpus']} cores, {facts['cpu']}; load average before {load}, "
        f"after {after}; series {args.series.name} ({len(order)} instances), "
        f"window {WINDOW_PARAM}, Accept {JPEG}"
    )
    console.print(http_table(http_stats))
    console.print(in_process_table(local_stats, args.in_process))
    console.print(f"outside the scope (checked): {denied}")
    payload = {
        "environment": facts,
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "series": {"study": study, "series": series, "instances": len(order)},
        "denied": denied,
        "http": {k: {**http_stats[k], "seconds": v} for k, v in http.items()},
        "in_process": {k: {**local_stats[k], "seconds": v} for k, v in local.items()},
    }
    console.log(f"raw results: {save_results(payload)}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    enter_own_private_network()
    workdir = Path(tempfile.mkdtemp(prefix="imaging-cloud-bench-access-"))
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
