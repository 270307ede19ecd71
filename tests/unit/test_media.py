"""Decoding: formats recognised from bytes, every pixel mode, video sampling, and an error per bad input.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from deepfake_detector import InputError, PipelineSettings
from deepfake_detector import media as media_module
from deepfake_detector.media import VIDEO_TMPDIR_ENV, check_video_temp_dir, decode_media, sniff_format
from PIL import Image, ImageOps

from tests.support.media import (
    image_bytes,
    load_rgb,
    png_header_only,
    read_video_frames,
    video_bytes,
    with_display_rotation,
)

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
    decoded = decode_media(body, PipelineSettings(sampling="every_nth:10", max_frames=16))
    assert (decoded.kind, decoded.format) == ("video", container)
    assert decoded.frame_indices == [0, 10, 20, 30]
    (tmp_path / f"clip.{container}").write_bytes(body)
    every_frame = read_video_frames(tmp_path / f"clip.{container}")
    for index, frame in zip(decoded.frame_indices, decoded.frames, strict=True):
        np.testing.assert_array_equal(frame, every_frame[index], err_msg=f"{container} frame {index}")


def test_the_frame_cap_spreads_the_samples_over_the_whole_video(media, video_frames):
    """Frame N of the answer is the Nth frame of a full sequential decode, RGB, pixel for pixel; a cap below
    what the policy asks for thins the samples evenly to the last frame instead of stopping early."""
    body = media.face_video.read_bytes()
    decoded = decode_media(body, PipelineSettings(sampling="every_nth:7", max_frames=5))
    assert decoded.frame_indices == [0, 28, 56, 91, 119]  # every 7th frame is 18 samples: 5 of them, spread
    assert decoded.total_frames == 120 and decoded.samples_moved == 0
    assert decoded.frame_times == pytest.approx([index / 29.97 for index in decoded.frame_indices], abs=1e-3)
    for index, frame in zip(decoded.frame_indices, decoded.frames, strict=True):
        np.testing.assert_array_equal(frame, video_frames[index], err_msg=f"frame {index}")
        assert not np.array_equal(frame, video_frames[index - 1]), "neighbouring frames must differ"


def test_only_the_sampled_frames_are_converted_to_pixels(media, monkeypatch):
    converted = []
    real_to_rgb = media_module.to_rgb
    monkeypatch.setattr(media_module, "to_rgb", lambda frame: converted.append(frame.pts) or real_to_rgb(frame))
    decoded = decode_media(media.face_video.read_bytes(), PipelineSettings(sampling="uniform:12"))
    assert len(decoded.frames) == len(converted) == 12
    assert decoded.frame_indices[0] == 0 and decoded.frame_indices[-1] == 119  # first to last frame


def test_a_polyglot_is_opened_only_as_the_container_the_sniffer_saw():
    """The decoder never lets FFmpeg probe: EBML magic followed by an SDP session description (which FFmpeg's
    prober may open as an RTP stream) is opened with the Matroska demuxer alone and refused, and only local
    files may ever be opened."""
    sdp = b"\nv=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\n"
    body = b"\x1a\x45\xdf\xa3\x80" + sdp
    assert media_module.sniff_format(body[:64]) == ("video", "mkv")
    with pytest.raises(InputError) as refused:
        decode_media(body, SETTINGS)
    assert (refused.value.status, refused.value.code) == (422, "corrupt_media")
    assert "mkv video could not be opened" in refused.value.detail
    assert set(media_module.DEMUXERS) == set(media_module.VIDEO_FORMATS)
    assert media_module.FFMPEG_OPTIONS["protocol_whitelist"] == "file"


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


def test_frame_times_come_from_the_streams_timestamps(video_frames, tmp_path):
    """A variable frame rate: 60 frames 40 ms apart, then 60 frames 100 ms apart (an H.264 file written with
    those timestamps). The answer's times are the timestamps, not index / fps, and every_seconds follows them."""
    stamps_ms = [40 * n for n in range(60)] + [2400 + 100 * n for n in range(60)]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 176, 144, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for stamp, rgb in zip(stamps_ms, video_frames, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    decoded = decode_media(path.read_bytes(), PipelineSettings(sampling="every_seconds:1"))
    assert decoded.frame_times == pytest.approx([float(second) for second in range(9)], abs=1e-6)
    assert decoded.frame_indices == [0, 25, 50, 66, 76, 86, 96, 106, 116]  # 40 ms apart, then 100 ms apart
    assert decoded.duration_s == pytest.approx(8.3)
    for index, frame in zip(decoded.frame_indices, decoded.frames, strict=True):
        assert np.abs(frame.astype(int) - video_frames[index].astype(int)).mean() < 4  # H.264, lossy


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_phone_video_is_turned_upright_as_players_show_it(video_frames, degrees, tmp_path):
    """A portrait phone video stores its pixels sideways and a display matrix that turns them: the frames are
    scored as shown (OpenCV's FFmpeg backend, which turns them by default, gives the same pixels)."""
    body = with_display_rotation(video_bytes(video_frames[:20], "mp4"), degrees)
    decoded = decode_media(body, PipelineSettings(sampling="every_nth:10"))
    (tmp_path / "turned.mp4").write_bytes(body)
    shown = read_video_frames(tmp_path / "turned.mp4")
    assert decoded.frames[0].shape == shown[0].shape == ((176, 144, 3) if degrees != 180 else (144, 176, 3))
    assert (decoded.width, decoded.height) == (shown[0].shape[1], shown[0].shape[0])
    for index, frame in zip(decoded.frame_indices, decoded.frames, strict=True):
        np.testing.assert_array_equal(frame, shown[index])
