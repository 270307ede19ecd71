"""Turning request bytes into RGB frames.

The format is recognised from the bytes themselves (magic numbers), never from a file name or a header
the client sets. Images decode with Pillow, videos with PyAV (FFmpeg), from a temporary copy of the body in
:func:`video_temp_dir` (a full temp area answers that one request with a retryable 503), opened with the
demuxer of the format the sniffer recognised and FFmpeg's protocol whitelist set to local files: a polyglot
that FFmpeg would probe as something else (an SDP or HLS file) is refused, and nothing but that file is read.

A video's frames are indexed from its packets (timestamps and keyframes, no pixel decoded), the sampling
policy picks frames over its whole length (``sampling``), and only those are decoded, seeking to the keyframe
before each one when that is cheaper than decoding on (PyAV measured faster and frame-exact where OpenCV's
seeking is not: README, Benchmark). Times come from the stream's timestamps, so a variable frame rate is
safe. Every limit is checked before the expensive step it protects, and every failure the input causes is an
:class:`InputError` with its own status.

Every frame is decoded at full resolution, so a face is cropped from exactly the pixels a full decode gives,
whatever the size of the photo. Colour and grey JPEGs, the bulk of the traffic, decode through OpenCV's
libjpeg-turbo straight into an array (Pillow's pixels, a third faster); Pillow reads their header and EXIF
and decodes everything else.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import io
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

import av
import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .config import PipelineSettings
from .errors import InputError, RequestError, TemporaryError
from .sampling import FrameIndex, Sampling, nearest_frame, plan_for
from .verdict import MediaKind

SizeCheck = Callable[[int, int, str], None]
"""``check(width, height, what)``: raises InputError for a size the caller cannot score (the face detector's
rule, ``faces.check_searchable``), before any pixel is decoded."""

IMAGE_FORMATS = ("jpeg", "png", "webp", "bmp", "gif", "tiff")
VIDEO_FORMATS = ("mp4", "mov", "avi", "mkv", "webm")
_LIBJPEG_RGB_MODES = ("RGB", "L")  # YCbCr and grey JPEGs; CMYK and YCCK ones go through Pillow
_STILL_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
DEMUXERS = {"mp4": "mov", "mov": "mov", "avi": "avi", "mkv": "matroska", "webm": "matroska"}
"""The one FFmpeg demuxer each sniffed video format opens with: FFmpeg never probes the file itself."""
FFMPEG_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": "mov,avi,matroska"}
"""Local files only (no network, no playlists); never ``enable_drefs``."""
VIDEO_TMPDIR_ENV = "DEEPFAKE_VIDEO_TMPDIR"
_SHARED_MEMORY = "/dev/shm"


@dataclass
class DecodedMedia:
    """The frames to score, upright RGB at full resolution. An image is a one-frame medium whose frame index is
    0; a video says which sampling chose its frames, their times, its length and how many samples moved to a
    cheaper nearby frame."""

    kind: MediaKind
    format: str
    width: int
    height: int
    frames: list[np.ndarray] = field(repr=False)
    frame_indices: list[int]
    total_frames: int | None = None
    fps: float | None = None
    frame_times: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    samples_moved: int = 0
    samples_left_out: int = 0
    sampling: Sampling | None = None


def sniff_format(head: bytes) -> tuple[MediaKind, str] | None:
    """(kind, format) recognised from the first bytes of a file, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image", "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image", "webp"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video", "avi"
    if head.startswith(b"BM") and len(head) >= 26:
        return "image", "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image", "tiff"
    if head[4:8] == b"ftyp":
        if head[8:12] in _STILL_IMAGE_BRANDS:
            return None  # HEIF/HEIC/AVIF photos share the MP4 box layout; they are not supported media
        return "video", "mov" if head[8:12] == b"qt  " else "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "video", "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "webm" if b"webm" in head[:64] else "mkv"
    return None


def decode_media(body: bytes, settings: PipelineSettings, check_size: SizeCheck | None = None,
                 sampling: Sampling | None = None) -> DecodedMedia:
    """Decode one request body into the frames the detector will score; ``check_size`` vets the size first;
    ``sampling`` (videos) replaces the settings' own."""
    if not body:
        raise InputError(
            "empty_body", "the request body is empty; send the raw bytes of an image or a video", 400
        )
    if len(body) > settings.max_bytes:
        raise InputError(
            "too_large", f"the body has {len(body)} bytes; the limit is {settings.max_bytes}", 413
        )
    sniffed = sniff_format(body[:64])
    if sniffed is None:
        raise InputError(
            "unsupported_media",
            "the body is not a supported image (" + ", ".join(IMAGE_FORMATS) + ") or video ("
            + ", ".join(VIDEO_FORMATS) + "); send the file's raw bytes as application/octet-stream "
            "or as a multipart file field",
            415,
        )
    kind, fmt = sniffed
    if kind == "image":
        return decode_image(body, fmt, settings, check_size)
    return decode_video(body, fmt, settings, check_size, sampling)


