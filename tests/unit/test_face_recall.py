"""Face recall: the full-resolution MTCNN reference finds the real faces, and misses and finds are counted."""

from __future__ import annotations

import numpy as np
import pytest
from deepfake_detector.tracks import iou
from deepfake_ops.face_recall import RecallReport, measure_recall, reference_faces, reference_mtcnn

from tests.support import assert_on_face
from tests.support.media import load_rgb


@pytest.fixture(scope="module")
def mtcnn():
    return reference_mtcnn()


@pytest.fixture(scope="module")
def photos(media) -> dict[str, np.ndarray]:
    return {"astronaut": load_rgb(media.astronaut), "grace_hopper": load_rgb(media.grace_hopper)}


def test_the_reference_finds_the_one_face_of_the_astronaut(mtcnn, photos):
    faces = reference_faces(photos["astronaut"], mtcnn)
    assert len(faces) == 1
    assert_on_face(faces[0], "astronaut")


def test_the_reference_finds_nothing_on_a_cat(mtcnn, media):
    assert reference_faces(load_rgb(media.cat), mtcnn) == []


def test_iou_of_identical_boxes_is_one_and_of_disjoint_ones_zero():
    assert iou((10.0, 20.0, 110.0, 220.0), (10.0, 20.0, 110.0, 220.0)) == pytest.approx(1.0)
    assert iou((0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 30.0, 30.0)) == 0.0
    assert iou((0.0, 0.0, 10.0, 10.0), (5.0, 0.0, 15.0, 10.0)) == pytest.approx(1 / 3)


def test_a_detector_that_finds_nothing_misses_every_reference_face(mtcnn, photos):
    report = measure_recall(photos, lambda frames: [[] for _ in frames], mtcnn=mtcnn)
    assert (report.images, report.reference_faces, report.found) == (2, 2, 0)
    assert report.recall == 0.0
    assert sorted(name for name, _ in report.missed) == ["astronaut", "grace_hopper"]


def test_the_reference_boxes_themselves_give_full_recall(mtcnn, photos):
    reference = {name: reference_faces(image, mtcnn) for name, image in photos.items()}
    names = list(photos)
    report = measure_recall(photos, lambda frames: [reference[name] for name in names], reference=reference)
    assert (report.reference_faces, report.found, report.missed) == (2, 2, [])
    assert report.recall == 1.0


def test_one_detection_cannot_account_for_two_faces(photos):
    """Matching is one to one: a second reference face on the same spot is a miss."""
    box = (185.0, 70.0, 265.0, 175.0)
    report = measure_recall({"a": photos["astronaut"]}, lambda frames: [[box]], reference={"a": [box, box]})
    assert (report.found, report.missed) == (1, [("a", box)])


def test_nothing_to_find_is_full_recall():
    assert RecallReport(images=1, reference_faces=0, found=0, missed=[]).recall == 1.0
