"""A whole Flower deployment on this machine: one `flower-superlink`, N
`flower-supernode` processes and `flwr run`, each a separate process on 127.0.0.1.

    python -m fedmtl.deploy.local --nodes 2 [--tls] [--auth] -- num_rounds=2 num_clients=2

It does, with free ports and a private FLWR_HOME, what docs/deployment.md tells a
user to type on several machines, waits for the run to end, prints its run folder,
and stops every process it started (the tests use it the same way). It is a trial
and test harness: a real deployment starts the same commands by hand, by systemd
or with docker/compose.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ..errors import FedMTLError, print_error

ROOT = Path(__file__).resolve().parents[2]
APP_PARTS = ("pyproject.toml", "fedmtl", "conf")


class DeploymentError(FedMTLError):
    """The local deployment could not start or its run did not finish."""


# every Flower command this harness or Flower itself starts by name (the SuperLink and
# SuperNodes start flower-superexec, which starts flwr-serverapp / flwr-clientapp)
FLOWER_COMMANDS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr", "flwr-serverapp",
                   "flwr-clientapp")


def find_flower(names=FLOWER_COMMANDS, path: str | None = None) -> list[Path]:
    """The folders that hold Flower's commands: beside the running interpreter first
    (a virtual environment's bin/, found even when the environment is not activated),
    then on `path` (default: $PATH). A missing command is a DeploymentError in one line."""
    here = Path(sys.executable).parent  # not resolved: a venv's python links to the base one
    path = os.environ.get("PATH", os.defpath) if path is None else path
    found, missing = [], []
    for name in names:
        exe = here / name
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            hit = shutil.which(name, path=path)
            exe = Path(hit) if hit else None
        if exe is None:
            missing.append(name)
        elif exe.parent not in found:
            found.append(exe.parent)
    if missing:
        raise DeploymentError(f"Flower's {', '.join(missing)} not found beside {sys.executable} nor on PATH: "
                              f"install Flower 1.41 for this Python ({sys.executable} -m pip install "
                              f"'flwr==1.41.*') or run with the Python of the environment that has it")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def copy_app(dest: Path, src: Path = ROOT) -> Path:
    """The Flower app (pyproject.toml with [tool.flwr.app], fedmtl/, conf/) without caches."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in APP_PARTS:
        s, d = src / part, dest / part
        if s.is_dir():
            shutil.copytree(s, d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
        else:
            shutil.copy2(s, d)
    return dest


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for these values


class LocalDeployment:
    """SuperLink + SuperNodes + `flwr run` as child processes; use as a context manager."""

    def __init__(self, workdir: str | Path, num_nodes: int = 2, *, tls: bool = False, auth: bool = False,
                 node_config: list[str] | None = None, node_args: list[str] | None = None,
                 host: str = "127.0.0.1", env: dict | None = None):
        if auth and not tls:
            raise DeploymentError("SuperNode authentication needs TLS (Flower refuses --enable-supernode-auth "
                                  "with --insecure): use --tls --auth")
        self.work = Path(workdir).resolve()
        self.num_nodes, self.tls, self.auth, self.host = num_nodes, tls, auth, host
        self.node_config = node_config or [f"partition-id={k} num-partitions={num_nodes}" for k in range(num_nodes)]
        self.node_args = list(node_args or [])  # more flower-supernode flags, for every node
        self.home = self.work / "flwr-home"
        self.app = self.work / "app"
        self.logs = self.work / "logs"
        self.certs = self.work / "certs"
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port(host)
        self.env = dict(os.environ, FLWR_HOME=str(self.home), **(env or {}))
        # Flower's commands by name, for this process and for the ones Flower starts itself
        bins = [str(d) for d in find_flower(path=self.env.get("PATH", os.defpath))]
        self.env["PATH"] = os.pathsep.join([*bins, self.env.get("PATH", os.defpath)])
        # subprocesses import this fedmtl (the FAB's copy is the same code)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH", "")) if p)
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    # ---- processes -------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], cwd: Path | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=cwd or self.work, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """One `flwr` CLI command against this deployment's SuperLink."""
        return subprocess.run(["flwr", *args], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def superlink_cmd(self) -> list[str]:
        cmd = ["flower-superlink", "--host", self.host, "--port", str(self.port),
               "--disable-runtime-dependency-installation"]
        if self.tls:
            cmd += ["--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile", str(self.certs / "server.pem"),
                    "--ssl-keyfile", str(self.certs / "server.key")]
        else:
            cmd += ["--insecure"]
        if self.auth:
            cmd += ["--enable-supernode-auth"]
        return cmd

    def supernode_cmd(self, k: int) -> list[str]:
        cmd = ["flower-supernode", "--superlink", f"{self.host}:{self.port}", "--port", str(free_port(self.host)),
               "--node-config", self.node_config[k], "--max-wait-time", "60"]
        cmd += ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        if self.auth:
            cmd += ["--auth-supernode-private-key", str(self.certs / f"supernode-{k}")]
        return cmd + self.node_args

    def start(self, timeout: float = 90) -> "LocalDeployment":
        self.work.mkdir(parents=True, exist_ok=True)
        copy_app(self.app)
        # the app must not name a federation: `flwr run` would rewrite it into FLWR_HOME
        self.home.mkdir(parents=True, exist_ok=True)
        if self.tls:
            from .certs import generate
            generate(self.certs, supernodes=self.num_nodes)
        conn = [f"address = {_toml_str(f'{self.host}:{self.port}')}"]
        conn += [f"root-certificates = {_toml_str(str(self.certs / 'ca.crt'))}"] if self.tls else ["insecure = true"]
        (self.home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                               + "\n".join(conn) + "\n")
        self._spawn("superlink", self.superlink_cmd())
        self._wait_port(timeout)
        if self.auth:
            for k in range(self.num_nodes):
                r = self.flwr("supernode", "register", str(self.certs / f"supernode-{k}.pub"), "local")
                if r.returncode != 0:
                    raise DeploymentError(f"flwr supernode register supernode-{k}.pub failed: "
                                          f"{(r.stdout + r.stderr).strip()[-400:]}")
        for k in range(self.num_nodes):
            self._spawn(f"supernode-{k}", self.supernode_cmd(k))
        self.wait_nodes(self.num_nodes, timeout)
        return self

    def _wait_port(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise DeploymentError(f"flower-superlink exited with {self.procs['superlink'].returncode}: "
                                      f"{self.log('superlink')[-600:]}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.3)
        raise DeploymentError(f"flower-superlink did not listen on {self.host}:{self.port} within {timeout:g}s")

    def connected_nodes(self) -> int:
        """SuperNodes the SuperLink has activated (from its log: no Control API call needed)."""
        return self.log("superlink").count("[Fleet.ActivateNode] Activated")

    def wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while self.connected_nodes() < n:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise DeploymentError(f"{name} exited with {p.returncode}: {self.log(name)[-600:]}")
            if time.time() > deadline:
                raise DeploymentError(f"only {self.connected_nodes()} of {n} SuperNodes connected within {timeout:g}s")
            time.sleep(0.3)

    # ---- runs --------------------------------------------------------------------------
    def submit(self, overrides: list[str] | str = "", output_dir: str | Path = "") -> int:
        """`flwr run` the app with these Hydra overrides; returns the run id."""
        ov = overrides if isinstance(overrides, str) else " ".join(shlex.quote(o) for o in overrides)
        rc = f"overrides={_toml_str(ov)} output-dir={_toml_str(str(output_dir))}"
        r = self.flwr("run", str(self.app), "local", "--run-config", rc, "--format", "json")
        try:
            return int(json.loads(r.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise DeploymentError(f"flwr run failed (exit {r.returncode}): {(r.stdout + r.stderr).strip()[-600:]}")

    def status(self, run_id: int) -> str:
        r = self.flwr("ls", "local", "--run-id", str(run_id), "--format", "json", timeout=60)
        try:
            return str(json.loads(r.stdout)["runs"][0]["status"])
        except (ValueError, KeyError, IndexError, TypeError):
            return f"unknown ({(r.stdout + r.stderr).strip()[-200:]})"

    def wait_run(self, run_id: int, timeout: float, out_dir: str | Path | None = None, poll: float = 3.0) -> str:
        """Wait until the run is finished; return its final status (e.g. finished:completed).
        With the run folder given, first wait (cheaply) for its summary.json, which the
        ServerApp writes last, then ask the SuperLink (`flwr ls`) for the status."""
        deadline = time.time() + timeout
        if out_dir is not None:
            summary = Path(out_dir) / "summary.json"
            while not summary.exists() and time.time() < deadline:
                if self.procs["superlink"].poll() is not None:
                    raise DeploymentError(f"flower-superlink exited: {self.log('superlink')[-600:]}")
                if self.status(run_id).startswith("finished"):
                    break
                time.sleep(poll * 3)
        while time.time() < deadline:
            st = self.status(run_id)
            if st.startswith("finished"):
                return st
            time.sleep(poll)
        raise DeploymentError(f"run {run_id} not finished within {timeout:g}s (status {self.status(run_id)})")

    def run_log(self, run_id: int) -> str:
        r = self.flwr("log", str(run_id), "local", "--show", timeout=60)
        return r.stdout + r.stderr

    # ---- teardown -----------------------------------------------------------------------
    def kill_node(self, k: int, sig: int = signal.SIGKILL) -> None:
        """Kill SuperNode k and what it started (its SuperExec and ClientApp processes)."""
        self._kill_tree(self.procs[f"supernode-{k}"], sig)

    @staticmethod
    def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
        try:
            root = psutil.Process(proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _kill_tree(self, proc: subprocess.Popen, sig: int) -> None:
        for p in reversed(self._tree(proc)):
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def ours(self) -> list[psutil.Process]:
        """Every live process started under this deployment's FLWR_HOME (children included,
        also those Flower detached into their own session)."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get("FLWR_HOME") == str(self.home):
                    if p.status() != psutil.STATUS_ZOMBIE:
                        found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def stop(self, grace: float = 10) -> None:
        """SIGTERM every process this deployment started, then SIGKILL what is left."""
        trees = [p for proc in self.procs.values() for p in self._tree(proc)] + self.ours()
        for p in trees:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(trees, timeout=grace)
        for p in alive + self.ours():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "LocalDeployment":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m fedmtl.deploy.local", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2, help="SuperNodes to start (default 2); num_clients is set to it")
    p.add_argument("--workdir", default=None, help="folder for the app copy, FLWR_HOME, logs (default: a temp dir)")
    p.add_argument("--output-dir", default=None, help="the run folder (default: WORKDIR/run)")
    p.add_argument("--tls", action="store_true", help="TLS with test certificates (fedmtl.deploy.certs)")
    p.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run (default 1800)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m fedmtl.simulate")
    a = p.parse_args(argv)
    import tempfile
    work = Path(a.workdir or tempfile.mkdtemp(prefix="fedmtl-deploy-"))
    out = Path(a.output_dir or work / "run").resolve()
    overrides = [f"num_clients={a.nodes}", *a.overrides]
    try:
        with LocalDeployment(work, a.nodes, tls=a.tls, auth=a.auth) as dep:
            print(f"SuperLink on {dep.host}:{dep.port}, {a.nodes} SuperNodes ({'TLS' if a.tls else 'insecure'}"
                  f"{', authenticated' if a.auth else ''}); logs in {dep.logs}", flush=True)
            run_id = dep.submit(overrides, out)
            status = dep.wait_run(run_id, a.timeout, out)
            (dep.logs / f"run-{run_id}.log").write_text(dep.run_log(run_id))
            print(f"run {run_id}: {status} -> {out}")
            if status != "finished:completed":
                summary = out / "summary.json"
                why = json.loads(summary.read_text()).get("stopped", "") if summary.exists() else ""
                raise DeploymentError(f"run {run_id} ended {status}{': ' + why if why else ''} "
                                      f"(log: {dep.logs / f'run-{run_id}.log'})")
    except FedMTLError as e:
        sys.exit(print_error(e))


if __name__ == "__main__":
    main()
