#!/usr/bin/env python3
"""Raw packets for dataplane tests, where sockets cannot do it.

  rawpkt.py send-sctp-init SRC DST DPORT [SPORT]   an SCTP INIT (works without SCTP in the kernel)
  rawpkt.py send-tcp-synack SRC DST DPORT [SPORT]  a lone SYN-ACK: conntrack state INVALID
  rawpkt.py listen sctp|tcp SECONDS                prints one JSON line per packet received

IPv4 only. SRC must be an address of the sending namespace.
"""
import json
import socket
import struct
import sys
import time

PROTO = {"sctp": 132, "tcp": 6}


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def sctp_init(sport: int, dport: int) -> bytes:
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1234ABCD, 65535, 1, 1, 1)
    pkt = struct.pack("!HHII", sport, dport, 0, 0) + chunk
    crc = crc32c(pkt)
    # SCTP's checksum is stored little-endian
    return pkt[:8] + struct.pack("<I", crc) + pkt[12:]


def inet_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def tcp_synack(src: str, dst: str, sport: int, dport: int) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1000, 1, 5 << 4, 0x12, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    csum = inet_sum(pseudo + hdr)
    return hdr[:16] + struct.pack("!H", csum) + hdr[18:]


def send(kind: str, src: str, dst: str, dport: int, sport: int) -> None:
    proto = "sctp" if kind == "send-sctp-init" else "tcp"
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO[proto])
    s.bind((src, 0))
    pkt = sctp_init(sport, dport) if proto == "sctp" else tcp_synack(src, dst, sport, dport)
    s.sendto(pkt, (dst, 0))
    print(json.dumps({"sent": proto, "src": src, "dst": dst, "sport": sport, "dport": dport}))


def listen(proto: str, seconds: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO[proto])
    s.settimeout(0.2)
    end = time.time() + seconds
    print(json.dumps({"listening": proto}), flush=True)
    while time.time() < end:
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            continue
        ihl = (data[0] & 0x0F) * 4
        src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
        sport, dport = struct.unpack("!HH", data[ihl : ihl + 4])
        info = {"proto": proto, "src": src, "dst": dst, "sport": sport, "dport": dport}
        if proto == "sctp":
            info["chunk"] = data[ihl + 12]
        else:
            info["flags"] = data[ihl + 13]
        print(json.dumps(info), flush=True)


def main() -> None:
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] in ("send-sctp-init", "send-tcp-synack"):
        send(a[0], a[1], a[2], int(a[3]), int(a[4]) if len(a) > 4 else 40000)
    elif len(a) == 3 and a[0] == "listen":
        listen(a[1], float(a[2]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
