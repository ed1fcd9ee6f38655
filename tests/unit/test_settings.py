from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from imaging_cloud.settings import load_settings


def test_defaults_come_from_config_file() -> None:
    settings = load_settings()
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert (settings.dicom_port, settings.ae_title) == (11112, "IMAGINGCLOUD")
    assert settings.data_dir == Path("./data")


def test_environment_overrides_defaults_and_arguments_override_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGING_CLOUD_HTTP_PORT", "9000")
    monkeypatch.setenv("IMAGING_CLOUD_AE_TITLE", "FROMENV")
    settings = load_settings(ae_title="FROMARGS", dicom_port=None)
    assert settings.http_port == 9000
    assert settings.ae_title == "FROMARGS"
    assert settings.dicom_port == 11112


@pytest.mark.parametrize("bad", [{"ae_title": "X" * 17}, {"http_port": 70000}, {"ae_title": "  "}])
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        load_settings(**bad)
