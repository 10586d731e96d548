"""docker/: no Docker engine runs in CI, so the files are checked statically: the
compose files parse, every service runs an image built from a Dockerfile that exists
and starts FROM Flower's official image of the installed Flower version, every
command is accepted by the real Flower command's own argument parser, the scripts and
paths it names exist, the experiment's overrides compose, each container mounts only
the certificate files it needs (the CA key none, each SuperNode only its own key), and
published ports bind to 127.0.0.1 unless FEDMTL_BIND says otherwise."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import flwr
import pytest
import yaml

from compose_native import _interp, services
from fedmtl.config import compose
from fedmtl.deploy.certs import generate

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BASES = {"superlink.Dockerfile": "flwr/superlink", "supernode.Dockerfile": "flwr/supernode",
         "superexec.Dockerfile": "flwr/superexec"}


def load(name):
    return yaml.safe_load((DOCKER / name).read_text())


def merged():
    """compose.yaml with compose.tls.yaml laid over it, as `docker compose -f a -f b` does."""
    return services(tls=True)


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


def image_dockerfile(services: dict, name: str) -> Path:
    """The Dockerfile the service's image is built from: its own `build`, or the build of
    the service that builds the same image (compose builds an image once, by tag)."""
    svc = services[name]
    builders = [s for s in services.values() if s.get("build")]
    assert svc.get("build") or svc.get("image"), f"{name}: neither build nor image"
    if not svc.get("build"):
        builders = [s for s in builders if s.get("image") == svc["image"]]
        assert builders, f"{name}: image {svc['image']} is built by no service (it would be pulled)"
    build = svc.get("build") or builders[0]["build"]
    path = (DOCKER / build["context"] / build["dockerfile"]).resolve()
    assert path.is_file(), f"{name}: {path} does not exist"
    # every service that builds this tag builds it from the same Dockerfile
    assert {(DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).resolve() for s in builders
            if s.get("image") == svc.get("image")} <= {path}, name
    return path


def built_once(svcs: dict) -> dict:
    """The same services with `build` kept only on the first service that builds each image
    tag; the others run that tag without a `build` of their own, as a compose file may write
    them (compose.yaml's services all carry `build` through their YAML anchors, so without
    this layout the checks of a service without `build` would never run)."""
    out, built = {}, set()
    for name, svc in svcs.items():
        svc = dict(svc)
        if svc.get("build"):
            if svc.get("image") in built:
                del svc["build"]
            built.add(svc.get("image"))
        out[name] = svc
    return out


LAYOUTS = {"compose.yaml": lambda: services_of(), "compose.yaml+compose.tls.yaml": lambda: merged(),
           "compose.yaml, each image built once": lambda: built_once(services_of()),
           "compose.yaml+compose.tls.yaml, each image built once": lambda: built_once(merged())}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_compose_services_run_real_commands(layout):
    """Every service, with or without its own `build`: the image it runs is fedmtl's image of
    its kind at the installed Flower version (built here, never pulled), its command is
    accepted by that image's Flower command, and what it dials, mounts and depends on exists."""
    tls = "tls" in layout
    services = LAYOUTS[layout]()
    if "built once" in layout:
        assert {n for n, s in services.items() if not s.get("build")} >= {"clientapp-0", "supernode-1", "experiment"}
    assert {"superlink", "serverapp", "experiment"} <= services.keys()
    nodes = sorted(s for s in services if s.startswith("supernode-"))
    assert len(nodes) >= 2 and len([s for s in services if s.startswith("clientapp-")]) == len(nodes)
    parts, checked = set(), set()
    for name, svc in services.items():
        dockerfile = image_dockerfile(services, name).name
        assert dockerfile in BASES, f"{name}: built from {dockerfile}"
        kind = dockerfile.removesuffix(".Dockerfile")
        assert svc.get("image") == f"fedmtl/{kind}:{flwr.__version__}", f"{name}: runs image {svc.get('image')}"
        assert svc.get("entrypoint") or svc.get("command"), f"{name}: neither a command nor an entrypoint"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on {dep}, which is no service"
        if "entrypoint" in svc:  # a script inside the image
            script = svc["entrypoint"][0].removeprefix("/app/")
            assert (ROOT / script).is_file() and (ROOT / script).stat().st_mode & 0o111, script
            assert f"COPY --chown=app:app {Path(script).parent}/" in (DOCKER / dockerfile).read_text()
            checked.add(name)
            continue
        args = parser_for(dockerfile).parse_args([str(a) for a in svc["command"]])  # SystemExit if a flag is wrong
        if dockerfile == "supernode.Dockerfile":
            cfg = dict(kv.split("=", 1) for kv in shlex.split(args.node_config))
            parts.add(int(cfg["partition-id"]))
            assert int(cfg["num-partitions"]) == len(nodes)
            assert args.superlink == "superlink:8000" and args.isolation == "process"
            assert bool(args.auth_supernode_private_key) == tls and bool(args.root_certificates) == tls
            assert args.insecure != tls
            if tls:
                assert args.auth_supernode_private_key == f"/certs/{name}"  # its own key, no other
                assert svc["depends_on"]["register"]["condition"] == "service_completed_successfully"
        if dockerfile == "superexec.Dockerfile":
            host = args.runtime_api_address.split(":")[0]
            assert host in services, f"{name} dials {host}, which is no service"
            assert host in svc.get("depends_on", {}), f"{name} dials {host} but does not depend on it"
        if dockerfile == "superlink.Dockerfile":
            assert args.isolation == "process" and args.port == 8000
            assert args.enable_supernode_auth == tls and args.insecure != tls
            if tls:
                assert (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile) == (
                    "/certs/ca.crt", "/certs/server.pem", "/certs/server.key")
        checked.add(name)
    assert checked == set(services)  # every service, with or without its own `build`
    assert parts == set(range(len(nodes)))


