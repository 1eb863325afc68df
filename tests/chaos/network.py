"""Hosts for the multi-host suite: network namespaces on one bridge, and a userspace TCP proxy.

Each host is a network namespace with one veth link to a bridge inside a "switch" namespace; the
test's own namespace joins the bridge through one more veth pair (address .1 of a private /24), so
the test reaches every host and every host reaches the test's proxies and receivers. Nothing else is
routed: traffic stays between these namespaces (and loopback).

Faults a network makes:
- a partition: a host's link taken down at the switch (its peers see silence, TCP retransmits) and
  brought up again;
- latency and loss, and a connection cut, on traffic that goes through a `Proxy` (the machine has no
  `tc netem` and no iptables). TCP hides a lost segment from the application except as a
  retransmission delay, so "loss" is a chunk held back for a retransmission timeout.
"""
from __future__ import annotations

import glob
import ipaddress
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

SWITCH = "sw"
NS_PREFIX = "cpn"  # cpn<test pid>-<host>: a run's namespaces; those of a dead run are removed at start
RETRANSMISSION_S = (0.2, 0.4)  # how long a "lost" chunk is held: Linux's minimum RTO is 200 ms


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def missing_capability() -> str | None:
    """One line naming what this machine lacks for the multi-host suite, or None."""
    if os.geteuid() != 0:
        return "the multi-host suite needs root (network namespaces)"
    for tool in ("ip", "setpriv", "redis-server"):
        if shutil.which(tool) is None:
            return f"the multi-host suite needs `{tool}` on PATH"
    if not postgres_bin():
        return "the multi-host suite needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)"
    probe = f"{NS_PREFIX}probe{os.getpid()}"
    try:
        for step, args in (("network namespaces", ("netns", "add", probe)),
                           ("veth pairs", ("-n", probe, "link", "add", "pa", "type", "veth", "peer", "name", "pb")),
                           ("bridges", ("-n", probe, "link", "add", "br0", "type", "bridge"))):
            result = ip(*args, check=False)
            if result.returncode != 0:
                return f"the multi-host suite needs {step}: `ip {' '.join(args)}`: {result.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def postgres_bin() -> str | None:
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "postgres"))]
    return max(found, key=lambda d: int(re.sub(r"\D", "", d.split("/")[-2]) or 0)) if found else None


def remove_stale_namespaces() -> None:
    """Namespaces left by a run killed before its clean-up: its process gone and nothing running inside."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        match = re.match(rf"({NS_PREFIX}(\d+)-\S+)", line)
        if match and not os.path.exists(f"/proc/{match.group(2)}") \
                and not ip("netns", "pids", match.group(1), check=False).stdout.strip():
            ip("netns", "del", match.group(1), check=False)


@dataclass
class Host:
    name: str
    namespace: str
    address: str

    def command(self, *cmd: str) -> list[str]:
        """`cmd` run inside this host's namespace (`ip netns exec` executes it in place: same pid)."""
        return ["ip", "netns", "exec", self.namespace, *cmd]


