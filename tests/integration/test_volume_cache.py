"""The MPR volume cache: LRU by bytes in-process, Redis shared between processes, one build."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from imaging_cloud.synthetic import StudySpec, ct_series, to_part10
from mpr.volume import Volume, VolumeError
from mpr.window import Window
from tests.support.servers import client, running_node
from viewer_api.deps import ApiSettings
from viewer_api.volume_cache import (
    MemoryVolumeCache,
    RedisVolumeCache,
    Volumes,
    open_volume_cache,
    volume_key,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def make_volume(slices: int = 4, size: int = 8, *, dtype: str = "int16", seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    voxels = rng.integers(-1024, 3000, size=(slices, size, size)).astype(dtype)
    return Volume(
        voxels=voxels,
        origin=np.array([-10.5, 20.25, -300.0]),
        row_direction=np.array([1.0, 0.0, 0.0]),
        column_direction=np.array([0.0, 1.0, 0.0]),
        slice_direction=np.array([0.0, 0.0, 1.0]),
        spacing=(2.5, 0.75, 0.75),
        modality="CT",
        frame_of_reference_uid="1.2.3.4",
        series_instance_uid=f"1.2.3.{seed}",
        sop_instance_uids=tuple(f"1.2.3.{seed}.{i}" for i in range(slices)),
        default_window=Window(40.0, 400.0),
        photometric="MONOCHROME2",
        resampled_from=None,
    )


def assert_same_volume(a: Volume, b: Volume) -> None:
    assert a.voxels.dtype == b.voxels.dtype
    assert np.array_equal(a.voxels, b.voxels)
    for name in ("origin", "row_direction", "column_direction", "slice_direction"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert getattr(b, name).dtype == np.float64
    for name in (
        "spacing",
        "modality",
        "frame_of_reference_uid",
        "series_instance_uid",
        "sop_instance_uids",
        "default_window",
        "photometric",
        "resampled_from",
    ):
        assert getattr(a, name) == getattr(b, name), name


def test_key_changes_with_the_instances_not_their_order() -> None:
    key = volume_key("1.2", ["1.2.1", "1.2.2"])
    assert key.startswith("1.2:")
    assert key == volume_key("1.2", ["1.2.2", "1.2.1"])
    assert key != volume_key("1.2", ["1.2.1", "1.2.2", "1.2.3"])


def test_memory_cache_evicts_the_least_recently_used_by_bytes() -> None:
    one = make_volume(seed=1)  # 4 * 8 * 8 * 2 = 512 bytes each
    cache = MemoryVolumeCache(max_bytes=3 * one.voxels.nbytes)
    volumes = {k: make_volume(seed=k) for k in range(1, 5)}
    for k in (1, 2, 3):
        cache.put(f"k{k}", volumes[k])
    assert cache.get("k1") is volumes[1]  # k1 is now the most recently used
    cache.put("k4", volumes[4])
    assert "k2" not in cache
    assert all(f"k{k}" in cache for k in (1, 3, 4))
    assert cache.nbytes == 3 * one.voxels.nbytes
    big = make_volume(slices=20, seed=9)  # larger than the whole cache: not kept
    cache.put("big", big)
    assert cache.get("big") is None
    assert len(cache) == 3
    cache.put("k1", volumes[1])  # replacing does not count twice
    assert cache.nbytes == 3 * one.voxels.nbytes


def test_settings_choose_the_backend() -> None:
    settings = ApiSettings()
    assert settings.volume_cache_bytes == 1024**3
    cache = open_volume_cache(settings.volume_cache_bytes, settings.volume_cache_url)
    assert isinstance(cache, MemoryVolumeCache)
    assert cache.max_bytes == 1024**3
    remote = open_volume_cache(1024, REDIS_URL)  # connects lazily
    assert isinstance(remote, RedisVolumeCache)
    assert remote.front.max_bytes == 256


def test_concurrent_first_requests_build_once() -> None:
    volumes = Volumes(MemoryVolumeCache(10**6))
    calls = []
    built = make_volume()

    def build() -> Volume:
        calls.append(1)
        time.sleep(0.2)
        return built

    results: list[Volume] = []
    threads = [
        threading.Thread(target=lambda: results.append(volumes.get_or_build("s", build)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 8
    assert all(r is built for r in results)
    # another key is built independently
    assert volumes.get_or_build("t", lambda: make_volume(seed=3)) is not built
    assert volumes._locks == {}  # no lock left behind


def test_failures_are_remembered_per_key() -> None:
    volumes = Volumes(MemoryVolumeCache(10**6), remember=(VolumeError,))
    calls = []

    def fail() -> Volume:
        calls.append(1)
        raise VolumeError("gantry tilt of 15.0° (slices are offset along the columns)")

    for _ in range(2):
        with pytest.raises(VolumeError, match="gantry tilt"):
            volumes.get_or_build("tilted", fail)
    assert len(calls) == 1
    assert "gantry tilt" in str(volumes.failure("tilted"))
    assert volumes.failure("other") is None

    def broken() -> Volume:
        calls.append(1)
        raise OSError("blob store down")

    for _ in range(2):  # not a reason about the images: tried again
        with pytest.raises(OSError):
            volumes.get_or_build("flaky", broken)
    assert len(calls) == 3


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"imaging-cloud-test:{uuid.uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=name + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.needs_redis
@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_redis_volume_written_by_one_process_is_read_by_another(prefix: str, dtype: str) -> None:
    writer = RedisVolumeCache(REDIS_URL, prefix=prefix, chunk_bytes=1000)
    reader = RedisVolumeCache(REDIS_URL, prefix=prefix, chunk_bytes=1000)  # another process
    volume = make_volume(slices=6, size=16, dtype=dtype)  # 3 or 6 kB: several chunks
    assert reader.get("series:abc") is None
    writer.put("series:abc", volume)
    read = reader.get("series:abc")
    assert read is not None and read is not volume
    assert_same_volume(volume, read)
    assert reader.get("series:abc") is read  # now from the reader's front LRU
    keys = list(writer.client.scan_iter(match=prefix + "*"))
    assert len(keys) == 1 + -(-volume.voxels.nbytes // 1000)
    assert all(0 < writer.client.ttl(k) <= 3600 for k in keys)


@pytest.mark.needs_redis
def test_redis_volume_with_a_missing_chunk_is_a_miss(prefix: str) -> None:
    writer = RedisVolumeCache(REDIS_URL, prefix=prefix, chunk_bytes=100)
    writer.put("k", make_volume())
    writer.client.delete(f"{prefix}k:voxels:2")
    assert RedisVolumeCache(REDIS_URL, prefix=prefix).get("k") is None


@pytest.mark.needs_redis
def test_redis_keeps_a_resampled_volume_without_window(prefix: str) -> None:
    volume = make_volume()
    volume = Volume(
        **{
            **{name: getattr(volume, name) for name in volume.__dataclass_fields__},
            "default_window": None,
            "resampled_from": "gantry tilt of 15.0°",
        }
    )
    RedisVolumeCache(REDIS_URL, prefix=prefix).put("k", volume)
    read = RedisVolumeCache(REDIS_URL, prefix=prefix).get("k")
    assert read is not None
    assert_same_volume(volume, read)


def test_unreachable_redis_degrades_to_no_cache() -> None:
    cache = RedisVolumeCache("redis://127.0.0.1:1/0", front_bytes=0)
    volume = make_volume()
    cache.put("k", volume)  # logged, not raised
    assert cache.get("k") is None


@pytest.mark.needs_redis
def test_a_node_configured_with_redis_shares_its_volumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """volume_cache_url reaches the app: a second node (process) finds the volume in Redis."""
    monkeypatch.setenv("IMAGING_CLOUD_VOLUME_CACHE_URL", REDIS_URL)
    study = StudySpec(accession_number="ACC-REDIS")
    slices = list(ct_series(study, slices=50, size=16))
    series = slices[0].SeriesInstanceUID
    path = f"/viewer-api/studies/{study.study_instance_uid}/series/{series}/mpr"
    client_redis = redis.Redis.from_url(REDIS_URL)
    try:
        with running_node(tmp_path / "node") as node, client(node) as http:
            assert isinstance(node.app.state.volumes.cache, RedisVolumeCache)
            for ds in slices:
                node.archive.store(to_part10(ds), source="test")
            first = http.get(path, params={"plane": "sagittal"}, headers={"Accept": "image/png"})
            assert first.status_code == 200
            assert list(client_redis.scan_iter(match=f"imaging-cloud:volume:{series}:*"))
            # the same archive seen by another node, whose own front cache is empty
            other = Volumes(RedisVolumeCache(REDIS_URL))
            key = volume_key(series, [ds.SOPInstanceUID for ds in slices])
            volume = other.get_or_build(key, lambda: pytest.fail("assembled again"))
            assert volume.voxels.shape == (50, 16, 16)
    finally:
        keys = list(client_redis.scan_iter(match=f"imaging-cloud:volume:{series}:*"))
        if keys:
            client_redis.delete(*keys)
        client_redis.close()
