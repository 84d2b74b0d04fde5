#!/usr/bin/env python3
"""Send one SIP OPTIONS over UDP or TCP and print the status line.

  sip-options.py HOST PORT [udp|tcp] [DOMAIN]   exit 0 on 200, 1 otherwise

UDP is retransmitted (after 0.5, 1, 2 s) like a UA's Timer E. One script
for the chart's `helm test` pod (the chart reads it with .Files.Get) and
scripts/image-test.sh.
"""
import random
import socket
import sys


def options(host, port, transport="udp", domain="example.com"):
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=kind)[0]
    s = socket.socket(family, kind)
    s.connect(addr)
    lip, lport = s.getsockname()[:2]
    tag = "%08x" % random.getrandbits(32)
    msg = ("OPTIONS sip:%s SIP/2.0\r\n"
           "Via: SIP/2.0/%s %s:%d;branch=z9hG4bK%s;rport\r\n"
           "Max-Forwards: 70\r\n"
           "From: <sip:check@%s>;tag=%s\r\n"
           "To: <sip:%s>\r\n"
           "Call-ID: %s@check\r\n"
           "CSeq: 1 OPTIONS\r\n"
           "Content-Length: 0\r\n\r\n") % (domain, transport.upper(), lip, lport, tag, domain, tag, domain, tag)
    for timeout in (0.5, 1, 2, 4):
        s.settimeout(timeout)
        s.send(msg.encode())
        try:
            data = s.recv(65535)
        except socket.timeout:
            if transport == "tcp":
                break
            continue
        return data.split(b"\r\n", 1)[0].decode(errors="replace")
    return "no answer"


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    transport = sys.argv[3] if len(sys.argv) > 3 else "udp"
    domain = sys.argv[4] if len(sys.argv) > 4 else "example.com"
    try:
        line = options(host, port, transport, domain)
    except OSError as e:
        line = "error: %s" % e
    print("%s %s:%d -> %s" % (transport.upper(), host, port, line))
    sys.exit(0 if line.startswith("SIP/2.0 200") else 1)
