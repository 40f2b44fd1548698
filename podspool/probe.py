"""`podspool test-connection DEVICE`: one handshake, the result in plain words.

The probe opens a replay session for one hour 29 days back rather than a live
session. A live session would make the PoD service send the events that the
running service has not read yet, and count them as delivered. A replay
leaves that position alone.
"""

import sys
import time
from datetime import datetime, timedelta, timezone

from podspool.errors import UsageError
from podspool.session import ConnectError, HandshakeError, build_url, endpoint_host, open_session

EXIT_CONNECTED = 0
EXIT_FAILED = 1
PROBE_AGE = timedelta(days=29)

ADVICE = {
    400: "the server rejected the query parameters: check cluster and type",
    401: "the token was rejected: check the token, its cluster id and the Remote Syslog licence",
    404: "nothing serves this URL: check the endpoint (wss://HOST/v1/stream)",
    409: "another session already uses this token and type, for example a running podspool "
         "service: stop it, or use another token",
}


def probe_url(device, now):
    """Return the replay URL of the probe: the hour that starts 29 days before NOW."""
    start = (now - PROBE_AGE).replace(minute=0, second=0, microsecond=0)
    return build_url(device.endpoint, device.cluster, device.type, since=start, until=start + timedelta(hours=1))


def test_connection(settings, name, out=None, now=None):
    """Open and close one session for device NAME; return 0 when the handshake succeeded."""
    out = out or sys.stdout
    devices = {device.name: device for device in settings.devices}
    if name not in devices:
        known = ", ".join(sorted(devices)) or "none configured"
        raise UsageError(f"no device named {name!r} (devices: {known})")
    device = devices[name]
    now = now or datetime.now(timezone.utc)
    host = endpoint_host(device.endpoint)
    print(f"device {name}: connecting to {host} (cluster {device.cluster}, type {device.type})", file=out)
    print("note: PoD allows one session per token and type, so a running podspool service that holds "
          "this device's session makes this test fail with HTTP 409", file=out)

    started = time.monotonic()
    try:
        session = open_session(device, probe_url(device, now))
    except HandshakeError as exc:
        advice = ADVICE.get(exc.status_code, "unexpected answer to the WebSocket upgrade")
        print(f"failed: HTTP {exc.status_code}: {advice}", file=out)
        return EXIT_FAILED
    except ConnectError as exc:
        print(f"failed ({exc.kind}): {exc}", file=out)
        return EXIT_FAILED
    try:
        session.close(timeout=2)
    except Exception:  # noqa: BLE001 - the handshake result is what matters here
        pass
    print(f"connected: the server accepted the token and opened a session in "
          f"{time.monotonic() - started:.2f} s; closed it again", file=out)
    return EXIT_CONNECTED
