"""Large videos by Range: the MP4 is extracted once into an encrypted, bounded disk cache and
every Range request reads only its bytes from there.

The thresholds are constructor parameters, so a sub-megabyte test video stands in for an
operating-room recording of gigabytes: anything above ``MEMORY_CLIP`` goes to the disk tier."""

from __future__ import annotations

import shutil
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloud.archive import StoredInstance
from imaging_cloud.node import Node
from tests.support.servers import client, running_node
from tests.support.video import make_mp4, video_part10
from viewer_api import video_api
from viewer_api.video_clips import DiskClip, VideoClips

pytestmark = pytest.mark.needs_ffmpeg

MEMORY_CLIP = 32 * 1024  # clips above this go to disk


@dataclass
class Video:
    mp4: bytes
    path: str  # …/instances/{sop}


@dataclass
class Setup:
    node: Node
    videos: list[Video]
    reads: list[str] = field(default_factory=list)  # SOP UIDs whose blob was read

    @property
    def cache_dir(self) -> Path:
        return self.node.settings.data_dir / "cache" / "video-clips"

    def fresh_cache(self, disk_bytes: int = 64 * 1024**2) -> VideoClips:
        """A new, empty clip cache for the node (as a restarted process would have)."""
        clips = VideoClips(self.cache_dir, memory_clip_bytes=MEMORY_CLIP, disk_bytes=disk_bytes)
        self.node.app.state.video_clips = clips
        self.reads.clear()
        return clips


def _count_reads(node: Node, reads: list[str]) -> None:
    """Record every whole-object read of the archive (the expensive part a cache saves)."""
    read: Callable[[StoredInstance], bytes] = node.archive.read

    def counting(stored: StoredInstance) -> bytes:
        reads.append(stored.sop_instance_uid)
        return read(stored)

    node.archive.read = counting  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("large-video")
    movies = [
        make_mp4(folder / "big.mp4", seconds=3.0, size=(640, 480), colour=None),
        make_mp4(folder / "a.mp4", seconds=2.0, colour=None, tone_hz=330),
        make_mp4(folder / "b.mp4", seconds=2.0, colour=None, tone_hz=550),
    ]
    with running_node(folder / "data") as node:
        for number, movie in enumerate(movies):
            node.archive.store(video_part10(movie, patient_id=f"P-BIG-{number}"), source="test")
        videos = [Video(movie.read_bytes(), _path_of(node, movie.read_bytes())) for movie in movies]
        found = Setup(node, videos)
        _count_reads(node, found.reads)
        yield found


def _path_of(node: Node, mp4: bytes) -> str:
    """The instance path of the stored video whose MP4 is ``mp4``."""
    with client(node) as http:
        for study in http.get("/dicom-web/studies").json():
            uid = study["0020000D"]["Value"][0]
            for found in http.get(f"/dicom-web/studies/{uid}/instances").json():
                series, sop = found["0020000E"]["Value"][0], found["00080018"]["Value"][0]
                path = f"/dicom-web/studies/{uid}/series/{series}/instances/{sop}"
                whole = http.get(path + "/rendered", headers={"Accept": "video/mp4"})
                if whole.content == mp4:
                    return path
    raise AssertionError("video not found")


def _cache_files(setup: Setup) -> list[Path]:
    return sorted(setup.cache_dir.rglob("*.mp4.enc"))


