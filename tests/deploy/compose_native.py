"""Run docker/compose.yaml's services as plain processes on 127.0.0.1 (no Docker).

Each service becomes its image's entrypoint (flower-superlink, flower-supernode,
flower-superexec, or the service's own script) with the compose file's command,
in dependency order, with: service host names -> 127.0.0.1, each service's port ->
a free port, /app -> a copy of the app, /app/results -> a local folder, and one
FLWR_HOME per service (as each container has its own). /certs is per service, as in
the containers: a folder holding copies of exactly the files the service's `volumes`
bind from ./certs (made by docker/certs/generate.sh's generator), so a flag naming a
file the service does not mount fails here as it would in Docker. So the exact flags,
mounts, scripts and process isolation layout of the compose files are exercised,
without images or a network.

    python tests/deploy/compose_native.py [--tls] [WORKDIR]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
sys.path.insert(0, str(ROOT))

from fedmtl.deploy.local import LocalDeployment, copy_app, free_port  # noqa: E402

ENTRYPOINTS = {"superlink.Dockerfile": "flower-superlink", "supernode.Dockerfile": "flower-supernode",
               "superexec.Dockerfile": "flower-superexec"}
TINY = ("num_clients=3 num_rounds=2 min_train_clients=2 round_timeout=300 dataset.n_users=45 dataset.n_items=60 "
        "dataset.mean_interactions=12 local_epochs=1 model.dim=8")


def volume(vol) -> dict:
    """A compose volume entry in long form: {type, source, target, read_only}."""
    if isinstance(vol, dict):
        return {"type": vol.get("type", "volume"), "source": vol["source"], "target": vol["target"],
                "read_only": bool(vol.get("read_only", False))}
    src, target, *mode = vol.split(":")
    return {"type": "bind" if src.startswith((".", "/")) else "volume", "source": src, "target": target,
            "read_only": "ro" in mode}


def _depends(value) -> dict:
    return dict(value) if isinstance(value, dict) else {name: {"condition": "service_started"} for name in value}


def services(tls: bool) -> dict:
    """The services of compose.yaml, with compose.tls.yaml laid over it when `tls`, merged
    as `docker compose -f a -f b` merges them: `command` and `entrypoint` replaced,
    `environment` maps merged, `volumes` merged by target, `ports` appended,
    `depends_on` united. Volumes come out in long form (see `volume`)."""
    files = ["compose.yaml", "compose.tls.yaml"] if tls else ["compose.yaml"]
    out: dict[str, dict] = {}
    for f in files:
        for name, svc in yaml.safe_load((DOCKER / f).read_text())["services"].items():
            cur = out.setdefault(name, {})
            for k, v in svc.items():
                if k == "volumes":
                    vols = {m["target"]: m for m in cur.get("volumes", [])}
                    vols.update({m["target"]: m for m in map(volume, v)})
                    cur[k] = list(vols.values())
                elif k == "ports":
                    cur[k] = [*cur.get("ports", []), *v]
                elif k == "depends_on":
                    cur[k] = {**_depends(cur.get(k, [])), **_depends(v)}
                elif isinstance(v, dict) and isinstance(cur.get(k), dict):
                    cur[k] = {**cur[k], **v}
                else:
                    cur[k] = v
    return out


def _interp(value: str, env: dict) -> str:
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), str(value))


class NativeCompose(LocalDeployment):
    def __init__(self, workdir, tls: bool = False, overrides: str = TINY):
        svcs = services(tls)
        super().__init__(workdir, len([s for s in svcs if s.startswith("supernode-")]), tls=tls, auth=tls)
        self.svcs, self.overrides = svcs, overrides
        self.ports = {name: free_port() for name in svcs}
        self.results = self.work / "results"

    def _dockerfile(self, svc) -> str:
        if svc.get("build"):
            return Path(svc["build"]["dockerfile"]).name
        return next(Path(s["build"]["dockerfile"]).name for s in self.svcs.values()
                    if s.get("build") and s.get("image") == svc["image"])

    def mounts(self, name: str) -> list[tuple[str, str]]:
        """(source relative to docker/, target in the container) of each bind mount."""
        return [(v["source"], v["target"]) for v in self.svcs[name].get("volumes", [])]

    def cert_dir(self, name: str) -> Path:
        """This service's /certs: copies of exactly the certificate files it mounts."""
        d = self.work / "mounts" / name / "certs"
        if not d.exists():
            d.mkdir(parents=True)
            for src, target in self.mounts(name):
                if src.startswith("./certs/"):
                    assert target == "/certs/" + src.removeprefix("./certs/"), (name, src, target)
                    shutil.copy2(self.certs / src.removeprefix("./certs/"), d / Path(target).name)
        return d

    def _map(self, arg: str, name: str) -> str:
        arg = str(arg)
        for other in self.svcs:
            arg = re.sub(rf"^{re.escape(other)}:\d+$", f"127.0.0.1:{self.ports[other]}", arg)
        if arg == "0.0.0.0":
            return "127.0.0.1"
        arg = arg.replace("/app/results", str(self.results))
        if "/certs" in arg:
            arg = arg.replace("/certs", str(self.cert_dir(name)))
        return arg.replace("/app/docker/", str(DOCKER) + "/").replace("/app", str(self.app))

    def command(self, name: str) -> list[str]:
        svc = self.svcs[name]
        head = ([self._map(a, name) for a in svc["entrypoint"]] if "entrypoint" in svc
                else [ENTRYPOINTS[self._dockerfile(svc)]])
        args = [self._map(a, name) for a in svc.get("command", [])]
        if "--port" in args:  # this service's own port
            args[args.index("--port") + 1] = str(self.ports[name])
        return head + args

    def environment(self, name: str) -> dict:
        env = {k: self._map(_interp(v, {"OVERRIDES": self.overrides, **os.environ}), name)
               for k, v in (self.svcs[name].get("environment") or {}).items()}
        env["FLWR_HOME"] = str(self.work / f"home-{name}")
        env["APP_DIR"] = str(self.app)
        return env

    def start_service(self, name: str):
        saved = self.env
        self.env = {**saved, **self.environment(name)}
        try:
            return self._spawn(name, self.command(name))
        finally:
            self.env = saved

    def start(self, timeout: float = 120):
        self.work.mkdir(parents=True, exist_ok=True)
        copy_app(self.app)
        if self.tls:
            from fedmtl.deploy.certs import generate
            generate(self.certs, sans=["superlink"], supernodes=self.num_nodes,
                     superexec_secrets=["superlink", *(f"supernode-{k}" for k in range(self.num_nodes))])
        self.port = self.ports["superlink"]
        self.home = self.work / "home-superlink"  # `ours()` finds processes by FLWR_HOME: see stop()
        self.start_service("superlink")
        self._wait_port(timeout)
        if "register" in self.svcs:
            reg = self.start_service("register")
            if reg.wait(timeout=timeout) != 0:
                raise RuntimeError(f"register failed: {self.log('register')[-800:]}")
            del self.procs["register"]  # a one-shot service, done
        for name in sorted(self.svcs):
            if name.startswith("supernode-"):
                self.start_service(name)
        self.wait_nodes(self.num_nodes, timeout)
        for name in sorted(self.svcs):
            if name == "serverapp" or name.startswith("clientapp-"):
                self.start_service(name)
        return self

    def experiment(self, timeout: float = 600) -> int:
        proc = self.start_service("experiment")
        return proc.wait(timeout=timeout)

    def ours(self):
        import psutil
        homes = {str(self.work / f"home-{n}") for n in self.svcs}
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("FLWR_HOME") in homes and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found


def main() -> None:
    tls = "--tls" in sys.argv
    rest = [a for a in sys.argv[1:] if a != "--tls"]
    work = Path(rest[0] if rest else f"/tmp/fedmtl-compose-native{'-tls' if tls else ''}")
    shutil.rmtree(work, ignore_errors=True)
    dep = NativeCompose(work, tls=tls)
    t0 = time.time()
    try:
        dep.start()
        rc = dep.experiment()
        print(dep.log("experiment")[-2500:])
        print(f"experiment exit {rc} after {time.time() - t0:.0f}s; results in {dep.results}")
    finally:
        dep.stop()
        print("left running:", [p.pid for p in dep.ours()])


if __name__ == "__main__":
    main()
