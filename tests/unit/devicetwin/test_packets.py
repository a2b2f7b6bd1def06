"""MQTT 3.1.1 packets: what the event bus's client encodes, and what it accepts from a broker."""

from __future__ import annotations

import pytest

from edgecore.eventbus import packets as p


def broker_publish(topic: str, payload: bytes, qos: int, pid: int = 0) -> bytes:
    """A PUBLISH as a broker sends it (the encoding is the same both ways)."""
    return p.publish(p.Publish(topic, payload, qos, pid))


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_every_length_encoding_parses_back(size: int) -> None:
    topic = "t"
    payload = b"x" * (size - 3) if size >= 3 else b""
    wire = broker_publish(topic, payload, 0)
    (packet,) = p.Parser(max_packet=3_000_000).feed(wire)
    assert p.parse_publish(packet) == p.Publish(topic, payload, 0, 0)


def test_packets_split_anywhere_come_out_whole_and_in_order() -> None:
    wire = (
        broker_publish("$hw/events/device/default/t1/twin/update", b'{"a":1}', 1, pid=7)
        + p.ack(p.PUBACK, 9)
        + bytes((p.PINGRESP << 4, 0))
        + broker_publish("a/b", b"\x00\xff" * 200, 2, pid=65535)
    )
    parser = p.Parser(max_packet=1024)
    packets = [packet for byte in wire for packet in parser.feed(bytes((byte,)))]
    assert [packet.kind for packet in packets] == [p.PUBLISH, p.PUBACK, p.PINGRESP, p.PUBLISH]
    assert p.parse_publish(packets[0]) == p.Publish("$hw/events/device/default/t1/twin/update", b'{"a":1}', 1, 7)
    assert p.packet_id(packets[1]) == 9
    assert p.parse_publish(packets[3]) == p.Publish("a/b", b"\x00\xff" * 200, 2, 65535)
    assert p.Parser(max_packet=1024).feed(wire) == packets  # and all at once


def test_what_the_client_sends() -> None:
    assert p.connect("edge-1", keepalive=30, clean_session=True) == (
        b"\x10\x12\x00\x04MQTT\x04\x02\x00\x1e\x00\x06edge-1"
    )
    assert p.subscribe(1, [("a/+", 1), ("b/#", 0)]) == b"\x82\x0e\x00\x01\x00\x03a/+\x01\x00\x03b/#\x00"
    assert p.ack(p.PUBREL, 258) == b"\x62\x02\x01\x02"  # PUBREL carries flags 0b0010
    assert p.ack(p.PUBACK, 1) == b"\x40\x02\x00\x01"
    assert p.publish(p.Publish("t", b"hi", 1, 5)) == b"\x32\x07\x00\x01t\x00\x05hi"
    assert p.PINGREQ_PACKET == b"\xc0\x00" and p.DISCONNECT_PACKET == b"\xe0\x00"


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "remaining length takes more than four bytes"),
        (b"\x30\xe9\x07", "a packet of 1001 bytes is over the limit of 1000"),
        (b"\x10\x00", "a broker does not send packet type 1 to a client"),
        (b"\x82\x02\x00\x01", "a broker does not send packet type 8 to a client"),
        (b"\x42\x02\x00\x01", "packet type 4 with flags 0x2, not 0x0"),
        (b"\x60\x02\x00\x01", "packet type 6 with flags 0x0, not 0x2"),
        (b"\x40\x03\x00\x01\x00", "packet type 4 of 3 bytes, not 2"),
        (b"\xd0\x01\x00", "PINGRESP with a body"),
    ],
)
def test_malformed_packets_from_the_broker_are_refused_by_name(wire: bytes, error: str) -> None:
    with pytest.raises(p.PacketError, match=error):
        p.Parser(max_packet=1000).feed(wire)


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"\x36\x05\x00\x01t\x00\x01", "PUBLISH with QoS 3"),
        (b"\x30\x01\x00", "PUBLISH without its topic"),
        (b"\x32\x04\x00\x02ab", "PUBLISH shorter than its topic and packet identifier"),
        (b"\x30\x03\x00\x01\xff", "PUBLISH whose topic is not UTF-8"),
    ],
)
def test_malformed_publishes_are_refused_by_name(wire: bytes, error: str) -> None:
    (packet,) = p.Parser(max_packet=1000).feed(wire)
    with pytest.raises(p.PacketError, match=error):
        p.parse_publish(packet)


def test_what_the_client_cannot_send_is_refused_before_anything_is_written() -> None:
    with pytest.raises(p.PacketError, match="no wildcards"):
        p.publish(p.Publish("a/#", b"", 0, 0))
    with pytest.raises(p.PacketError, match="QoS 3 is not 0, 1 or 2"):
        p.publish(p.Publish("a", b"", 3, 1))
    with pytest.raises(p.PacketError, match="keepalive 70000 s is outside"):
        p.connect("c", keepalive=70_000, clean_session=True)
    with pytest.raises(p.PacketError, match="at least one topic filter"):
        p.subscribe(1, [])
    with pytest.raises(p.PacketError, match="over MQTT's limit of 65535"):
        p.publish(p.Publish("t" * 70_000, b"", 0, 0))
