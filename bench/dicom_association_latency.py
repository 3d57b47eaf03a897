#!/usr/bin/env python3
"""Association set-up and release latency of DICOM SCPs, side by side, from a raw socket.

    python bench/dicom_association_latency.py NAME=HOST:PORT:AET [NAME=HOST:PORT:AET ...]
                                              [--n 300] [--rounds 3] [--pause-ms 5]

For each target it first records the A-ASSOCIATE-RQ that dcmtk's ``findscu`` (from /usr/bin)
sends to that AE title, by letting it connect to a listening socket of this script; then, in
rounds that alternate the targets, it sends those exact bytes over a new TCP connection
(TCP_NODELAY) and times connect → A-ASSOCIATE-AC read ("set-up") and A-RELEASE-RQ → A-RELEASE-RP
read ("release"), printing each round's median. Associations follow each other after
``--pause-ms`` (a client process per association leaves 20 ms or more between them; an SCP
may use the pause, as the hub builds its next association when one ends). This is the part of a per-process C-ECHO or
C-FIND that the server decides, without the client process's start-up (20–40 ms of dcmtk's
own, which dominates ``bench/dicom.sh``'s per-process figures and their noise). Example, the hub
and Orthanc of a ``bench/dicom.sh`` style set-up:

    python bench/dicom_association_latency.py hub=127.0.0.1:11112:YILIAN orthanc=127.0.0.1:4242:ORTHANC

The calling AE title is BENCHSCU (the benchmark's). Loopback or a trusted network only."""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import subprocess
import threading
import time

RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def recorded_request(called: str) -> bytes:
    """The A-ASSOCIATE-RQ PDU findscu sends to ``called``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got: dict[str, bytes] = {}

    def accept_one() -> None:
        conn, _ = listener.accept()
        with conn:
            got["rq"] = read_pdu(conn)

    thread = threading.Thread(target=accept_one)
    thread.start()
    subprocess.run(["/usr/bin/findscu", "-aet", "BENCHSCU", "-aec", called, "-S", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "PatientID", "127.0.0.1", str(port)], capture_output=True, timeout=30,
                   env={"PATH": "/usr/bin:/bin", "TCP_NODELAY": "1"})
    thread.join(timeout=30)
    listener.close()
    if got.get("rq", b"\0")[:1] != b"\x01":
        raise SystemExit(f"findscu sent no A-ASSOCIATE-RQ for {called}")
    return got["rq"]


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the peer")
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> bytes:
    header = read_exactly(sock, 6)
    return header + read_exactly(sock, struct.unpack(">L", header[2:])[0])


def one_association(host: str, port: int, rq: bytes) -> tuple[float, float]:
    """(set-up, release) in milliseconds."""
    t0 = time.perf_counter()
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(rq)
        ac = read_pdu(sock)
        t1 = time.perf_counter()
        if ac[:1] != b"\x02":
            raise SystemExit(f"{host}:{port} answered PDU type 0x{ac[0]:02X}, not an A-ASSOCIATE-AC")
        sock.sendall(RELEASE_RQ)
        rp = read_pdu(sock)
        t2 = time.perf_counter()
        if rp[:1] != b"\x06":
            raise SystemExit(f"{host}:{port} answered PDU type 0x{rp[0]:02X}, not an A-RELEASE-RP")
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+", metavar="NAME=HOST:PORT:AET")
    ap.add_argument("--n", type=int, default=300, help="associations per target and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pause-ms", type=float, default=5.0, help="between two associations")
    a = ap.parse_args()
    targets = []
    for spec in a.targets:
        name, _, address = spec.partition("=")
        host, port, called = address.split(":")
        targets.append((name, host, int(port), recorded_request(called)))
    for name, host, port, rq in targets:
        for _ in range(20):  # warm-up: the servers' first associations, the client's caches
            one_association(host, port, rq)
    print("round target set-up_p50_ms release_p50_ms")
    for r in range(1, a.rounds + 1):
        for name, host, port, rq in targets:
            times = []
            for _ in range(a.n):
                times.append(one_association(host, port, rq))
                time.sleep(a.pause_ms / 1000)
            print(f"{r} {name} {statistics.median(t for t, _ in times):.3f} {statistics.median(t for _, t in times):.3f}",
                  flush=True)
            time.sleep(0.3)


if __name__ == "__main__":
    main()
