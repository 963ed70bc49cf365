"""Pytest fixtures for the network-namespace lab: `lab(n)` builds one, torn down after the test.

Use from a test module with `from tests.lab_fixtures import lab, lab3, needs_lab  # noqa: F401`;
tests that use them skip, with the reason, where the lab cannot be built (not root, no iproute2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshcache.lab.netns import Lab, cleanup_stale, requires_root

_swept: list[bool] = []


def _skip_unless_lab_possible() -> None:
    """Skip the test with the reason the lab cannot be built; sweep stale labs once per run."""
    reason = requires_root()
    if reason:
        pytest.skip(reason)
    if not _swept:
        _swept.append(True)
        cleanup_stale()


@pytest.fixture
def needs_lab() -> None:
    """Skip unless this machine can build a lab (for tests that build and break labs themselves)."""
    _skip_unless_lab_possible()


@pytest.fixture
def lab(needs_lab: None) -> Iterator[Callable[..., Lab]]:
    """Factory: `lab(n, **kwargs)` returns a built Lab; every one is closed after the test."""
    made: list[Lab] = []

    def make(n_hosts: int, **kwargs: Any) -> Lab:
        made.append(Lab(n_hosts, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for one in reversed(made):
            one.close()


@pytest.fixture
def lab3(lab: Callable[..., Lab]) -> Lab:
    """A lab of three hosts."""
    return lab(3)
