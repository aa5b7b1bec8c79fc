"""HTTPS from Ray Serve's own proxy (``http_options.ssl_*``) and the self-signed cert script."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from redis_server import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "https_selfsigned.sh"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for localhost and 127.0.0.1, and its key."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, **usage), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts only ``cert``, with strict X.509 checks."""
    context = ssl.create_default_context(cafile=str(cert))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _get_when_up(url: str, verify: ssl.SSLContext, timeout_s: float = 60.0) -> httpx.Response:
    """GET ``url`` once the proxy accepts connections."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.get(url, verify=verify, timeout=10)
            if response.status_code != 404 or time.monotonic() > deadline:
                return response  # 404: the proxy is up but has no route yet
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@pytest.mark.slow
def test_serve_proxy_serves_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    """A client that trusts the cert gets the route; untrusting and plain-HTTP ones fail."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from fastapi import FastAPI
    from ray import serve

    cert, key = _self_signed(tmp_path)
    api = FastAPI()

    @api.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "tls"}

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Hello:
        pass

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(
            http_options={
                "host": "127.0.0.1",
                "port": port,
                "ssl_certfile": str(cert),
                "ssl_keyfile": str(key),
            }
        )
        serve.run(Hello.bind(), name="https-test", route_prefix="/", blocking=False)

        trusted = _trusting(cert)
        for host in ("127.0.0.1", "localhost"):  # the IP and the DNS subject names
            response = _get_when_up(f"https://{host}:{port}/hello", trusted)
            assert response.status_code == 200, response.text
            assert response.json() == {"hello": "tls"}
        assert response.http_version == "HTTP/1.1"

        # the system trust store does not know a self-signed certificate
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{port}/hello", timeout=10)
        # plain HTTP to the TLS port gets no HTTP response at all
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
            httpx.get(f"http://127.0.0.1:{port}/hello", timeout=10)
    finally:
        serve.shutdown()
        ray.shutdown()


def _handshake(cert: Path, key: Path, server_hostname: str) -> str:
    """Complete a TLS handshake against ``cert``/``key``, trusting only ``cert``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    errors: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept() -> None:
            conn, _ = listener.accept()
            try:
                server.wrap_socket(conn, server_side=True).close()
            except (OSError, ssl.SSLError) as exc:
                errors.append(exc)
                conn.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        with _trusting(cert).wrap_socket(raw, server_hostname=server_hostname) as tls:
            version = tls.version() or ""
        thread.join(timeout=10)
    assert not errors, errors
    return version


@pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("bash")), reason="needs openssl and bash"
)
def test_selfsigned_script_writes_a_usable_certificate_and_http_options(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    run = subprocess.run(
        ["bash", str(SCRIPT), str(folder), "ethostral.example", "10.1.2.3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    cert, key = folder / "cert.pem", folder / "key.pem"
    assert key.stat().st_mode & 0o077 == 0, "the private key must not be group/world readable"

    from ray.serve.schema import HTTPOptionsSchema

    options = HTTPOptionsSchema.model_validate(yaml.safe_load(run.stdout)["http_options"])
    assert (options.ssl_certfile, options.ssl_keyfile) == (str(cert), str(key))

    for name in ("ethostral.example", "10.1.2.3", "localhost", "127.0.0.1"):
        assert _handshake(cert, key, name).startswith("TLS"), name
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, key, "elsewhere.example")

    before = cert.read_bytes()
    again = subprocess.run(
        ["bash", str(SCRIPT), str(folder)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and "exists" in again.stderr
    assert cert.read_bytes() == before
