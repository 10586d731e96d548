"""docker/: no Docker engine runs in CI, so the files are checked statically: the
compose files parse, every service builds from a Dockerfile that exists and starts
FROM Flower's official image of the installed Flower version, every command is
accepted by the real Flower command's own argument parser, the scripts and paths it
names exist, and the experiment's overrides compose."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import flwr
import pytest
import yaml

from fedmtl.config import compose

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BASES = {"superlink.Dockerfile": "flwr/superlink", "supernode.Dockerfile": "flwr/supernode",
         "superexec.Dockerfile": "flwr/superexec"}


def load(name):
    return yaml.safe_load((DOCKER / name).read_text())


def merged():
    """compose.yaml with compose.tls.yaml laid over it (services merged key by key,
    `command` replaced, maps merged, as `docker compose -f a -f b` does)."""
    base, over = load("compose.yaml"), load("compose.tls.yaml")
    out = {k: dict(v) for k, v in base["services"].items()}
    for name, svc in over["services"].items():
        cur = out.setdefault(name, {})
        for k, v in svc.items():
            if isinstance(v, dict) and isinstance(cur.get(k), dict):
                cur[k] = {**cur[k], **v}
            else:
                cur[k] = v
    return out


def parser_for(dockerfile: str):
    from flwr.supercore.cli.flower_superexec import _parse_args as superexec
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as supernode

    return {"superlink.Dockerfile": superlink, "supernode.Dockerfile": supernode,
            "superexec.Dockerfile": superexec}[dockerfile]()


@pytest.mark.parametrize("dockerfile", sorted(BASES))
def test_dockerfiles_start_from_flowers_images_and_copy_what_exists(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    version = re.search(r"ARG FLWR_VERSION=(\S+)", text).group(1)
    assert version == flwr.__version__  # the image's Flower is the one tested here
    assert re.search(rf"^FROM {BASES[dockerfile]}:\$\{{FLWR_VERSION\}}$", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        srcs = [w for w in line.split() if not w.startswith("--")][:-1]
        for src in srcs:
            assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: not in the repository"
    assert "-e ." in text  # editable: fedmtl finds conf/ next to its package


@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.tls.yaml"]])
def test_compose_services_run_real_commands(files):
    services = load("compose.yaml")["services"] if len(files) == 1 else merged()
    assert {"superlink", "serverapp", "experiment"} <= services.keys()
    nodes = sorted(s for s in services if s.startswith("supernode-"))
    assert len(nodes) >= 2 and len([s for s in services if s.startswith("clientapp-")]) == len(nodes)
    parts = set()
    for name, svc in services.items():
        build = svc.get("build")
        dockerfile = build["dockerfile"] if build else None
        if dockerfile is None:  # an image built by another service
            dockerfile = next(s["build"]["dockerfile"] for s in services.values()
                              if s.get("build") and s.get("image") == svc["image"])
        assert (DOCKER / build["context"] / dockerfile).is_file() if build else True
        dockerfile = Path(dockerfile).name
        if "entrypoint" in svc:  # a script inside the image
            script = svc["entrypoint"][0].removeprefix("/app/")
            assert (ROOT / script).is_file() and (ROOT / script).stat().st_mode & 0o111, script
            assert f"COPY --chown=app:app docker/" in (DOCKER / dockerfile).read_text()
            continue
        args = parser_for(dockerfile).parse_args([str(a) for a in svc["command"]])  # SystemExit if a flag is wrong
        if dockerfile == "supernode.Dockerfile":
            cfg = dict(kv.split("=", 1) for kv in shlex.split(args.node_config))
            parts.add(int(cfg["partition-id"]))
            assert int(cfg["num-partitions"]) == len(nodes)
            assert args.superlink == "superlink:8000" and args.isolation == "process"
            if args.auth_supernode_private_key:
                assert args.auth_supernode_private_key.startswith("/certs/")
                assert svc["depends_on"]["register"]["condition"] == "service_completed_successfully"
        if dockerfile == "superexec.Dockerfile":
            host = args.runtime_api_address.split(":")[0]
            assert host in services, f"{name} dials {host}, which is no service"
        if dockerfile == "superlink.Dockerfile":
            assert args.isolation == "process" and args.port == 8000
            if args.enable_supernode_auth:
                assert args.ssl_certfile and args.ssl_keyfile and args.ssl_ca_certfile
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            assert src.startswith("./"), vol
            assert (DOCKER / src).is_dir() or src == "./results", vol
    assert parts == set(range(len(nodes)))


def test_the_experiment_overrides_compose():
    env = load("compose.yaml")["services"]["experiment"]["environment"]
    default = re.fullmatch(r"\$\{OVERRIDES:-(.*)\}", env["OVERRIDES"]).group(1)
    cfg = compose(shlex.split(default))
    nodes = [s for s in load("compose.yaml")["services"] if s.startswith("supernode-")]
    assert cfg["num_clients"] == len(nodes)
    assert cfg["min_train_clients"] <= len(nodes)


def test_scripts_are_valid_sh():
    for script in ("run-experiment.sh", "register-supernodes.sh", "certs/generate.sh"):
        r = subprocess.run(["sh", "-n", str(DOCKER / script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"


def test_generate_sh_writes_certificates_for_the_superlink_service(tmp_path):
    import shutil
    from cryptography import x509

    shutil.copytree(DOCKER / "certs", tmp_path / "docker" / "certs")
    # the script finds the repository two levels up: point it at this one
    (tmp_path / "fedmtl").symlink_to(ROOT / "fedmtl")
    (tmp_path / "conf").symlink_to(ROOT / "conf")
    r = subprocess.run(["sh", str(tmp_path / "docker" / "certs" / "generate.sh"), "10.0.0.7"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "docker" / "certs"
    cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "superlink" in san.get_values_for_type(x509.DNSName)
    assert sorted(p.name for p in out.glob("supernode-*.pub")) == [f"supernode-{k}.pub" for k in range(3)]
