"""`imaging-cloud video deidentify|downgrade`: teaching copies and the SD downgrade (issue 8).

``video deidentify FILE -o OUT`` cleans a recording for teaching: faces blurred, burned-in
text blacked out, sound removed (or ``--audio disguise|keep``). An MP4 gives an MP4; a DICOM
video object gives a DICOM object whose header is de-identified too (PS3.15 Basic Profile
with the Clean Pixel Data Option; ``--project`` with ``--data-dir`` uses that project's key,
so its pseudonym and UIDs match the HTTP exports; without, a one-off key). Exit 0 when
written, 1 when processing fails, 2 when the input cannot be read. This is the way for long
recordings (the HTTP teaching export answers synchronously).

``video downgrade`` replaces the HD recordings whose class has ``downgrade_to_sd_after_days``
in ``config/retention.toml`` (``--older-than-days`` instead of the class's days) by their
576-line copies (`cloud.video_derivatives`); ``--dry-run`` lists them and changes nothing;
``--release-claims`` gives back the claims of runs that died before storing their copy (run it
only when no downgrade is running). The periodic lifecycle pass queues the same step as
``video_downgrade`` lifecycle jobs.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cloud.archive import Archive
from cloud.deidentify import export_key
from cloud.errors import ArchiveError
from cloud.video_derivatives import downgrade_due, due_for_sd, release_claims
from collectors.video_deid import AUDIO_ACTIONS, deidentify_mp4
from collectors.video_downgrade import downgrade_to_sd, header_like, write_part10
from collectors.video_probe import VideoError
from imaging_cloud.progress import add_progress_option, progress_bar, show_progress
from imaging_cloud.settings import load_settings, open_archive
from viewer_api.video_export_api import extract_mp4, teaching_copy_file

EXIT_WRITTEN, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2


def make_sd_copy(
    read: Callable[[], bytes], identify: Callable[[Dataset], Dataset], folder: Path
) -> Path:
    """The `cloud.video_derivatives.SdMaker`: the HD stream written straight from the stored
    object's Pixel Data fragments to a file (the object's bytes dropped then), re-encoded to
    SD, and the SD Part-10 file written with the stream copied in after the header."""
    hd, sd, out = folder / "hd.mp4", folder / "sd.mp4", folder / "sd.dcm"
    header = extract_mp4(read(), hd)
    downgrade_to_sd(hd, sd)
    hd.unlink()
    write_part10(identify(header_like(header, sd)), sd, out)
    return out


def _region(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected x0,y0,x1,y1 fractions") from exc
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: expected four numbers x0,y0,x1,y1")
    return values


def _read_dicom(path: Path) -> Dataset | None:
    """The file's DICOM header, or None when it is not DICOM (then it is taken for an MP4)."""
    with path.open("rb") as handle:
        head = handle.read(132)
    if head[128:132] != b"DICM" and path.suffix.lower() != ".dcm":
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, stop_before_pixels=True)


def _deidentify(args: argparse.Namespace) -> int:
    source: Path = args.file
    if not source.is_file():
        print(f"imaging-cloud video deidentify: {source}: no such file", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.output.resolve() == source.resolve():
        print("imaging-cloud video deidentify: -o must not be the input", file=sys.stderr)
        return EXIT_FAILED
    try:
        original = _read_dicom(source)
    except (InvalidDicomError, OSError, ValueError) as exc:
        print(f"imaging-cloud video deidentify: not readable DICOM: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    options: dict[str, Any] = {
        "audio": args.audio,
        "blur_faces": not args.no_blur,
        "text_regions": args.text_region or [],
        "detect_text": not args.no_text_detection,
    }
    with progress_bar(show_progress(args), "de-identifying frames") as update:
        try:
            if original is None:
                report = deidentify_mp4(source, args.output, progress=update, **options)
            else:
                _, report = teaching_copy_file(
                    source.read_bytes, _key(args), args.output, progress=update, **options
                )
        except VideoError as exc:
            print(f"imaging-cloud video deidentify: {exc.detail}", file=sys.stderr)
            return EXIT_UNREADABLE if "readable" in exc.detail else EXIT_FAILED
        except ArchiveError as exc:
            print(f"imaging-cloud video deidentify: {exc.detail}", file=sys.stderr)
            return EXIT_FAILED
    summary = {"output": str(args.output), **report.as_dict()}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{args.output}: {report.frames_processed} frames, {report.faces_found} faces found "
            f"in {report.detections_run} detections, {len(report.regions_masked)} text regions "
            f"blacked out, audio {report.audio}"
        )
    return EXIT_WRITTEN


