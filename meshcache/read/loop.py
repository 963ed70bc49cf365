"""The node's asyncio loop on a daemon thread (uvloop where installed), restarted after fork."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import weakref
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

T = TypeVar("T")

try:  # uvloop is optional: the platform may not have it
    import uvloop as _uvloop
except ImportError:  # pragma: no cover
    _uvloop = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where installed, else asyncio's default."""
    return _uvloop.new_event_loop() if _uvloop is not None else asyncio.new_event_loop()


class LoopThread:
    """Runs coroutines on a private loop from any thread; a forked child gets a fresh loop on
    first use (threads do not survive fork), and `on_fork` callbacks reset what was bound to it."""

    def __init__(self, name: str = "meshcache-loop") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._fork_callbacks: list[Callable[[], None]] = []
        _instances.add(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first use (and again in a forked child)."""
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._start_locked()
            assert self._loop is not None
            return self._loop

    def _start_locked(self) -> None:
        self._pid = os.getpid()
        loop = new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    def on_fork(self, callback: Callable[[], None]) -> None:
        """Call `callback` in a forked child before the loop is used there."""
        self._fork_callbacks.append(callback)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        for cb in self._fork_callbacks:
            cb()

    def in_loop_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        """Schedule a coroutine; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result from a non-loop thread."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("LoopThread.run called from the loop thread (would deadlock)")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a plain callable on the loop, fire and forget."""
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Stop the loop and join its thread (for clean shutdown in tests and the daemon)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and self._pid == os.getpid():
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(5)
            if not loop.is_running():
                loop.close()


_instances: "weakref.WeakSet[LoopThread]" = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for inst in list(_instances):
        inst._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_all_after_fork)


