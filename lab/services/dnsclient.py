"""A host's DNS client sockets: one UDP socket per source address, kept open.

A stub resolver on a real host keeps its socket and matches answers to queries by id;
opening a new socket for every query (as a one-shot library call does) costs more than
the query itself when a mail server looks up every client's PTR and every next hop.
Messages are still built and read by dnspython; this only carries them. A truncated
answer is asked again over TCP, as any resolver does.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # dnspython is imported at the first query: a host starts without it
    import dns.message


class _Endpoint(asyncio.DatagramProtocol):
    """One connected UDP socket, with the queries that wait for an answer on it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[dns.message.Message, asyncio.Future[dns.message.Message]]]
        self.pending = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        import dns.exception
        import dns.message

        try:
            response = dns.message.from_wire(data, ignore_trailing=True)
        except dns.exception.DNSException:
            return  # not an answer we can read: the query times out, as with a real stub
        waiting = self.pending.get(response.id)
        if waiting is None:
            return
        query, future = waiting
        if query.is_response(response) and not future.done():
            del self.pending[response.id]
            future.set_result(response)

    def error_received(self, exc: Exception) -> None:
        # a connected UDP socket hears ICMP errors (port unreachable): every query fails
        for _, future in self.pending.values():
            if not future.done():
                future.set_exception(exc)
        self.pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error_received(exc or ConnectionAbortedError("DNS client socket closed"))
        self.transport = None


class DnsClient:
    def __init__(self) -> None:
        self._endpoints: dict[tuple[str | None, str, int], _Endpoint] = {}
        self._opening: dict[tuple[str | None, str, int], asyncio.Future[_Endpoint]] = {}

    async def _endpoint(self, source: str | None, server: str, port: int) -> _Endpoint:
        key = (source, server, port)
        endpoint = self._endpoints.get(key)
        if endpoint is not None and endpoint.transport is not None:
            return endpoint
        opening = self._opening.get(key)
        if opening is not None:  # another query is opening this socket right now
            return await asyncio.shield(opening)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Endpoint] = loop.create_future()
        self._opening[key] = future
        try:
            _, protocol = await loop.create_datagram_endpoint(
                _Endpoint,
                local_addr=(source, 0) if source else None,
                remote_addr=(server, port),
            )
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter may or may not be there to see it
            raise
        finally:
            del self._opening[key]
        self._endpoints[key] = protocol
        future.set_result(protocol)
        return protocol

    async def query(
        self,
        query: dns.message.Message,
        server: str,
        port: int = 53,
        *,
        source: str | None = None,
        timeout: float,
        tcp_port: int | None = None,
    ) -> dns.message.Message:
        """Send `query` to server:port from `source` and return the answer (TimeoutError
        when none comes, OSError when the server's host refuses). A truncated answer is
        asked again over TCP, to `tcp_port` if the server's TCP port differs."""
        endpoint = await self._endpoint(source, server, port)
        while query.id in endpoint.pending:
            query.id = secrets.randbelow(65536)
        future: asyncio.Future[dns.message.Message] = asyncio.get_running_loop().create_future()
        endpoint.pending[query.id] = (query, future)
        try:
            assert endpoint.transport is not None
            endpoint.transport.sendto(query.to_wire())
            response = await asyncio.wait_for(future, timeout)
        finally:
            if endpoint.pending.get(query.id, (None, None))[1] is future:
                del endpoint.pending[query.id]
        import dns.flags

        if response.flags & dns.flags.TC:
            import dns.asyncquery

            response = await dns.asyncquery.tcp(
                query, server, timeout=timeout, port=tcp_port or port, source=source
            )
        return response

    def close(self) -> None:
        for endpoint in self._endpoints.values():
            if endpoint.transport is not None:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    endpoint.transport.close()
        self._endpoints.clear()