def decode_image(body: bytes, fmt: str, settings: PipelineSettings, check_size: SizeCheck | None = None
                 ) -> DecodedMedia:
    """Decode an image to RGB, honouring EXIF orientation; animated images use their first frame."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            _check_pixels(image.width, image.height, settings.max_image_pixels, "image")
            if check_size is not None:
                check_size(image.width, image.height, "image")
            if fmt == "jpeg" and image.mode in _LIBJPEG_RGB_MODES:
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                rgb = _decode_jpeg(body, image.size, orientation)
            else:
                rgb = _decode_pixels(image)
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise InputError("too_many_pixels", str(error), 413) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError("corrupt_media", f"the {fmt} image could not be decoded: {error}", 422) from error
    height, width = rgb.shape[:2]  # upright: EXIF rotation applied
    return DecodedMedia("image", fmt, width, height, [rgb], [0])


def _decode_jpeg(body: bytes, size: tuple[int, int], orientation: int) -> np.ndarray:
    """A colour or grey JPEG as RGB, upright, decoded by OpenCV's libjpeg-turbo straight into an array.

    The pixels are Pillow's, bit for bit (same libjpeg-turbo, same default IDCT and upsampling), at two
    thirds of the time: no intermediate image and no copy. A truncated file is refused, as Pillow refuses it.
    """
    pixels = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or (pixels.shape[1], pixels.shape[0]) != size:
        raise InputError("corrupt_media", "the jpeg image could not be decoded: truncated or corrupt data", 422)
    return upright(pixels, orientation)


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """An HxWx3 array turned as EXIF ``orientation`` (1-8) says, exactly as Pillow's ``exif_transpose``."""
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def _decode_pixels(image: Image.Image) -> np.ndarray:
    """An opened image's first frame as RGB, upright."""
    image.seek(0)
    image.load()
    # In place: a copy of a 4K frame costs as much as a tenth of its decoding.
    ImageOps.exif_transpose(image, in_place=True)
    return to_rgb_array(image)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any Pillow mode (palette, grayscale, alpha, CMYK, 16-bit) as a contiguous HxWx3 uint8 array."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        scale = 255.0 / 65535.0 if image.mode != "F" and values.max(initial=0) > 255 else 1.0
        gray = np.clip(values * scale, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if image.mode == "RGB":
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def video_temp_dir() -> str:
    """Where request videos are written for the decoder: ``$DEEPFAKE_VIDEO_TMPDIR`` (the image points it at a
    memory volume with a size limit), else ``/dev/shm`` when writable, else the system's temp folder."""
    configured = os.environ.get(VIDEO_TMPDIR_ENV, "").strip()
    if configured:
        return configured
    if os.path.isdir(_SHARED_MEMORY) and os.access(_SHARED_MEMORY, os.W_OK):
        return _SHARED_MEMORY
    return tempfile.gettempdir()


def check_video_temp_dir() -> str:
    """The folder :func:`video_temp_dir` names, checked writable now: a worker without one refuses to load
    with the reason, rather than answer every video with an error."""
    folder = video_temp_dir()
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix="check-"):
            pass
    except OSError as error:
        raise RuntimeError(f"the video temp folder {folder} is not writable ({error.strerror or error}): set "
                           f"{VIDEO_TMPDIR_ENV} to a writable folder") from error
    return folder


def decode_video(body: bytes, fmt: str, settings: PipelineSettings, check_size: SizeCheck | None = None,
                 sampling: Sampling | None = None) -> DecodedMedia:
    """The frames ``sampling`` (default: the settings') picks over the whole video, as RGB arrays."""
    sampling = sampling or settings.default_sampling
    with _temporary_copy(body, fmt) as temp:
        try:
            container = av.open(temp.name, format=DEMUXERS[fmt], options=dict(FFMPEG_OPTIONS))
        except (av.error.FFmpegError, UnicodeDecodeError) as error:
            raise InputError("corrupt_media", f"the {fmt} video could not be opened: {error}", 422) from error
        try:
            return _sample_video(container, fmt, sampling, settings, check_size)
        except av.error.FFmpegError as error:
            raise InputError("corrupt_media", f"the {fmt} video could not be decoded: {error}", 422) from error
        finally:
            container.close()


@dataclass(frozen=True)
class VideoIndex:
    """A video's stream as the packets describe it, before any pixel is decoded: its coded size, frame rate,
    frame index (``sampling.FrameIndex``), each frame's timestamp in stream units, and whether it may seek."""

    width: int
    height: int
    fps: float
    frames: FrameIndex
    timestamps: list[int] = field(repr=False)
    seekable: bool


