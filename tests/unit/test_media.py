"""Decoding: formats recognised from bytes, every pixel mode, video sampling, and an error per bad input.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from deepfake_detector import InputError, PipelineSettings
from deepfake_detector import media as media_module
from deepfake_detector.media import VIDEO_TMPDIR_ENV, check_video_temp_dir, decode_media, sniff_format
from PIL import Image, ImageOps

from tests.support.media import image_bytes, load_rgb, png_header_only, read_video_frames, video_bytes

SETTINGS = PipelineSettings()


@pytest.fixture(scope="module")
def astronaut(media) -> np.ndarray:
    return load_rgb(media.astronaut)


@pytest.fixture(scope="module")
def video_frames(media) -> list[np.ndarray]:
    return read_video_frames(media.face_video)


@pytest.mark.parametrize(
    ("pil_format", "mode", "expected"),
    [
        ("JPEG", "RGB", "jpeg"), ("JPEG", "L", "jpeg"), ("JPEG", "CMYK", "jpeg"),
        ("PNG", "RGB", "png"), ("PNG", "RGBA", "png"), ("PNG", "L", "png"), ("PNG", "I;16", "png"),
        ("PNG", "P", "png"), ("WEBP", "RGB", "webp"), ("BMP", "RGB", "bmp"), ("GIF", "P", "gif"),
        ("TIFF", "RGB", "tiff"),
    ],
)
def test_every_image_format_and_mode_decodes_to_rgb(astronaut, pil_format, mode, expected):
    body = image_bytes(astronaut, pil_format, mode)
    decoded = decode_media(body, SETTINGS)
    assert (decoded.kind, decoded.format) == ("image", expected)
    frame = decoded.frames[0]
    assert frame.shape == astronaut.shape and frame.dtype == np.uint8
    if mode != "I;16":  # 16-bit grey is scaled to 8 bits (its own test below)
        # Exactly the RGB pixels Pillow reads from the same bytes, in R, G, B order.
        with Image.open(io.BytesIO(body)) as image:
            np.testing.assert_array_equal(frame, np.asarray(image.convert("RGB")))
    grey = mode in ("L", "I;16")
    reference = np.asarray(Image.fromarray(astronaut).convert("L").convert("RGB")) if grey else astronaut
    # Close to the photo it was encoded from; a red/blue swap is 31-39 grey levels off on this photo.
    tolerance = {"JPEG": 4, "WEBP": 4, "GIF": 15}.get(pil_format, 15 if mode == "P" else 1)
    assert np.abs(frame.astype(int) - reference.astype(int)).mean() < tolerance
    assert grey or np.abs(frame[..., ::-1].astype(int) - reference.astype(int)).mean() > 2 * tolerance


def test_lossless_png_round_trips_exactly(astronaut):
    decoded = decode_media(image_bytes(astronaut, "PNG"), SETTINGS)
    np.testing.assert_array_equal(decoded.frames[0], astronaut)


def test_sixteen_bit_png_keeps_its_brightness(astronaut):
    gray = np.asarray(Image.fromarray(astronaut).convert("L"), dtype=int)
    decoded = decode_media(image_bytes(astronaut, "PNG", "I;16"), SETTINGS).frames[0]
    assert np.abs(decoded[..., 0].astype(int) - gray).max() <= 1


def test_exif_orientation_is_applied(astronaut):
    wide = astronaut[:, :400]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    body = image_bytes(wide, "JPEG", exif=exif.tobytes())
    decoded = decode_media(body, SETTINGS)
    assert (decoded.height, decoded.width) == (400, 512)


def test_animated_gif_uses_its_first_frame(astronaut):
    frames = [Image.fromarray(astronaut), Image.fromarray(255 - astronaut)]
    import io

    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_media(buffer.getvalue(), SETTINGS)
    assert np.abs(decoded.frames[0].astype(int) - astronaut.astype(int)).mean() < 60


@pytest.mark.parametrize("container", ["mp4", "mov", "avi", "mkv", "webm"])
def test_every_video_container_is_sampled_every_nth_frame(video_frames, container, tmp_path):
    body = video_bytes(video_frames[:40], container)
    decoded = decode_media(body, PipelineSettings(frame_stride=10, max_frames=16))
    assert (decoded.kind, decoded.format) == ("video", container)
    assert decoded.frame_indices == [0, 10, 20, 30]
    (tmp_path / f"clip.{container}").write_bytes(body)
    every_frame = read_video_frames(tmp_path / f"clip.{container}")
    for index, frame in zip(decoded.frame_indices, decoded.frames, strict=True):
        np.testing.assert_array_equal(frame, every_frame[index], err_msg=f"{container} frame {index}")


def test_real_video_stops_after_max_frames(media, video_frames):
    """Frame N of the answer is the Nth frame of a full sequential decode, RGB, pixel for pixel."""
    body = media.face_video.read_bytes()
    decoded = decode_media(body, PipelineSettings(frame_stride=7, max_frames=5))
    assert decoded.frame_indices == [0, 7, 14, 21, 28]
    assert decoded.total_frames == 120
    for index, frame in zip(decoded.frame_indices, decoded.frames, strict=True):
        np.testing.assert_array_equal(frame, video_frames[index], err_msg=f"frame {index}")
        assert not np.array_equal(frame, video_frames[index + 1]), "neighbouring frames must differ"


def test_skipped_frames_are_never_converted_to_pixels(media, monkeypatch):
    calls = {"decoded": 0}
    real_capture = media_module.cv2.VideoCapture

    class CountingCapture:
        """Wraps the real capture and counts which frames were decoded to pixels."""

        def __init__(self, *args):
            self._capture = real_capture(*args)

        def read(self):
            ok, frame = self._capture.read()
            calls["decoded"] += int(ok)
            return ok, frame

        def retrieve(self, *args):
            ok, frame = self._capture.retrieve(*args)
            calls["decoded"] += int(ok)
            return ok, frame

        def __getattr__(self, name):
            return getattr(self._capture, name)

    monkeypatch.setattr(media_module.cv2, "VideoCapture", CountingCapture)
    decoded = decode_media(media.face_video.read_bytes(), PipelineSettings(frame_stride=10, max_frames=16))
    assert len(decoded.frames) == 12
    assert calls["decoded"] == 12


def test_sniffing_ignores_names_and_refuses_text():
    assert sniff_format(b"\xff\xd8\xff\xe0" + b"\x00" * 60) == ("image", "jpeg")
    assert sniff_format(b'{"image": "face.jpg"}') is None


@pytest.mark.parametrize("brand", [b"heic", b"mif1", b"avif"])
def test_heif_and_avif_photos_are_unsupported_not_broken_videos(brand):
    """They share MP4's box layout: an iPhone photo gets 415 unsupported_media, not 422 'corrupt mp4'."""
    body = b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00" + brand + b"mif1" + b"\x00" * 64
    assert sniff_format(body[:64]) is None
    assert sniff_format(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 52) == ("video", "mp4")
    with pytest.raises(InputError) as refused:
        decode_media(body, SETTINGS)
    assert (refused.value.status, refused.value.code) == (415, "unsupported_media")
    assert sniff_format(b"") is None


