"""The service: start-up checks, the summary of the configuration, and running everything."""

import logging
import os
import tempfile

from podspool.errors import ConfigError
from podspool.fsutil import ensure_dir

log = logging.getLogger(__name__)


def check_directories(settings):
    """Create the spool and state directories when missing and prove they are writable."""
    for key, path in (("spool.directory", settings.spool.directory),
                      ("state_directory", settings.state_directory)):
        try:
            ensure_dir(path)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise ConfigError(
                f"directory {path} cannot be created or written ({exc.strerror})",
                file=settings.files[0] if settings.files else None, key=key,
                fix="create it and give the service user write access, or choose another path",
            ) from None


def describe(settings):
    """Return a plain-text summary of the configuration, without any secret."""
    lines = ["configuration files:"]
    lines += [f"  {path}" for path in settings.files]
    lines.append(f"spool: {settings.spool.directory} (rotate {settings.spool.rotate_bytes} bytes or "
                 f"{settings.spool.rotate_seconds:g} s, fsync {settings.spool.fsync}, "
                 f"cap {settings.spool.max_bytes} bytes, compress {settings.spool.compress})")
    lines.append(f"state: {settings.state_directory}")
    lines.append(f"devices ({len(settings.devices)}):")
    for device in settings.devices:
        state = "enabled" if device.status else "disabled"
        pipelines = ", ".join(device.pipelines) or "-"
        lines.append(f"  {device.name} (id {device.id}): cluster {device.cluster}, type {device.type}, "
                     f"endpoint {device.endpoint}, pipelines {pipelines}, {state}"
                     + (", token decrypted" if device.secure else ""))
    lines.append(f"outputs ({len(settings.outputs)}):")
    for output in settings.outputs:
        routed = ", ".join(output.devices) or "all devices"
        lines.append(f"  {output.name}: type {output.type}, devices {routed}")
    lines.append(f"pipelines ({len(settings.pipelines)}):")
    for name in sorted(settings.pipelines):
        lines.append(f"  {name}")
    for device in settings.devices:
        if device.endpoint.startswith("ws://") and not is_loopback_url(device.endpoint):
            lines.append(f"warning: device {device.name} uses unencrypted ws:// to a host that is not loopback")
    return "\n".join(lines)


def is_loopback_url(url):
    """Tell whether URL points at 127.0.0.0/8, ::1 or localhost."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def state_paths(settings):
    """Return the paths of the status file and the device state root."""
    return {
        "status": os.path.join(settings.state_directory, "status.json"),
        "devices": os.path.join(settings.state_directory, "devices"),
    }