def index_video(path: str | os.PathLike[str], fmt: str, settings: PipelineSettings,
                check_size: SizeCheck | None = None) -> VideoIndex:
    """Index a video file without decoding it, with the same demuxer, options and limits a request's video
    gets (the job service plans a long video's samples from this before any piece of it is scored)."""
    try:
        container = av.open(str(path), format=DEMUXERS[fmt], options=dict(FFMPEG_OPTIONS))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise InputError("corrupt_media", f"the {fmt} video could not be opened: {error}", 422) from error
    try:
        return _index(container, fmt, settings, check_size)
    except av.error.FFmpegError as error:
        raise InputError("corrupt_media", f"the {fmt} video could not be read: {error}", 422) from error
    finally:
        container.close()


def _index(container: av.container.InputContainer, fmt: str, settings: PipelineSettings,
           check_size: SizeCheck | None) -> VideoIndex:
    if not container.streams.video:
        raise InputError("corrupt_media", f"the {fmt} file has no video stream", 422)
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    fps = float(stream.average_rate) if stream.average_rate else 0.0
    announced_s = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    _check_video_limits(width, height, stream.frames, announced_s, settings, check_size)
    index, timestamps, seekable = _frame_index(container, stream, fps, settings)
    if not timestamps:
        raise InputError("no_decodable_frame", f"the {fmt} video contains no frame", 422)
    _check_video_limits(width, height, len(index), index.duration_s, settings, check_size)
    return VideoIndex(width, height, fps, index, timestamps, seekable)


def _sample_video(container: av.container.InputContainer, fmt: str, sampling: Sampling, settings: PipelineSettings,
                  check_size: SizeCheck | None) -> DecodedMedia:
    video = _index(container, fmt, settings, check_size)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = max(1, cv2.getNumThreads())  # the worker's share of the CPUs (cpu_tuning), no more
    index, timestamps, seekable, fps = video.frames, video.timestamps, video.seekable, video.fps
    wanted, plan = plan_for(sampling, index, settings.max_frames, settings.max_decode_per_sample, seekable)
    decoded = _decode_planned(container, stream, timestamps, index, plan, settings.max_decoded_frames)
    if not decoded:
        raise InputError("no_decodable_frame", f"the {fmt} video contains no frame that could be decoded", 422)
    positions = [position for _, position, _ in decoded]
    moved = sum(position != nearest_frame(index, plan[number][1]) for number, position, _ in decoded)
    height, width = decoded[0][2].shape[:2]
    return DecodedMedia("video", fmt, width, height, [pixels for *_, pixels in decoded], positions,
                        total_frames=len(index), fps=fps or None, frame_times=[index.times[p] for p in positions],
                        duration_s=index.duration_s, samples_moved=moved,
                        samples_left_out=len(wanted) - len(decoded), sampling=sampling)


def _frame_index(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float,
                 settings: PipelineSettings) -> tuple[FrameIndex, list[int], bool]:
    """Every frame's timestamp (presentation order) and keyframe, from the packets alone, and whether the
    decoder may seek; a stream without timestamps is indexed by frame count at its frame rate, and read
    from its start without seeking. Packets marked discard (an edit list's pre-roll) are no frames shown."""
    packets: list[tuple[int | None, bool]] = []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:
            continue
        packets.append((packet.pts if packet.pts is not None else packet.dts, packet.is_keyframe))
        if len(packets) > settings.max_video_frames:
            raise InputError("too_many_frames", f"the video has more than {settings.max_video_frames} frames; "
                             f"the limit is {settings.max_video_frames}", 413)
    if not packets:
        return FrameIndex((), ()), [], False
    if any(pts is None for pts, _ in packets):
        step = 1.0 / fps if fps > 0 else 1.0
        times = tuple(step * n for n in range(len(packets)))
        return FrameIndex(times, (0,) * len(packets)), list(range(len(packets))), False
    ordered = sorted(packets, key=lambda packet: packet[0])  # type: ignore[arg-type,return-value]
    timestamps = [int(pts) for pts, _ in ordered]  # type: ignore[arg-type]
    keyframe_of, keyframe = [], 0
    for position, (_, is_keyframe) in enumerate(ordered):
        if is_keyframe:
            keyframe = position
        keyframe_of.append(keyframe)
    base, unit = timestamps[0], float(stream.time_base)
    return FrameIndex(tuple((pts - base) * unit for pts in timestamps), tuple(keyframe_of)), timestamps, True


