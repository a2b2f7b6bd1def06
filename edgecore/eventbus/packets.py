"""MQTT 3.1.1 packets, as far as EdgeCore's event bus needs them: what a client sends, encoded, and what a
broker sends, parsed from a byte stream. No I/O here; ``edgecore.eventbus.mqtt`` moves the bytes.

Only the client's side of the protocol: CONNECT without a will or credentials (EdgeCore talks to the node's
own broker on loopback, as KubeEdge's external mode does), PUBLISH at QoS 0, 1 and 2 both ways, SUBSCRIBE,
PINGREQ and DISCONNECT. A packet a client never receives (CONNECT, SUBSCRIBE, PINGREQ…) is a protocol error.
"""

from __future__ import annotations

from dataclasses import dataclass

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

_FROM_BROKER = {CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP}
# The fixed-header flags MQTT 3.1.1 requires (section 2.2.2); PUBLISH carries its own (dup, QoS, retain).
_REQUIRED_FLAGS = {PUBREL: 0x02, SUBSCRIBE: 0x02, UNSUBSCRIBE: 0x02}

MAX_REMAINING_LENGTH = 268_435_455  # four bytes of variable-length integer
SUBACK_FAILURE = 0x80

CONNACK_REFUSED = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

PINGREQ_PACKET = bytes((PINGREQ << 4, 0))
DISCONNECT_PACKET = bytes((DISCONNECT << 4, 0))


class PacketError(ValueError):
    """What the broker sent is not MQTT 3.1.1 a client can accept; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Packet:
    kind: int
    flags: int  # the low four bits of the first byte
    body: bytes  # the variable header and payload


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 at QoS 0
    retain: bool = False
    dup: bool = False


# --- encoding ----------------------------------------------------------------------------------------------


def _remaining_length(n: int) -> bytes:
    if n > MAX_REMAINING_LENGTH:
        raise PacketError(f"a packet of {n} bytes is over MQTT's limit of {MAX_REMAINING_LENGTH}")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise PacketError(f"a string of {len(raw)} bytes is over MQTT's limit of 65535")
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining_length(len(body)) + body


def connect(client_id: str, *, keepalive: int, clean_session: bool) -> bytes:
    if not 0 <= keepalive <= 0xFFFF:
        raise PacketError(f"keepalive {keepalive} s is outside MQTT's 0..65535")
    flags = 0x02 if clean_session else 0x00
    body = _string("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + _string(client_id)
    return _packet(CONNECT << 4, body)


def publish(message: Publish) -> bytes:
    if message.qos not in (0, 1, 2):
        raise PacketError(f"QoS {message.qos} is not 0, 1 or 2")
    if not message.topic or "+" in message.topic or "#" in message.topic:
        raise PacketError(f"cannot publish to {message.topic!r}: a topic name is not empty and has no wildcards")
    first = PUBLISH << 4 | message.qos << 1 | (0x08 if message.dup else 0) | (0x01 if message.retain else 0)
    head = _string(message.topic)
    if message.qos:
        head += message.packet_id.to_bytes(2, "big")
    return _packet(first, head + message.payload)


def subscribe(packet_id: int, topics: list[tuple[str, int]]) -> bytes:
    if not topics:
        raise PacketError("SUBSCRIBE needs at least one topic filter")
    body = packet_id.to_bytes(2, "big") + b"".join(_string(topic) + bytes((qos,)) for topic, qos in topics)
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP for ``packet_id``."""
    return _packet(kind << 4 | _REQUIRED_FLAGS.get(kind, 0), packet_id.to_bytes(2, "big"))


# --- parsing -----------------------------------------------------------------------------------------------


class Parser:
    """Packets out of a byte stream, fed as it arrives; a packet larger than ``max_packet`` is refused as soon
    as its length is known, before the rest of it is waited for."""

    __slots__ = ("_buffer", "max_packet")

    def __init__(self, max_packet: int) -> None:
        self.max_packet = max_packet
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        buffer = self._buffer
        buffer += data
        packets: list[Packet] = []
        start = 0
        end = len(buffer)
        while end - start >= 2:
            head = _remaining_length_at(buffer, start + 1, end)
            if head is None:
                break  # the length is not all here yet
            length, at = head
            if length > self.max_packet:
                raise PacketError(f"a packet of {length} bytes is over the limit of {self.max_packet}")
            if end - at < length:
                break
            first = buffer[start]
            packets.append(_checked(Packet(first >> 4, first & 0x0F, bytes(buffer[at : at + length]))))
            start = at + length
        if start:
            del buffer[:start]
        return packets


def _remaining_length_at(buffer: bytearray, at: int, end: int) -> tuple[int, int] | None:
    """The remaining length encoded at ``at`` and where the packet's body starts; None while incomplete."""
    length = 0
    for i in range(4):
        if at + i == end:
            return None
        digit = buffer[at + i]
        length |= (digit & 0x7F) << (7 * i)
        if not digit & 0x80:
            return length, at + i + 1
    raise PacketError("malformed packet: its remaining length takes more than four bytes")


def _checked(packet: Packet) -> Packet:
    if packet.kind not in _FROM_BROKER:
        raise PacketError(f"a broker does not send packet type {packet.kind} to a client")
    want = _REQUIRED_FLAGS.get(packet.kind, 0)
    if packet.kind != PUBLISH and packet.flags != want:
        raise PacketError(f"packet type {packet.kind} with flags {packet.flags:#x}, not {want:#x}")
    if packet.kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK) and len(packet.body) != 2:
        raise PacketError(f"packet type {packet.kind} of {len(packet.body)} bytes, not 2")
    if packet.kind == PINGRESP and packet.body:
        raise PacketError("PINGRESP with a body")
    return packet


def packet_id(packet: Packet) -> int:
    if len(packet.body) < 2:
        raise PacketError(f"packet type {packet.kind} without its packet identifier")
    return int.from_bytes(packet.body[:2], "big")


def connack(packet: Packet) -> int:
    """The CONNACK's return code (0: accepted)."""
    if len(packet.body) != 2:
        raise PacketError(f"CONNACK of {len(packet.body)} bytes, not 2")
    return packet.body[1]


def suback(packet: Packet) -> tuple[int, list[int]]:
    """The SUBACK's packet identifier and its return codes, one per topic filter (0x80: refused)."""
    if len(packet.body) < 3:
        raise PacketError("SUBACK without return codes")
    return packet_id(packet), list(packet.body[2:])


def parse_publish(packet: Packet) -> Publish:
    qos = (packet.flags >> 1) & 0x03
    if qos == 3:
        raise PacketError("PUBLISH with QoS 3")
    body = packet.body
    if len(body) < 2:
        raise PacketError("PUBLISH without its topic")
    size = int.from_bytes(body[:2], "big")
    at = 2 + size
    if len(body) < at + (2 if qos else 0):
        raise PacketError("PUBLISH shorter than its topic and packet identifier")
    try:
        topic = body[2:at].decode()
    except UnicodeDecodeError:
        raise PacketError("PUBLISH whose topic is not UTF-8") from None
    pid = 0
    if qos:
        pid = int.from_bytes(body[at : at + 2], "big")
        at += 2
    return Publish(topic, body[at:], qos, pid, retain=bool(packet.flags & 0x01), dup=bool(packet.flags & 0x08))
