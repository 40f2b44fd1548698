"""Secret resolution: `${ENV}`, `$secret{NAME}` and tokens encrypted with the service shared key.

No function here puts a secret value into an exception message or a log line.
Callers that echo configuration values in errors pass them through `redact`.
"""

import os
import re
import stat

from cryptography.fernet import Fernet, InvalidToken

from podspool.errors import SecretError

# `${NAME}` or `$secret{NAME}`; any other `$` is kept as it is.
REFERENCE = re.compile(r"\$(?:\{([^}]*)\}|secret\{([^}]*)\})")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
UNRESOLVED = "(unresolved)"
# Shorter values are not redacted from messages: they would garble ordinary words, and a
# credential that short is not worth hiding.
MIN_REDACTED_LENGTH = 8


class Resolver:
    """Replace references in configuration strings, remembering what was secret."""

    def __init__(self, secrets_directory, environ=None, *, strict=True):
        self.secrets_directory = secrets_directory
        self.environ = os.environ if environ is None else environ
        # With strict=False an unresolvable reference becomes UNRESOLVED instead of an error,
        # for commands such as `status` that run outside the service's environment.
        self.strict = strict
        self.secret_values = set()

    def resolve(self, value, *, file, key, sensitive=False):
        """Return VALUE with every reference replaced; SENSITIVE marks the result as a secret."""
        if not isinstance(value, str) or "$" not in value:
            if sensitive and isinstance(value, str):
                self.secret_values.add(value)
            return value

        def replace(match):
            try:
                if match.group(1) is not None:
                    return self._from_environment(match.group(1), file=file, key=key)
                secret = self._from_file(match.group(2), file=file, key=key)
            except SecretError:
                if self.strict:
                    raise
                return UNRESOLVED
            self.secret_values.add(secret)
            return secret

        resolved = REFERENCE.sub(replace, value)
        if sensitive:
            self.secret_values.add(resolved)
        return resolved

    def _from_environment(self, name, *, file, key):
        if not ENV_NAME.match(name):
            raise SecretError(
                f"invalid environment variable name in ${{{name}}}",
                file=file, key=key, fix="use ${NAME} with letters, digits and underscores",
            )
        value = self.environ.get(name)
        if not value:
            raise SecretError(
                f"environment variable {name} is not set or empty",
                file=file, key=key, fix=f"set {name} in the service environment",
            )
        return value

    def _from_file(self, name, *, file, key):
        if not SECRET_NAME.match(name) or name in (".", ".."):
            raise SecretError(
                f"invalid secret name in $secret{{{name}}}",
                file=file, key=key, fix="use a plain file name of letters, digits, dot, dash, underscore",
            )
        places = []
        credentials = self.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            places.append(os.path.join(credentials, name))
        if self.secrets_directory:
            places.append(os.path.join(self.secrets_directory, name))
        for path in places:
            try:
                with open(path, "r", encoding="utf-8") as handle:
                    text = handle.read()
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as exc:
                raise SecretError(
                    f"secret file {path} cannot be read ({exc.__class__.__name__})",
                    file=file, key=key, fix="check its permissions and encoding",
                ) from None
            return text[:-1] if text.endswith("\n") else text
        raise SecretError(
            f"secret {name} not found in " + " or ".join(places or ["(no directory set)"]),
            file=file, key=key,
            fix="create the file, or set secrets_directory or systemd LoadCredential=",
        )

    def redact(self, text):
        """Replace every secret value this resolver has seen in TEXT with `***`."""
        for secret in sorted(self.secret_values, key=len, reverse=True):
            if len(secret) >= MIN_REDACTED_LENGTH:
                text = text.replace(secret, "***")
        return text


def generate_key(path):
    """Write a new Fernet key to PATH with mode 0600; never overwrite an existing file."""
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key + b"\n")
    finally:
        os.close(fd)


def load_key(path, *, file=None, key="shared_key_file"):
    """Read the service shared key, rejecting a file that group or others can read."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SecretError(
            f"shared key file {path} not found",
            file=file, key=key, fix="create it with `podspool keygen -o FILE`",
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"shared key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o})",
            file=file, key=key, fix=f"run `chmod 600 {path}`",
        )
    try:
        with open(path, "rb") as handle:
            raw = handle.read().strip()
        return Fernet(raw)
    except (OSError, ValueError) as exc:
        raise SecretError(
            f"shared key file {path} does not hold a valid key ({exc.__class__.__name__})",
            file=file, key=key, fix="write a new one with `podspool keygen -o FILE` and re-encrypt the tokens",
        ) from None


def encrypt_token(fernet, token):
    """Return the ciphertext to put in the configuration with `secure: true`."""
    return fernet.encrypt(token.encode("utf-8")).decode("ascii")


def decrypt_token(fernet, ciphertext, *, file, key, device):
    """Decrypt a `secure: true` token; errors name the device but never the token or the key."""
    try:
        return fernet.decrypt(ciphertext.strip().encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError, ValueError):
        raise SecretError(
            f"the token of device {device} cannot be decrypted with the shared key "
            "(wrong key, or damaged ciphertext)",
            file=file, key=key,
            fix="encrypt it again with `podspool encrypt-token --key-file KEY`",
        ) from None

