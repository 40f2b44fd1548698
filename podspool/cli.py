"""The `podspool` command line: the only place that configures logging and exits.

Exit status: 0 success, 1 runtime failure, 2 invalid usage or configuration
(the systemd unit lists 2 in RestartPreventExitStatus=).
"""

import argparse
import getpass
import logging
import os
import signal
import sys

from podspool import __version__
from podspool.config import DEFAULT_CONFIG_FILE
from podspool.errors import ConfigError, PodspoolError, UsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise instead of exiting, so main() owns exit codes."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def build_parser():
    parser = Parser(prog="podspool", description="Collect Proofpoint on Demand logs into a spool and ship them.")
    parser.add_argument("--version", action="version", version=f"podspool {__version__}")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG, websocket-client included")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    def add(name, help_text):
        command = commands.add_parser(name, help=help_text, description=help_text)
        return command

    def config_option(command):
        command.add_argument("-c", "--config", default=DEFAULT_CONFIG_FILE, metavar="FILE",
                             help=f"main configuration file (default {DEFAULT_CONFIG_FILE})")

    config_option(add("run", "run the service in the foreground"))
    config_option(add("check", "validate the configuration and resolve every secret"))
    keygen = add("keygen", "write a new service shared key (mode 0600)")
    keygen.add_argument("-o", "--output", required=True, metavar="FILE", help="key file to create; never overwritten")
    encrypt = add("encrypt-token", "read a token on stdin and print its ciphertext for secure: true")
    encrypt.add_argument("--key-file", default="/etc/podspool/shared.key", metavar="FILE",
                         help="service shared key (default /etc/podspool/shared.key)")
    status = add("status", "show devices and outputs of the running service")
    config_option(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    test = add("test-connection", "open one session for DEVICE and report the handshake result")
    test.add_argument("device", metavar="DEVICE", help="device name")
    config_option(test)
    # `emulate` hands its arguments to the emulator's own parser; see main().
    add("emulate", "run a PoD-compatible log stream server on loopback (see podspool emulate --help)")
    demo = add("demo", "run the whole product on this machine with the bundled sample events")
    demo.add_argument("--directory", default="podspool-demo", metavar="DIR",
                      help="working directory of the demo (default ./podspool-demo)")
    return parser


def setup_logging(fmt=None, level="info", debug=False):
    """Send log records to stderr: JSON lines, or text on a terminal or with FMT 'text'."""
    if fmt is None:
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else getattr(logging, level.upper()))
    # websocket-client logs handshake details at DEBUG and the websockets server (the
    # emulator) one line per connection at INFO; keep both quiet unless asked.
    for name in ("websocket", "websockets"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def command_check(args):
    from podspool import config, overview

    settings = config.load(args.config)
    overview.check_directories(settings)
    print(overview.describe(settings))
    return EXIT_OK


def command_keygen(args):
    from podspool.secrets import generate_key

    try:
        generate_key(args.output)
    except FileExistsError:
        raise UsageError(f"{args.output} already exists; podspool keygen never overwrites a key "
                         "(remove it first if you really mean to replace it)") from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"wrote a new shared key to {args.output} (mode 0600)")
    return EXIT_OK


def command_encrypt_token(args):
    from podspool.secrets import encrypt_token, load_key

    fernet = load_key(args.key_file, key="--key-file")
    if sys.stdin.isatty():
        token = getpass.getpass("token: ")
    else:
        token = sys.stdin.read()
    token = token.strip()
    if not token:
        raise UsageError("no token on standard input; pipe it in or type it at the prompt")
    print(encrypt_token(fernet, token))
    return EXIT_OK


def command_run(args):
    # Record stop signals that arrive while the configuration loads, before the
    # service installs its own handlers; without this they would kill the process.
    early = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: early.append(number))
    from podspool import config, service

    settings = config.load(args.config)
    setup_logging(settings.log.format if not sys.stderr.isatty() else "text",
                  settings.log.level, args.debug)
    return service.run(args.config, settings, early_signals=early)


def command_status(args):
    from podspool import config, status

    settings = config.load(args.config, resolve_secrets=False)
    return status.main(settings, as_json=args.json)


def command_test_connection(args):
    from podspool import config, probe

    settings = config.load(args.config)
    return probe.test_connection(settings, args.device)


def command_demo(args):
    from podspool import demo

    # The demo shows its own progress line; only problems are logged.
    setup_logging("text", "warning", args.debug)
    return demo.main(args.directory)


COMMANDS = {
    "run": command_run,
    "check": command_check,
    "keygen": command_keygen,
    "encrypt-token": command_encrypt_token,
    "status": command_status,
    "test-connection": command_test_connection,
    "demo": command_demo,
}


def main(argv=None):
    """Run one command and return its exit status; errors become one line on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["emulate"]:
        from podspool import emulator

        setup_logging()
        return emulator.main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(debug=args.debug)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PodspoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader of stdout went away (podspool status | head); not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
