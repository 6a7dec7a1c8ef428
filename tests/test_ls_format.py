import numpy as np
import pytest

from label_studio_ale.detections import Detections
from label_studio_ale.errors import LabelConfigError, LabelMismatchError
from label_studio_ale.ls_format import (
    detections_to_results,
    match_labels,
    parse_label_config,
    rectangle_to_xyxy,
    task_image_url,
)

CONFIG = """
<View>
  <Image name="img" value="$photo"/>
  <RectangleLabels name="species" toName="img">
    <Label value="Bird" background="red"/>
    <Label value="Nest" predicted_values="nid,nesting_site"/>
  </RectangleLabels>
</View>
"""


def test_parse_label_config_finds_names_and_labels():
    config = parse_label_config(CONFIG)
    assert (config.from_name, config.to_name, config.value_key) == ("species", "img", "photo")
    assert config.labels == ("Bird", "Nest")
    assert config.aliases == {"bird": "Bird", "nest": "Nest", "nid": "Nest", "nesting_site": "Nest"}


@pytest.mark.parametrize(
    "xml, match",
    [
        ("", "empty"),
        ("<View><Image name='i' value='$image'", "not valid XML"),
        ("<View><Image name='i' value='$image'/></View>", "no <RectangleLabels>"),
        (
            "<View><Image name='i' value='$image'/><RectangleLabels name='l' toName='i'></RectangleLabels></View>",
            "no <Label>",
        ),
        (
            "<View><Image name='i' value='$image'/><RectangleLabels name='birds' toName='i'><Label value='gull'/></RectangleLabels>"
            "<RectangleLabels name='mammals' toName='i'><Label value='seal'/></RectangleLabels></View>",
            r'2 <RectangleLabels> tags on <Image name="i"> \("birds", "mammals"\): .*put every <Label> in a single <RectangleLabels>',
        ),
    ],
)
def test_bad_label_configs_say_what_is_wrong(xml, match):
    with pytest.raises(LabelConfigError, match=match):
        parse_label_config(xml)


def test_a_second_rectangle_tag_on_another_image_is_left_alone():
    config = parse_label_config(
        "<View><Image name='i' value='$image'/><Image name='map' value='$map'/>"
        "<RectangleLabels name='birds' toName='i'><Label value='gull'/></RectangleLabels>"
        "<RectangleLabels name='areas' toName='map'><Label value='colony'/></RectangleLabels></View>"
    )
    assert (config.from_name, config.to_name, config.labels) == ("birds", "i", ("gull",))


def test_match_labels_by_name_case_and_predicted_values():
    config = parse_label_config(CONFIG)
    assert match_labels(("bird", "nid", "cat"), config) == ("Bird", "Nest", None)


def _rectangles(labels):
    return parse_label_config(
        f'<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">{labels}</RectangleLabels></View>'
    )


def test_a_labels_own_name_wins_over_another_labels_predicted_values():
    """Kittiwake starts from the base model's bird row; the config's own bird label keeps model class bird."""
    config = _rectangles('<Label value="bird"/><Label value="Kittiwake" predicted_values="bird,seabird"/>')
    assert match_labels(["bird", "Kittiwake"], config) == ("bird", "Kittiwake")
    assert match_labels(["BIRD", "seabird"], config) == ("bird", "Kittiwake"), "a name in another case before predicted_values"
    # the order of the labels does not matter
    config = _rectangles('<Label value="Kittiwake" predicted_values="bird"/><Label value="Bird"/>')
    assert match_labels(["bird", "kittiwake"], config) == ("Bird", "Kittiwake")
    # an exact name before one differing in case
    config = _rectangles('<Label value="Bird"/><Label value="bird"/>')
    assert match_labels(["bird", "Bird"], config) == ("bird", "Bird")


def test_an_aliased_label_is_found_by_its_value_too():
    """The SDK names a label by its alias; LS's editor finds it by value or alias, and so does a model class."""
    config = _rectangles('<Label value="Kittiwake" alias="KIWA"/><Label value="Gull"/>')
    assert config.labels == ("KIWA", "Gull")
    assert config.names == {"KIWA": "KIWA", "Gull": "Gull", "Kittiwake": "KIWA"}
    assert match_labels(["Kittiwake", "kiwa", "gull", "kittiwake"], config) == ("KIWA", "KIWA", "Gull", "KIWA")