@dataclass
class Network:
    """A bridge in a switch namespace, the test's namespace on it as .1, one namespace per host."""

    run: str = field(default_factory=lambda: str(os.getpid()))
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: ipaddress.IPv4Network | None = None

    def namespace(self, name: str) -> str:
        return f"{NS_PREFIX}{self.run}-{name}"

    @property
    def test_address(self) -> str:
        return str(self.subnet[1])

    def up(self) -> "Network":
        remove_stale_namespaces()
        self.subnet = self._free_subnet()
        sw = self.namespace(SWITCH)
        ip("netns", "add", sw)
        ip("-n", sw, "link", "set", "dev", "lo", "up")
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "dev", "br0", "up")
        link = f"{NS_PREFIX}{self.run}t"  # the test's end, in the test's namespace (gone with the switch)
        ip("link", "add", "name", link, "type", "veth", "peer", "name", "test", "netns", sw)
        ip("-n", sw, "link", "set", "dev", "test", "master", "br0", "up")
        ip("addr", "add", f"{self.test_address}/{self.subnet.prefixlen}", "dev", link)
        ip("link", "set", "dev", link, "up")
        return self

    def _free_subnet(self) -> ipaddress.IPv4Network:
        taken = [ipaddress.ip_network(word, strict=False) for word in
                 re.findall(r"\d+\.\d+\.\d+\.\d+/\d+", ip("-4", "addr").stdout + ip("-4", "route").stdout)]
        rng = random.Random()
        for _ in range(100):
            candidate = ipaddress.ip_network(f"10.{rng.randrange(200, 250)}.{rng.randrange(256)}.0/24")
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        raise RuntimeError("no free private /24 for the test's hosts")

    def add_host(self, name: str) -> Host:
        ns, sw = self.namespace(name), self.namespace(SWITCH)
        address = str(self.subnet[len(self.hosts) + 2])
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "dev", "lo", "up")
        ip("-n", sw, "link", "add", "name", name, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", sw, "link", "set", "dev", name, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "dev", "eth0", "up")
        host = self.hosts[name] = Host(name, ns, address)
        return host

    def partition(self, name: str) -> None:
        """Pull the host's cable at the switch: its traffic goes nowhere, its sockets stay open."""
        ip("-n", self.namespace(SWITCH), "link", "set", "dev", name, "down")

    def heal(self, name: str) -> None:
        ip("-n", self.namespace(SWITCH), "link", "set", "dev", name, "up")

    def down(self) -> None:
        ip("link", "del", "dev", f"{NS_PREFIX}{self.run}t", check=False)  # its peer goes with it
        for name in [*self.hosts, SWITCH]:
            ip("netns", "del", self.namespace(name), check=False)


# --------------------------------------------------------------------------- the proxy


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a dropped connection looks to its peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self.closed = False
        self.lock = threading.Lock()

    def close(self, *, reset: bool = False) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in self.sockets:
            if reset:
                _reset(sock)
            else:
                sock.close()


class Proxy:
    """Relays TCP from `listen` (an address of the test's namespace) to `target`, with faults:
    `latency` seconds added to every chunk each way, `loss` the chance a chunk is held back for a
    retransmission timeout, `cut()` resets every connection and refuses new ones until `heal()`."""

    def __init__(self, name: str, listen: str, target: tuple[str, int]) -> None:
        self.name = name
        self.target = target
        self.latency = 0.0
        self.loss = 0.0
        self.refusing = False
        self.stats = {"connections": 0, "reset": 0, "held": 0}
        self._rng = random.Random(name)
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server((listen, 0))
        self.address = f"{listen}:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, name=f"proxy-{name}", daemon=True).start()

    def cut(self) -> int:
        """Reset every open connection and refuse new ones; answers how many were open."""
        with self._lock:
            self.refusing = True
            links, self._links = list(self._links), set()
        for link in links:
            link.close(reset=True)
        self.stats["reset"] += len(links)
        return len(links)

    def degrade(self, *, latency: float = 0.0, loss: float = 0.0) -> None:
        self.latency, self.loss = latency, loss

    def heal(self) -> None:
        self.refusing, self.latency, self.loss = False, 0.0, 0.0

    def close(self) -> None:
        self._server.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
            self.stats["connections"] += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not link.closed:
                if not select.select([src], [], [], 0.2)[0]:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                delay = self.latency
                if self.loss and self._rng.random() < self.loss:
                    delay += self._rng.uniform(*RETRANSMISSION_S)
                    self.stats["held"] += 1
                if delay:
                    time.sleep(delay)
                if link.closed:
                    return
                dst.sendall(data)
        except (OSError, ValueError):
            pass  # the other side went away, or a cut closed this socket under us
        with self._lock:
            self._links.discard(link)
        link.close()
