from pathlib import Path

import pytest

from label_studio_ale.errors import ConfigError
from label_studio_ale.settings import ENV_VARS, Settings
from label_studio_ale.tiling import TileSettings


def test_defaults_without_environment():
    settings = Settings.from_env({})
    assert settings.adapter == "yolov5" and settings.nms_metric == "iou" and settings.max_tags_per_pixel == 0


def test_every_variable_is_read():
    env = {
        "LABEL_STUDIO_URL": "http://ls:8080/",
        "LABEL_STUDIO_HOST": "https://ls.example.org/ls/",
        "LABEL_STUDIO_API_KEY": "secret-key",
        "MODEL_DIR": "/models",
        "ADAPTER": "tfod",
        "MODEL_WEIGHTS": "w.pt",
        "MODEL_CLASSES": "bird, nest,,",
        "DEVICE": "cuda:0",
        "IMAGE_SIZE": "320",
        "PREDICT_BATCH_SIZE": "4",
        "SCORE_THRESHOLD": "0.1",
        "NMS_METRIC": "IoMin",
        "NMS_THRESHOLD": "0.6",
        "MAX_TAGS_PER_PIXEL": "2",
        "MAX_DETECTIONS": "50",
        "MAX_IMAGE_PIXELS": "1000",
        "MAX_IMAGE_BYTES": "2000",
        "FETCH_TIMEOUT": "3",
        "MAX_REQUEST_BYTES": "1000000",
        "PREDICT_CHUNK_PIXELS": "5000",
        "TILE_SIZE": "512",
        "TILE_OVERLAP": "0.25",
        "TILE_ABOVE": "3000",
        "TILE_MERGE_METRIC": "IoU",
        "TILE_MERGE_THRESHOLD": "0.6",
        "TILE_MIN_VISIBLE": "0.4",
        "TILE_EMPTY_SHARE": "0.5",
        "ALLOWED_MEDIA_HOSTS": "Images.Example.org, cdn.example.org",
        "BASIC_AUTH_USER": "ls",
        "BASIC_AUTH_PASS": "pw",
        "LOG_LEVEL": "debug",
        "REDIS_URL": "redis://127.0.0.1:6379/3",
        "POLICY": "ale-lc-max",
        "POLICY_SEED": "7",
        "SYNC_INTERVAL": "60",
        "SYNC_PROJECTS": "1, 4",
        "SYNC_BATCH_SIZE": "20",
        "EXPLORATION_FRACTION": "0.1",
        "EMPTY_QUOTA": "0.05",
        "CLASS_BALANCE": "bird=0.7, nest=0.3",
        "DUPLICATE_DISTANCE": "4",
        "IMPORT_CHUNK_SIZE": "100",
        "PREDICT_JOB_TASKS": "64",
        "COST_PER_IMAGE": "3.5",
        "DIVERSITY_POOL": "3",
        "NOVELTY_WEIGHT": "0.5",
        "LS_CLUSTERS": "6",
        "DETECTION_STORE_URL": "postgresql://ale:secret@db:5432/ale",
        "BASE_MODEL": "yolov5s.yaml",
        "TRAIN_EPOCHS": "5",
        "TRAIN_BATCH": "8",
        "TRAIN_RECIPE": "Ultralytics",
        "TRAIN_MIN_STEPS": "400",
        "TRAIN_CONTINUE_STEPS": "300",
        "TRAIN_PRECISION": "FP32",
        "TRAIN_FREEZE": "10",
        "PROMOTION": "Always",
        "PROMOTION_MIN_IMAGES": "20",
        "AUTO_TRAIN_AFTER": "25",
        "ALLOW_DOWNLOADS": "Yes",
    }
    assert set(env) == set(ENV_VARS)
    s = Settings.from_env(env)
    assert s.label_studio_url == "http://ls:8080" and s.model_dir == Path("/models")
    assert s.label_studio_host == "https://ls.example.org/ls"
    assert s.model_classes == ("bird", "nest") and s.nms_metric == "iomin" and s.max_tags_per_pixel == 2
    assert s.allowed_media_hosts == ("images.example.org", "cdn.example.org")
    assert s.log_level == "DEBUG" and s.image_size == 320 and s.fetch_timeout == 3.0 and s.max_request_bytes == 1_000_000
    assert s.redis_url.endswith("/3") and s.policy == "ale-lc-max" and s.sync_projects == (1, 4)
    assert s.promotion == "always" and s.promotion_min_images == 20 and s.allow_downloads is True
    assert s.train_epochs == 5 and s.train_recipe == "ultralytics" and s.train_min_steps == 400 and s.train_continue_steps == 300
    assert s.train_precision == "fp32" and s.train_freeze == 10
    assert s.class_balance == (("bird", 0.7), ("nest", 0.3)) and s.duplicate_distance == 4
    assert s.predict_chunk_pixels == 5000 and s.tile_min_visible == 0.4 and s.tile_empty_share == 0.5
    assert s.tiles() == TileSettings(512, 0.25, 3000, "iou", 0.6)
    assert s.predict_job_tasks == 64 and s.detection_store_url.startswith("postgresql://") and s.cost_per_image == 3.5
    assert s.diversity_pool == 3 and s.novelty_weight == 0.5 and s.ls_clusters == 6
    assert "secret" not in repr(s)


