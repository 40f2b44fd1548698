"""Start-up checks and plain-text summaries of a configuration, without secrets."""

import logging
import os
import tempfile

from podspool.errors import ConfigError
from podspool.fsutil import ensure_dir
from podspool.session import is_cleartext_remote
from podspool.spool_files import list_closed

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
        if is_cleartext_remote(device.endpoint):
            lines.append(f"warning: device {device.name} uses unencrypted ws:// to a host that is not loopback")
    return "\n".join(lines)


def summary_line(settings):
    """Return the effective settings in one line, without secrets."""
    devices = ", ".join(f"{d.name}({d.type}{'' if d.status else ', disabled'})" for d in settings.devices)
    outputs = ", ".join(f"{o.name}({o.type})" for o in settings.outputs)
    return (f"config files {', '.join(settings.files)}; spool {settings.spool.directory} "
            f"(fsync {settings.spool.fsync}, cap {settings.spool.max_bytes} bytes); "
            f"state {settings.state_directory}; devices [{devices}]; outputs [{outputs}]")


def warn_unrouted_spools(settings):
    """Log the spool directories of devices no longer configured that still hold closed files."""
    configured = {device.name for device in settings.devices}
    try:
        names = sorted(os.listdir(settings.spool.directory))
    except OSError:
        return
    for name in names:
        if name in configured or name.startswith("."):
            continue
        left = list_closed(settings.spool.directory, name)
        if left:
            log.warning("the spool of %s, a device no longer configured, contains %d closed files that no "
                        "output ships; configure the device again (status: false ships them without a "
                        "session), or remove them",
                        name, len(left), extra={"device": name})
