"""TLS for HTTP and gRPC, with a self-signed certificate made in the test."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from foretell.cli import app
from tests.conftest import Server


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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


def test_https_and_grpc_over_tls(examples_root: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    running = Server(
        ["--repository", str(examples_root), "--tls-cert", str(cert), "--tls-key", str(key)],
        cwd=tmp_path,
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        answer = httpx.post(
            f"{running.url}/v1/models/sentiment:predict",
            json={"instances": [{"text": "lovely"}]},
            verify=context,
        )
        assert answer.status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not spoken on a TLS port
            httpx.get(f"http://127.0.0.1:{running.port}/v2/health/live", timeout=5)
        client = grpcclient.InferenceServerClient(
            f"localhost:{running.grpc_port}", ssl=True, root_certificates=str(cert)
        )
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"lovely"], dtype=object))
        assert client.infer("sentiment", [text]).as_numpy("label").shape == (1,)
        client.close()
    finally:
        running.stop()


def test_tls_needs_both_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--tls-cert", str(tmp_path / "c.pem")])
    assert result.exit_code == 2 and "needs both --tls-cert and --tls-key" in result.output