def services_of():
    return services(tls=False)


@pytest.mark.parametrize("image, error", [
    ("fedmtl/superexec:1.40.0", "built by no service"),  # a tag no service builds: compose would pull it
    (f"flwr/superexec:{flwr.__version__}", "built by no service"),  # Flower's image: no fedmtl inside
    (None, "neither build nor image")])
def test_a_service_without_build_must_run_an_image_another_service_builds(image, error):
    svcs = built_once(services_of())
    svc = svcs["clientapp-0"]
    assert "build" not in svc and image_dockerfile(svcs, "clientapp-0").name == "superexec.Dockerfile"
    if image is None:
        del svc["image"]
    else:
        svc["image"] = image
    with pytest.raises(AssertionError, match=error):
        image_dockerfile(svcs, "clientapp-0")


def named_cert_files(svc: dict) -> set[str]:
    """The /certs/... files a service names in its command, entrypoint or environment."""
    words = [*map(str, svc.get("command", [])), *map(str, svc.get("entrypoint", [])),
             *map(str, (svc.get("environment") or {}).values())]
    return {w.removeprefix("/certs/") for w in words if w.startswith("/certs/")}


def cert_mounts(svc: dict) -> dict[str, dict]:
    return {m["source"].removeprefix("./certs/"): m for m in svc.get("volumes", [])
            if m["source"].startswith("./certs")}


