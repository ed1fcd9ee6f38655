from __future__ import annotations

import pytest

from collectors.multipart import MultipartError, parse_accept, split_multipart, stream_parts


def test_stream_then_split_round_trips_binary_parts() -> None:
    payloads = [b"\r\n--not-the-boundary\r\n", bytes(range(256)) * 10, b""]
    body = b"".join(stream_parts((("application/dicom", p) for p in payloads), "b0undary"))
    parts = split_multipart(body, "b0undary")
    assert [p.content for p in parts] == payloads
    assert all(p.content_type == "application/dicom" for p in parts)


def test_accept_with_quoted_commas_and_quality_orders_best_first() -> None:
    accepted = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
        'multipart/related; type="image/jpeg"'
    )
    assert accepted[0].part_type == "image/jpeg"
    assert accepted[1].transfer_syntax == "*"


@pytest.mark.parametrize(
    "body",
    [b"", b"no boundary here", b"--b\r\nContent-Type: x\r\n\r\nnever closed", b"--b"],
)
def test_malformed_bodies_are_refused_precisely(body: bytes) -> None:
    with pytest.raises(MultipartError) as refused:
        split_multipart(body, "b")
    assert refused.value.title == "Malformed multipart body"
