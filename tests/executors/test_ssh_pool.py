"""The SSH executor's connection pool, without a host: delayed-ACK avoidance and what a lost or timed-out command
means (the host may have acted on it: it is reported as such, and a timed-out command is never sent twice)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest

from patchflow.executors.ssh.executor import HostUnreachable, SshExecutor, _acknowledge_at_once, _Pool
from patchflow.executors.ssh.inventory import SshHost, SshInventory

HOST = SshHost(name="h-1", address="127.0.0.1", port=1)


@pytest.fixture
def tcp_pair() -> Iterator[socket.socket]:
    """The client end of a real loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        try:
            yield client
        finally:
            client.close()
            peer.close()


class FakeConn:
    """What the pool uses of an asyncssh connection: ``run`` (recorded), the socket, ``data_received``."""

    def __init__(self, sock: socket.socket | None = None, run: Any = None) -> None:
        self.sock = sock
        self.runs = 0
        self._run = run
        self.received: list[bytes] = []

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        self.received.append(data)

    async def run(self, command: str, input: str | None = None, check: bool = False) -> Any:  # noqa: A002
        self.runs += 1
        return await self._run()

    def is_closed(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_every_read_is_acknowledged_at_once(tcp_pair: socket.socket) -> None:
    # OpenSSH's sshd (Nagle on for sessions without a terminal) holds its next packet until the last one is
    # acknowledged; Linux delays that ACK up to 40 ms unless the socket is in quick-ack mode.
    conn = FakeConn(tcp_pair)
    _acknowledge_at_once(conn)  # type: ignore[arg-type]
    tcp_pair.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # the kernel's delayed-ACK mode
    assert tcp_pair.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 0
    conn.data_received(b"packet")
    assert conn.received == [b"packet"]  # the connection still gets its data
    assert tcp_pair.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1


def _pool_with(conn: FakeConn) -> _Pool:
    pool = _Pool(limit=2, connect_timeout=1)

    async def connection(host: SshHost) -> FakeConn:
        return conn

    pool._connection = connection  # type: ignore[assignment,method-assign]
    return pool


async def test_a_timed_out_command_is_not_sent_again_and_counts_as_sent() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    conn = FakeConn(run=hang)
    with pytest.raises(TimeoutError) as raised:
        await _pool_with(conn).run(HOST, "hook-command", None, timeout=0.2)
    assert conn.runs == 1  # a hook command must not run twice
    assert raised.value.patchflow_sent is True  # type: ignore[attr-defined]


async def test_a_lost_connection_is_retried_once_and_counts_as_sent() -> None:
    async def lost() -> None:
        raise asyncssh.ConnectionLost("reset by peer")

    conn = FakeConn(run=lost)
    with pytest.raises(asyncssh.ConnectionLost) as raised:
        await _pool_with(conn).run(HOST, "true", None, timeout=5)
    assert conn.runs == 2
    assert raised.value.patchflow_sent is True  # type: ignore[attr-defined]


async def test_a_start_lost_after_it_went_out_is_under_way_not_undeliverable() -> None:
    async def lost() -> None:
        raise asyncssh.ConnectionLost("reset by peer")

    executor = SshExecutor(SshInventory("inline", {HOST.name: HOST}))
    executor._pool = _pool_with(FakeConn(run=lost))
    assert await executor.start_install(HOST.name, [], operation_id="w/s/h-1/install/0") is None
    with pytest.raises(HostUnreachable) as raised:
        await executor.run(HOST.name, "true", timeout=5)
    assert raised.value.sent is True


async def test_a_host_never_reached_is_undeliverable() -> None:
    executor = SshExecutor(SshInventory("inline", {HOST.name: HOST}), connect_timeout_seconds=2)
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = SshHost(name="h-1", address="127.0.0.1", port=port)
    executor.inventory.hosts["h-1"] = host
    result = await executor.start_install("h-1", [], operation_id="w/s/h-1/install/0")
    assert result is not None and result.status == "undeliverable", result
    with pytest.raises(HostUnreachable) as raised:
        await executor.run("h-1", "true", timeout=5)
    assert raised.value.sent is False
