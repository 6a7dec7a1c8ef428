import numpy as np

from label_studio_ale.scoring import min_confidence


def test_min_confidence_is_lowest_box_score():
    assert min_confidence(np.array([0.9, 0.4, 0.7])) == 0.4


def test_min_confidence_of_empty_image_is_served_last():
    assert min_confidence(np.zeros(0)) == 1.0
