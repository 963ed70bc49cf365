"""A LAN on one machine: hosts as network namespaces joined by a Linux bridge (needs root).

    with Lab(3, origin=True) as lab:
        srv = lab.origin.python(["-m", "meshcache.lab.httporigin", "--port", "8080"])
        lab.cap_egress(lab.origin, 50e6)                  # a 50 Mbit/s uplink (tc tbf)
        out = lab[1].check_output(["ip", "-br", "addr"])
        p = lab[0].python("import meshcache; print('hi')", stdout=subprocess.PIPE)

Layout of a lab with prefix P (default `mc<pid hex>-<n>`, so the owner is visible in every name):
a bridge `Pbr` in the root namespace holding the gateway address (.254, so the root namespace can
reach every host), namespaces `P-h0..`, each with `lo` and `eth0` (the far end of a veth whose root
end `Pv<i>` sits on the bridge), addresses .1, .2, ... and the optional origin host `P-origin` at
.253 (root end `Pvo`). Every link has MTU 9000 by default; each namespace routes 224.0.0.0/4 out of
eth0 so multicast (mDNS) works; the bridge neither snoops IGMP nor passes frames to iptables.

Teardown: `close()` (also run at exit and by the context manager) kills every process started in
the namespaces and deletes the links and namespaces; it is idempotent. Each lab records its owner
(pid and start time) in a state file under /run/meshcache-lab, so `cleanup_stale()` can remove what
a crashed run left behind. Labs made with `persistent=True` (the `up` command) outlive their maker
and go only with `down`.

WAN emulation (the kernel here has no netem): `UdpDelayRelay` forwards datagrams both ways after a
one-way delay, optionally paced to a rate, in a thread or as `python -m meshcache.lab.netns relay`
inside a namespace (`Host.udp_relay`).

Command line: `python -m meshcache.lab.netns up N [--origin]` (prints JSON), `status`, `down [P..]`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import fnmatch
import heapq
import ipaddress
import itertools
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Lab", "LabBase", "Host", "LabError", "UdpDelayRelay", "requires_root", "cleanup_stale",
           "data_dir", "destroy", "list_labs", "take_down", "main"]

PACKAGE_PARENT = Path(__file__).resolve().parents[2]   # the directory holding `meshcache/`
IFNAMSIZ = 15                 # longest interface name Linux accepts
GATEWAY_OCTET = 254           # the bridge's address in each lab subnet
ORIGIN_OCTET = 253            # the origin host's address
MAX_HOSTS = 250
_COUNTER = itertools.count()


class LabError(RuntimeError):
    """A command that builds or drives the lab failed."""


# --------------------------------------------------------------------------- commands

def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command and return its stdout; raise LabError with its stderr when it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`."""
    return _run(["ip", *args], check=check)


def _netns_names() -> list[str]:
    """Names of all named network namespaces."""
    out = _ip("-j", "netns", "list", check=False).strip()
    return [e["name"] for e in json.loads(out)] if out else []


def _root_links() -> list[str]:
    """Names of all links in the root namespace."""
    out = _ip("-j", "link", "show", check=False).strip()
    return [e["ifname"] for e in json.loads(out)] if out else []


# --------------------------------------------------------------------------- state files

