"""The local node's kubelet endpoint: ``containerLogs`` over HTTPS, so that ``kubectl logs`` works.

Started by :class:`analysis_devcluster.node.LocalNode` before it registers, on
127.0.0.1 and a free port that the Node advertises in
``status.daemonEndpoints.kubeletEndpoint.Port``. The apiserver serves
``pods/log`` by calling
``https://<node address>:<port>/containerLogs/<namespace>/<pod>/<container>?<options>``
with its ``--kubelet-client-certificate``; it picks the address by
``--kubelet-preferred-address-types`` (the dev cluster says ``InternalIP``,
127.0.0.1: the Node's Hostname address does not resolve) and checks the
serving certificate against ``--kubelet-certificate-authority`` when given.
Unlike ``nodes/proxy``, which refuses loopback addresses, ``pods/log`` dials
whatever address the Node reports.

Answers follow the kubelet's server: 401 for a client without a
certificate (one signed by another CA fails the TLS handshake), 404
``pod "P" does not exist`` and ``container "C" not found in pod "P"``, 400 and
422 for options it cannot decode or that are invalid, 400 with the kubelet's
message when the container has no log to give (waiting to start, no
previous run), else ``text/plain`` chunks, flushed as they come when
following. What is read is :mod:`analysis_devcluster.podlogs`'s business.

It deliberately serves nothing else of the kubelet API (no exec, attach,
port-forward, stats or ``/pods``) and authorizes nothing beyond the
certificate: a real kubelet asks the apiserver (a SubjectAccessReview) whether
the client may use ``nodes/proxy``; here any client the cluster's CA vouches
for may read logs, and only from loopback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from analysis_devcluster import podlogs, podrun

log = logging.getLogger("analysis_devcluster.node")

# Finds the runtime of the pod so named on this node, if it has one.
PodLookup = Callable[[str, str], "podrun.PodRuntime | None"]


def tls_context(cert: Path, key: Path, client_ca_pem: bytes | None) -> ssl.SSLContext:
    """Serve with ``cert``; verify a client certificate against ``client_ca_pem`` if one is shown.

    Optional rather than required, so that a client without one gets the
    kubelet's 401 instead of a failed handshake. Without a CA, every request
    gets that 401.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca_pem is not None:
        context.load_verify_locations(cadata=client_ca_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain")


class KubeletServer:
    """The HTTPS server; :meth:`start` returns the port it listens on."""

    def __init__(self, lookup: PodLookup, ssl_context: ssl.SSLContext, port: int = 0) -> None:
        self._lookup = lookup
        self._ssl = ssl_context
        self._port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)
        # handler_cancellation: a follower whose client went away is cancelled instead of waiting forever.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        site = web.SockSite(self._runner, sock, ssl_context=self._ssl)
        await site.start()
        port: int = sock.getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is None or not transport.get_extra_info("peercert"):
            return _text(401, "Unauthorized")
        namespace, pod, name = (request.match_info[key] for key in ("namespace", "pod", "container"))
        try:
            options = podlogs.parse_options(request.query, time.time_ns())
        except podlogs.BadRequest as error:
            return _text(error.status, error.body)
        runtime = self._lookup(namespace, pod)
        if runtime is None:
            return _text(404, f'pod "{pod}" does not exist')
        if not runtime.has_container(name):
            return _text(404, f'container "{name}" not found in pod "{pod}"')
        try:
            path, container_id, live = runtime.log_source(name, previous=options.previous)
            chunks = podlogs.stream(path, container_id, options, live)
        except podlogs.LogError as error:
            return _text(400, str(error))
        # Headers go out at once, as the kubelet's do, even if a follower then waits for output.
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except (ConnectionError, asyncio.CancelledError):
            await chunks.aclose()
            raise
        await response.write_eof()
        return response