def test_tiles_default_to_the_model_input_and_turn_off_with_tile_above_zero():
    assert Settings(image_size=320).tiles() == TileSettings(320)
    assert Settings(tile_above=0).tiles() is None
    assert Settings().max_image_pixels >= 45_000_000  # a 45 MP drone frame is read by default


@pytest.mark.parametrize(
    "name, value",
    [("TILE_SIZE", "-1"), ("TILE_OVERLAP", "1"), ("TILE_ABOVE", "-5"), ("TILE_MERGE_METRIC", "giou"),
     ("TILE_MERGE_THRESHOLD", "2"), ("TILE_MIN_VISIBLE", "-0.1"), ("TILE_EMPTY_SHARE", "-1"), ("PREDICT_CHUNK_PIXELS", "0")],
)
def test_bad_tile_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_secrets_are_not_in_repr():
    s = Settings.from_env({"LABEL_STUDIO_API_KEY": "top-secret", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "pw-secret"})
    assert "top-secret" not in repr(s) and "pw-secret" not in repr(s)


@pytest.mark.parametrize(
    "env, field",
    [
        ({"NMS_METRIC": "giou"}, "NMS_METRIC"),
        ({"SCORE_THRESHOLD": "2"}, "SCORE_THRESHOLD"),
        ({"SCORE_THRESHOLD": "high"}, "SCORE_THRESHOLD"),
        ({"IMAGE_SIZE": "0"}, "IMAGE_SIZE"),
        ({"MAX_TAGS_PER_PIXEL": "-1"}, "MAX_TAGS_PER_PIXEL"),
        ({"BASIC_AUTH_USER": "only-user"}, "BASIC_AUTH_USER"),
        ({"LABEL_STUDIO_URL": "ls:8080"}, "LABEL_STUDIO_URL"),
        ({"EXPLORATION_FRACTION": "1.5"}, "EXPLORATION_FRACTION"),
        ({"CLASS_BALANCE": "bird"}, "CLASS_BALANCE"),
        ({"SYNC_PROJECTS": "one"}, "SYNC_PROJECTS"),
        ({"DUPLICATE_DISTANCE": "-5"}, "DUPLICATE_DISTANCE"),
        ({"PROMOTION": "sometimes"}, "PROMOTION"),
        ({"PROMOTION_MIN_IMAGES": "0"}, "PROMOTION_MIN_IMAGES"),
        ({"ALLOW_DOWNLOADS": "maybe"}, "ALLOW_DOWNLOADS"),
        ({"TRAIN_RECIPE": "fast"}, "TRAIN_RECIPE"),
        ({"TRAIN_EPOCHS": "-1"}, "TRAIN_EPOCHS"),
        ({"TRAIN_MIN_STEPS": "-200"}, "TRAIN_MIN_STEPS"),
        ({"TRAIN_CONTINUE_STEPS": "-1"}, "TRAIN_CONTINUE_STEPS"),
        ({"TRAIN_PRECISION": "half"}, "TRAIN_PRECISION"),
        ({"TRAIN_FREEZE": "-1"}, "TRAIN_FREEZE"),
        ({"AUTO_TRAIN_AFTER": "-1"}, "AUTO_TRAIN_AFTER"),
        ({"DIVERSITY_POOL": "1"}, "DIVERSITY_POOL"),
        ({"NOVELTY_WEIGHT": "-0.5"}, "NOVELTY_WEIGHT"),
        ({"LS_CLUSTERS": "-1"}, "LS_CLUSTERS"),
        ({"DEVICE": "gpu"}, "DEVICE"),
        ({"DEVICE": "cuda:"}, "DEVICE"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"POLICY_SEED": "-1"}, "POLICY_SEED"),
        ({"CLASS_BALANCE": "bird=0,nest=0"}, "CLASS_BALANCE"),
        ({"CLASS_BALANCE": "bird=inf"}, "CLASS_BALANCE"),
        ({"FETCH_TIMEOUT": "nan"}, "FETCH_TIMEOUT"),
        ({"MAX_REQUEST_BYTES": "0"}, "MAX_REQUEST_BYTES"),
        ({"TILE_EMPTY_SHARE": "nan"}, "TILE_EMPTY_SHARE"),
        ({"COST_PER_IMAGE": "inf"}, "COST_PER_IMAGE"),
        ({"ALLOWED_MEDIA_HOSTS": "https://img.example.com"}, "ALLOWED_MEDIA_HOSTS"),
        ({"ALLOWED_MEDIA_HOSTS": "img.example.com,cdn.example.com:8443"}, "ALLOWED_MEDIA_HOSTS"),
        ({"ALLOWED_MEDIA_HOSTS": "example.com/images"}, "ALLOWED_MEDIA_HOSTS"),
        ({"REDIS_URL": "redis://localhost:abc/0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://localhost:6379/notadb"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://localhost:6379/0?db=two"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://localhost:70000/0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://[::1"}, "REDIS_URL"),
        ({"LABEL_STUDIO_URL": "http://localhost:abc"}, "LABEL_STUDIO_URL"),
        ({"LABEL_STUDIO_URL": "http://[::1"}, "LABEL_STUDIO_URL"),
        ({"LABEL_STUDIO_URL": "http://"}, "LABEL_STUDIO_URL"),
        ({"LABEL_STUDIO_URL": "https://:8080"}, "LABEL_STUDIO_URL"),
        ({"DETECTION_STORE_URL": "mysql://ale@db/ale"}, "DETECTION_STORE_URL"),
        ({"DETECTION_STORE_URL": "/var/lib/ale/detections.sqlite"}, "DETECTION_STORE_URL"),
        ({"DETECTION_STORE_URL": "sqlite://detections.sqlite"}, "DETECTION_STORE_URL"),
        ({"DETECTION_STORE_URL": "sqlite:///"}, "DETECTION_STORE_URL"),
        ({"SYNC_PROJECTS": "-1"}, "SYNC_PROJECTS"),
        ({"SYNC_PROJECTS": "0"}, "SYNC_PROJECTS"),
        ({"SYNC_PROJECTS": "3, -4"}, "SYNC_PROJECTS"),
    ],
)
def test_bad_values_name_the_variable(env, field):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.field == field and str(caught.value).startswith(field)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_torch_devices_are_accepted(device):
    assert Settings.from_env({"DEVICE": device}).device == device


def test_a_bare_gpu_index_is_refused_with_the_spelling_torch_takes():
    # torch.device("0") raises deep inside the worker's first job; the setting fails at start instead
    with pytest.raises(ConfigError, match=r"DEVICE: must be a torch device.*got '1'; a GPU's index is written cuda:1"):
        Settings.from_env({"DEVICE": "1"})


def test_media_hosts_are_names_or_addresses():
    settings = Settings.from_env({"ALLOWED_MEDIA_HOSTS": "img.example.com,10.0.0.5,::1"})
    assert settings.allowed_media_hosts == ("img.example.com", "10.0.0.5", "::1")



@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://redis:6379/0?password=s3cret", "redis://redis:6379/0?password=***"),  # redis-py reads it there too
        ("postgresql://ale@db/ale?sslmode=require&password=p%40ss", "postgresql://ale@db/ale?sslmode=require&password=***"),
        ("postgresql://ale:pw@db/ale?sslpassword=key-pw&application_name=ale", "postgresql://ale:***@db/ale?sslpassword=***&application_name=ale"),
        ("redis://redis/0?PASSWORD=x&db=1", "redis://redis/0?PASSWORD=***&db=1"),
        ("redis://redis:6379/0?password=", "redis://redis:6379/0?password="),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("", ""),
    ],
)
def test_every_password_of_a_url_is_masked_in_the_user_part_or_the_query(url, shown):
    from label_studio_ale.settings import without_password

    assert without_password(url) == shown


