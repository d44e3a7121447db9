#!/usr/bin/env python3
# Usage: python3 scripts/measure-listener.py <router pid> <router port>
# Measures finding 3 against a running router: fds held by silent sockets,
# partial request lines and bare prefaces, and the short HTTP/1.0 request.
import os, socket, sys, time
pid, port = int(sys.argv[1]), int(sys.argv[2])
def fds(): return len(os.listdir(f"/proc/{pid}/fd"))
base = fds()
def hold(n, payload):
    out = []
    for _ in range(n):
        s = socket.socket(); s.setblocking(True)
        try:
            s.connect(("127.0.0.1", port))
            if payload: s.sendall(payload)
        except OSError: pass
        out.append(s)
    return out
for what, n, payload in [("silent", 3000, b""), ("partial request line", 500, b"POST /v1/functions/x/invoke HTTP/1.1\r\nhost: x\r\n"), ("bare preface", 500, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")]:
    socks = hold(n, payload)
    time.sleep(2)
    at2 = fds() - base
    time.sleep(11)
    at13 = fds() - base
    print(f"{what}: {n} sockets -> router fds +{at2} after 2 s, +{at13} after 13 s")
    for s in socks: s.close()
    time.sleep(1)
s = socket.create_connection(("127.0.0.1", port)); s.settimeout(5)
t = time.time(); s.sendall(b"GET / HTTP/1.0\r\n\r\n")
try:
    data = s.recv(200); first = data.split(b"\r\n")[0].decode(); print(f"GET / HTTP/1.0: answered in {1000*(time.time()-t):.1f} ms: {first}")
except socket.timeout:
    print("GET / HTTP/1.0: no answer in 5 s")
