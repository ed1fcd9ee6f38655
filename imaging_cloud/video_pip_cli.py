"""`imaging-cloud video pip MAIN INSET -o OUT`: picture-in-picture of two OR recordings.

`add_pip_command` adds the command to the ``video`` group's subparsers. MAIN is the field or
endoscope camera, INSET the panorama. Exit status 0 when written, 1 when FFmpeg fails, 2 when
an input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from collectors.video_pip import CORNERS, PipError, compose_pip


def _pip(args: argparse.Namespace) -> int:
    for given in (args.main, args.inset):
        if not Path(given).is_file():
            print(f"imaging-cloud video pip: {given}: no such file", file=sys.stderr)
            return 2
    try:
        result = compose_pip(
            args.main, args.inset, args.output, inset_scale=args.inset_scale,
            corner=args.corner, inset_offset=args.offset, preset=args.preset,
        )  # fmt: skip
    except PipError as exc:
        print(f"imaging-cloud video pip: {exc.detail}", file=sys.stderr)
        return 1
    facts = {
        "output": str(result.output),
        "width": result.width,
        "height": result.height,
        "duration_seconds": round(result.duration_seconds, 3),
        "encode_seconds": round(result.encode_seconds, 3),
        "speed_vs_real_time": round(result.speed, 2),
    }
    if args.json:
        print(json.dumps(facts))
    else:
        print(
            f"{result.output}: {result.width}x{result.height}, {result.duration_seconds:.2f} s, "
            f"encoded in {result.encode_seconds:.2f} s ({result.speed:.2f}x real time)"
        )
    return 0


def add_pip_command(video_commands: Any) -> None:
    """Add ``pip`` to the ``imaging-cloud video`` subparsers."""
    pip = video_commands.add_parser(
        "pip", help="picture-in-picture: field/endoscope camera with the panorama inset"
    )
    pip.add_argument("main", type=Path, help="the field or endoscope recording (main picture)")
    pip.add_argument("inset", type=Path, help="the panorama recording (inset)")
    pip.add_argument("-o", "--output", required=True, type=Path, help="the MP4 to write")
    pip.add_argument("--corner", choices=CORNERS, default="top-right")
    pip.add_argument("--inset-scale", type=float, default=0.3, help="inset width / main width")
    pip.add_argument(
        "--offset", type=float, default=0.0, help="seconds the panorama started after the main"
    )
    pip.add_argument("--preset", default="veryfast", help="x264 preset (speed against size)")
    pip.add_argument("--json", action="store_true", help="print the result as JSON")
    pip.set_defaults(handler=_pip)
