"""fedmtl.deploy.certs: private keys are created 0600 by the call that creates them
(never written readable by others and narrowed afterwards), public files stay readable,
and the files are what Flower's TLS and SuperNode authentication load."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedmtl.deploy import certs

PRIVATE = {"ca.key", "server.key", "supernode-0", "supernode-1", "superexec-superlink.secret"}
PUBLIC = {"ca.crt", "server.pem", "supernode-0.pub", "supernode-1.pub"}


@pytest.fixture
def permissive_umask():
    """umask 0: a file written with default permissions would come out 0666."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_private_keys_are_born_0600_and_never_narrowed(tmp_path, monkeypatch, permissive_umask):
    born = {}  # final file name -> mode of the file right after the open call created it
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *a, **kw):
        fd = real_open(path, flags, mode, *a, **kw)
        if flags & os.O_CREAT:
            name = Path(path).name.removeprefix(".").removesuffix(".tmp")
            born[name] = (stat.S_IMODE(os.fstat(fd).st_mode), bool(flags & os.O_EXCL))
        return fd

    def no_chmod(*a, **kw):
        raise AssertionError(f"chmod called {a}: a key must not be narrowed after it was written")

    monkeypatch.setattr(certs.os, "open", spy_open)
    monkeypatch.setattr(certs.os, "chmod", no_chmod)
    monkeypatch.setattr(certs.os, "fchmod", no_chmod, raising=False)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    paths = certs.generate(tmp_path / "c", supernodes=2, superexec_secrets=["superlink"])

    assert {p.name for p in paths.values()} == PRIVATE | PUBLIC
    assert set(born) == PRIVATE | PUBLIC  # every file went through the one creating call
    for name in PRIVATE:
        assert born[name] == (0o600, True), f"{name} created with mode {oct(born[name][0])}"
        assert stat.S_IMODE((tmp_path / "c" / name).stat().st_mode) == 0o600, name
    for name in PUBLIC:  # certificates and public keys must stay readable by the services
        assert stat.S_IMODE((tmp_path / "c" / name).stat().st_mode) == 0o644, name
    assert not list((tmp_path / "c").glob(".*.tmp"))
    secret = (tmp_path / "c" / "superexec-superlink.secret").read_bytes()
    assert len(secret) == 64 and secret != certs.generate(tmp_path / "d", superexec_secrets=["superlink"])[
        "superexec-superlink.secret"].read_bytes()  # fresh from the OS CSPRNG each time


def test_regenerating_replaces_a_world_readable_key_with_a_0600_one(tmp_path):
    out = tmp_path / "c"
    certs.generate(out, supernodes=1)
    (out / "server.key").chmod(0o644)  # as an older generator (or a careless copy) left it
    old = (out / "server.key").read_bytes()
    certs.generate(out, supernodes=1)
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
    assert (out / "server.key").read_bytes() != old


def test_a_file_planted_at_the_temporary_name_is_not_followed(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (out / ".ca.key.tmp").symlink_to(target)  # a link planted where the key is first written
    certs.generate(out, supernodes=1)
    assert target.read_bytes() == b""  # the key did not go through the link
    assert not (out / "ca.key").is_symlink()
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600


def test_the_files_load_as_flower_needs_them(tmp_path):
    p = certs.generate(tmp_path, sans=["superlink", "10.0.0.7"], supernodes=1)
    ca = x509.load_pem_x509_certificate(p["ca_cert"].read_bytes())
    srv = x509.load_pem_x509_certificate(p["server_cert"].read_bytes())
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "superlink"} <= set(san.get_values_for_type(x509.DNSName))
    key = serialization.load_ssh_private_key(p["supernode-0"].read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    pub = serialization.load_ssh_public_key(p["supernode-0.pub"].read_bytes())
    assert pub.public_numbers() == key.public_key().public_numbers()
