"""fedmtl.deploy.local finds Flower's commands beside the running interpreter when the
environment is not activated (PATH lacks its bin/), and says in one line what is missing
when they are nowhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedmtl.deploy import local
from fedmtl.deploy.local import FLOWER_COMMANDS, DeploymentError, LocalDeployment, find_flower

HERE = Path(sys.executable).parent
BARE_PATH = "/usr/bin:/bin"  # no virtual environment, no pyenv shims

needs_flower_beside_python = pytest.mark.skipif(
    not all((HERE / c).is_file() for c in FLOWER_COMMANDS),
    reason="Flower's commands are not installed beside this interpreter")


@pytest.fixture
def bare_path(monkeypatch):
    monkeypatch.setenv("PATH", BARE_PATH)
    if shutil.which("flower-superlink") is not None:
        pytest.skip(f"Flower is installed in {BARE_PATH}: no PATH here lacks it")


@needs_flower_beside_python
def test_commands_are_found_beside_the_interpreter_without_path(bare_path, tmp_path):
    assert find_flower() == [HERE]
    dep = LocalDeployment(tmp_path / "d", 2)
    assert dep.env["PATH"].split(os.pathsep)[0] == str(HERE)
    assert dep.env["PATH"].endswith(BARE_PATH)  # the user's PATH is kept after it
    for name in FLOWER_COMMANDS:  # what Popen(env=dep.env) and Flower's own Popen calls resolve
        assert shutil.which(name, path=dep.env["PATH"]) == str(HERE / name)


def test_commands_on_path_are_used_when_none_is_beside_the_interpreter(tmp_path, monkeypatch):
    py_dir, bin_dir = tmp_path / "py", tmp_path / "flower-bin"
    py_dir.mkdir(), bin_dir.mkdir()
    for name in FLOWER_COMMANDS:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(local.sys, "executable", str(py_dir / "python"))
    assert find_flower(path=f"{tmp_path / 'empty'}:{bin_dir}") == [bin_dir]


def test_a_missing_command_is_one_line_naming_it(tmp_path, monkeypatch):
    py_dir = tmp_path / "venv" / "bin"
    py_dir.mkdir(parents=True)
    for name in FLOWER_COMMANDS:
        if name != "flwr":
            (py_dir / name).write_text("#!/bin/sh\n")
            (py_dir / name).chmod(0o755)
    monkeypatch.setattr(local.sys, "executable", str(py_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DeploymentError) as e:
        LocalDeployment(tmp_path / "d", 2)
    msg = str(e.value)
    assert "\n" not in msg
    assert "flwr not found" in msg and "flower-superlink" not in msg
    assert f"{py_dir / 'python'} -m pip install 'flwr==1.41.*'" in msg


def test_the_command_line_exits_2_with_one_line(tmp_path):
    """A Python without Flower's commands beside it and a PATH without them: the
    harness's command line says what is missing in one line, no traceback."""
    fake_bin = tmp_path / "venv" / "bin"
    fake_bin.mkdir(parents=True)
    (fake_bin / "python").symlink_to(sys.executable)  # a venv's python: a link to the base one
    env = {**os.environ, "PATH": str(tmp_path / "empty"),
           "PYTHONPATH": os.pathsep.join([str(Path(local.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([str(fake_bin / "python"), "-m", "fedmtl.deploy.local", "--nodes", "2",
                        "--workdir", str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmtl: error: Flower's flower-superlink"), r.stderr
    assert "Traceback" not in r.stderr


@needs_flower_beside_python
def test_a_deployment_starts_with_the_environment_not_activated(bare_path, tmp_path):
    """The real processes: the SuperLink and SuperNodes start (each starts its own
    flower-superexec by name) and `flwr` answers, with PATH lacking Flower's bin/."""
    dep = LocalDeployment(tmp_path / "d", 2)
    try:
        dep.start(timeout=90)
        assert dep.connected_nodes() == 2
        r = dep.flwr("ls", "local", "--format", "json", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        superexecs = [p for p in dep.ours() if "flower-superexec" in " ".join(p.cmdline())]
        assert len(superexecs) == 3, [p.cmdline() for p in dep.ours()]  # the SuperLink's and one per SuperNode
    finally:
        dep.stop()
    assert not dep.ours()
