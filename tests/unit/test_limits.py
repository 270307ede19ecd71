"""Limits in-process: what is refused, with which code, and that it is refused before the step it protects.

The malformed-body generator used against a real server (tests/server/test_hardening.py) is checked here too.
"""

from __future__ import annotations

import collections
import functools

import pytest
from deepfake_detector import DetectionPipeline, InputError, PipelineSettings, build_detector
from deepfake_detector import media as media_module
from deepfake_detector.faces import check_searchable
from deepfake_detector.media import decode_media
from PIL import Image

from tests.support import Media
from tests.support.malformed import BAD, jpeg_declaring, malformed_cases, packaged_sources
from tests.support.media import png_header_only


@pytest.mark.parametrize("size", [(1, 1), (15, 15), (10_000, 10), (10, 10_000), (3000, 20)])
def test_images_too_small_to_search_are_refused_before_face_detection(size: tuple[int, int]) -> None:
    """MTCNN raised ValueError (torch.cat of nothing) on these, which failed the whole TorchServe batch."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (180, 140, 120)).save(buffer, "PNG")
    settings = PipelineSettings()
    with pytest.raises(InputError) as refused:
        decode_media(buffer.getvalue(), settings, functools.partial(check_searchable, settings))
    assert (refused.value.status, refused.value.code) == (422, "too_small")


def test_pipeline_answers_tiny_image_with_input_error_not_crash() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    pipeline = DetectionPipeline(build_detector(seed=0), PipelineSettings())
    report = pipeline.score_batch([buffer.getvalue()])
    assert isinstance(report.outcomes[0], InputError)


def test_generator_makes_over_a_thousand_bad_bodies(media: type[Media]) -> None:
    cases = malformed_cases(packaged_sources(media))
    kinds = collections.Counter(case.kind for case in cases if case.expect == BAD)
    assert sum(kinds.values()) >= 1000, kinds
    assert {"truncated", "bitflip", "random", "zero", "bomb", "tiny", "video"} <= set(kinds)
    assert len({case.name for case in cases}) == len(cases)


def test_every_malformed_body_decodes_to_its_own_error_or_frames(media: type[Media]) -> None:
    """In-process, before any server: the decoders answer each of the 1,200 bodies with frames or an
    InputError, never another exception (one once failed the whole batch of a video without frames)."""
    settings = PipelineSettings()
    check = functools.partial(check_searchable, settings)
    unexpected = []
    for case in malformed_cases(packaged_sources(media)):
        try:
            decode_media(case.body, settings, check)
        except InputError:
            pass
        except Exception as error:
            unexpected.append((case.name, repr(error)))
    assert not unexpected, unexpected[:10]


@pytest.fixture
def decoders_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pixel decoder of media.py raises, and so does reading a video's packet index: a limit checked
    from the headers never reaches one."""
    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("a decoder ran before the limit refused the body")

    for name in ("_decode_jpeg", "_decode_pixels", "_frame_index", "_decode_planned", "to_rgb"):
        monkeypatch.setattr(media_module, name, forbidden)


def test_pixel_limits_refuse_from_the_header_before_any_decoder(decoders_forbidden, media: type[Media]) -> None:
    """Headers of 54-60 million pixels: above our 50M limit, below Pillow's own bomb guard (2 x 89M), so
    only our check can refuse them."""
    settings = PipelineSettings()
    assert settings.max_image_pixels < 60_000_000 < 2 * Image.MAX_IMAGE_PIXELS
    jpeg = jpeg_declaring(media.grace_hopper.read_bytes(), 9000, 6000)
    for body in (png_header_only(10_000, 6_000), jpeg):
        with pytest.raises(InputError) as refused:
            decode_media(body, settings)
        assert (refused.value.status, refused.value.code) == (413, "too_many_pixels")


def test_video_limits_refuse_from_the_container_before_any_frame(decoders_forbidden, media: type[Media]) -> None:
    video = media.face_video.read_bytes()
    for settings, code in ((PipelineSettings(max_video_frames=100), "too_many_frames"),
                           (PipelineSettings(max_video_seconds=2.0), "too_long"),
                           (PipelineSettings(max_frame_pixels=176 * 143), "too_many_pixels")):
        with pytest.raises(InputError) as refused:
            decode_media(video, settings)
        assert (refused.value.status, refused.value.code) == (413, code)