def test_unknown_labels_error_explains_the_fix():
    config = parse_label_config(CONFIG)
    with pytest.raises(LabelMismatchError) as caught:
        match_labels(("cat", "dog"), config)
    message = str(caught.value)
    assert "cat, dog" in message and "Bird, Nest" in message
    assert '<Label value="<class>"/>' in message and "predicted_values" in message


def test_detections_to_results_by_hand():
    config = parse_label_config(CONFIG)
    # 200 x 100 image; box (20, 10)-(60, 60) is x=10%, y=10%, w=20%, h=50%.
    det = Detections([[20, 10, 60, 60], [0, 0, 5, 5]], [[0.1, 0.8], [0.3, 0.2]], (200, 100))
    results = detections_to_results(det, ("Bird", "Nest"), config)
    assert len(results) == 2
    first = results[0]
    assert first["from_name"] == "species" and first["to_name"] == "img" and first["type"] == "rectanglelabels"
    assert (first["original_width"], first["original_height"]) == (200, 100)
    value = first["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == pytest.approx((10, 10, 20, 50))
    assert value["rectanglelabels"] == ["Nest"] and first["score"] == pytest.approx(0.8)
    assert results[1]["value"]["rectanglelabels"] == ["Bird"] and results[1]["score"] == pytest.approx(0.3)


def test_unmapped_classes_are_left_out_and_boxes_clipped():
    config = parse_label_config(CONFIG)
    det = Detections([[-10, -5, 250, 50], [0, 0, 5, 5]], [[0.9, 0.0], [0.0, 0.9]], (200, 100))
    results = detections_to_results(det, ("Bird", None), config)
    assert len(results) == 1
    value = results[0]["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == pytest.approx((0, 0, 100, 50))


def test_rectangle_round_trip():
    config = parse_label_config(CONFIG)
    det = Detections([[20.5, 10.25, 60, 61]], [[0.9, 0.1]], (200, 100))
    (result,) = detections_to_results(det, ("Bird", "Nest"), config)
    box, label = rectangle_to_xyxy(result)
    assert label == "Bird"
    assert box == pytest.approx([20.5, 10.25, 60, 61])


def test_rectangle_to_xyxy_rejects_malformed_boxes():
    with pytest.raises(LabelConfigError, match="not a rectangle"):
        rectangle_to_xyxy({"id": "a", "value": {"x": 1}})
    odd = {"original_width": 10, "original_height": 10, "value": {"x": 0, "y": 0, "width": 1, "height": 1, "rotation": "a bit", "rectanglelabels": ["Bird"]}}
    with pytest.raises(LabelConfigError, match="rotation that is not a number"):
        rectangle_to_xyxy(odd)


def test_the_image_size_given_wins_over_the_size_the_result_recorded():
    """LS stores percent of the image it shows: a task's image replaced by a downscaled copy keeps its boxes' places."""
    result = {"original_width": 4000, "original_height": 3000,
              "value": {"x": 45, "y": 45, "width": 10, "height": 10, "rotation": 0, "rectanglelabels": ["bird"]}}
    assert rectangle_to_xyxy(result, (1000, 750))[0] == pytest.approx([450, 337.5, 550, 412.5])
    assert rectangle_to_xyxy(result)[0] == pytest.approx([1800, 1350, 2200, 1650]), "no size given: the recorded one"
    del result["original_width"]
    assert rectangle_to_xyxy(result, (1000, 750))[0] == pytest.approx([450, 337.5, 550, 412.5])
    with pytest.raises(LabelConfigError, match="original_width/original_height"):
        rectangle_to_xyxy(result)
    with pytest.raises(LabelConfigError, match="original_width/original_height"):
        rectangle_to_xyxy({**result, "original_width": 0, "original_height": 3000})


def rotated(rotation, x=50.0, y=50.0, width=10.0, height=20.0, size=(200, 100)):
    value = {"x": x, "y": y, "width": width, "height": height, "rotation": rotation, "rectanglelabels": ["Bird"]}
    return {"original_width": size[0], "original_height": size[1], "value": value}


def test_a_rotated_rectangle_gives_its_axis_aligned_bounds_in_pixels():
    """LS turns a rectangle clockwise about its top-left corner; on a 200x100 image 10% x 20% is 20 x 20 pixels."""
    assert rectangle_to_xyxy(rotated(0))[0] == pytest.approx([100, 50, 120, 70])
    assert rectangle_to_xyxy(rotated(360))[0] == pytest.approx([100, 50, 120, 70])
    assert rectangle_to_xyxy(rotated(90))[0] == pytest.approx([80, 50, 100, 70])  # turned down and left of its corner
    assert rectangle_to_xyxy(rotated(180))[0] == pytest.approx([80, 30, 100, 50])
    assert rectangle_to_xyxy(rotated(-90))[0] == pytest.approx([100, 30, 120, 50])
    half = 20 * np.sqrt(2)  # a 20 x 20 square turned 45 degrees spans its diagonal in x, from -w/sqrt2 to +w/sqrt2 ...
    assert rectangle_to_xyxy(rotated(45))[0] == pytest.approx([100 - half / 2, 50, 100 + half / 2, 50 + half])
    c, s = np.cos(np.deg2rad(3)), np.sin(np.deg2rad(3))  # a 40 x 4 pixel box turned 3 degrees
    assert rectangle_to_xyxy(rotated(3, width=20, height=4))[0] == pytest.approx([100 - 4 * s, 50, 100 + 40 * c, 50 + 40 * s + 4 * c])


def test_task_image_url():
    config = parse_label_config(CONFIG)
    assert task_image_url({"id": 1, "data": {"photo": "/data/upload/1/a.png"}}, config) == "/data/upload/1/a.png"
    with pytest.raises(LabelConfigError, match="no data field 'photo'"):
        task_image_url({"id": 7, "data": {"image": "x"}}, config)
    with pytest.raises(LabelConfigError, match="no 'data'"):
        task_image_url({"id": 7}, config)


def test_a_pixel_box_becomes_a_percent_rectangle_and_back():
    from label_studio_ale.ls_format import rectangle_result

    result = rectangle_result((20, 10, 70, 40), "nest", (200, 100), "label", "image")
    assert result["value"] == {"x": 10.0, "y": 10.0, "width": 25.0, "height": 30.0, "rotation": 0, "rectanglelabels": ["nest"]}
    assert (result["from_name"], result["to_name"], result["type"]) == ("label", "image", "rectanglelabels")
    xyxy, label = rectangle_to_xyxy(result)
    assert label == "nest" and list(xyxy) == [20.0, 10.0, 70.0, 40.0]


def test_a_label_config_over_the_limit_is_refused_before_it_is_parsed_or_kept():
    from label_studio_ale.ls_format import MAX_LABEL_CONFIG_BYTES, _parse_label_config

    padded = CONFIG.replace("<View>", "<View><!--" + "x" * (MAX_LABEL_CONFIG_BYTES - len(CONFIG) - 7) + "-->")
    assert len(padded.encode()) == MAX_LABEL_CONFIG_BYTES and parse_label_config(padded).labels == ("Bird", "Nest")
    _parse_label_config.cache_clear()
    for over in (padded.replace("<View>", "<View> "), CONFIG + "\u00e9" * (MAX_LABEL_CONFIG_BYTES // 2)):
        with pytest.raises(LabelConfigError, match=f"^'schema' is over {MAX_LABEL_CONFIG_BYTES} bytes"):
            parse_label_config(over, field="'schema'")
    assert _parse_label_config.cache_info().currsize == 0


def test_a_label_config_that_is_no_string_is_named_by_its_field():
    with pytest.raises(LabelConfigError, match="^'label_config' must be the project's XML label config as a string, got list$"):
        parse_label_config(["<View/>"], field="'label_config'")
    with pytest.raises(LabelConfigError, match="^label config is empty"):
        parse_label_config("  ")


@pytest.mark.parametrize("value, expected", [(1, 1), (2**63 - 1, 2**63 - 1), (True, None), (0, None), (-5, None), (2**63, None), (1.0, None), ("3", None)])
def test_only_a_whole_number_a_database_can_hold_is_a_label_studio_id(value, expected):
    from label_studio_ale.ls_format import ls_id

    assert ls_id(value) == expected
