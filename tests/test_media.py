from PIL import Image, ImageEnhance

from label_studio_ale.media import average_hash
from label_studio_ale.synthetic import make_scene


def test_average_hash_is_close_for_near_duplicates_and_far_otherwise():
    frame = make_scene(1).image
    burst = ImageEnhance.Brightness(frame).enhance(1.05)  # the next frame of a camera-trap burst
    other = make_scene(2).image
    h = average_hash(frame)
    assert 0 <= h < 2**64
    assert (h ^ average_hash(burst)).bit_count() <= 4
    assert (h ^ average_hash(other)).bit_count() > 8
    assert average_hash(Image.new("RGB", (10, 10))) == 0  # flat image: nothing above the mean
    # the last pixel bright: bit 63 set, still a non-negative Python int
    corner = Image.new("L", (8, 8))
    corner.putpixel((7, 7), 255)
    assert average_hash(corner) == 2**63 and type(average_hash(corner)) is int
