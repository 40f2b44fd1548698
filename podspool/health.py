"""Health of devices and outputs, shared by `podspool status` and the /healthz endpoint.

A device is healthy while it is connected or in an ordinary reconnect. It is
unhealthy when its handshake keeps failing (401, 404, 409, or 400), while the
spool cap or a write error pauses it, or when it has had no session for longer
than `unhealthy_after_seconds` (refused connections, TLS or DNS failures). An output is unhealthy once it has
been failing for longer than `unhealthy_after_seconds`.
"""

FAILING_HANDSHAKES = (400, 401, 404, 409)


def device_problems(name, stats, now, unhealthy_after_seconds):
    """Return the reasons why device NAME is unhealthy, from its stats dictionary."""
    problems = []
    if not stats.get("enabled", True):
        return problems
    disconnected_since = stats.get("disconnected_since")
    if disconnected_since is not None and now - disconnected_since > unhealthy_after_seconds:
        error = stats.get("last_error") or "disconnected"
        problems.append(f"device {name} has had no session for {now - disconnected_since:.0f} s: {error}")
    if stats.get("paused"):
        problems.append(f"device {name} is paused: the spool is full or cannot be written")
    status = stats.get("last_handshake_status")
    if stats.get("failing_since") is not None and status in FAILING_HANDSHAKES:
        problems.append(f"device {name} keeps failing its handshake with HTTP {status}")
    return problems


def output_problems(name, stats, now, unhealthy_after_seconds):
    """Return the reasons why output NAME is unhealthy, from its stats dictionary."""
    failing_since = stats.get("failing_since")
    if failing_since is None:
        return []
    failing_for = now - failing_since
    if failing_for <= unhealthy_after_seconds:
        return []
    error = stats.get("last_error") or "unknown error"
    return [f"output {name} has been failing for {failing_for:.0f} s: {error}"]


def problems(snapshot, now, unhealthy_after_seconds):
    """Return every reason the service described by SNAPSHOT is unhealthy (empty when healthy)."""
    found = []
    for name, stats in sorted(snapshot.get("devices", {}).items()):
        found += device_problems(name, stats, now, unhealthy_after_seconds)
    for name, stats in sorted(snapshot.get("outputs", {}).items()):
        found += output_problems(name, stats, now, unhealthy_after_seconds)
    return found