def _state_dir() -> Path:
    """Where labs record their owner: /run (gone with the namespaces at reboot) or /tmp."""
    for base in ("/run", "/tmp"):
        d = Path(base) / "meshcache-lab"
        try:
            d.mkdir(mode=0o755, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise LabError("no writable state directory under /run or /tmp")


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialise subnet and prefix allocation between processes."""
    with open(_state_dir() / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _start_time(pid: int) -> int | None:
    """A process's start time in clock ticks (tells a live owner from a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner_alive(state: dict[str, Any]) -> bool:
    """Whether the process that made a lab is still running (persistent labs count as alive)."""
    if state.get("persistent"):
        return True
    pid = state.get("pid")
    if not isinstance(pid, int):
        return False
    started = _start_time(pid)
    return started is not None and started == state.get("start_time", started)


def _read_states() -> dict[str, dict[str, Any]]:
    """All recorded labs by prefix."""
    states: dict[str, dict[str, Any]] = {}
    for path in _state_dir().glob("*.json"):
        try:
            state = json.loads(path.read_text())
            states[state["prefix"]] = state
        except (OSError, ValueError, KeyError):
            continue
    return states


def _state_path(prefix: str) -> Path:
    """The state file of one lab."""
    return _state_dir() / f"{prefix}.json"


# --------------------------------------------------------------------------- discovery and teardown

_DEFAULT_PREFIX = re.compile(r"^mc([0-9a-f]+)-([0-9a-z]+)$")


# Names a lab may use after its prefix: hosts h<i>, the origin, and for a lab of zones the
# hosts <zone letter><i> and routers r<zone letter> (namespaces); the bridge(s) and the root ends
# of veths (links).
_NS_SUFFIX = r"-(h\d+|origin|[a-z]\d+|r[a-z])"
_LINK_SUFFIX = r"(br[a-z]?|v\d+|vo|v[a-z]\d+|vr[a-z])"


def _ns_pattern(prefix: str) -> re.Pattern[str]:
    """Namespace names belonging to a lab prefix."""
    return re.compile(rf"^{re.escape(prefix)}{_NS_SUFFIX}$")


def _link_pattern(prefix: str) -> re.Pattern[str]:
    """Root-namespace link names belonging to a lab prefix."""
    return re.compile(rf"^{re.escape(prefix)}{_LINK_SUFFIX}$")


def _kill_namespace_pids(namespaces: Iterable[str]) -> None:
    """SIGKILL every process still inside these namespaces."""
    for ns in namespaces:
        for pid in _ip("netns", "pids", ns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


def destroy(prefix: str) -> None:
    """Remove everything of the lab with this prefix: processes, links, namespaces, state file."""
    namespaces = [n for n in _netns_names() if _ns_pattern(prefix).match(n)]
    _kill_namespace_pids(namespaces)
    links = [l for l in _root_links() if _link_pattern(prefix).match(l)]
    # Root veth ends first (deleting one end deletes its peer at once; namespace teardown is
    # asynchronous), then the bridge, then the namespaces.
    for link in sorted(links, key=lambda l: l[len(prefix):].startswith("br")):
        _ip("link", "del", link, check=False)
    for ns in namespaces:
        _ip("netns", "del", ns, check=False)
    shutil.rmtree(data_dir(prefix), ignore_errors=True)
    with contextlib.suppress(OSError):
        _state_path(prefix).unlink()


def data_dir(prefix: str) -> Path:
    """Where a lab's processes keep files (caches, logs, secrets); removed with the lab."""
    return Path(tempfile.gettempdir()) / "meshcache-lab" / prefix


def _present_prefixes() -> set[str]:
    """Prefixes of default-named labs that have a namespace or link on this machine."""
    found = set()
    for name in _netns_names():
        base = name.rsplit("-", 1)[0]
        if _DEFAULT_PREFIX.match(base):
            found.add(base)
    for name in _root_links():
        m = re.match(rf"^(mc[0-9a-f]+-[0-9a-z]+?){_LINK_SUFFIX}$", name)
        if m:
            found.add(m.group(1))
    return found


def cleanup_stale(prefix_pattern: str = "mc*") -> list[str]:
    """Destroy labs matching a glob whose creating process is dead; return their prefixes."""
    cleaned = []
    with _state_lock():
        states = _read_states()
        for prefix, state in states.items():
            if fnmatch.fnmatchcase(prefix, prefix_pattern) and not _owner_alive(state):
                destroy(prefix)
                cleaned.append(prefix)
        # Leftovers whose state file is gone: the default prefix names the owner's pid.
        for prefix in _present_prefixes() - set(states):
            m = _DEFAULT_PREFIX.match(prefix)
            if m and fnmatch.fnmatchcase(prefix, prefix_pattern) \
                    and _start_time(int(m.group(1), 16)) is None:
                destroy(prefix)
                cleaned.append(prefix)
    return sorted(cleaned)


def take_down(prefixes: Sequence[str] = ()) -> dict[str, list[str]]:
    """Destroy these labs (default: every persistent one, made by `up`) and any stale ones."""
    prefixes = list(prefixes) or [s["prefix"] for s in _read_states().values()
                                  if s.get("persistent")]
    for prefix in prefixes:
        destroy(prefix)
    return {"destroyed": sorted(prefixes), "stale": cleanup_stale()}


def list_labs() -> list[dict[str, Any]]:
    """Recorded labs with whether their owner lives and how many namespaces still exist."""
    names = _netns_names()
    labs = []
    for prefix, state in sorted(_read_states().items()):
        pattern = _ns_pattern(prefix)
        labs.append({**state, "alive": _owner_alive(state),
                     "namespaces": sum(1 for n in names if pattern.match(n))})
    return labs


# --------------------------------------------------------------------------- preflight

_ROOT_REASON: list[str | None] = []


def requires_root() -> str | None:
    """Why a lab cannot be built here (not root, no `ip`, no netns or bridge), or None if it can."""
    if _ROOT_REASON:
        return _ROOT_REASON[0]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "the network-namespace lab needs root"
    elif shutil.which("ip") is None:
        reason = "the network-namespace lab needs `ip` (iproute2)"
    elif shutil.which("tc") is None:
        reason = "the network-namespace lab needs `tc` (iproute2)"
    else:
        probe = f"mcprobe{os.getpid()}"[:IFNAMSIZ]
        try:
            _ip("netns", "add", probe)
            _ip("link", "add", probe, "type", "bridge")
        except (LabError, OSError) as e:
            reason = f"cannot create a network namespace and bridge: {e}"
        finally:
            _ip("link", "del", probe, check=False)
            _ip("netns", "del", probe, check=False)
    _ROOT_REASON.append(reason)
    return reason


# --------------------------------------------------------------------------- hosts

class Host:
    """One machine of the lab: a network namespace with `eth0` on the lab bridge."""

    ifname = "eth0"

    def __init__(self, lab: Lab, name: str, address: str, veth: str, index: int | None):
        self.lab = lab
        self.name = name              # the namespace name, for `ip netns exec`
        self.address = address        # IPv4 address on eth0
        self.veth = veth              # the root-namespace end of this host's veth (on the bridge)
        self.index = index            # position in lab.hosts, None for the origin

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs argv inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start argv inside the namespace; the lab kills it (and its group) at teardown."""
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.argv(argv), **popen_kwargs)
        self.lab._track(proc)
        return proc

    def check_output(self, argv: Sequence[str], *, timeout: float = 30,
                     input: str | None = None) -> str:
        """Run argv inside the namespace to completion and return its stdout (text)."""
        proc = subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout,
                              input=input)
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, list(argv), proc.stdout,
                                                proc.stderr)
        return proc.stdout

    @staticmethod
    def python_env(env: dict[str, str] | None = None) -> dict[str, str]:
        """This process's environment with unbuffered output; where meshcache is not installed
        (imported from a source tree, e.g. the current directory) its tree goes on PYTHONPATH so
        the namespaces' interpreters import the same code."""
        env = dict(os.environ if env is None else env)
        if not _installed():
            paths = [str(PACKAGE_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                             if p]
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def _python_argv(code_or_args: str | Sequence[str]) -> list[str]:
        """`python -c CODE` for a string, `python ARGS...` for a sequence."""
        if isinstance(code_or_args, str):
            return [sys.executable, "-c", code_or_args]
        return [sys.executable, *map(str, code_or_args)]

    def python(self, code_or_args: str | Sequence[str], *, env: dict[str, str] | None = None,
               **popen_kwargs: Any) -> subprocess.Popen:
        """Start this interpreter in the namespace on code (str) or arguments (e.g. ["-m", mod])."""
        return self.run(self._python_argv(code_or_args), env=self.python_env(env), **popen_kwargs)

    def python_output(self, code_or_args: str | Sequence[str], *, timeout: float = 30,
                      input: str | None = None) -> str:
        """Run this interpreter in the namespace to completion and return its stdout."""
        proc = subprocess.run(self.argv(self._python_argv(code_or_args)), capture_output=True,
                              text=True, timeout=timeout, input=input, env=self.python_env())
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout,
                                                proc.stderr)
        return proc.stdout

    def udp_relay(self, listen: tuple[str, int], target: tuple[str, int], delay_s: float, *,
                  rate_bytes_per_s: float | None = None, loss: float = 0.0,
                  timeout: float = 10) -> tuple[subprocess.Popen, tuple[str, int]]:
        """Run a UdpDelayRelay inside this host; return the process and its bound address."""
        args = ["-m", "meshcache.lab.netns", "relay", f"{listen[0]}:{listen[1]}",
                f"{target[0]}:{target[1]}", "--delay", repr(delay_s), "--loss", repr(loss)]
        if rate_bytes_per_s:
            args += ["--rate", repr(rate_bytes_per_s)]
        proc = self.python(args, stdout=subprocess.PIPE, text=True)
        line = _readline(proc, timeout)
        if not line.startswith("ready "):
            proc.kill()
            raise LabError(f"relay in {self.name} did not start: {line!r}")
        addr, port = line.split()[1].rsplit(":", 1)
        return proc, (addr, int(port))


def _installed() -> bool:
    """Whether this interpreter has meshcache installed (so its children import it unaided)."""
    from importlib import metadata

    try:
        metadata.distribution("meshcache")
    except metadata.PackageNotFoundError:
        return False
    return True


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout, or '' if it does not come within timeout."""
    assert proc.stdout is not None
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0].strip() if result else ""


# --------------------------------------------------------------------------- the lab

def _pick_subnet(states: dict[str, dict[str, Any]],
                 prefixlen: int = 24) -> ipaddress.IPv4Network:
    """The first 10.77.x.0/prefixlen (then a random private one) clashing with no route or lab."""
    used = [ipaddress.ip_network(s["subnet"]) for s in states.values() if "subnet" in s]
    for family_cmd in (("-j", "-4", "route", "show", "table", "all"), ("-j", "-4", "addr")):
        out = _ip(*family_cmd, check=False).strip()
        for entry in json.loads(out) if out else []:
            dst = entry.get("dst")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.ip_network(dst, strict=False))
            for a in entry.get("addr_info", []):
                used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    rng = random.Random()
    candidates = itertools.chain(
        ipaddress.ip_network("10.77.0.0/16").subnets(new_prefix=prefixlen),
        (ipaddress.ip_network(f"10.{rng.randrange(78, 255)}.{rng.randrange(256)}.0/{prefixlen}",
                              strict=False) for _ in range(1000)))
    for net in candidates:
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise LabError("no free private /24 for the lab")


def _default_prefix(states: dict[str, dict[str, Any]]) -> str:
    """`mc<pid hex>-<n>`: short, unique among labs, and names its owner."""
    present = set(states) | _present_prefixes()
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    while True:
        n, tag = next(_COUNTER), ""
        while True:
            n, r = divmod(n, 36)
            tag = digits[r] + tag
            if n == 0:
                break
        prefix = f"mc{os.getpid():x}-{tag}"
        if prefix not in present:
            return prefix


class LabBase:
    """What every lab shares: its owner, the processes started in it, its state file, teardown.

    A subclass sets `prefix`, `subnet` and `describe()`, calls `_own(persistent)` first and
    `_record()` once its names are chosen (under `_state_lock`)."""

    prefix: str
    subnet: ipaddress.IPv4Network

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def _build(self) -> None:
        raise NotImplementedError

    def _build_or_close(self) -> None:
        """Build; on any failure remove what was made so far and re-raise."""
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _own(self, persistent: bool) -> None:
        """Start owning: this process tears the lab down at exit unless it is persistent."""
        self.persistent = persistent
        self._owner_pid = os.getpid()
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False
        if not persistent:
            atexit.register(self._atexit)

    def _record(self) -> None:
        """Record the owner so cleanup_stale can tell a crashed lab from a live one."""
        state = {"prefix": self.prefix, "pid": self._owner_pid,
                 "start_time": _start_time(self._owner_pid), "persistent": self.persistent,
                 "subnet": str(self.subnet), "created": time.time(), **self.describe()}
        path = _state_path(self.prefix)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)

    def _track(self, proc: subprocess.Popen) -> None:
        """Remember a process started in a namespace, for teardown."""
        with self._lock:
            if self._closed:
                proc.kill()
                raise LabError("the lab is closed")
            self._procs = [p for p in self._procs if p.poll() is None] + [proc]

    def close(self) -> None:
        """Kill the lab's processes and delete its links and namespaces (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs, self._procs = self._procs, []
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit)
        for p in procs:
            if p.poll() is None:
                try:                      # the whole session run() started, helpers included
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    p.terminate()
        deadline = time.monotonic() + 1.0
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.kill()
                p.wait()
        destroy(self.prefix)

    def _atexit(self) -> None:
        """Tear down at interpreter exit, but only in the process that built the lab."""
        if os.getpid() == self._owner_pid:
            self.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lab(LabBase):
    """N hosts (network namespaces) on one bridge, torn down by close(), the with block or exit."""

    def __init__(self, n_hosts: int, *, prefix: str | None = None, subnet: str | None = None,
                 mtu: int = 9000, origin: bool = False, persistent: bool = False):
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}")
        reason = requires_root()
        if reason:
            raise LabError(reason)
        self.mtu = mtu
        self._blocked: dict[str, set[str]] = {}
        self._own(persistent)
        with _state_lock():
            states = _read_states()
            self.prefix = prefix or _default_prefix(states)
            self._check_prefix(self.prefix, n_hosts, states)
            net = ipaddress.ip_network(subnet) if subnet else _pick_subnet(states)
            if net.prefixlen > 24:
                raise ValueError("the lab subnet must be a /24 or larger")
            for other in states.values():
                if _owner_alive(other) and net.overlaps(ipaddress.ip_network(other["subnet"])):
                    raise LabError(f"subnet {net} overlaps lab {other['prefix']}")
            self.subnet = net
            self.bridge = f"{self.prefix}br"
            self.gateway = str(net.network_address + GATEWAY_OCTET)
            self.hosts = [Host(self, f"{self.prefix}-h{i}", str(net.network_address + 1 + i),
                               f"{self.prefix}v{i}", i) for i in range(n_hosts)]
            self.origin = (Host(self, f"{self.prefix}-origin",
                                str(net.network_address + ORIGIN_OCTET), f"{self.prefix}vo", None)
                           if origin else None)
            self._record()
        self._build_or_close()

    # -- naming

    @staticmethod
    def _check_prefix(prefix: str, n_hosts: int, states: dict[str, dict[str, Any]]) -> None:
        """Reject prefixes that make illegal interface names or belong to another lab."""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", prefix):
            raise ValueError(f"bad lab prefix {prefix!r}")
        longest = max(len(f"{prefix}br"), len(f"{prefix}v{n_hosts - 1}"), len(f"{prefix}vo"))
        if longest > IFNAMSIZ:
            raise ValueError(f"lab prefix {prefix!r} is too long for {n_hosts} hosts "
                             f"(interface names are at most {IFNAMSIZ} characters)")
        if prefix in states or any(_ns_pattern(prefix).match(n) for n in _netns_names()):
            raise LabError(f"a lab with prefix {prefix!r} already exists")

    # -- building

    def _build(self) -> None:
        """Make the bridge, then each host's namespace, veth, addresses and routes."""
        mtu = str(self.mtu)
        try:   # no IGMP snooping (no querier here) and no iptables on bridged frames
            _ip("link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0",
                "nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0")
        except LabError:
            _ip("link", "add", self.bridge, "type", "bridge")
        for host in self.all_hosts:
            _ip("netns", "add", host.name)
            _ip("link", "add", host.veth, "mtu", mtu, "type", "veth",
                "peer", "name", host.ifname, "mtu", mtu, "netns", host.name)
            _ip("link", "set", host.veth, "master", self.bridge, "up")
            ns = ("-n", host.name)
            _ip(*ns, "link", "set", "lo", "up")
            _ip(*ns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", host.ifname)
            _ip(*ns, "link", "set", host.ifname, "up")
            _ip(*ns, "route", "add", "224.0.0.0/4", "dev", host.ifname)
        _ip("link", "set", self.bridge, "mtu", mtu)
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    # -- access

    @property
    def all_hosts(self) -> list[Host]:
        """The hosts and then the origin, if any."""
        return self.hosts + ([self.origin] if self.origin else [])

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __repr__(self) -> str:
        return f"Lab({self.prefix!r}, {len(self.hosts)} hosts, {self.subnet})"

    def describe(self) -> dict[str, Any]:
        """Names and addresses, as JSON-ready data (what `up` prints)."""
        def one(h: Host) -> dict[str, str]:
            return {"name": h.name, "address": h.address, "ifname": h.ifname, "veth": h.veth}
        return {"prefix": self.prefix, "bridge": self.bridge, "subnet": str(self.subnet),
                "gateway": self.gateway, "mtu": self.mtu,
                "hosts": [one(h) for h in self.hosts],
                "origin": one(self.origin) if self.origin else None}

    # -- shaping

    @staticmethod
    def default_burst(rate_bits_per_s: float, mtu: int) -> int:
        """A tbf bucket: 10 ms at the rate, but at least a few full frames (bytes)."""
        return max(int(rate_bits_per_s / 8 * 0.010), 4 * (mtu + 100))

    def _tbf(self, ns: tuple[str, ...], dev: str, rate_bits_per_s: float, burst: int | None,
             latency: float) -> None:
        """Replace dev's root qdisc with a token bucket filter."""
        burst = burst or self.default_burst(rate_bits_per_s, self.mtu)
        _run(["tc", *ns, "qdisc", "replace", "dev", dev, "root", "tbf",
              "rate", f"{int(rate_bits_per_s)}bit", "burst", str(int(burst)),
              "latency", f"{max(1, int(latency * 1000))}ms"])

    def cap_egress(self, host: Host, rate_bits_per_s: float, *, burst: int | None = None,
                   latency: float = 0.05) -> None:
        """Cap what host sends (its uplink) with tc tbf on its eth0; latency bounds the queue."""
        self._tbf(("-n", host.name), host.ifname, rate_bits_per_s, burst, latency)

    def cap_ingress(self, host: Host, rate_bits_per_s: float, *, burst: int | None = None,
                    latency: float = 0.05) -> None:
        """Cap what host receives (its downlink) with tc tbf on the bridge end of its veth."""
        self._tbf((), host.veth, rate_bits_per_s, burst, latency)

    def uncap(self, host: Host) -> None:
        """Remove both caps of host (restores the default qdiscs)."""
        _run(["tc", "-n", host.name, "qdisc", "del", "dev", host.ifname, "root"], check=False)
        _run(["tc", "qdisc", "del", "dev", host.veth, "root"], check=False)

    # -- partitions

    def _apply_blocks(self, host: Host) -> None:
        """Drop, at host's eth0, IPv4 packets to and from every address blocked for it.

        The kernel here has no gact (`action drop`), so matching packets are redirected with
        mirred to `drop0`, a veth kept down inside the namespace, which discards them silently.
        """
        ns = ("-n", host.name)
        _run(["tc", *ns, "qdisc", "del", "dev", host.ifname, "clsact"], check=False)
        blocked = sorted(self._blocked.get(host.name, ()))
        if not blocked:
            return
        if "drop0" not in _ip(*ns, "-o", "link", "show"):
            _ip(*ns, "link", "add", "drop0", "type", "veth", "peer", "name", "drop1")
        _run(["tc", *ns, "qdisc", "add", "dev", host.ifname, "clsact"])
        for addr in blocked:
            for hook, field in (("egress", "dst"), ("ingress", "src")):
                _run(["tc", *ns, "filter", "add", "dev", host.ifname, hook, "protocol", "ip",
                      "prio", "1", "u32", "match", "ip", field, f"{addr}/32",
                      "action", "mirred", "egress", "redirect", "dev", "drop0"])

    def block(self, a: Host, b: Host) -> None:
        """Silently drop all IPv4 traffic (unicast and multicast) between a and b."""
        self._blocked.setdefault(a.name, set()).add(b.address)
        self._blocked.setdefault(b.name, set()).add(a.address)
        self._apply_blocks(a)
        self._apply_blocks(b)

    def unblock(self, a: Host, b: Host) -> None:
        """Undo block(a, b)."""
        self._blocked.get(a.name, set()).discard(b.address)
        self._blocked.get(b.name, set()).discard(a.address)
        self._apply_blocks(a)
        self._apply_blocks(b)

    def partition(self, side_a: Iterable[Host], side_b: Iterable[Host]) -> None:
        """Block every pair across the two sides."""
        side_b = list(side_b)
        for a in side_a:
            for b in side_b:
                self.block(a, b)

    def heal(self) -> None:
        """Remove every block."""
        names = [n for n, s in self._blocked.items() if s]
        self._blocked.clear()
        for host in self.all_hosts:
            if host.name in names:
                self._apply_blocks(host)

# --------------------------------------------------------------------------- WAN relay

class UdpDelayRelay:
    """Forward UDP datagrams client<->target after a one-way delay (RTT grows by 2*delay_s).

    Each direction is a link of its own: with `rate_bytes_per_s` a datagram waits for the ones
    before it to be serialised at that rate (queueing beyond `max_queue_s` drops it, like a
    router buffer), then for the delay. `loss` drops a fraction at random. Every client address
    gets its own upstream socket, so the target sees one peer per client (like a NAT).
    """

    def __init__(self, listen_addr: tuple[str, int], target_addr: tuple[str, int],
                 delay_s: float, rate_bytes_per_s: float | None = None, *, loss: float = 0.0,
                 max_queue_s: float = 0.25, seed: int | None = None):
        self.target_addr = (socket.gethostbyname(target_addr[0]), int(target_addr[1]))
        self.delay_s = float(delay_s)
        self.rate = rate_bytes_per_s
        self.loss = loss
        self.max_queue_s = max_queue_s
        self.forwarded = 0
        self.dropped = 0
        self._rng = random.Random(seed)
        self._listen = self._socket()
        self._listen.bind(listen_addr)
        self.address: tuple[str, int] = self._listen.getsockname()
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._client_of: dict[socket.socket, tuple[str, int]] = {}
        self._busy_until = {"up": 0.0, "down": 0.0}
        self._queue: list[tuple[float, int, socket.socket, bytes, tuple[str, int] | None]] = []
        self._seq = itertools.count()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, "listen")
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stop = False
        self._thread: threading.Thread | None = None

    @staticmethod
    def _socket() -> socket.socket:
        """A non-blocking UDP socket with big buffers (a burst must not overflow them)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        s.setblocking(False)
        return s

    def _schedule(self, direction: str, sock: socket.socket, data: bytes,
                  to: tuple[str, int] | None) -> None:
        """Queue a datagram for sending once its link has carried it and the delay has passed."""
        if self.loss and self._rng.random() < self.loss:
            self.dropped += 1
            return
        now = time.monotonic()
        if self.rate:
            start = max(now, self._busy_until[direction])
            if start - now > self.max_queue_s:
                self.dropped += 1
                return
            self._busy_until[direction] = start + len(data) / self.rate
            due = self._busy_until[direction] + self.delay_s
        else:
            due = now + self.delay_s
        heapq.heappush(self._queue, (due, next(self._seq), sock, data, to))

    def _upstream_for(self, client: tuple[str, int]) -> socket.socket:
        """The socket that talks to the target on behalf of one client."""
        sock = self._upstream.get(client)
        if sock is None:
            sock = self._socket()
            sock.connect(self.target_addr)
            self._upstream[client] = sock
            self._client_of[sock] = client
            self._sel.register(sock, selectors.EVENT_READ, "upstream")
        return sock

    def _drain(self, sock: socket.socket, kind: str) -> None:
        """Read every datagram waiting on sock and schedule it."""
        while True:
            try:
                if kind == "listen":
                    data, client = sock.recvfrom(65535)
                else:
                    data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:          # e.g. ICMP port unreachable from the target
                return
            if kind == "listen":
                self._schedule("up", self._upstream_for(client), data, None)
            else:
                self._schedule("down", self._listen, data, self._client_of[sock])

    def _send_due(self) -> float | None:
        """Send what is due; return seconds until the next datagram is, or None if none waits."""
        while self._queue:
            due, _, sock, data, to = self._queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                return wait
            heapq.heappop(self._queue)
            try:
                if to is None:
                    sock.send(data)
                else:
                    sock.sendto(data, to)
                self.forwarded += 1
            except OSError:
                self.dropped += 1
        return None

    def run_forever(self) -> None:
        """Relay until close() (call start() instead to run in a thread)."""
        while not self._stop:
            timeout = self._send_due()
            for key, _ in self._sel.select(timeout):
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        key.fileobj.recv(4096)
                else:
                    self._drain(key.fileobj, key.data)
        self._release()

    def start(self) -> UdpDelayRelay:
        """Relay in a daemon thread."""
        self._thread = threading.Thread(target=self.run_forever, name="udp-delay-relay",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop relaying and close the sockets (idempotent)."""
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(5)
        elif self._listen.fileno() != -1:  # never ran: release here
            self._release()

    def _release(self) -> None:
        """Close every socket."""
        self._sel.close()
        for s in [self._listen, self._wake_r, self._wake_w, *self._upstream.values()]:
            s.close()

    def __enter__(self) -> UdpDelayRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- command line

