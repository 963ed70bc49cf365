"""The `meshcache` command: read through the cache, inspect it and manage it from a shell.

Commands that print data take --json (one JSON document, or JSON lines for lists). When a
meshcached serves the cache directory the commands ask it (MESHCACHE_DAEMON=off: never).

Exit codes (for scripts), one meaning each: 0 ok, 1 unexpected error, 2 bad usage, 3 object
not found at the origin, 4 origin failed or the object changed mid-read, 5 cache directory or
store error, 6 bad configuration, 7 refused by the cache's state (evicting a pinned URL,
unpinning one that is not pinned) or by the daemon (no permission), 8 no meshcached serves this
cache directory (status, peers), 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from meshcache.config import Config, ConfigError
from meshcache.host.client import DaemonNode, DaemonUnavailable, daemon_node
from meshcache.lab.cli import lab as lab_commands
from meshcache.read.node import Node
from meshcache.read.origin import ObjectChanged, ObjectNotFound, OriginError
from meshcache.read.store import StoreError

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_ORIGIN, EXIT_STORE, EXIT_CONFIG = 1, 2, 3, 4, 5, 6
EXIT_REFUSED, EXIT_NO_DAEMON = 7, 8
CHUNK = 4 * 1024 * 1024


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class _Ctx:
    def __init__(self, config: Config, progress: bool | None) -> None:
        self.config = config
        self.progress = progress
        self._node: Node | DaemonNode | None = None

    @property
    def node(self) -> Node | DaemonNode:
        """The host's daemon for this cache directory, else a node of this process."""
        if self._node is None:
            self._node = daemon_node(self.config) or Node(self.config)
        return self._node

    def close(self) -> None:
        if self._node is not None:
            self._node.close()

    @contextmanager
    def bar(self, desc: str, total: int | None = None) -> Iterator[Any]:
        """A tqdm progress bar on stderr when it is a terminal (or --progress), else a no-op."""
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show:
            class _Null:
                total = None

                def update(self, n: int) -> None: ...

                def refresh(self) -> None: ...

            yield _Null()
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                  file=sys.stderr, dynamic_ncols=True, leave=True) as bar:
            yield bar


def _print_mapping(mapping: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(mapping))
        return
    width = max(map(len, mapping), default=0)
    for k, v in mapping.items():
        click.echo(f"{k:>{width}}: {v}")


def _set_total(bar: Any) -> Callable[[int], None]:
    """An `on_total` callback that sets a progress bar's total once it is known."""
    def total(n: int) -> None:
        bar.total = n
        bar.refresh()
    return total


def _fail(code: int, message: str) -> None:
    click.echo(f"meshcache: error: {message}", err=True)
    sys.exit(code)


