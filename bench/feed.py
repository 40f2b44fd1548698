"""Event sources for the benchmark: the PoD emulator, and a recording of it played back at wire speed.

The emulator (websockets in pure Python) frames and sends about 100,000
events per second on one core, whatever their size, which is below what
the clients under test can read. So the benchmark records what the emulator
sends for a log type once, server frames included, and a replay server then
sends those bytes with socket.sendfile to every client that connects. Every
measured client reads the same bytes, and the server side costs almost no
CPU.

Run as `python bench/feed.py serve TYPE=FILE...` to start a replay server.
It prints `listening on ws://127.0.0.1:PORT/v1/stream` and serves the file of
the `type` query parameter until it is terminated or its parent process ends.
"""

import base64
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import websocket
from websocket._abnf import frame_buffer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "bench-token-not-secret"
CLUSTER = "example_hosted"
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A close frame with code 1000, sent when the client sends anything after the recording.
CLOSE_FRAME = b"\x88\x02\x03\xe8"
# The emulator sends nothing once its --count events are out; this much silence ends a recording.
RECORD_IDLE_SECONDS = 1.0
START_TIMEOUT_SECONDS = 30.0


def start_server(command, cwd=ROOT):
    """Start COMMAND, wait for its `listening on URL` line and return (process, url)."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"{command[:4]} did not start: first line {line!r}")
    return process, line.split()[-1]


def start_emulator(count):
    """Start `podspool emulate` with COUNT events per log type in its own process; return (process, url)."""
    command = [sys.executable, "-m", "podspool", "emulate", "--port", "0", "--count", str(count),
               "--token", TOKEN, "--cluster", CLUSTER]
    return start_server(command)


def stop_process(process):
    """Terminate PROCESS and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def stream_url(url, log_type):
    """Return URL with the PoD query parameters of LOG_TYPE."""
    return f"{url}?cid={CLUSTER}&type={log_type}"


def record_stream(log_type, count, path):
    """Record the first COUNT events the emulator sends for LOG_TYPE to PATH; return the byte count.

    The recording contains the server's WebSocket frames exactly as they
    arrived after the handshake. It is checked with websocket-client's frame
    parser: COUNT text frames and nothing else.
    """
    process, url = start_emulator(count)
    try:
        ws = websocket.WebSocket(skip_utf8_validation=True)
        ws.connect(stream_url(url, log_type), header=[f"Authorization: Bearer {TOKEN}"])
        # websocket-client reads the handshake response a byte at a time, so no frame byte is buffered yet.
        ws.sock.settimeout(RECORD_IDLE_SECONDS)
        with open(path, "wb") as out:
            total = 0
            while True:
                try:
                    chunk = ws.sock.recv(1 << 20)
                except TimeoutError:
                    break
                if not chunk:
                    break
                out.write(chunk)
                total += len(chunk)
        ws.shutdown()
    finally:
        stop_process(process)
    frames = count_frames(path)
    if frames != count:
        raise RuntimeError(f"recording of {log_type} has {frames} frames, expected {count}")
    return total


def count_frames(path):
    """Return the number of text frames in the recording at PATH, read with websocket-client's parser."""
    size = os.path.getsize(path)
    with open(path, "rb", buffering=1 << 20) as source:
        frames = frame_buffer(source.read, skip_utf8_validation=True)
        count = 0
        while source.tell() < size:
            frame = frames.recv_frame()
            if frame.opcode != websocket.ABNF.OPCODE_TEXT:
                raise RuntimeError(f"unexpected frame opcode {frame.opcode} in {path}")
            count += 1
    return count


def accept_key(request_key):
    """Return the Sec-WebSocket-Accept value for the client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(request_key.encode("ascii") + WEBSOCKET_GUID).digest()).decode("ascii")


def read_request(conn):
    """Return (request target, lower-case headers) of the HTTP request on CONN."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("client closed before the request ended")
        data += chunk
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    target = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return target, headers


def serve_connection(conn, recordings):
    """Upgrade CONN, send the recording of the requested type, then reply to the client's close frame."""
    with conn:
        target, headers = read_request(conn)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        path = recordings.get((query.get("type") or [""])[0])
        if path is None or headers.get("authorization") != f"Bearer {TOKEN}":
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        conn.sendall((
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(headers['sec-websocket-key'])}\r\n\r\n"
        ).encode("ascii"))
        with open(path, "rb") as recording:
            conn.sendfile(recording)
        # The client's next bytes are its close frame (a ping is not due within a benchmark run).
        if conn.recv(4096):
            conn.sendall(CLOSE_FRAME)


def exit_with_parent():
    """Start a thread that ends this process once its parent, the benchmark driver, is gone."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(recordings):
    """Serve RECORDINGS (log type -> file) on a free loopback port until the process or its parent ends."""
    exit_with_parent()
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"listening on ws://127.0.0.1:{listener.getsockname()[1]}/v1/stream", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_quietly, args=(conn, recordings), daemon=True).start()


def _serve_quietly(conn, recordings):
    try:
        serve_connection(conn, recordings)
    except OSError:
        pass  # the client went away; the benchmark reports what it measured


def start_replay(recordings):
    """Start a replay server for RECORDINGS (log type -> file) in its own process; return (process, url)."""
    command = [sys.executable, os.path.abspath(__file__), "serve"]
    command += [f"{log_type}={path}" for log_type, path in recordings.items()]
    return start_server(command)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "serve":
        sys.exit("usage: python bench/feed.py serve TYPE=FILE...")
    serve(dict(argument.split("=", 1) for argument in sys.argv[2:]))