@pytest.mark.parametrize(
    "url, shown",
    [
        # libpq takes a raw '#' or '?' in a password, urllib reads either as the end of the host
        ("postgresql://ale:p#ss@db:5432/ale", "postgresql://ale:***@db:5432/ale"),
        ("postgresql://ale:p?ss@db:5432/ale", "postgresql://ale:***@db:5432/ale"),
        ("postgresql://ale:pa/ss@db:5432/ale", "postgresql://ale:***@db:5432/ale"),
        ("postgresql://ale:p@ss@db/ale", "postgresql://ale:***@db/ale"),
        ("redis://:p#ss@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://default:sec ret@h:6379/0", "redis://default:***@h:6379/0"),
        ("postgresql://ale:s3cret@db1:5432,db2:5432/ale", "postgresql://ale:***@db1:5432,db2:5432/ale"),
        ("http://admin:LsPr0xyPass@ls.example.org:8080", "http://admin:***@ls.example.org:8080"),
        ("http://a#b:c@ls.example.org", "http://***@ls.example.org"),  # no plain user name to show
        ("postgresql://db/ale?password=p@ss&sslmode=require", "postgresql://***&sslmode=require"),  # an '@' in a value
        ("postgresql://db/ale?password=p#ss", "postgresql://db/ale?password=***"),
        ("redis://h/0?auth_token=t0k", "redis://h/0?auth_token=***"),
        ("host=db user=ale password=s3cret", "(unreadable URL)"),  # libpq's key=value form: nothing of it is shown
        ("postgresql://host=db password=s3cret", "postgresql://(unreadable URL)"),
        ("localhost:6379", "localhost:6379"),
        ("ale:s3cret@db", "ale:***@db"),
        ("unix:///run/redis/redis.sock?db=1", "unix:///run/redis/redis.sock?db=1"),
        ("sqlite:////var/lib/ale/d.sqlite", "sqlite:////var/lib/ale/d.sqlite"),
    ],
)
def test_a_password_is_masked_whatever_characters_it_holds_and_an_unreadable_url_shows_no_more_than_its_scheme(url, shown):
    from label_studio_ale.settings import without_password

    assert without_password(url) == shown


