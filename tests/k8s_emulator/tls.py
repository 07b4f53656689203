"""A throw-away self-signed certificate for 127.0.0.1/localhost, so clients talk TLS and send their token.

kubectl (client-go) never sends credentials to a plain-HTTP server, so an emulator that
checks bearer tokens must speak TLS. The certificate is its own CA: kubeconfigs carry it
as `certificate-authority-data` and clients verify it for real.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.tls import certificate, new_key, write_pem


@dataclass(frozen=True)
class ServerCertificate:
    cert_file: Path
    key_file: Path

    @property
    def pem(self) -> bytes:
        return self.cert_file.read_bytes()


def self_signed(directory: Path, host: str = "127.0.0.1") -> ServerCertificate:
    key = new_key()
    cert = certificate("stokehold-k8s-emulator", key, ca=True, hosts=["localhost", "127.0.0.1", host], server_auth=True, days=2)
    files = write_pem(directory / "server", cert, key)
    return ServerCertificate(files.cert, files.key)
