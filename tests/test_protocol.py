import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inferd.client import frame_message
from inferd.errors import FrameError
from inferd.protocol import PartSpec, decode_header, decode_payload


def header(**fields) -> bytes:
    base = {"v": 1, "source": "cam0", "seq": 1, "shape": [2, 3], "dtype": "uint8"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def reason(data: bytes) -> str:
    with pytest.raises(FrameError) as e:
        decode_header(data)
    return e.value.reason


def test_a_valid_header_round_trips_through_the_client_encoder():
    frame = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    head, payload = frame_message(frame, "cam0", 7, model="m", ts=12.5, request_id="r", deadline=99.0)
    h = decode_header(head)
    assert (h.source, h.seq, h.ts, h.models, h.id, h.deadline) == ("cam0", 7, 12.5, ["m"], "r", 99.0)
    (spec,) = h.parts
    arr = decode_payload(spec, payload)
    np.testing.assert_array_equal(arr, frame)
    assert np.shares_memory(arr, frame)  # zero-copy on both sides


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\xff\xfe", "header"),
        (b"[1, 2]", "header"),
        (b"{}", "header"),
        (header(v=2), "header"),
        (header(source=""), "header"),
        (header(source="a/b"), "header"),
        (header(source=5), "header"),
        (header(seq="x"), "header"),
        (header(ts="now"), "header"),
        (header(shape=[0, 3]), "header"),
        (header(shape="2x3"), "header"),
        (header(shape=[True, 3]), "header"),
        (header(dtype="complex64"), "dtype"),
        (header(dtype=None), "dtype"),
        (header(encoding="webp"), "encoding"),
        (header(model=3), "header"),
        (header(model=[]), "header"),
        (header(id=[1]), "header"),
        (header(parts=[]), "header"),
        (b" " * 70000, "header"),
    ],
)
def test_bad_headers_are_rejected_with_a_reason(data, expected):
    assert reason(data) == expected


def test_payload_size_must_match_shape_and_dtype():
    spec = PartSpec((480, 640, 3), np.dtype(np.uint8))
    with pytest.raises(FrameError) as e:
        decode_payload(spec, b"\x00" * 100)
    assert e.value.reason == "size" and "needs 921600" in str(e.value)
    with pytest.raises(FrameError) as e:
        decode_payload(spec, b"\x00" * 921600, max_elements=1000)
    assert e.value.reason == "too_large"


def encoded(fmt: str, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buf, format=fmt)
    return buf.getvalue()


def test_jpeg_and_png_decode_to_rgb_and_bad_ones_are_rejected():
    png = decode_payload(PartSpec((), np.dtype(np.uint8), "png"), encoded("PNG"))
    assert png.shape == (30, 40, 3) and tuple(png[0, 0]) == (200, 100, 50)
    jpg = decode_payload(PartSpec((), np.dtype(np.uint8), "jpeg"), encoded("JPEG"))
    assert jpg.shape == (30, 40, 3) and np.abs(jpg.astype(int) - [200, 100, 50]).max() < 8
    for data, enc in [(b"not a jpeg", "jpeg"), (encoded("JPEG")[:50], "jpeg"), (encoded("PNG"), "jpeg")]:
        with pytest.raises(FrameError) as e:
            decode_payload(PartSpec((), np.dtype(np.uint8), enc), data)
        assert e.value.reason == "decode"
    with pytest.raises(FrameError) as e:
        decode_payload(PartSpec((), np.dtype(np.uint8), "png"), encoded("PNG", (400, 400)), max_elements=1000)
    assert e.value.reason == "too_large"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # no wall clock
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "v",
                            "source",
                            "seq",
                            "ts",
                            "shape",
                            "dtype",
                            "encoding",
                            "model",
                            "id",
                            "parts",
                            "x",
                        ]
                    ),
                    inner,
                    max_size=6,
                )
            ),
            max_leaves=12,
        ).map(lambda o: json.dumps(o).encode()),
    )
)
def test_any_bytes_give_a_header_or_a_frame_error(data):
    try:
        h = decode_header(data)
    except FrameError as e:
        assert e.reason in {"header", "dtype", "encoding"}
    else:
        assert h.source and h.parts