def _decode_planned(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    timestamps: list[int], index: FrameIndex, plan: list[tuple[int, float, bool]], budget: int
                    ) -> list[tuple[int, int, np.ndarray]]:
    """(plan entry, frame position, RGB) of each planned frame that decoded, in plan order: seek to the keyframe
    before a sample when the plan says so, else decode on. A frame that fails to decode is left out and the next
    sample seeks afresh; after ``budget`` decoded frames (a video with few keyframes, or one read without seeking,
    can be long) the remaining samples are left out. The answer's coverage counts what was left out."""
    decoded: list[tuple[int, int, np.ndarray]] = []
    decoder: Iterator[av.VideoFrame] | None = None
    next_position = 0  # presentation position of the decoder's next frame, for frames without timestamps
    spent = 0
    for number, (position, _, seek) in enumerate(plan):
        if spent >= budget:
            break
        try:
            if decoder is None or seek:  # the index was read to the end: the first sample seeks too
                decoder, next_position = _seek(container, stream, timestamps, index, position)
            for frame in decoder:
                spent += 1
                stamp = frame.pts if frame.pts is not None else timestamps[min(next_position, len(timestamps) - 1)]
                next_position = bisect.bisect_right(timestamps, stamp)
                if stamp >= timestamps[position]:
                    shown = next_position - 1 if timestamps[next_position - 1] == stamp else next_position
                    decoded.append((number, min(shown, len(timestamps) - 1), to_rgb(frame)))
                    break
                if spent >= budget:
                    break
            else:
                decoder = None  # the stream ended before this sample
        except av.error.FFmpegError:
            decoder = None
    return decoded


def _seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, timestamps: list[int],
          index: FrameIndex, position: int) -> tuple[Iterator[av.VideoFrame], int]:
    """A decoder started at the keyframe before ``position``, and the position it starts at. A seek that lands
    after the wanted frame (a container whose index is off) is retried one keyframe earlier."""
    keyframe = index.keyframe_of[position]
    while True:
        container.seek(timestamps[keyframe], stream=stream, backward=True, any_frame=False)
        decoder = container.decode(stream)
        first = next(decoder, None)
        if first is None:
            return iter(()), keyframe
        if first.pts is None or first.pts <= timestamps[position] or keyframe == 0:
            return itertools.chain([first], decoder), keyframe
        keyframe = index.keyframe_of[keyframe - 1]


@contextlib.contextmanager
def _temporary_copy(body: bytes, fmt: str) -> Iterator[IO[bytes]]:
    """The body written to a temporary file that is removed afterwards; a temp area that cannot take it (full,
    over quota, missing) is this request's TemporaryError, not the batch's failure."""
    folder = video_temp_dir()
    with contextlib.ExitStack() as cleanup:
        try:
            temp = cleanup.enter_context(tempfile.NamedTemporaryFile(suffix=f".{fmt}", dir=folder))
            temp.write(body)
            temp.flush()
        except OSError as error:
            raise _temp_area_error(error, folder, len(body)) from error
        yield temp


def _temp_area_error(error: OSError, where: str, size: int) -> RequestError:
    """A full area is passing (retryable 503); any other failure is the worker's fault and lasts (500)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return TemporaryError(
            "temp_space_full",
            f"the video temp area ({where}) has no room for this {size}-byte video now; retry shortly "
            "(space frees as the videos being decoded finish)",
        )
    return RequestError("temp_unavailable", f"the video could not be written to the temp area ({where}): "
                        f"{error.strerror or error}", 500)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded video frame's pixels as an HxWx3 RGB array, turned upright as the container's display matrix
    says (a phone's portrait video), as players and OpenCV show it: the one conversion a sampled frame pays."""
    quarter_turns_clockwise = round(-frame.rotation / 90) % 4
    return upright(frame.to_ndarray(format="rgb24"), _EXIF_ORIENTATION_OF_TURNS[quarter_turns_clockwise])


_EXIF_ORIENTATION_OF_TURNS = (1, 6, 3, 8)
"""The EXIF orientation (``upright``) that turns a picture by 0, 1, 2 or 3 quarter turns clockwise."""


def _check_pixels(width: int, height: int, limit: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise InputError("corrupt_media", f"the {what} declares an empty size {width}x{height}", 422)
    if width * height > limit:
        raise InputError(
            "too_many_pixels",
            f"the {what} is {width}x{height} = {width * height} pixels; the limit is {limit}",
            413,
        )


def _check_video_limits(width: int, height: int, frames: int, seconds: float, settings: PipelineSettings,
                        check_size: SizeCheck | None) -> None:
    _check_pixels(width, height, settings.max_frame_pixels, "video frame")
    if check_size is not None:
        check_size(width, height, "video frame")
    if frames > settings.max_video_frames:
        raise InputError(
            "too_many_frames",
            f"the video has {frames} frames; the limit is {settings.max_video_frames}",
            413,
        )
    if seconds > settings.max_video_seconds:
        raise InputError(
            "too_long",
            f"the video lasts {seconds:.0f} s; the limit is {settings.max_video_seconds:.0f} s",
            413,
        )
