"""When the mesh stops using a member, pure: the rules the membership shell applies over time.

SWIM (membership.py) decides who is alive, suspect, dead or left. The read path must decide
sooner whom it asks: a suspected member is still asked while a live one would have refuted
(a late ACK on a loaded host must not move ownerships), and no longer once it has been silent
for about half the suspect timeout (a read should not wait on a member that is likely gone).
And a member admitted by HELLO while membership still holds it dead (a restart) is given the
whole suspect timeout to refute that before it is dropped.
"""

from __future__ import annotations

__all__ = ["unusable_after", "stop_using", "grace_expired"]


def unusable_after(suspect_timeout: float, ping_interval: float) -> float:
    """Seconds of suspicion after which a member is not asked: half the suspect timeout
    counted from its last answer, the failed probe's interval included."""
    return max(0.0, suspect_timeout / 2 - ping_interval)


def stop_using(suspect_since: float | None, now: float, suspect_timeout: float,
               ping_interval: float) -> bool:
    """True when a member suspected since `suspect_since` (None: not suspected) is no longer
    asked for blocks and is no owner."""
    if suspect_since is None:
        return False
    return now - suspect_since >= unusable_after(suspect_timeout, ping_interval)


def grace_expired(last_seen: float, now: float, suspect_timeout: float) -> bool:
    """True when a member that membership holds dead or left, last heard at `last_seen`, has
    had its chance to refute that and is dropped."""
    return now - last_seen > suspect_timeout
