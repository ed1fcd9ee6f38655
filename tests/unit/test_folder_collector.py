"""Watched folder collector: complete files only, each once, never outside the root."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from collectors.folder import FolderCollector
from collectors.intake import SUCCESS, SinkResult
from collectors.polling import PollReport
from tests.support.collector_tests import SETTLE, Clock, RecordingSink, dicom_bytes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink(quarantine_non_dicom=True)


def collector(root: Path, sink: RecordingSink, clock: Clock, **options: object) -> FolderCollector:
    return FolderCollector(root, sink, settle_seconds=SETTLE, clock=clock, **options)  # type: ignore[arg-type]


def settled_poll(watcher: FolderCollector, clock: Clock) -> PollReport:
    """First sighting, settle time, second sighting."""
    watcher.poll_once()
    clock.advance()
    return watcher.poll_once()


def test_complete_files_are_taken_once_recursively(
    root: Path, sink: RecordingSink, clock: Clock
) -> None:
    first, second = dicom_bytes("P1"), dicom_bytes("P2")
    (root / "a.dcm").write_bytes(first)
    (root / "study" / "series").mkdir(parents=True)
    (root / "study" / "series" / "IM0001").write_bytes(second)
    watcher = collector(root, sink, clock)

    assert watcher.poll_once() == PollReport(deferred=2)
    assert sink.offered == []
    clock.advance()
    assert watcher.poll_once() == PollReport(taken=2)
    clock.advance()
    assert not watcher.poll_once()

    assert sorted(sink.stored_bytes) == sorted([first, second])
    origins = {origin for _, origin in sink.stored}
    assert origins == {
        f"folder:{root.resolve()}/a.dcm",
        f"folder:{root.resolve()}/study/series/IM0001",
    }


def test_a_file_younger_than_the_settle_time_waits(root: Path, clock: Clock) -> None:
    sink = RecordingSink()
    (root / "a.dcm").write_bytes(dicom_bytes())
    watcher = FolderCollector(root, sink, settle_seconds=10, clock=clock)
    watcher.poll_once()
    clock.advance(5)
    assert watcher.poll_once() == PollReport(deferred=1)
    clock.advance(5)
    assert watcher.poll_once() == PollReport(taken=1)


def test_a_file_still_being_written_is_deferred_then_taken_whole(
    root: Path, sink: RecordingSink, clock: Clock
) -> None:
    data = dicom_bytes()
    target = root / "growing.dcm"
    target.write_bytes(data[:200])
    watcher = collector(root, sink, clock)

    watcher.poll_once()
    clock.advance()
    with target.open("ab") as handle:  # the writer goes on between two polls
        handle.write(data[200:])
    assert watcher.poll_once() == PollReport(deferred=1)
    clock.advance()
    assert watcher.poll_once() == PollReport(taken=1)
    assert sink.stored_bytes == [data]


def test_temporary_and_hidden_names_are_never_handed_over(
    root: Path, sink: RecordingSink, clock: Clock
) -> None:
    for name in ("a.dcm.part", "b.TMP", "c.partial", "d.filepart", ".e.dcm"):
        (root / name).write_bytes(dicom_bytes())
    (root / ".hidden").mkdir()
    (root / ".hidden" / "f.dcm").write_bytes(dicom_bytes())
    watcher = collector(root, sink, clock)

    assert not settled_poll(watcher, clock)
    assert sink.offered == []

    (root / "a.dcm.part").rename(root / "a.dcm")  # the upload finished
    assert settled_poll(watcher, clock) == PollReport(taken=1)


def test_not_dicom_is_handed_over_and_a_quarantined_file_is_not_sent_again(
    root: Path, sink: RecordingSink, clock: Clock
) -> None:
    (root / "notes.txt").write_bytes(b"not a DICOM object")
    watcher = collector(root, sink, clock)
    assert settled_poll(watcher, clock) == PollReport(quarantined=1)
    clock.advance()
    assert not watcher.poll_once()
    assert [data for data, _ in sink.offered] == [b"not a DICOM object"]


def test_out_of_resources_stops_the_poll_and_the_files_are_retried(
    root: Path, sink: RecordingSink, clock: Clock
) -> None:
    (root / "a.dcm").write_bytes(dicom_bytes())
    (root / "b.dcm").write_bytes(dicom_bytes())
    watcher = collector(root, sink, clock)
    watcher.poll_once()
    clock.advance()

    sink.disk_full = True
    assert watcher.poll_once() == PollReport(failed=1)  # no use offering the second one
    sink.disk_full = False
    clock.advance()
    assert watcher.poll_once() == PollReport(taken=2)
    assert len(sink.offered) == 3


def test_delete_after_taken_deletes_only_what_was_taken(
    root: Path, sink: RecordingSink, clock: Clock
) -> None:
    (root / "a.dcm").write_bytes(dicom_bytes())
    (root / "junk.bin").write_bytes(b"junk")
    watcher = collector(root, sink, clock, delete_after_taken=True)
    watcher.poll_once()
    clock.advance()

    sink.disk_full = True
    watcher.poll_once()
    assert (root / "a.dcm").exists() and (root / "junk.bin").exists()

    sink.disk_full = False
    clock.advance()
    (root / "late.dcm").write_bytes(dicom_bytes())  # seen once only: not complete yet
    (root / "upload.part").write_bytes(b"partial")
    assert watcher.poll_once() == PollReport(taken=1, quarantined=1, deferred=1)
    assert sorted(p.name for p in root.iterdir()) == ["late.dcm", "upload.part"]


def test_delete_after_taken_leaves_a_file_replaced_after_reading(root: Path, clock: Clock) -> None:
    target = root / "a.dcm"
    target.write_bytes(dicom_bytes("OLD"))
    replacement = dicom_bytes("NEWER-PATIENT")

    def replacing_sink(data: bytes, origin: str) -> SinkResult:
        target.write_bytes(replacement)  # the sender rewrites the same name meanwhile
        return SinkResult(SUCCESS)

    watcher = FolderCollector(
        root, replacing_sink, settle_seconds=SETTLE, clock=clock, delete_after_taken=True
    )
    settled_poll(watcher, clock)
    assert target.read_bytes() == replacement


def test_restart_with_the_state_file_does_not_send_again(
    root: Path, tmp_path: Path, sink: RecordingSink, clock: Clock
) -> None:
    state = tmp_path / "state" / "folder.json"
    (root / "sub").mkdir()
    (root / "sub" / "a.dcm").write_bytes(dicom_bytes())
    assert settled_poll(collector(root, sink, clock, state_path=state), clock).taken == 1
    assert set(json.loads(state.read_text())["taken"]) == {"sub/a.dcm"}

    restarted = collector(root, sink, clock, state_path=state)
    assert not settled_poll(restarted, clock)
    assert len(sink.offered) == 1

    # Same name, new content (modalities reuse names like IM0001): that is a new object.
    newer = dicom_bytes("P2") + b"\0\0"
    (root / "sub" / "a.dcm").write_bytes(newer)
    assert settled_poll(restarted, clock) == PollReport(taken=1)
    assert sink.stored_bytes[-1] == newer


def test_files_gone_from_the_folder_are_forgotten(
    root: Path, tmp_path: Path, sink: RecordingSink, clock: Clock
) -> None:
    state = tmp_path / "folder.json"
    (root / "a.dcm").write_bytes(dicom_bytes())
    watcher = collector(root, sink, clock, state_path=state)
    settled_poll(watcher, clock)
    (root / "a.dcm").unlink()
    (root / "b.dcm").write_bytes(dicom_bytes())
    settled_poll(watcher, clock)
    assert set(json.loads(state.read_text())["taken"]) == {"b.dcm"}


def test_an_unreadable_state_file_is_set_aside(
    root: Path, tmp_path: Path, sink: RecordingSink, clock: Clock
) -> None:
    state = tmp_path / "folder.json"
    state.write_text("{not json")
    (root / "a.dcm").write_bytes(dicom_bytes())
    watcher = collector(root, sink, clock, state_path=state)
    assert settled_poll(watcher, clock).taken == 1
    assert [p.name for p in tmp_path.glob("folder.json.corrupt-*")]


def test_a_symbolic_link_leaving_the_root_is_rejected_and_never_read(
    root: Path, tmp_path: Path, sink: RecordingSink, clock: Clock
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(dicom_bytes("SECRET"))
    (root / "escape.dcm").symlink_to(outside / "secret.dcm")
    (root / "escape-dir").symlink_to(outside)
    (root / "relative.dcm").symlink_to(Path("..") / "outside" / "secret.dcm")
    watcher = collector(root, sink, clock)

    assert watcher.poll_once() == PollReport(rejected=3)
    clock.advance()
    assert watcher.poll_once() == PollReport(rejected=3)
    assert sink.offered == []


def test_a_symbolic_link_inside_the_root_is_followed(
    root: Path, sink: RecordingSink, clock: Clock
) -> None:
    (root / "real").mkdir()
    data = dicom_bytes()
    (root / "real" / "a.dcm").write_bytes(data)
    (root / "alias.dcm").symlink_to(root / "real" / "a.dcm")
    (root / "alias-dir").symlink_to(root / "real")  # not walked twice
    assert settled_poll(collector(root, sink, clock), clock) == PollReport(taken=2)
    assert sink.stored_bytes == [data, data]


def test_special_files_are_skipped(root: Path, sink: RecordingSink, clock: Clock) -> None:
    os.mkfifo(root / "pipe.dcm")  # reading it would block the poll forever
    (root / "a.dcm").write_bytes(dicom_bytes())
    assert settled_poll(collector(root, sink, clock), clock) == PollReport(taken=1)


def test_the_state_file_inside_the_root_is_not_collected(
    root: Path, sink: RecordingSink, clock: Clock
) -> None:
    (root / "a.dcm").write_bytes(dicom_bytes())
    watcher = collector(root, sink, clock, state_path=root / "state.json")
    settled_poll(watcher, clock)
    assert not settled_poll(watcher, clock)
    assert len(sink.offered) == 1


def test_run_polls_until_stopped(root: Path, sink: RecordingSink) -> None:
    data = dicom_bytes()
    (root / "a.dcm").write_bytes(data)
    watcher = FolderCollector(root, sink, settle_seconds=0)
    stop = threading.Event()
    runner = threading.Thread(target=watcher.run, args=(stop, 0.01))
    runner.start()
    try:
        for _ in range(500):
            if sink.stored:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        runner.join(timeout=5)
    assert not runner.is_alive()
    assert sink.stored_bytes == [data]


def test_a_missing_root_is_refused(tmp_path: Path, sink: RecordingSink) -> None:
    with pytest.raises(FileNotFoundError):
        FolderCollector(tmp_path / "nowhere", sink)