def test_label_studio_url_credentials_are_masked_in_repr_and_in_its_errors():
    s = Settings.from_env({"LABEL_STUDIO_URL": "http://admin:LsPr0xyPass@ls.example.org:8080"})
    assert s.label_studio_url == "http://admin:LsPr0xyPass@ls.example.org:8080"
    assert "LsPr0xyPass" not in repr(s) and "label_studio_url='http://admin:***@ls.example.org:8080'" in repr(s)
    for url in (
        "http://admin:LsPr0xyPass@ls.example.org:bad", "ftp://admin:LsPr0xyPass@ls.example.org", "http://admin:LsPr0xyPass@",
        "http://admin:LsPr0#xyPass@ls.example.org",
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"LABEL_STUDIO_URL": url})
        assert caught.value.field == "LABEL_STUDIO_URL" and "LsPr0xyPass" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize("password", ["12#34", "12?34", "p/ss"])
def test_a_redis_password_redis_py_would_cut_short_is_refused_with_how_to_write_it(password):
    """redis-py reads a raw '#', '?' or '/' as the end of the host: REDIS_URL=redis://:12#34@redis:6379/0 would reach
    localhost:12. The error says to percent-encode, and shows none of the password (not even the port urllib read from it)."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": f"redis://:{password}@redis:6379/0"})
    message = str(caught.value)
    assert message.startswith("REDIS_URL: ") and "redis://:***@redis:6379/0" in message
    assert not any(part in message for part in ("12", "34", "p/", "ss'")), message
    assert "percent-encode" in message
    assert Settings.from_env({"REDIS_URL": "redis://:12%2334@redis:6379/0"}).redis_url.endswith("12%2334@redis:6379/0")


@pytest.mark.parametrize("password", ["pa/ss", "p@ss"])
def test_a_postgres_password_libpq_would_misread_is_refused_with_how_to_write_it(password):
    with pytest.raises(ConfigError, match="percent-encode") as caught:
        Settings.from_env({"DETECTION_STORE_URL": f"postgresql://ale:{password}@db:5432/ale"})
    assert caught.value.field == "DETECTION_STORE_URL" and "ss" not in str(caught.value).replace("password", "")
    assert Settings.from_env({"DETECTION_STORE_URL": "postgresql://ale:p#ss?x@db:5432/ale"}), "libpq takes '#' and '?'"


@pytest.mark.parametrize(
    "url",
    [
        "redis://",
        "redis://localhost:6379/0",
        "rediss://cache.example.com:6380/2",
        "redis://:password@host:6379/0",
        "redis://user:pw@host/1",
        "redis://host",
        "redis://host/",
        "redis://[::1]:6379/3",
        "redis://host:6379/0?db=4&socket_timeout=5",
        "unix:///run/redis/redis.sock",
        "unix:///run/redis/redis.sock?db=1",
    ],
)
def test_redis_urls_redis_py_reads_are_accepted(url):
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    "url, said",
    [
        ("redis://localhost:abc/0", "cannot be read as a URL (Port could not be cast"),
        ("redis://localhost:6379/notadb", "the database must be a number"),
        ("redis://:s3cret@localhost:bad/0", "redis://:***@localhost:bad/0"),
    ],
)
def test_a_redis_url_redis_py_would_misread_says_how_to_write_it_without_its_password(url, said):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": url})
    message = str(caught.value)
    assert message.startswith("REDIS_URL: ") and said in message and "e.g. redis://localhost:6379/0" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "url", ["http://localhost:8080", "https://ls.example.com", "http://ls:8080/label-studio", "http://[::1]:8080", "https://ls.example.com:443/"]
)
def test_label_studio_urls_with_a_host_and_optional_port_and_path_are_accepted(url):
    assert Settings.from_env({"LABEL_STUDIO_URL": url}).label_studio_url == url.rstrip("/")


def test_label_studio_host_is_checked_as_label_studio_url_is_and_masked_alike():
    """Label Studio's public URL (its own LABEL_STUDIO_HOST): optional, and an error names LABEL_STUDIO_HOST, not the URL setting."""
    assert Settings.from_env({}).label_studio_host == ""
    for url, said in (("ls.example.org", "must start with http:// or https://"), ("https://ls.example.org:abc", "Port could not be cast")):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"LABEL_STUDIO_HOST": url})
        assert caught.value.field == "LABEL_STUDIO_HOST" and said in str(caught.value)
    s = Settings.from_env({"LABEL_STUDIO_HOST": "https://proxy:Pr0xyPass@ls.example.org/ls"})
    assert "Pr0xyPass" not in repr(s) and "label_studio_host='https://proxy:***@ls.example.org/ls'" in repr(s)


