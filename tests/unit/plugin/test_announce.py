"""The announcement frames, field by field (the integration test proves neighbours heed them)."""

from __future__ import annotations

import ipaddress

from node_plugin.bridge import announce

MAC = "02:11:22:33:44:55"


def test_gratuitous_arp_is_a_broadcast_request_for_our_own_address() -> None:
    frame = announce.gratuitous_arp_frame(
        announce.mac_bytes(MAC), ipaddress.IPv4Address("10.1.2.3")
    )
    assert len(frame) == 14 + 28
    assert frame[0:6] == b"\xff" * 6  # Ethernet destination: broadcast
    assert frame[6:12] == bytes.fromhex("021122334455")
    assert frame[12:14] == b"\x08\x06"  # ARP
    arp = frame[14:]
    assert arp[0:8] == bytes.fromhex("0001 0800 06 04 0001")  # Ethernet/IPv4, request
    assert arp[8:14] == bytes.fromhex("021122334455")  # sender MAC
    assert arp[14:18] == bytes([10, 1, 2, 3]) == arp[24:28]  # sender IP = target IP
    assert arp[18:24] == b"\xff" * 6


def test_neighbour_advertisement_is_unsolicited_overriding_with_our_mac() -> None:
    address = ipaddress.IPv6Address("fd00::7")
    message = announce.neighbour_advertisement(announce.mac_bytes(MAC), address)
    assert len(message) == 32
    assert message[0:2] == bytes([136, 0])  # neighbour advertisement, code 0
    assert message[4:8] == bytes.fromhex("20000000")  # override; not solicited, not router
    assert message[8:24] == address.packed
    assert message[24:32] == bytes([2, 1]) + bytes.fromhex("021122334455")