def test_ranges_from_the_disk_tier_are_the_mp4_and_the_blob_is_read_once(setup: Setup) -> None:
    clips = setup.fresh_cache()
    video = setup.videos[0]
    size = len(video.mp4)
    assert size > MEMORY_CLIP
    spans = [(0, 99), (size // 2 - 7, size // 2 + 4999), (size - 1000, size - 1), (17, 17)]
    spans += [(start, start + 65_535) for start in range(1, size - 70_000, size // 9)]
    with client(setup.node) as http:
        for first, last in spans:
            answer = http.get(video.path + "/rendered", headers={"Range": f"bytes={first}-{last}"})
            assert answer.status_code == 206, answer.text
            assert answer.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert answer.content == video.mp4[first : last + 1]
        suffix = http.get(video.path + "/rendered", headers={"Range": "bytes=-333"})
        whole = http.get(video.path + "/rendered")
    assert suffix.content == video.mp4[-333:]
    assert whole.status_code == 200 and whole.content == video.mp4
    assert int(whole.headers["content-length"]) == size
    assert len(setup.reads) == 1 and clips.misses == 1
    assert len(_cache_files(setup)) == 1  # on disk, not in the memory tier
    assert clips.disk_size == size


def test_large_bodies_are_streamed_in_chunks(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_api, "STREAM_ABOVE", 50_000)
    monkeypatch.setattr(video_api, "STREAM_CHUNK", 40_000)
    setup.fresh_cache()
    video = setup.videos[0]
    size = len(video.mp4)
    with client(setup.node) as http:
        whole = http.get(video.path + "/rendered")
        part = http.get(video.path + "/rendered", headers={"Range": "bytes=12345-412344"})
        small = http.get(video.path + "/rendered", headers={"Range": "bytes=100-199"})
    assert whole.status_code == 200 and whole.content == video.mp4
    assert int(whole.headers["content-length"]) == size
    assert "chunked" not in whole.headers.get("transfer-encoding", "")
    assert part.status_code == 206 and part.content == video.mp4[12345:412345]
    assert part.headers["content-length"] == "400000"
    assert small.status_code == 206 and small.content == video.mp4[100:200]


def test_the_cache_file_does_not_hold_the_mp4_in_the_clear(setup: Setup) -> None:
    setup.fresh_cache()
    video = setup.videos[0]
    with client(setup.node) as http:
        http.get(video.path + "/rendered", headers={"Range": "bytes=0-9"})
    (cached,) = _cache_files(setup)
    stored = cached.read_bytes()
    assert len(stored) == len(video.mp4)
    assert b"ftyp" not in stored and b"moov" not in stored
    middle = len(video.mp4) // 2
    assert video.mp4[middle : middle + 32] not in stored
    assert video.mp4[:32] not in stored
    assert cached.name.endswith(".mp4.enc") and len(cached.name) == 64 + len(".mp4.enc")


def test_the_thumbnail_reads_the_disk_clip(setup: Setup) -> None:
    setup.fresh_cache()
    with client(setup.node) as http:
        answer = http.get(setup.videos[0].path + "/thumbnail")
    assert answer.status_code == 200 and answer.content[:3] == b"\xff\xd8\xff"


def test_concurrent_ranges_of_an_uncached_video_fill_once(setup: Setup) -> None:
    clips = setup.fresh_cache()
    video = setup.videos[0]
    answers: dict[int, bytes] = {}

    def play(start: int) -> None:
        with client(setup.node) as http:
            answer = http.get(
                video.path + "/rendered", headers={"Range": f"bytes={start}-{start + 4095}"}
            )
        answers[start] = answer.content

    starts = [i * 50_000 for i in range(8)]
    threads = [threading.Thread(target=play, args=(start,)) for start in starts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert {start: video.mp4[start : start + 4096] for start in starts} == answers
    assert len(setup.reads) == 1 and clips.misses == 1
    assert len(_cache_files(setup)) == 1


def test_eviction_keeps_the_directory_within_its_bound(setup: Setup) -> None:
    big, a, b = setup.videos
    bound = len(big.mp4) + max(len(a.mp4), len(b.mp4))  # room for two, never three
    clips = setup.fresh_cache(disk_bytes=bound)
    with client(setup.node) as http:
        for video in (big, a, big, b, a, big):
            answer = http.get(video.path + "/rendered", headers={"Range": "bytes=0-999"})
            assert answer.content == video.mp4[:1000]
            on_disk = sum(p.stat().st_size for p in _cache_files(setup))
            assert on_disk <= bound and clips.disk_size == on_disk
            assert len(_cache_files(setup)) <= 2
        reads_before = len(setup.reads)
        http.get(big.path + "/rendered", headers={"Range": "bytes=0-9"})  # most recent: kept
        assert len(setup.reads) == reads_before
        http.get(b.path + "/rendered", headers={"Range": "bytes=0-9"})  # least recent: evicted
        assert len(setup.reads) == reads_before + 1


def test_a_new_process_clears_the_old_cache_files(tmp_path: Path) -> None:
    movie = make_mp4(tmp_path / "clip.mp4", seconds=1.0, size=(160, 120), colour=None)
    part10 = video_part10(movie, patient_id="P-RESTART")
    with running_node(tmp_path / "first") as node:
        node.archive.store(part10, source="test")
        path = _path_of(node, movie.read_bytes())
        cache_dir = tmp_path / "first" / "cache" / "video-clips"
        node.app.state.video_clips = VideoClips(cache_dir, memory_clip_bytes=1024)
        with client(node) as http:
            http.get(path + "/rendered", headers={"Range": "bytes=0-9"})
        (old,) = cache_dir.rglob("*.mp4.enc")
    # The next process of a node finds that cache directory as the last one left it (a crash:
    # no clean-up ran). running_node makes its admin afresh, so the restart is a second data
    # directory given the first's cache files.
    second = tmp_path / "second" / "cache" / "video-clips"
    shutil.copytree(cache_dir, second)
    left_over = second / old.relative_to(cache_dir)
    assert left_over.exists()
    with running_node(tmp_path / "second") as node:  # default settings: cache made from them
        node.archive.store(part10, source="test")
        with client(node) as http:
            again = http.get(path + "/rendered", headers={"Range": "bytes=0-9"})
        assert again.content == movie.read_bytes()[:10]
    assert not left_over.exists()  # unreadable under the new process's key, so gone
    assert list(second.rglob("*.mp4.enc")) == []  # a small clip: memory tier


def test_a_live_cache_sharing_the_directory_keeps_its_files(setup: Setup, tmp_path: Path) -> None:
    video = setup.videos[0]
    part10 = video_part10_of(video)
    live = VideoClips(tmp_path, memory_clip_bytes=1024)
    live.clip("1.2.3", "k", lambda: part10).close()
    (kept,) = tmp_path.rglob("*.mp4.enc")
    VideoClips(tmp_path, memory_clip_bytes=1024)  # another process on the same data directory
    assert kept.exists()
    again = live.clip("1.2.3", "k", lambda: b"not read: cached")
    assert again.read(0, 99) == video.mp4[:100]
    again.close()
    live.close()  # or its process ends cleanly
    assert not kept.parent.exists()


def test_a_range_read_holds_only_its_bytes(setup: Setup, tmp_path: Path) -> None:
    """What keeps a 1-GB video out of memory: reading a range of a disk clip allocates about
    that range, not the clip."""
    video = setup.videos[0]
    clips = VideoClips(tmp_path / "cache", memory_clip_bytes=MEMORY_CLIP)
    clip = clips.clip("1.2.3", "k", lambda: video_part10_of(video))
    assert isinstance(clip, DiskClip)
    tracemalloc.start()
    try:
        for first in range(0, clip.length - 20_000, clip.length // 7):
            assert clip.read(first, first + 9_999) == video.mp4[first : first + 10_000]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        clip.close()
    assert peak < clip.length // 10


def video_part10_of(video: Video) -> bytes:
    """Part-10 bytes around ``video``'s MP4 (written to a file for the wrapper)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        movie = Path(folder) / "v.mp4"
        movie.write_bytes(video.mp4)
        return video_part10(movie, patient_id="P-MEM")


@pytest.mark.parametrize("split", [False, True])
def test_pad_byte_and_fragments_on_the_disk_tier(tmp_path: Path, split: bool) -> None:
    """The disk tier walks the encapsulated items itself: several fragments are one MP4, and
    the even-length pad byte is not part of it."""
    from pydicom.encaps import encapsulate

    from imaging_cloud.synthetic import to_part10
    from tests.support.video import video_dataset

    movie = make_mp4(tmp_path / "odd.mp4", seconds=1.0, size=(160, 120), colour=None)
    data = movie.read_bytes()
    if len(data) % 2 == 0:  # make it odd with a trailing free box of 9 bytes
        data += (9).to_bytes(4, "big") + b"free" + b"\x00"
    ds = video_dataset(movie)
    half = len(data) // 2 // 2 * 2
    ds.PixelData = encapsulate([data[:half], data[half:]] if split else [data], has_bot=False)
    clips = VideoClips(tmp_path / "cache", memory_clip_bytes=1024)
    part10 = to_part10(ds, str(ds.file_meta.TransferSyntaxUID))
    clip = clips.clip("1.2.3", "k", lambda: part10)
    try:
        assert isinstance(clip, DiskClip)
        assert clip.length == len(data)
        assert clip.read(0, clip.length - 1) == data
        assert b"".join(clip.chunks(3, clip.length - 1, 4096)) == data[3:]
    finally:
        clip.close()
