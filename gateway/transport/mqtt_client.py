"""paho-mqtt ``Client`` with three additions: TCP_NODELAY, a failed TLS handshake closes its
socket, and TLS session resumption across connections (``TlsSessions``); and one distinction:
a failed TCP connect raises ``TcpConnectError``.

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

TLS session resumption (issue 15): a full mTLS handshake sends both certificate chains (~3 KB
on the wire with our P-256 certificates); a resumed one (TLS 1.3 PSK ticket, or a TLS 1.2
session id) only a few hundred bytes. paho has no hook for it, so ``_ssl_wrap_socket`` offers
the session kept in ``tls_sessions`` and ``_handle_connack`` stores the connection's session
once the CONNACK is in (with TLS 1.3 the ticket arrives AFTER the handshake, before the
server's first application data, so by then it has been read). Invariants:
- Python resumes a session only with the ``SSLContext`` that created it: ``TlsSessions`` owns
  the context, and a caller that must change it (new certificate files) makes a new
  ``TlsSessions`` (no session carries over).
- Resumption never weakens verification: the server accepts a ticket only from the context
  (listener config, CA, CRL) that issued it - it stores the client certificate verified in the
  full handshake, so the identity (certificate CN = MQTT username) is the same - and a
  rejected or expired ticket silently falls back to a full handshake. Mosquitto re-creates its
  TLS context on every reload (SIGHUP) and restart, so after a revocation (CRL + reload) every
  connection does a full handshake again (tests/uplink/test_tls_resumption.py).
- The session is touched only in paho's network thread (wrap and CONNACK handling).
"""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as mqtt


class TcpConnectError(OSError):
    """The TCP connection to the broker was not established: nothing accepted it."""


class TlsSessions:
    """One ``SSLContext`` and the last TLS session it established (to resume the next
    connection with), plus counts of full and resumed handshakes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.session: ssl.SSLSession | None = None
        self.full = 0
        self.resumed = 0


class Client(mqtt.Client):
    #: set (with ``tls_set_context(tls_sessions.context)``) to resume TLS sessions
    tls_sessions: TlsSessions | None = None

    def _create_socket_connection(self) -> socket.socket:
        try:
            return super()._create_socket_connection()
        except OSError as exc:
            raise TcpConnectError(exc.errno, f"TCP connect to {self._host}:{self._port} failed: "
                                  f"{exc.strerror or exc}") from exc

    def _handle_connack(self) -> mqtt.MQTTErrorCode:
        cache = self.tls_sessions
        sock = self._sock
        if cache is not None and isinstance(sock, ssl.SSLSocket):
            # the CONNACK came after the TLS 1.3 tickets: this session can be resumed
            cache.session = sock.session
        return super()._handle_connack()

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        tcp_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self._ssl_context
        if ctx is None:
            raise ValueError("TLS requested without an SSL context")
        cache = self.tls_sessions
        session = cache.session if cache is not None and cache.context is ctx else None
        ssl_sock = ctx.wrap_socket(tcp_sock, server_hostname=self._host,
                                   do_handshake_on_connect=False, session=session)
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
            if not ctx.check_hostname and not self._tls_insecure:
                raise ssl.SSLError("refusing a TLS context without hostname checking")
        except BaseException:
            ssl_sock.close()
            # the session stays: a path that died mid-handshake says nothing about it, and a
            # server that no longer knows it simply answers with a full handshake
            raise
        if cache is not None:
            if ssl_sock.session_reused:
                cache.resumed += 1
            else:
                cache.full += 1
        return ssl_sock
