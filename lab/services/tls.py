"""The lab's certificate authority: one CA per lab, a certificate per host name.

STARTTLS between lab hosts is real TLS, verified against this CA (trustme makes it).
Every certificate names its host in subjectAltName and, as its Subject CN, the first of
its names: fetchmail 6.4 refuses a certificate without a CN ("Server name not specified
in certificate!") before it reads the subjectAltName.
"""

from __future__ import annotations

import ssl
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trustme


class LabCA:
    def __init__(self, state_dir: Path | None = None, *, pem: tuple[bytes, bytes] | None = None):
        """A new CA, or with `pem` (certificate, key) the one `save_key` wrote, read
        when it is first used: a host that never speaks TLS never loads it."""
        self._pem = pem
        self._contexts: dict[str, ssl.SSLContext] = {}
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._ca.cert_pem.write_to_path(str(state_dir / "lab-ca.pem"))

    def save_key(self, directory: Path) -> None:
        """Write the CA certificate and its key, for the lab's hosts in containers."""
        directory.mkdir(parents=True, exist_ok=True)
        self._ca.cert_pem.write_to_path(str(directory / "lab-ca.pem"))
        self._ca.private_key_pem.write_to_path(str(directory / "lab-ca.key"))

    @classmethod
    def load(cls, directory: Path) -> LabCA:
        """The lab's CA from `save_key`: every host issues and trusts the same CA."""
        cert = (directory / "lab-ca.pem").read_bytes()
        key = (directory / "lab-ca.key").read_bytes()
        return cls(pem=(cert, key))

    @cached_property
    def _ca(self) -> trustme.CA:
        import trustme  # (with the cryptography package: tens of ms a host need not pay)

        if self._pem is None:
            return trustme.CA(organization_name="maillab")
        return trustme.CA.from_pem(*self._pem)

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem.bytes()

    def _issue(self, *identities: str) -> trustme.LeafCert:
        """A certificate for `identities`, the first of them its Subject CN too."""
        return self._ca.issue_cert(*identities, common_name=identities[0])

    def server_context(self, hostname: str) -> ssl.SSLContext:
        if hostname not in self._contexts:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._issue(hostname).configure_cert(ctx)
            self._contexts[hostname] = ctx
        return self._contexts[hostname]

    def write_server_files(self, directory: Path, *identities: str) -> tuple[Path, Path]:
        """A certificate for `identities` (host names, addresses), for a real server on
        the host: (key + certificate chain in one PEM file, the CA certificate)."""
        directory.mkdir(parents=True, exist_ok=True)
        chain = directory / "chain.pem"
        chain.touch(mode=0o600)
        self._issue(*identities).private_key_and_cert_chain_pem.write_to_path(str(chain))
        ca = directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(ca))
        return chain, ca

    @cache  # noqa: B019 - one client context per CA for the lab's lifetime
    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self._ca.configure_trust(ctx)
        return ctx
