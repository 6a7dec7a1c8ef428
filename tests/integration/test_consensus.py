"""Two annotators per task against a real Label Studio 1.23.2: training trains on what they agree on."""

import numpy as np
import pytest
from label_studio_sdk import LabelStudio

from label_studio_ale.ls_format import parse_label_config, rectangle_result
from label_studio_ale.runtime import Runtime
from label_studio_ale.settings import Settings
from label_studio_ale.training_set import annotated_samples
from tests.support.label_studio import create_personal_access_token
from tests.support.projects import LABEL_CONFIG, create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = (128, 128)


def box(xyxy, label):
    return rectangle_result(xyxy, label, SIZE, "label", "image")


def test_two_annotators_boxes_are_merged_by_majority_and_disagreements_counted(ls_sdk, label_studio, tmp_path):
    token = create_personal_access_token(label_studio.url, "expert2@example.com", "second-expert-pw-1", signup=True)
    expert2 = LabelStudio(base_url=label_studio.url, api_key=token)
    project, (shared, single) = create_project(ls_sdk, [57_000, 57_001], "two experts per image")
    ls_sdk.projects.update(id=project, maximum_annotations=2)
    # Both draw the bird (a few pixels apart); only the first sees a nest; the second also marks a bird the first did not.
    ls_sdk.annotations.create(id=shared, result=[box([10, 10, 30, 30], "bird"), box([60, 60, 80, 80], "nest")])
    expert2.annotations.create(id=shared, result=[box([14, 10, 34, 30], "bird"), box([90, 20, 110, 40], "bird")])
    ls_sdk.annotations.create(id=single, result=[box([5, 5, 25, 25], "nest")])  # one annotation: taken as it is

    rt = Runtime(Settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token, model_dir=tmp_path))
    config = parse_label_config(LABEL_CONFIG)
    samples, stats = annotated_samples(rt, project, config, ["bird", "nest"])
    by_task = {s.task_id: s for s in samples}
    np.testing.assert_allclose(by_task[shared].xyxy, [[12, 10, 32, 30]], atol=1e-6)
    assert by_task[shared].labels.tolist() == [0]
    np.testing.assert_allclose(by_task[single].xyxy, [[5, 5, 25, 25]], atol=1e-6)
    assert by_task[single].labels.tolist() == [1]
    assert stats["consensus_tasks"] == 1 and stats["disagreements"] == 2
    assert stats["most_disagreement"] == [{"task": shared, "disagreements": 2}]