@pytest.mark.parametrize(
    ("make_body", "status", "code"),
    [
        (lambda a, v: b"", 400, "empty_body"),
        (lambda a, v: b"this is not a picture of anything", 415, "unsupported_media"),
        (lambda a, v: image_bytes(a, "JPEG")[:3000], 422, "corrupt_media"),
        (lambda a, v: image_bytes(a, "PNG")[:5000], 422, "corrupt_media"),
        (lambda a, v: png_header_only(100_000, 100_000), 413, "too_many_pixels"),
        (lambda a, v: v[:2000], 422, None),
    ],
    ids=["empty", "random-text", "truncated-jpeg", "truncated-png", "decompression-bomb", "truncated-video"],
)
def test_bad_input_gets_its_own_status(astronaut, media, make_body, status, code):
    with pytest.raises(InputError) as raised:
        decode_media(make_body(astronaut, media.face_video.read_bytes()), SETTINGS)
    assert raised.value.status == status
    if code:
        assert raised.value.code == code
    assert raised.value.to_json()["detail"]


def test_limits_are_enforced_before_decoding(astronaut, media):
    video = media.face_video.read_bytes()
    cases = [
        (image_bytes(astronaut, "PNG"), PipelineSettings(max_image_pixels=512 * 511), "too_many_pixels"),
        (image_bytes(astronaut, "PNG"), PipelineSettings(max_bytes=1000), "too_large"),
        (video, PipelineSettings(max_video_frames=100), "too_many_frames"),
        (video, PipelineSettings(max_video_seconds=2.0), "too_long"),
        (video, PipelineSettings(max_frame_pixels=176 * 143), "too_many_pixels"),
    ]
    for body, settings, code in cases:
        with pytest.raises(InputError) as raised:
            decode_media(body, settings)
        assert (raised.value.status, raised.value.code) == (413, code)


@pytest.fixture(scope="module")
def astronaut_4k(astronaut) -> np.ndarray:
    """The real astronaut photo as a 3840x2160 frame (upscaled, centred on grey): a 4K camera photo."""
    canvas = np.full((2160, 3840, 3), 128, dtype=np.uint8)
    canvas[:, 840:3000] = cv2.resize(astronaut, (2160, 2160), interpolation=cv2.INTER_CUBIC)
    return canvas


def test_a_4k_jpeg_is_decoded_at_full_resolution(astronaut_4k):
    decoded = decode_media(image_bytes(astronaut_4k, "JPEG"), SETTINGS)
    assert (decoded.width, decoded.height) == (3840, 2160) and decoded.frames[0].shape == (2160, 3840, 3)


def pillow_rgb(body: bytes) -> np.ndarray:
    """What Pillow alone makes of an image: the pixels every decoder here must reproduce."""
    with Image.open(io.BytesIO(body)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpegs_decode_to_pillows_exact_pixels_in_every_exif_orientation(media, orientation):
    """Colour JPEGs go through OpenCV's decoder, which must turn them exactly as Pillow's exif_transpose."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = image_bytes(load_rgb(media.grace_hopper), "JPEG", quality=90, exif=exif.tobytes())
    np.testing.assert_array_equal(decode_media(body, SETTINGS).frames[0], pillow_rgb(body))


@pytest.mark.parametrize(
    ("mode", "options"),
    [("L", {}), ("CMYK", {}), ("RGB", {"progressive": True}), ("RGB", {"subsampling": 0}),
     ("RGB", {"subsampling": 1})],
    ids=["grey", "cmyk", "progressive", "4:4:4", "4:2:2"],
)
def test_every_kind_of_jpeg_decodes_to_pillows_exact_pixels(astronaut, mode, options):
    body = image_bytes(astronaut, "JPEG", mode, quality=90, **options)
    np.testing.assert_array_equal(decode_media(body, SETTINGS).frames[0], pillow_rgb(body))


def test_a_video_temp_folder_that_cannot_be_written_is_refused_up_front(tmp_path, monkeypatch) -> None:
    """Checked when a worker loads: a missing or read-only folder would fail every video, for good."""
    monkeypatch.setenv(VIDEO_TMPDIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="not writable"):
        check_video_temp_dir()
    monkeypatch.setenv(VIDEO_TMPDIR_ENV, str(tmp_path))
    assert check_video_temp_dir() == str(tmp_path) and list(tmp_path.iterdir()) == []