def _run(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the library's errors to clear messages and the documented exit codes."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().obj
        try:
            return fn(*args, **kwargs)
        except ObjectNotFound as e:
            _fail(EXIT_NOT_FOUND, str(e))
        except (ObjectChanged, OriginError) as e:
            _fail(EXIT_ORIGIN, str(e))
        except StoreError as e:
            _fail(EXIT_STORE, e.strerror or str(e))
        except ConfigError as e:
            _fail(EXIT_CONFIG, str(e))
        except PermissionError as e:
            _fail(EXIT_REFUSED, str(e))
        except DaemonUnavailable as e:
            _fail(EXIT_NO_DAEMON, str(e))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(0)
        finally:
            if isinstance(ctx, _Ctx):
                ctx.close()
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file (default: $MESHCACHE_CONFIG).")
@click.option("--cache-dir", help="Cache directory (default: $MESHCACHE_CACHE_DIR or "
              "~/.cache/meshcache).")
@click.option("--progress/--no-progress", default=None,
              help="Show progress bars (default: when stderr is a terminal).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="meshcache")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, cache_dir: str | None,
        progress: bool | None, verbose: int) -> None:
    """meshcache: read objects (file://, http(s)://, s3://, any fsspec URL) through a local
    block cache that the fleet's nodes share.

    \b
    Examples:
      meshcache get s3://models/llama.safetensors -o /tmp/model
      meshcache prewarm https://data.example/shard-{0..9}.tar
      meshcache cache ls
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    try:
        env = dict(os.environ)
        if config_path:
            env["MESHCACHE_CONFIG"] = config_path
        if cache_dir:
            env["MESHCACHE_CACHE_DIR"] = cache_dir
        config = Config.from_env(env)
    except ConfigError as e:
        _fail(EXIT_CONFIG, str(e))
    ctx.obj = _Ctx(config, progress)


@cli.command()
@click.argument("url")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write (default: the URL's file name here; '-' for stdout).")
@click.option("--json", "as_json", is_flag=True, help="Print where the bytes came from as JSON.")
@click.pass_obj
@_run
def get(obj: _Ctx, url: str, output: str | None, as_json: bool) -> None:
    """Download URL through the cache to a file."""
    name = output or os.path.basename(url.rstrip("/")) or "download"
    with obj.node.open(url) as src:
        out = sys.stdout.buffer if name == "-" else open(name + ".part", "wb")
        try:
            with obj.bar(os.path.basename(url), src.size) as bar:
                buf = bytearray(CHUNK)
                while n := src.readinto(buf):
                    out.write(memoryview(buf)[:n])
                    bar.update(n)
        except BaseException:
            if out is not sys.stdout.buffer:
                out.close()
                os.unlink(name + ".part")
            raise
        if out is not sys.stdout.buffer:
            out.close()
            os.replace(name + ".part", name)
        stats = src.stats
    if as_json:
        click.echo(json.dumps({"url": src.url, "output": name, "size": src.size, **stats}),
                   err=name == "-")
    elif name != "-":
        click.echo(f"{name}: {_human(src.size)} (local {_human(stats['bytes_from_local'])}, "
                   f"peers {_human(stats['bytes_from_peers'])}, "
                   f"origin {_human(stats['bytes_from_origin'])})", err=True)


@cli.command()
@click.argument("url")
@click.option("--start", type=int, default=None, help="First byte (negative: from the end).")
@click.option("--end", type=int, default=None, help="Byte after the last (negative: from end).")
@click.pass_obj
@_run
def cat(obj: _Ctx, url: str, start: int | None, end: int | None) -> None:
    """Write URL's bytes (or a range of them) to standard output."""
    if start is not None and end is not None and (start < 0) == (end < 0) and end < start:
        raise click.UsageError(f"--end {end} is before --start {start}")
    if start is None and end is None:
        with obj.node.open(url) as src:
            buf = bytearray(CHUNK)
            while n := src.readinto(buf):
                sys.stdout.buffer.write(memoryview(buf)[:n])
    else:
        sys.stdout.buffer.write(obj.node.cat(url, start, end))
    sys.stdout.buffer.flush()


@cli.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_run
def stat(obj: _Ctx, url: str, as_json: bool) -> None:
    """Show URL's size, version and how much of it is cached."""
    _print_mapping(obj.node.stat(url), as_json)


@cli.command()
@click.argument("urls", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per URL.")
@click.pass_obj
@_run
def prewarm(obj: _Ctx, urls: tuple[str, ...], as_json: bool) -> None:
    """Fetch every block of each URL into the cache (returns when stored). Each URL is reported;
    the good ones are stored even when others fail (the exit code is the first failure's)."""
    failed = 0
    for url in urls:
        try:
            with obj.bar(os.path.basename(url)) as bar:
                done = obj.node.prewarm([url], bar.update, on_total=_set_total(bar))
        except (ObjectNotFound, ObjectChanged, OriginError, StoreError, PermissionError) as e:
            code = EXIT_NOT_FOUND if isinstance(e, ObjectNotFound) else \
                EXIT_REFUSED if isinstance(e, PermissionError) else \
                EXIT_STORE if isinstance(e, StoreError) else EXIT_ORIGIN
            failed = failed or code
            message = e.strerror if isinstance(e, StoreError) and e.strerror else str(e)
            click.echo(json.dumps({"url": url, "ok": False, "error": message}) if as_json
                       else f"{url}: error: {message}", err=not as_json)
            continue
        for u, size in done.items():
            click.echo(json.dumps({"url": u, "ok": True, "size": size}) if as_json
                       else f"prewarmed {u} ({_human(size)})", err=not as_json)
    if failed:
        sys.exit(failed)


@cli.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_run
def refresh(obj: _Ctx, url: str, as_json: bool) -> None:
    """Forget URL's cached stat and ask the origin for its current version."""
    v = obj.node.refresh(url)
    if as_json:
        click.echo(json.dumps({"url": v.url, "size": v.size, "version": v.token}))
    else:
        click.echo(f"{v.url}: size {v.size}, version {v.token}")


@cli.command()
@click.argument("url_prefix")
@click.argument("mountpoint", type=click.Path(file_okay=False, exists=True))
@click.option("--storage-options", default="{}", metavar="JSON",
              help="fsspec storage options for the origin, as a JSON object.")
@click.option("--debug", is_flag=True, help="Log every FUSE request the kernel sends.")
@click.pass_obj
@_run
def mount(obj: _Ctx, url_prefix: str, mountpoint: str, storage_options: str,
          debug: bool) -> None:
    """Mount URL_PREFIX read-only at MOUNTPOINT, read through the cache; runs until
    `umount MOUNTPOINT` (or `fusermount3 -u`), SIGTERM or Ctrl-C, which unmount cleanly."""
    import json

    from meshcache.surfaces.fuse import mount as fuse_mount

    try:
        options = json.loads(storage_options)
    except ValueError as e:
        raise ConfigError(f"--storage-options: not JSON: {e}") from None
    if not isinstance(options, dict):
        raise ConfigError("--storage-options: expected a JSON object")
    fuse_mount(obj.node, url_prefix, mountpoint, options, debug=debug)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_run
def stats(obj: _Ctx, as_json: bool) -> None:
    """Show this cache's counters and use (the daemon's, when one serves the cache)."""
    _print_mapping(obj.node.stats(), as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_run
def status(obj: _Ctx, as_json: bool) -> None:
    """What the host's meshcached is doing: counters, hit ratio, members, objects being read
    (the same as its status page)."""
    node = daemon_node(obj.config)
    if node is None:
        _fail(EXIT_NO_DAEMON, f"no meshcached serves {obj.config.cache_dir} (its socket "
                              f"{obj.config.socket_path()} does not answer)")
    try:
        st = node.status()
    finally:
        node.close()
    if as_json:
        click.echo(json.dumps(st))
        return
    s = st["stats"]
    ratio = "-" if st["hit_ratio"] is None else f"{100 * st['hit_ratio']:.1f} %"
    click.echo(f"meshcached pid {st['pid']}, zone {st['zone']}, node "
               f"{(st['node_id'] or '-')[:16]}, peers on {st['address'] or '-'}")
    click.echo(f"cache {st['cache_dir']}: {_human(s['store_bytes'])} of "
               f"{_human(s['capacity'])}, hit ratio {ratio}")
    click.echo(f"bytes from local {_human(s['bytes_from_local'])}, peers "
               f"{_human(s['bytes_from_peers'])}, origin {_human(s['bytes_from_origin'])} "
               f"({s['origin_requests']} requests, {s['origin_errors']} errors)")
    click.echo(f"local clients {s['local_clients']}, requests {s['local_requests']}")
    click.echo(f"{'member':<18}{'zone':<12}{'address':<24}{'state':<9}")
    for m in st["members"]:
        click.echo(f"{m['node_id'][:16]:<18}{m['zone']:<12}{m['address']:<24}{m['state']:<9}")
    if not st["members"]:
        click.echo("(no other members)")
    for r in st["reading"]:
        click.echo(f"reading {r['url']} ({r['blocks_asked']} blocks asked, last "
                   f"{r['last_s']:.0f} s ago)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_run
def peers(obj: _Ctx, as_json: bool) -> None:
    """List the live members the local meshcached sees (zone, address, summary size) and the
    remote zones its DHT has heard from."""
    import time as _time

    from meshcache.mesh.mesh import STATUS_FILE

    path = os.path.join(obj.config.cache_dir, STATUS_FILE)
    try:
        with open(path) as f:
            status = json.load(f)
    except (OSError, ValueError):
        _fail(EXIT_STORE, f"no running meshcached for {obj.config.cache_dir} ({path} is "
                          "missing or unreadable)")
    age = _time.time() - status.get("time", 0)
    if age > max(10.0, 5 * status.get("ping_interval", 1.0)):
        _fail(EXIT_STORE, f"meshcached for {obj.config.cache_dir} is not running "
                          f"(its status is {age:.0f} s old)")
    if as_json:
        click.echo(json.dumps(status))
        return
    click.echo(f"this node {status['node_id'][:16]} at {status['address']} zone {status['zone']}"
               f", summary {_human(status['summary_bytes'])} gen {status['summary_generation']}")
    click.echo(f"{'node':<18}{'zone':<12}{'address':<24}{'state':<9}{'summary':>10}  seen")
    for m in status["members"]:
        click.echo(f"{m['node_id'][:16]:<18}{m['zone']:<12}{m['address']:<24}{m['state']:<9}"
                   f"{_human(m['summary_bytes']):>10}  {m['last_seen_s']:.1f} s ago")
    if not status["members"]:
        click.echo("(no live members)")
    remote = status.get("remote_zones")  # zone -> DHT nodes heard from (when the DHT runs)
    if remote is not None:
        seen = ", ".join(f"{z} ({n} nodes)" for z, n in sorted(remote.items())
                         if z != status["zone"])
        click.echo(f"remote zones seen: {seen or '(none)'}")


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write it to this file (mode 0600) instead of stdout.")
def secret(output: str | None) -> None:
    """Print a new cluster credential (256 random bits, base64url) for cluster_secret(_file)."""
    from meshcache.mesh.auth import new_secret

    if output is None:
        click.echo(new_secret())
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_secret() + "\n")


@cli.group()
def cache() -> None:
    """Inspect and manage the local cache: ls, du, pin, unpin, evict."""


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_obj
@_run
def cache_ls(obj: _Ctx, as_json: bool) -> None:
    """List cached objects with how much of each is stored; versions the origin has replaced
    are marked superseded."""
    objects = obj.node.cached_objects()
    counts: dict[str, int] = {}
    for o in objects:
        counts[o["url"]] = counts.get(o["url"], 0) + 1
    current: dict[str, str | None] = {}
    for url in (u for u, n in counts.items() if n > 1):  # ask the origin only when it matters
        try:
            current[url] = obj.node.version(url).token
        except (OriginError, PermissionError):
            current[url] = None
    if not as_json:
        click.echo(f"{'cached':>10}   {'size':<10} {'blocks':>13}  {'url'}")
    for o in objects:
        o["superseded"] = o["url"] in current and current[o["url"]] not in (None, o["version"])
        if as_json:
            click.echo(json.dumps(o))
        else:
            marks = (" pinned" if o["pinned"] else "") + (" superseded" if o["superseded"]
                                                           else "")
            click.echo(f"{_human(o['cached_bytes']):>10} / {_human(o['size']):<10} "
                       f"{o['cached_blocks']:>6}/{o['blocks']:<6} {o['url']}{marks}")


@cache.command("du")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_run
def cache_du(obj: _Ctx, as_json: bool) -> None:
    """Bytes the cache holds against its capacity (and the FUSE mount's passthrough views)."""
    from meshcache.surfaces.fuseviews import view_bytes

    st = obj.node.stats()
    views = view_bytes(obj.config.cache_dir)
    if as_json:
        click.echo(json.dumps({"cache_dir": obj.config.cache_dir, "bytes": st["store_bytes"],
                               "blocks": st["store_blocks"], "capacity": st["capacity"],
                               "fuse_view_bytes": views}))
        return
    click.echo(f"{_human(st['store_bytes'])} in {st['store_blocks']} blocks of "
               f"{_human(st['capacity'])} capacity ({obj.config.cache_dir})"
               + (f"; FUSE passthrough views {_human(views)}" if views else ""))


@cache.command("pin")
@click.argument("urls", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per URL.")
@click.pass_obj
@_run
def cache_pin(obj: _Ctx, urls: tuple[str, ...], as_json: bool) -> None:
    """Fetch URLs completely and keep them out of eviction."""
    for url in urls:
        with obj.bar(os.path.basename(url)) as bar:
            v = obj.node.pin(url, progress=bar.update, on_total=_set_total(bar))
        if as_json:
            click.echo(json.dumps({"url": v.url, "size": v.size, "version": v.token,
                                   "pinned": True}))
        else:
            click.echo(f"pinned {v.url} ({_human(v.size)})", err=True)


@cache.command("unpin")
@click.argument("urls", nargs=-1, required=True)
@click.pass_obj
@_run
def cache_unpin(obj: _Ctx, urls: tuple[str, ...]) -> None:
    """Let eviction take URLs' blocks again."""
    for url in urls:
        n = obj.node.unpin(url)
        if n == 0:
            _fail(EXIT_REFUSED, f"{url}: not pinned")
        click.echo(f"unpinned {url}", err=True)


@cache.command("evict")
@click.argument("urls", nargs=-1)
@click.option("--all", "evict_all", is_flag=True, help="Evict every unpinned block.")
@click.pass_obj
@_run
def cache_evict(obj: _Ctx, urls: tuple[str, ...], evict_all: bool) -> None:
    """Remove URLs' blocks from the cache (or every unpinned block with --all), and the FUSE
    mount's passthrough views of them."""
    from meshcache.core.version import ObjectVersion
    from meshcache.read.origin import normalize_url
    from meshcache.surfaces.fuseviews import remove_views

    if not urls and not evict_all:
        raise click.UsageError("give URLs to evict, or --all")
    objects = obj.node.cached_objects()
    if urls:
        pinned_urls = {o["url"] for o in objects if o["pinned"]}
        for url in urls:
            if normalize_url(url) in pinned_urls:
                _fail(EXIT_REFUSED, f"{url} is pinned; unpin it first")
    freed = obj.node.evict(None) if evict_all else sum(obj.node.evict(u) for u in urls)
    every = [ObjectVersion(o["url"], o["version"], o["size"]) for o in objects]
    if evict_all:
        pinned_versions = [v for v, o in zip(every, objects) if o["pinned"]]
        freed += remove_views(obj.config.cache_dir, None, keep=pinned_versions)
    else:
        wanted = {normalize_url(u) for u in urls}
        freed += remove_views(obj.config.cache_dir, [v for v in every if v.url in wanted])
    click.echo(f"freed {_human(freed)}", err=True)


cli.add_command(lab_commands)


def main() -> None:
    """Entry point of the `meshcache` console script."""
    cli(prog_name="meshcache")


if __name__ == "__main__":  # pragma: no cover
    main()
