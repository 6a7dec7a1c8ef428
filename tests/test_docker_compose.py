"""docker-compose.yml refers only to things that exist, and .env.example documents every variable.

No Docker engine is needed: the files are checked against the repository and the code.
"""

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from label_studio_ale.cli import build_parser
from label_studio_ale.settings import ENV_VARS, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker" / "compose.gpu.yml", ROOT / "docker" / "compose.ports.yml"]
#: The one service a person opens in a browser; nothing else is published by default.
PUBLISHED_BY_DEFAULT = {"label-studio"}
#: Services that stay up and must say when they are ready.
LONG_RUNNING_WITH_HEALTHCHECK = ("postgres", "label-studio", "redis", "backend")
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def documented() -> set[str]:
    names = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^([A-Z_][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def variables_read_by_the_code() -> set[str]:
    """Settings' environment variables plus every literal name read through os.environ / os.getenv in backend/ and plugins/.

    Assignments (os.environ["X"] = ...) are the code configuring a library, not a setting.
    """
    names = set(ENV_VARS)
    for path in [*(ROOT / "backend").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            target = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                owner = ast.unparse(node.func.value)
                if (owner == "os.environ" and node.func.attr in ("get", "setdefault", "pop")) or ast.unparse(node.func) == "os.getenv":
                    target = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and ast.unparse(node.value) == "os.environ":
                target = node.slice
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                names.add(target.value)
    return names - {"PATH"}  # the system's own, passed through


def test_every_variable_the_code_reads_is_documented_in_env_example():
    read = variables_read_by_the_code()
    assert {"LABEL_STUDIO_API_KEY", "REDIS_URL", "ALE_CACHE_DIR", "KERAS_BACKEND"} <= read  # the scan finds both kinds
    missing = sorted(read - documented())
    assert not missing, f".env.example lacks {missing}"


def test_every_variable_the_compose_files_use_is_documented():
    used = set()
    for path in COMPOSE_FILES:
        used |= set(VARIABLE.findall(path.read_text()))
    missing = sorted(used - documented())
    assert not missing, f".env.example lacks {missing}"


def test_every_backend_setting_reaches_the_backend_containers():
    stack = compose()
    for name in ("backend", "worker", "scheduler"):
        environment = stack["services"][name]["environment"]
        assert set(ENV_VARS) <= set(environment), f"{name} lacks {sorted(set(ENV_VARS) - set(environment))}"
        unknown = [key for key in environment if key not in ENV_VARS]
        assert not unknown, f"{name} sets variables the backend never reads: {unknown}"


def test_every_service_has_an_image_or_a_build_that_exists():
    stack = compose()
    built = {}
    for name, service in stack["services"].items():
        assert "image" in service or "build" in service, f"{name}: no image and no build"
        if "build" in service:
            build = service["build"]
            context = ROOT / build["context"]
            dockerfile = context / build["dockerfile"]
            assert context.is_dir() and dockerfile.is_file(), f"{name}: {dockerfile} is missing"
            for arg in build.get("args", {}):
                assert re.search(rf"^ARG {arg}\b", dockerfile.read_text(), re.M), f"{name}: the Dockerfile declares no ARG {arg}"
            built[service["image"]] = dockerfile
    # Services without a build run an image another service builds, or a published one.
    for name, service in stack["services"].items():
        image = service["image"]
        if image.startswith("label-studio-ale"):
            assert image in built, f"{name} runs {image}, which no service builds"
        else:
            assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._-]+", image), f"{name}: pin a tag for {image}"


def test_every_service_of_the_backend_image_can_build_it():
    """`docker compose up --no-deps worker` on a fresh GPU machine (README: Scaling workers) must build the image,
    not try to pull label-studio-ale from a registry: every service running it carries the same build."""
    services = compose()["services"]
    ours = {name: s for name, s in services.items() if s["image"].startswith("label-studio-ale")}
    assert set(ours) == {"backend", "worker", "scheduler"}
    builds = {name: service.get("build") for name, service in ours.items()}
    assert all(builds.values()), f"no build: {[name for name, build in builds.items() if not build]}"
    assert len({repr(build) for build in builds.values()}) == 1, "one image tag, one way to build it"
    assert builds["worker"]["args"]["EXTRAS"] == "${ALE_EXTRAS:-yolov5}"


def test_rq_dashboard_reads_the_redis_the_workers_use():
    """A Redis given a password (README) is one REDIS_URL for the backend, the workers and the dashboard alike."""
    services = compose()["services"]
    assert services["rq-dashboard"]["environment"]["RQ_DASHBOARD_REDIS_URL"] == services["worker"]["environment"]["REDIS_URL"]
    assert services["worker"]["environment"]["REDIS_URL"] == "${REDIS_URL:-redis://redis:6379/0}"
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    pin = next(i for i, line in enumerate(lines) if "image: eoranged/rq-dashboard:" in line)
    assert lines[pin - 1].strip().startswith("#"), "the rq-dashboard pin says why it is pinned"


def test_the_dockerfile_copies_files_that_exist():
    for dockerfile in (ROOT / "docker").glob("Dockerfile*"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                sources = shlex.split(line)[1:-1]
                for source in sources:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_our_services_run_real_ale_commands():
    stack = compose()
    ours = {name: s for name, s in stack["services"].items() if s["image"].startswith("label-studio-ale")}
    assert set(ours) == {"backend", "worker", "scheduler"}
    defaults = {"BACKEND_WORKERS": "1", "BACKEND_THREADS": "4", "WORKER_QUEUES": "train,predict,sync"}
    for name, service in ours.items():
        command = [VARIABLE.sub(lambda m: defaults[m.group(1)], part) for part in service["command"]]
        assert command[0] == "ale", f"{name}: {command}"
        build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown command or option
    assert ours["backend"]["command"][1] == "serve" and ours["worker"]["command"][1] == "worker" and ours["scheduler"]["command"][1] == "cron"


def test_healthchecks_volumes_and_dependencies_fit_together():
    stack = compose()
    services = stack["services"]
    for name in LONG_RUNNING_WITH_HEALTHCHECK:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy, which has no healthcheck"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in stack["volumes"], f"{name} mounts undeclared volume {source}"
    # the model store outlives containers and is shared by the backend and the workers
    for name in ("backend", "worker"):
        assert "models:/models" in services[name]["volumes"] and services[name]["environment"]["MODEL_DIR"] == "/models"


def test_label_studio_accepts_a_backend_on_the_private_network():
    """label-studio.md: since 1.23.1 LS refuses ML backends on private addresses unless SSRF protection is off."""
    ls = compose()["services"]["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    assert ls["environment"]["SSRF_PROTECTION_ENABLED"] == "false" and ls["environment"]["ML_BLOCK_LOCAL_IP"] == "false"
    assert ls["environment"]["DJANGO_DB"] == "default" and ls["environment"]["POSTGRE_HOST"] == "postgres"
    assert compose()["services"]["backend"]["environment"]["LABEL_STUDIO_URL"].endswith("http://label-studio:8080}")


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_the_overrides_only_name_services_of_the_stack(path):
    names = set(yaml.safe_load(path.read_text())["services"])
    assert names <= set(compose()["services"])


def test_only_label_studio_is_published_by_default():
    """The backend (webhooks start trainings, write predictions) and the dashboard stay on the compose network."""
    services = compose()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == PUBLISHED_BY_DEFAULT
    assert not any(service.get("network_mode") == "host" for service in services.values())


def test_the_ports_override_publishes_on_loopback_only():
    services = yaml.safe_load((ROOT / "docker" / "compose.ports.yml").read_text())["services"]
    assert set(services) == {"backend", "rq-dashboard"}
    for name, service in services.items():
        for mapping in service["ports"]:
            assert mapping.startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"


def example_values() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def test_every_device_a_compose_file_sets_is_one_the_backend_accepts():
    """With .env.example's values, or each variable's own default, every DEVICE parses (the GPU file's included)."""
    example = example_values()

    def resolved(value: str, env: dict[str, str]) -> str:
        return VARIABLE.sub(lambda m: env.get(m.group(1)) or re.search(r":?-([^}]*)}", m.group(0)).group(1), value)

    seen = []
    for path in COMPOSE_FILES:
        for name, service in (yaml.safe_load(path.read_text()).get("services") or {}).items():
            value = (service.get("environment") or {}).get("DEVICE")
            if value is None:
                continue
            for env in (example, {}):
                device = resolved(str(value), env)
                seen.append((path.name, name, device))
                Settings.from_env({"DEVICE": device})  # raises ConfigError naming DEVICE
    assert ("compose.gpu.yml", "worker", "cuda:0") in seen


def test_the_gpu_worker_reserves_the_gpu_it_is_told_to():
    """A `count` reservation always hands a container the host's GPU 0, whatever GPU_DEVICE says."""
    worker = yaml.safe_load((ROOT / "docker" / "compose.gpu.yml").read_text())["services"]["worker"]
    (reservation,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert "count" not in reservation and reservation["device_ids"] == ["${GPU_DEVICE:-0}"]


def test_only_the_service_that_serves_http_keeps_the_images_http_healthcheck():
    assert "HEALTHCHECK" in (ROOT / "docker" / "Dockerfile").read_text() and "9090/health" in (ROOT / "docker" / "Dockerfile").read_text()
    services = compose()["services"]
    for name, service in services.items():
        if not service.get("image", "").startswith("label-studio-ale"):
            continue
        serves_http = service["command"][1] == "serve"
        check = service.get("healthcheck", {})
        if serves_http:
            assert "9090/health" in " ".join(check.get("test", [])), name
        else:
            assert check.get("disable") is True, f"{name} inherits a healthcheck of a port it never opens"


def test_label_studio_and_the_backend_get_one_label_studio_host():
    """LS writes its LABEL_STUDIO_HOST into task data; the backend must know it to read those images from LS."""
    services = compose()["services"]
    assert services["label-studio"]["environment"]["LABEL_STUDIO_HOST"] == "${LABEL_STUDIO_HOST:-}"
    for name in ("backend", "worker", "scheduler"):
        assert services[name]["environment"]["LABEL_STUDIO_HOST"] == services["label-studio"]["environment"]["LABEL_STUDIO_HOST"]


def test_env_examples_postgres_password_advice_holds_for_the_url_compose_splices_it_into():
    """Compose writes POSTGRES_PASSWORD into DETECTION_STORE_URL as it is, and hands the same value to PostgreSQL and
    Label Studio, which take it literally: the characters .env.example says to avoid are those libpq misreads (or
    Settings refuses), the ones it calls fine are read as written, and a percent-encoded DETECTION_STORE_URL works."""
    from urllib.parse import quote

    from label_studio_ale.errors import ConfigError

    conninfo = pytest.importorskip("psycopg.conninfo")
    text = (ROOT / ".env.example").read_text()
    avoided = re.search(r"choose a\s+#?\s*POSTGRES_PASSWORD without (.+?) \(", text)
    fine = re.search(r"((?:'.', )+'.') are fine", text)
    assert avoided and fine, "the DETECTION_STORE_URL comment names the characters to avoid and those that are fine"
    template = compose()["services"]["backend"]["environment"]["DETECTION_STORE_URL"]
    spliced = re.fullmatch(r"\$\{DETECTION_STORE_URL:-(.*)\}", template).group(1)

    def libpq_password(url):
        try:
            Settings.from_env({"DETECTION_STORE_URL": url})
        except ConfigError:
            return None
        return conninfo.conninfo_to_dict(url).get("password")

    for char in re.findall(r"'(.)'", avoided.group(1)):
        password = f"pa{char}41ss"
        assert libpq_password(spliced.replace("${POSTGRES_PASSWORD}", password)) != password, char
        encoded = spliced.replace("${POSTGRES_PASSWORD}", quote(password, safe=""))
        assert libpq_password(encoded) == password, char
    for char in re.findall(r"'(.)'", fine.group(1)):
        password = f"pa{char}41ss"
        assert libpq_password(spliced.replace("${POSTGRES_PASSWORD}", password)) == password, char
