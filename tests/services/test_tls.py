"""The lab CA's certificates name their host as Subject CN as well as in subjectAltName
(fetchmail 6.4 refuses a certificate without a CN)."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from lab.services.tls import LabCA


def _cn(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def test_server_files_name_the_host_as_cn_and_in_the_san(tmp_path: Path) -> None:
    chain, ca = LabCA().write_server_files(tmp_path, "mail.uklinux.net", "isp", "10.20.0.25")
    cert = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    assert _cn(cert) == ["mail.uklinux.net"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.uklinux.net", "isp"]
    assert ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_server_context_certificate_has_the_cn(tmp_path: Path) -> None:
    lab_ca = LabCA(tmp_path)
    server = lab_ca.server_context("mail.freeserve.net")
    client = lab_ca.client_context()
    a, b = ssl.MemoryBIO(), ssl.MemoryBIO()
    c, d = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(a, b, server_side=True)
    k = client.wrap_bio(c, d, server_hostname="mail.freeserve.net")
    for _ in range(10):  # the handshake, moved by hand between the two ends
        for end in (k, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        a.write(d.read())
        c.write(b.read())
    cert = x509.load_der_x509_certificate(k.getpeercert(binary_form=True) or b"")
    assert _cn(cert) == ["mail.freeserve.net"]
