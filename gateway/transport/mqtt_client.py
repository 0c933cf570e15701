"""paho-mqtt ``Client`` with two fixes (TCP_NODELAY; a failed TLS handshake closes its socket)
and one distinction: a failed TCP connect raises ``TcpConnectError``.

paho-mqtt 2.2 leaves Nagle's algorithm on. A client that answers a message with two small
packets (the PUBACK, then its reply PUBLISH: a command result, an ack) then waits for the
peer's delayed ACK before the second one leaves: ~40 ms added to every request/reply round
trip (measured here: a cloud -> device -> cloud command went from p50 88 ms to 11 ms, a raw
QoS1 echo from 44 ms to 0.5 ms; bench/bench_commands.py).

paho-mqtt 2.2 wraps the TCP socket, then runs the handshake; when the handshake raises (the
broker refused our certificate, or was killed mid-handshake) the wrapped socket is dropped
unclosed, leaking a file descriptor (and a ResourceWarning) per failed attempt. A gateway that
retries for days against a broker that refuses it must not leak. Pinned to paho ~2.2, whose
private ``_ssl_wrap_socket`` this overrides with the same behaviour plus the close.

``TcpConnectError`` (an ``OSError``) says that nothing accepted the TCP connection (refused,
unreachable, timed out, name not resolved), as opposed to a connection that was accepted and
then failed (TLS, MQTT). The uplink probes the broker cheaply only in the first case
(``edgegw.uplink.reconnect``). paho-mqtt 2.2 opens the TCP connection in its private
``_create_socket_connection``, which this wraps.
"""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as mqtt


class TcpConnectError(OSError):
    """The TCP connection to the broker was not established: nothing accepted it."""


class Client(mqtt.Client):
    def _create_socket_connection(self) -> socket.socket:
        try:
            return super()._create_socket_connection()
        except OSError as exc:
            raise TcpConnectError(exc.errno, f"TCP connect to {self._host}:{self._port} failed: "
                                  f"{exc.strerror or exc}") from exc

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        tcp_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self._ssl_context
        if ctx is None:
            raise ValueError("TLS requested without an SSL context")
        ssl_sock = ctx.wrap_socket(tcp_sock, server_hostname=self._host,
                                   do_handshake_on_connect=False)
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
            if not ctx.check_hostname and not self._tls_insecure:
                raise ssl.SSLError("refusing a TLS context without hostname checking")
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock
