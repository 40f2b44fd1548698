"""Command-line options of `podspool emulate` (also `python -m podspool.emulator`)."""

import argparse

TOKEN_ENV = "PODSPOOL_EMULATOR_TOKEN"


def add_arguments(parser):
    """Add the emulator's options to PARSER (also used by `podspool emulate`)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free port (default 0)")
    parser.add_argument("--token", default=None,
                        help=f"Bearer token clients must send (default: ${TOKEN_ENV})")
    parser.add_argument("--cluster", default="example_hosted",
                        help="cluster id clients must send as cid (default example_hosted)")
    parser.add_argument("--events", metavar="DIR", default=None,
                        help="directory with message.ndjson, maillog.ndjson and audit.ndjson "
                             "(default: the bundled samples)")
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument("--once", action="store_true",
                        help="send each sample line once, byte for byte, then stay idle")
    volume.add_argument("--count", type=int, default=None,
                        help="events to generate per log type (default: endless)")
    parser.add_argument("--rate", type=float, default=None, metavar="EVENTS_PER_SECOND",
                        help="events per second per log type (default: as fast as the client reads)")
    parser.add_argument("--duplicate-ratio", type=float, default=0.0,
                        help="share of events sent twice, 0 to 1 (default 0)")
    parser.add_argument("--resume-window-seconds", type=float, default=3600.0,
                        help="how long a dropped session's position is kept (default 3600)")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate file; enables wss://")
    parser.add_argument("--tls-key", default=None, help="PEM private key file of --tls-cert")
    return parser


def build_parser():
    """Return the argument parser of `podspool emulate`."""
    parser = argparse.ArgumentParser(prog="podspool emulate",
                                     description="Serve a PoD-compatible log stream on loopback.")
    return add_arguments(parser)