def _key(args: argparse.Namespace) -> bytes:
    if args.project:
        settings = load_settings(data_dir=getattr(args, "data_dir", None))
        return export_key(settings.data_dir, args.project)
    return secrets.token_bytes(32)


def _open(args: argparse.Namespace) -> Archive:
    return open_archive(
        load_settings(
            data_dir=getattr(args, "data_dir", None),
            database_url=getattr(args, "database_url", None),
            blob_url=getattr(args, "blob_url", None),
            kek_url=getattr(args, "kek_url", None),
        )
    )


def _downgrade(args: argparse.Namespace) -> int:
    archive = _open(args)
    try:
        if args.release_claims:
            released = release_claims(archive)
            for uid in released:
                print(f"{uid}: claim released (stays HD)")
            print(f"{len(released)} claims released")
            return 0
        if args.dry_run:
            due = due_for_sd(archive, older_than_days=args.older_than_days, limit=args.limit)
            for video in due:
                print(
                    f"{video.study_instance_uid} {video.sop_instance_uid} {video.video_class} "
                    f"{video.height} lines, since {video.since.isoformat()} "
                    f"(after {video.after_days} days)"
                    + (" [claimed by an earlier run]" if video.claimed else "")
                )
            print(f"{len(due)} videos would be downgraded to standard definition (dry run)")
            return 0
        with progress_bar(show_progress(args), "downgrading videos to SD") as update:
            done, failed = downgrade_due(
                archive, make_sd_copy, older_than_days=args.older_than_days, limit=args.limit,
                progress=update,
            )  # fmt: skip
    finally:
        archive.close()
    for item in done:
        print(
            f"{item.original_uid} -> {item.sd_uid}: {item.original_height} -> {item.sd_height} "
            f"lines, {item.original_bytes / 1e6:.1f} -> {item.sd_bytes / 1e6:.1f} MB"
        )
    for uid, error in failed:
        print(f"{uid}: not downgraded: {error}", file=sys.stderr)
    print(f"{len(done)} videos downgraded to standard definition, {len(failed)} failed")
    return 1 if failed else 0


def add_processing_commands(actions: Any) -> None:
    """Add ``deidentify`` and ``downgrade`` to `imaging-cloud video`."""
    deid = actions.add_parser(
        "deidentify", help="teaching copy: blur faces, black out burned-in text, strip the voice"
    )
    deid.add_argument("file", type=Path, help="an MP4/MOV, or a DICOM video object (.dcm)")
    deid.add_argument("-o", "--output", required=True, type=Path, help="MP4 or DICOM to write")
    deid.add_argument("--audio", choices=AUDIO_ACTIONS, default="remove")
    deid.add_argument("--no-blur", action="store_true", help="leave faces as they are")
    deid.add_argument(
        "--text-region", type=_region, action="append", metavar="X0,Y0,X1,Y1",
        help="also black out this region (fractions of the picture); repeatable",
    )  # fmt: skip
    deid.add_argument(
        "--no-text-detection", action="store_true", help="only the --text-region areas"
    )
    deid.add_argument("--project", help="DICOM input: the export project whose key to use")
    deid.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="for --project")
    deid.add_argument("--json", action="store_true", help="print the report as JSON")
    add_progress_option(deid)
    deid.set_defaults(handler=_deidentify)

    down = actions.add_parser(
        "downgrade",
        help="replace HD recordings due by the retention policy with standard-definition copies",
    )
    down.add_argument(
        "--older-than-days", type=int, metavar="N",
        help="instead of each class's downgrade_to_sd_after_days (classes without it: never)",
    )  # fmt: skip
    down.add_argument("--limit", type=int, help="at most this many videos")
    down.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    down.add_argument(
        "--release-claims", action="store_true",
        help="release claims of runs that died before storing their SD copy (none running)",
    )  # fmt: skip
    suppress = argparse.SUPPRESS
    down.add_argument("--data-dir", type=Path, default=suppress, help="the node's data dir")
    down.add_argument("--database-url", default=suppress, help="index URL")
    down.add_argument("--blob-url", default=suppress, help="hot blob store URL")
    down.add_argument("--kek-url", default=suppress, help="KEK provider")
    add_progress_option(down)
    down.set_defaults(handler=_downgrade)
