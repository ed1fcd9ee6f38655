"""The documented sources file builds every collector; bad files are refused by key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, GatewayConfigError, load_sources_file
from gateway.service import Gateway
from gateway.sources import build_collector

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway-sources.example.toml"


def _gateway(tmp_path: Path) -> Gateway:
    config = GatewayConfig(
        cloud_url="http://127.0.0.1:9",
        credential="icg_test",
        spool_dir=tmp_path / "spool",
        hospital_id="H1",
    )
    return Gateway(config)


def test_example_sources_file_builds_every_collector(tmp_path: Path) -> None:
    pacs, sources = load_sources_file(EXAMPLE)
    assert pacs is not None and pacs.ae_title == "HOSPITAL_PACS"
    kinds = {s["kind"] for s in sources}
    assert kinds == {"qr", "folder", "ftp", "sftp", "dicomweb", "http_push", "video_folder"}
    gateway = _gateway(tmp_path)
    key = tmp_path / "key"
    key.write_text("not read until connecting")
    for entry in sources:
        if entry["kind"] == "http_push":
            continue  # an app, not a polling collector; started by start_sources
        entry = dict(entry)
        if entry["kind"] in ("folder", "video_folder"):
            entry["path"] = str(tmp_path)
        if entry["kind"] == "sftp":
            entry["private_key"] = str(key)
        collector = build_collector(gateway, entry)
        assert callable(collector.run)
    gateway.spool.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[sources]]\nkind = "telnet"\n', "sources[0].kind is 'telnet'"),
        ('[pacs]\nhost = "x"\n', "[pacs] needs host, port and ae_title"),
        ("sources = 3\n", "array of tables"),
        ("[[sources]\n", "Expected"),
    ],
)
def test_bad_sources_file_is_refused_with_its_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(text)
    with pytest.raises(GatewayConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_sources_file(path)


def test_collector_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path)
    with pytest.raises(ValueError, match="pasword"):
        build_collector(gateway, {"kind": "ftp", "host": "x", "pasword": "typo"})
    gateway.spool.close()


def test_example_is_valid_toml() -> None:
    assert tomllib.loads(EXAMPLE.read_text())["sources"]
