"""Load the main configuration file and its conf.d drop-ins into validated Settings.

Merge rules:
- The main file is a mapping. Drop-ins are `conf.d/*.yaml` and `conf.d/*.yml`
  beside it, read in name order; a missing or empty conf.d is fine.
- A drop-in is either a mapping with any of `devices`, `pipelines` and
  `outputs`, or a bare YAML list of devices as the product page writes them.
- Devices and outputs from all files are concatenated; pipelines are merged by
  name. A device name, device id, pipeline name or output name defined twice is
  an error that names both files.
- Unknown keys are errors. `${NAME}` and `$secret{NAME}` are resolved in every
  string value (podspool.secrets).

Every error is a ConfigError of the form `<file>: <key path>: <problem> (got
<value>); <fix>`, and never shows a secret.
"""

import glob
import logging
import os
import re

import yaml

from podspool import convert, schema
from podspool.errors import ConfigError
from podspool.secrets import Resolver, decrypt_token, load_key
from podspool.settings import (
    LogSettings,
    MetricsSettings,
    Settings,
    SpoolSettings,
)

log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = "/etc/podspool/podspool.yaml"
DROP_IN_KEYS = ("devices", "pipelines", "outputs")


def load(path=DEFAULT_CONFIG_FILE, environ=None, *, resolve_secrets=True):
    """Read, merge and validate the configuration rooted at PATH; raise ConfigError.

    With RESOLVE_SECRETS false, references that cannot be resolved become
    "(unresolved)", `secure` tokens stay encrypted and GeoIP databases are not
    opened: enough for `podspool status`, which needs names and directories only.
    """
    return Loader(path, environ, resolve_secrets=resolve_secrets).load()


