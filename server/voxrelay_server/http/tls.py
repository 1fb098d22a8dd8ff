"""TLS for the HTTP listener, from the gRPC listener's settings: the same certificate
and key, and with `--tls-client-ca` the same demand for a client certificate it signed."""

from __future__ import annotations

import ssl

from voxrelay_server import security
from voxrelay_server.config import ServerSettings


def ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The server-side TLS context of the HTTP listener, or None when TLS is off.

    Raises what `security.tls_files` raises for settings that cannot work.
    """
    files = security.tls_files(settings)  # checks the files as the gRPC side does
    if files is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # as gRPC's own floor
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if files[2] is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
