"""`imaging-cloud video`: check a recording against the surgical-video spec, wrap it as DICOM.

``video check FILE [--json]`` exits 0 when the recording is compliant, 1 when it is not and
2 when it cannot be read. ``video wrap FILE --sidecar S.json -o OUT.dcm`` stores it as a DICOM
Video Endoscopic / Video Photographic object without re-encoding when the stream allows it,
and otherwise transcodes what must change first, exactly as the gateway's and the cloud's
intake do (`collectors.video_intake`); ``--no-transcode`` refuses instead (exit 1). Exit 2 if
unreadable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from collectors.video_conformance import check
from collectors.video_intake import prepare
from collectors.video_probe import VideoError, probe
from collectors.video_transcode import plan_transcode
from collectors.video_wrap import write
from imaging_cloud.progress import progress_bar
from imaging_cloud.video_pip_cli import add_pip_command
from imaging_cloud.video_processing_cli import add_processing_commands

EXIT_COMPLIANT, EXIT_NOT_COMPLIANT, EXIT_UNREADABLE = 0, 1, 2


def _check(args: argparse.Namespace) -> int:
    try:
        facts = probe(args.file)
    except VideoError as exc:
        if args.json:
            print(json.dumps({"file": str(args.file), "error": exc.detail}))
        print(f"imaging-cloud video check: {exc.detail}", file=sys.stderr)
        return EXIT_UNREADABLE
    report = check(facts)
    print(report.as_json() if args.json else report.as_text())
    return EXIT_COMPLIANT if report.compliant else EXIT_NOT_COMPLIANT


def _wrap(args: argparse.Namespace) -> int:
    try:
        sidecar = json.loads(Path(args.sidecar).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"imaging-cloud video wrap: cannot read the sidecar: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        facts = probe(args.file)
    except VideoError as exc:
        print(f"imaging-cloud video wrap: {exc.detail}", file=sys.stderr)
        return EXIT_UNREADABLE
    done = 0
    with progress_bar(args.progress, "wrapping", facts.size_bytes) as update:

        def advance(n: int) -> None:
            nonlocal done
            done += n
            update(done, facts.size_bytes)

        try:
            plan = plan_transcode(facts)
            if plan is None:
                ds = write(args.file, sidecar, args.output, progress=advance)
            elif args.no_transcode:
                raise VideoError("the recording needs transcoding: " + "; ".join(plan.reasons))
            else:
                ds = _transcode_and_wrap(args, sidecar, update)
                print("transcoded: " + "; ".join(plan.reasons))
        except VideoError as exc:
            print(f"imaging-cloud video wrap: {exc.detail}", file=sys.stderr)
            return EXIT_NOT_COMPLIANT
    print(
        f"{args.output}: {ds.SOPClassUID.name}, transfer syntax "
        f"{ds.file_meta.TransferSyntaxUID}, {ds.NumberOfFrames} frames"
    )
    return 0


def _transcode_and_wrap(
    args: argparse.Namespace, sidecar: dict[str, Any], update: Callable[[int, int | None], None]
) -> Dataset:
    """The intake's path: transcode into a work directory beside the output, wrap, move."""
    out = Path(args.output)
    with tempfile.TemporaryDirectory(prefix=".video-wrap-", dir=out.parent or None) as work:
        prepared = prepare(
            args.file,
            sidecar,
            work,
            display_name=Path(args.file).name,
            progress=lambda fraction: update(round(fraction * 1000), 1000),
        )
        os.replace(prepared.dicom_path, out)
    return prepared.header


def add_video_commands(commands: Any) -> None:
    """Add `imaging-cloud video check|wrap` to the command's subparsers."""
    video = commands.add_parser("video", help="check and wrap surgical video as DICOM")
    actions = video.add_subparsers(dest="video_command", required=True)
    add_pip_command(actions)
    add_processing_commands(actions)
    chk = actions.add_parser("check", help="conformance report against the surgical-video spec")
    chk.add_argument("file", type=Path)
    chk.add_argument("--json", action="store_true", help="the report as JSON")
    chk.set_defaults(handler=_check)
    wrp = actions.add_parser("wrap", help="wrap as DICOM video without re-encoding")
    wrp.add_argument("file", type=Path)
    wrp.add_argument("--sidecar", required=True, type=Path, help="JSON: patient, procedure, ...")
    wrp.add_argument("-o", "--output", required=True, type=Path, help="the DICOM file to write")
    wrp.add_argument("--progress", action="store_true", help="show a progress bar")
    wrp.add_argument(
        "--no-transcode",
        action="store_true",
        help="refuse a recording that cannot be wrapped as is, instead of transcoding it",
    )
    wrp.set_defaults(handler=_wrap)