def drop_in_files(main_file):
    """Return the drop-in files beside MAIN_FILE in the order they are read."""
    directory = os.path.join(os.path.dirname(os.path.abspath(main_file)), "conf.d")
    found = glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.yml"))
    return sorted(found, key=os.path.basename)


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a mapping key given twice, instead of keeping the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path):
    """Parse one YAML file; a syntax error names the file, line and column.

    Words of 12 or more characters in PyYAML's problem description are replaced
    by '...', because
    it can be a token written in the file (an unquoted `token: !abc` reads as a tag).
    """
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return yaml.load(handle, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError("file not found", file=path,
                          fix="check the path (a drop-in that is a broken link is removed or fixed)") from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", file=path,
                          fix="pass the main file with -c FILE; drop-ins must be files") from None
    except PermissionError:
        raise ConfigError("file cannot be read (permission denied)", file=path,
                          fix="let the service user read it") from None
    except OSError as exc:
        raise ConfigError(f"file cannot be read ({exc.strerror})", file=path, fix="check the file") from None
    except UnicodeDecodeError:
        raise ConfigError("file is not valid UTF-8", file=path, fix="save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        problem = re.sub(r"[^\s'\",]{12,}", "...", problem) if "given twice" not in problem else problem
        fix = "remove one of the two" if "given twice" in problem else \
            "fix the YAML syntax; quote values that start with !, *, & or @"
        raise ConfigError(f"{where}{problem}", file=path, fix=fix) from None


class Loader:
    """One load of the configuration; keeps the resolver so errors can be redacted."""

    def __init__(self, path, environ=None, *, resolve_secrets=True):
        self.path = os.path.abspath(path)
        self.environ = os.environ if environ is None else environ
        self.resolve_secrets = resolve_secrets
        self.resolver = None

    def load(self):
        try:
            return self._load()
        except ConfigError as exc:
            if self.resolver is not None and self.resolver.secret_values:
                raise ConfigError(self.resolver.redact(str(exc))) from None
            raise

    def _load(self):
        main = read_yaml(self.path)
        if main is None:
            main = {}
        if not isinstance(main, dict):
            raise ConfigError("the main file must be a mapping", file=self.path,
                              fix="start it with keys such as spool: and devices:")
        schema.check_keys(main, schema.TOP_LEVEL_KEYS, file=self.path, path="")

        secrets_directory = self._path_value(main, "secrets_directory", "/etc/podspool/secrets")
        self.resolver = Resolver(secrets_directory, self.environ, strict=self.resolve_secrets)
        files = [self.path]
        sections = {name: [] for name in DROP_IN_KEYS}
        self._collect(main, self.path, sections, main_file=True)
        for drop_in in drop_in_files(self.path):
            files.append(drop_in)
            self._collect_drop_in(drop_in, sections)

        context = schema.Context(self.resolver, self.path)
        spool = self._spool(main.get("spool") or {}, context)
        pipeline_names = schema.pipeline_names(sections["pipelines"])
        devices = schema.build_devices(sections["devices"], context, pipeline_names)
        # GeoIP databases must exist only for pipelines that an enabled device uses.
        used = {name for device in devices if device.status for name in device.pipelines}
        if not self.resolve_secrets:
            used = set()
        pipelines = schema.build_pipelines(sections["pipelines"], used)
        outputs = schema.build_outputs(sections["outputs"], context)
        devices = self._decrypt(main, devices)
        return Settings(
            spool=spool,
            state_directory=self._path_value(main, "state_directory", "/var/lib/podspool/state"),
            shared_key_file=self._path_value(main, "shared_key_file", "/etc/podspool/shared.key"),
            secrets_directory=secrets_directory,
            log=self._log(main.get("log") or {}, context),
            metrics=self._metrics(main.get("metrics"), context),
            pipelines=pipelines,
            outputs=tuple(outputs),
            devices=tuple(devices),
            files=tuple(files),
        )

    def _collect(self, mapping, file, sections, *, main_file=False):
        for name in DROP_IN_KEYS:
            if name not in mapping or mapping[name] is None:
                continue
            value = mapping[name]
            expected = dict if name == "pipelines" else list
            if not isinstance(value, expected):
                kind = "a mapping of name to processor list" if expected is dict else "a list"
                raise ConfigError(f"must be {kind}", file=file, key=name,
                                  value=type(value).__name__)
            if expected is dict:
                sections[name].extend((file, f"{name}.{key}", key, item) for key, item in value.items())
            else:
                sections[name].extend((file, f"{name}[{i}]", None, item) for i, item in enumerate(value))

    def _collect_drop_in(self, path, sections):
        content = read_yaml(path)
        if content is None:
            return
        if isinstance(content, list):
            sections["devices"].extend((path, f"[{i}]", None, item) for i, item in enumerate(content))
            return
        if not isinstance(content, dict):
            raise ConfigError("a drop-in must be a list of devices or a mapping", file=path,
                              fix="use devices:, pipelines: and outputs: keys, or a bare device list")
        schema.check_keys(content, DROP_IN_KEYS, file=path, path="")
        self._collect(content, path, sections)

    def _path_value(self, main, key, default):
        value = main.get(key, default)
        if self.resolver is not None:
            value = self.resolver.resolve(value, file=self.path, key=key)
        try:
            return convert.to_str(value)
        except ValueError as exc:
            raise ConfigError(str(exc), file=self.path, key=key, value=value) from None

    def _spool(self, raw, context):
        if not isinstance(raw, dict):
            raise ConfigError("must be a mapping", file=self.path, key="spool", value=type(raw).__name__)
        values = schema.convert_fields(raw, schema.SPOOL_FIELDS, context, path="spool")
        return SpoolSettings(**values)

    def _log(self, raw, context):
        values = schema.convert_fields(raw, schema.LOG_FIELDS, context, path="log")
        return LogSettings(**values)

    def _metrics(self, raw, context):
        if raw is None:
            return MetricsSettings()
        values = schema.convert_fields(raw, schema.METRICS_FIELDS, context, path="metrics")
        return MetricsSettings(**values)

    def _decrypt(self, main, devices):
        """Decrypt `secure: true` tokens; the shared key is needed only when one exists."""
        if not self.resolve_secrets or not any(device.secure for device in devices):
            return devices
        key_file = self._path_value(main, "shared_key_file", "/etc/podspool/shared.key")
        fernet = load_key(key_file, file=self.path)
        decrypted = []
        for device in devices:
            if device.secure:
                token = decrypt_token(fernet, device.token, file=device.source_file,
                                      key=f"device {device.name}: properties.token", device=device.name)
                self.resolver.secret_values.add(token)
                device = schema.replace_token(device, token)
            decrypted.append(device)
        return decrypted