def test_a_label_studio_url_that_cannot_be_read_names_the_variable_and_the_fix():
    for url, said in (("http://localhost:abc", "Port could not be cast"), ("http://[::1", "Invalid IPv6 URL")):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"LABEL_STUDIO_URL": url})
        assert str(caught.value).startswith("LABEL_STUDIO_URL: ") and said in str(caught.value)
        assert "e.g. http://localhost:8080" in str(caught.value)


@pytest.mark.parametrize("url", ["sqlite:///detections.sqlite", "sqlite:////var/lib/ale/d.sqlite", "postgresql://ale:pw@db:5432/ale", "postgres://db/ale"])
def test_detection_store_urls_the_store_opens_are_accepted(url):
    assert Settings.from_env({"DETECTION_STORE_URL": url}).detection_store_url == url


def test_a_detection_store_url_is_refused_at_start_as_the_store_would_refuse_it(tmp_path):
    """The store refuses the same URL at first use; Settings says so at start, with the same remedy and no password."""
    from label_studio_ale.detection_store import open_detection_store

    url = "mysql://ale:s3cret@db/ale"
    with pytest.raises(ConfigError) as at_start:
        Settings.from_env({"DETECTION_STORE_URL": url})
    with pytest.raises(ConfigError) as at_use:
        open_detection_store(url, tmp_path)
    assert at_start.value.field == at_use.value.field == "DETECTION_STORE_URL"
    assert "sqlite:///" in str(at_start.value) and "postgresql://" in str(at_start.value) and "s3cret" not in str(at_start.value)
    open_detection_store(f"sqlite:///{tmp_path / 'd.sqlite'}", tmp_path)  # one Settings accepts, the store opens
    assert Settings.from_env({"DETECTION_STORE_URL": f"sqlite:///{tmp_path / 'd.sqlite'}"})


def test_sync_projects_are_positive_ids():
    assert Settings.from_env({"SYNC_PROJECTS": "1, 4"}).sync_projects == (1, 4)
    with pytest.raises(ConfigError, match=r"SYNC_PROJECTS: must be Label Studio project ids \(positive numbers.*got 0"):
        Settings.from_env({"SYNC_PROJECTS": "0"})
