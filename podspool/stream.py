"""Reading an open session: keep-alive, batched frame reads and the closing handshake.

These functions run on the device thread and raise websocket-client or
socket exceptions as they come; the device turns them into SessionErrors
with as_session_error.
"""

import time
from dataclasses import dataclass

import websocket
from websocket import ABNF

from podspool.session import READ_SLICE_SECONDS, ConnectionDropped, SessionError, SessionStalled

# How long a stop waits for the server's close frame, spooling the frames sent before it.
CLOSE_WAIT_SECONDS = 0.5
# One read step hands at most this much to the writer in one batch.
BATCH_MAX_FRAMES = 1000
BATCH_MAX_BYTES = 8 * 1024 * 1024
DATA_OPCODES = (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY)
NORMAL_CLOSURE = 1000


@dataclass
class Session:
    """The open session's bookkeeping; times are time.monotonic() values."""

    ws: object
    replay: bool
    opened: float
    last_ping: float
    last_frame: float
    events: int = 0


def keep_alive(session, interval_seconds, timeout_seconds):
    """Ping when due; raise SessionStalled when nothing arrived for the interval plus the timeout."""
    mono = time.monotonic()
    silence = mono - session.ws.last_received
    limit = interval_seconds + timeout_seconds
    if silence > limit:
        raise SessionStalled(f"nothing received for {silence:.1f} s (limit {limit:g} s)")
    if mono - session.last_ping >= interval_seconds:
        session.ws.ping()
        session.last_ping = mono


def read_frames(ws):
    """Read for one slice; return (data frames, close frame payload or None).

    After the first frame only frames already buffered are taken, so a
    busy stream is written in batches and a quiet one without delay.
    Frames come from websocket-client's frame parser. A whole text or binary
    frame, the usual case, is taken directly; everything else goes through
    the steps of WebSocket.recv_data_frame (fragments, ping, pong, close).
    """
    frames, size = [], 0
    # NOTE: frame_buffer and cont_frame.recving_frames are websocket-client internals,
    # present from 1.8 to 1.9.2 (the versions setup.cfg allows up to 2).
    next_frame = ws.frame_buffer.recv_frame
    fragments = ws.cont_frame
    ws.read_deadline = time.monotonic() + READ_SLICE_SECONDS
    try:
        while len(frames) < BATCH_MAX_FRAMES and size < BATCH_MAX_BYTES:
            frame = next_frame()
            ws.buffered_only = True
            if frame.fin and frame.opcode in DATA_OPCODES and not fragments.recving_frames:
                data = frame.data
            else:
                data = _handle_other_frame(ws, frame)
                if frame.opcode == ABNF.OPCODE_CLOSE:
                    return frames, data
                if data is None:
                    continue
            frames.append(data)
            size += len(data)
    except websocket.WebSocketTimeoutException:
        pass  # the slice is over; a partly read frame stays in websocket-client's buffer
    finally:
        ws.buffered_only = False
        ws.read_deadline = None
    return frames, None


def _handle_other_frame(ws, frame):
    """Handle FRAME as WebSocket.recv_data_frame does.

    Return the payload of a close frame or of the last fragment of a message, else None.
    """
    opcode = frame.opcode
    if opcode in DATA_OPCODES or opcode == ABNF.OPCODE_CONT:
        ws.cont_frame.validate(frame)
        ws.cont_frame.add(frame)
        if ws.cont_frame.is_fire(frame):
            return ws.cont_frame.extract(frame)[1].data
        return None
    if opcode == ABNF.OPCODE_CLOSE:
        ws.send_close()
        return frame.data
    if opcode == ABNF.OPCODE_PING:
        if len(frame.data) >= 126:
            raise websocket.WebSocketProtocolException("Ping message is too long")
        ws.pong(frame.data)
    return None


def drain_for_close(ws):
    """Send a normal close frame and return the data frames received before the server's close frame."""
    ws.send_close(NORMAL_CLOSURE, b"client stopping")
    deadline = time.monotonic() + CLOSE_WAIT_SECONDS
    ws.read_deadline = deadline
    frames = []
    while time.monotonic() < deadline:
        try:
            frame = ws.recv_frame()
        except websocket.WebSocketTimeoutException:
            continue
        if frame.opcode == ABNF.OPCODE_CLOSE:
            break
        if frame.opcode in DATA_OPCODES or frame.opcode == ABNF.OPCODE_CONT:
            ws.cont_frame.validate(frame)
            ws.cont_frame.add(frame)
            if ws.cont_frame.is_fire(frame):
                frames.append(ws.cont_frame.extract(frame)[1].data)
    ws.read_deadline = None
    return frames


def as_session_error(exc):
    """Return EXC as a SessionError whose message contains no secret."""
    if isinstance(exc, SessionError):
        return exc
    if isinstance(exc, websocket.WebSocketConnectionClosedException):
        return ConnectionDropped("the connection closed without a close frame")
    if isinstance(exc, ConnectionResetError):
        return ConnectionDropped("the connection was reset by the peer")
    if isinstance(exc, websocket.WebSocketProtocolException):
        return ConnectionDropped(f"WebSocket protocol error: {exc}")
    if isinstance(exc, OSError):
        return ConnectionDropped(f"network error: {type(exc).__name__} ({exc.strerror or 'no detail'})")
    return ConnectionDropped(f"WebSocket error: {type(exc).__name__}")
