"""Test certificates and SuperNode keys for a TLS deployment (not for production).

    python -m fedmtl.deploy.certs OUT_DIR [--san HOST_OR_IP ...] [--supernodes N]

writes into OUT_DIR:

    ca.crt, ca.key            a self-signed certificate authority (10 years)
    server.pem, server.key    the SuperLink's certificate, signed by the CA, valid for
                              localhost, 127.0.0.1, ::1 and every --san given (the
                              names and addresses SuperNodes and `flwr` will dial)
    supernode-K, supernode-K.pub
                              an EC P-384 key pair per SuperNode in OpenSSH format
                              (`flower-supernode --auth-supernode-private-key`,
                              `flwr supernode register supernode-K.pub`)
    superexec-NAME.secret     with --superexec-secret NAME (repeat): 32 random bytes (hex)
                              from the OS CSPRNG that a SuperLink or SuperNode and its
                              flower-superexec share (--superexec-auth-secret-file)

Private keys are created with mode 0600 (never readable by others, not even while written). A real deployment uses certificates from
its own CA; this only makes a trial of Flower's TLS and SuperNode authentication
possible on any machine (it needs the `cryptography` package Flower depends on).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write `data` to a new temporary file beside `path`, then rename it over `path`.
    A private file is created with mode 0600 by the open call itself (O_CREAT|O_EXCL),
    so no moment exists at which its bytes are readable by others (the umask can only
    narrow it further); it is never written wider and narrowed afterwards. O_EXCL and
    O_NOFOLLOW refuse a file or link planted at the temporary name."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of an interrupted run
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmtl test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(entries) -> x509.SubjectAlternativeName:
    names = []
    for e in dict.fromkeys(entries):  # keep order, drop repeats
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(e)))
        except ValueError:
            names.append(x509.DNSName(e))
    return x509.SubjectAlternativeName(names)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def generate(out_dir: str | Path, sans=(), supernodes: int = 2, days: int = 3650,
             superexec_secrets=()) -> dict[str, Path]:
    """Write the CA, the SuperLink's certificate, `supernodes` key pairs and one SuperExec
    secret per name in `superexec_secrets`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (x509.CertificateBuilder().subject_name(_name("fedmtl test CA")).issuer_name(_name("fedmtl test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    srv_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    srv_cert = (x509.CertificateBuilder().subject_name(_name("superlink")).issuer_name(ca_cert.subject)
                .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(_san([*DEFAULT_SANS, *sans]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))

    paths = {"ca_cert": out / "ca.crt", "ca_key": out / "ca.key", "server_cert": out / "server.pem",
             "server_key": out / "server.key"}
    _write(paths["ca_cert"], ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths["ca_key"], _pem_key(ca_key), private=True)
    _write(paths["server_cert"], srv_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths["server_key"], _pem_key(srv_key), private=True)

    for k in range(supernodes):
        key = ec.generate_private_key(ec.SECP384R1())
        priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        paths[f"supernode-{k}"] = out / f"supernode-{k}"
        paths[f"supernode-{k}.pub"] = out / f"supernode-{k}.pub"
        _write(paths[f"supernode-{k}"], priv, private=True)
        _write(paths[f"supernode-{k}.pub"], pub + f" supernode-{k}\n".encode())
    for name in superexec_secrets:
        paths[f"superexec-{name}.secret"] = out / f"superexec-{name}.secret"
        _write(paths[f"superexec-{name}.secret"], secrets.token_hex(32).encode(), private=True)
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m fedmtl.deploy.certs", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--san", action="append", default=[],
                   help="another DNS name or IP address the SuperLink is reached at (repeat)")
    p.add_argument("--supernodes", type=int, default=2, help="how many SuperNode key pairs (default 2)")
    p.add_argument("--days", type=int, default=3650)
    p.add_argument("--superexec-secret", action="append", default=[], metavar="NAME",
                   help="write superexec-NAME.secret, a SuperExec shared secret (repeat)")
    a = p.parse_args(argv)
    paths = generate(a.out_dir, a.san, a.supernodes, a.days, a.superexec_secret)
    for name in sorted(paths):
        print(f"{name:16s} {paths[name]}")


if __name__ == "__main__":
    main()
