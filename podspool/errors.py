"""The exception hierarchy; only the command line turns these into exit codes."""


class PodspoolError(Exception):
    """Base of every error podspool raises on purpose."""


class ConfigError(PodspoolError):
    """Invalid configuration: exit status 2, and systemd does not restart."""

    def __init__(self, message, *, file=None, key=None, value=None, fix=None):
        self.file = file
        self.key = key
        self.fix = fix
        parts = []
        if file:
            parts.append(str(file))
        if key:
            parts.append(str(key))
        text = ": ".join(parts + [message])
        if value is not None:
            text += f" (got {value!r})"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class UsageError(PodspoolError):
    """Invalid command-line usage: exit status 2."""


class SecretError(ConfigError):
    """A secret that cannot be resolved or decrypted; the message never contains the secret."""


class SpoolError(PodspoolError):
    """The spool cannot be written or read."""


class SpoolFullError(SpoolError):
    """The spool reached max_bytes or the disk refused the write; the caller pauses."""


class ShipError(PodspoolError):
    """An output failed in a way its retry policy does not cover."""