@pytest.mark.parametrize("tls", [False, True], ids=["compose.yaml", "compose.yaml+compose.tls.yaml"])
def test_each_container_mounts_only_the_files_it_needs(tls, tmp_path):
    svcs = merged() if tls else services_of()
    nodes = sorted(s for s in svcs if s.startswith("supernode-"))
    pubs = {f"{n}.pub" for n in nodes}
    expected = {name: set() for name in svcs}
    if tls:
        link_secret = "superexec-superlink.secret"
        expected.update({"superlink": {"ca.crt", "server.pem", "server.key", link_secret},
                         "serverapp": {"ca.crt", link_secret}, "experiment": {"ca.crt"},
                         "register": {"ca.crt", *pubs},
                         **{n: {"ca.crt", n, f"superexec-{n}.secret"} for n in nodes},
                         **{n.replace("supernode", "clientapp"): {f"superexec-{n}.secret"} for n in nodes}})
    made = {p.name for p in generate(tmp_path, sans=["superlink"], supernodes=len(nodes),
                                     superexec_secrets=["superlink", *nodes]).values()}
    for name, svc in svcs.items():
        mounts = cert_mounts(svc)
        assert set(mounts) == expected[name], f"{name} mounts {sorted(mounts)}"
        for file, m in mounts.items():
            assert file in made, f"{name}: ./certs/{file} is not a file the generator writes"
            assert "/" not in file, f"{name}: mounts a folder of certificates ({file}), not single files"
            assert m["type"] == "bind" and m["read_only"], f"{name}: ./certs/{file} is not a read-only bind"
            assert m["target"] == f"/certs/{file}", f"{name}: ./certs/{file} mounted at {m['target']}"
        # every certificate file it names is mounted; the register script reads the .pub files by glob
        assert named_cert_files(svc) <= set(mounts), f"{name} names files it does not mount"
        unused = set(mounts) - named_cert_files(svc) - (pubs if name == "register" else set())
        assert not unused, f"{name} mounts {sorted(unused)} and never names them"
        for m in svc.get("volumes", []):  # whatever else: the results folder only, and only where written
            if not m["source"].startswith("./certs"):
                assert (m["source"], m["target"]) == ("./results", "/app/results") and name == "serverapp", (name, m)
    everything = [m["source"] for svc in svcs.values() for m in svc.get("volumes", [])]
    assert not any("ca.key" in src or src.rstrip("/") in ("./certs", "certs") for src in everything)
    private = {"server.key", *nodes}  # each private key in exactly one container, its owner's
    owners = {f: [n for n, svc in svcs.items() if f in cert_mounts(svc)] for f in private}
    if tls:
        assert owners == {"server.key": ["superlink"], **{n: [n] for n in nodes}}
        # each SuperExec secret is shared by exactly one pair: a Runtime API and its SuperExec
        shares = {f: sorted(n for n, svc in svcs.items() if f in cert_mounts(svc))
                  for f in ["superexec-superlink.secret", *(f"superexec-{n}.secret" for n in nodes)]}
        assert shares == {"superexec-superlink.secret": ["serverapp", "superlink"],
                          **{f"superexec-{n}.secret": sorted([n, n.replace("supernode", "clientapp")])
                             for n in nodes}}
        for name, svc in svcs.items():  # and the flag that names it is given on both sides
            if any(f.startswith("superexec-") for f in cert_mounts(svc)):
                assert "--superexec-auth-secret-file" in svc["command"], name


def published(svc: dict, env: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port, with ${VAR:-default}
    filled in from `env` as compose does."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "")), str(p.get("published", "")), str(p["target"])))
            continue
        parts = _interp(p, env).split(":")
        out.append(tuple([""] * (3 - len(parts)) + parts))
    return out


@pytest.mark.parametrize("tls", [False, True], ids=["compose.yaml", "compose.yaml+compose.tls.yaml"])
def test_ports_are_published_on_loopback_unless_fedmtl_bind_says_otherwise(tls):
    svcs = merged() if tls else services_of()
    ports = {name: published(svc, {}) for name, svc in svcs.items() if svc.get("ports")}
    assert ports == {"superlink": [("127.0.0.1", "8000", "8000")]}  # nothing else is reachable from the host
    assert published(svcs["superlink"], {"FEDMTL_BIND": "0.0.0.0"}) == [("0.0.0.0", "8000", "8000")]
    assert published(svcs["superlink"], {"FEDMTL_BIND": "10.0.0.1"}) == [("10.0.0.1", "8000", "8000")]
    for name, svc in svcs.items():  # no raw host networking that would bypass the bind
        assert svc.get("network_mode") != "host", name


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