def _addr(text: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """`up N`, `down [PREFIX...]`, `status`, `cleanup`, `relay LISTEN TARGET --delay S`."""
    parser = argparse.ArgumentParser(prog="python -m meshcache.lab.netns",
                                     description="Network-namespace lab for meshcache.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="make a lab that stays until `down`; print it as JSON")
    up.add_argument("n", type=int)
    up.add_argument("--origin", action="store_true", help="add an origin host (.253)")
    up.add_argument("--prefix")
    up.add_argument("--subnet")
    up.add_argument("--mtu", type=int, default=9000)
    down = sub.add_parser("down", help="destroy labs (default: those made by `up`, and stale)")
    down.add_argument("prefixes", nargs="*")
    sub.add_parser("status", help="print recorded labs as JSON")
    sub.add_parser("cleanup", help="destroy labs whose creating process is dead")
    relay = sub.add_parser("relay", help="run a UDP delay relay in the foreground")
    relay.add_argument("listen", type=_addr, help="HOST:PORT (port 0 picks one)")
    relay.add_argument("target", type=_addr, help="HOST:PORT")
    relay.add_argument("--delay", type=float, required=True, help="one-way delay, seconds")
    relay.add_argument("--rate", type=float, default=None, help="bytes per second each way")
    relay.add_argument("--loss", type=float, default=0.0)
    args = parser.parse_args(argv)

    if args.cmd == "relay":
        r = UdpDelayRelay(args.listen, args.target, args.delay, args.rate, loss=args.loss)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(f"ready {r.address[0]}:{r.address[1]}", flush=True)
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            r.run_forever()
        return 0
    if args.cmd == "status":
        print(json.dumps(list_labs(), indent=2))
        return 0
    reason = requires_root()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    if args.cmd == "up":
        cleanup_stale()
        lab = Lab(args.n, prefix=args.prefix, subnet=args.subnet, mtu=args.mtu,
                  origin=args.origin, persistent=True)
        print(json.dumps(lab.describe(), indent=2))
    elif args.cmd == "down":
        print(json.dumps(take_down(args.prefixes)))
    elif args.cmd == "cleanup":
        print(json.dumps({"stale": cleanup_stale()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
