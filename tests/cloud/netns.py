"""Two "machines" on one box: network namespaces joined by a veth pair (as root, iproute2).

``TwoHosts`` creates a cloud namespace and a gateway namespace, each with its own loopback, and a
veth link between them with addresses from 10.213.<n>.0/30 (our own namespaces only: no traffic
leaves this box). Everything is deleted again on close (deleting a namespace deletes its veth end).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class TwoHosts:
    cloud_ns: str
    gw_ns: str
    cloud_ip: str
    gw_ip: str
    _made: list[str] = field(default_factory=list)

    @classmethod
    def create(cls) -> TwoHosts:
        n = os.getpid() % 250 + 1
        tag = f"{os.getpid()}"
        hosts = cls(f"egw-cloud-{tag}", f"egw-gw-{tag}", f"10.213.{n}.1", f"10.213.{n}.2")
        try:
            for ns in (hosts.cloud_ns, hosts.gw_ns):
                _ip("netns", "add", ns)
                hosts._made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            a, b = f"egwc{tag}"[:15], f"egwg{tag}"[:15]
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", a, "netns", hosts.cloud_ns)
            _ip("link", "set", b, "netns", hosts.gw_ns)
            _ip("-n", hosts.cloud_ns, "addr", "add", f"{hosts.cloud_ip}/30", "dev", a)
            _ip("-n", hosts.gw_ns, "addr", "add", f"{hosts.gw_ip}/30", "dev", b)
            _ip("-n", hosts.cloud_ns, "link", "set", a, "up")
            _ip("-n", hosts.gw_ns, "link", "set", b, "up")
        except BaseException:
            hosts.close()
            raise
        return hosts

    def cmd(self, ns: str, *argv: str) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self._made.clear()
