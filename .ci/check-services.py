#!/usr/bin/env python3
"""Checks that Postgres, Redis and RabbitMQ answer in their own protocol.

An open port is not enough (a half-started server accepts and hangs), so each check
speaks the first exchange of the protocol: Postgres's SSLRequest, Redis's PING, AMQP's
protocol header. Exits 1, naming each server that did not answer, with the command that
starts it on this kind of machine.
"""
import os
import socket
import struct
import sys

TIMEOUT = 3.0


def exchange(host, port, payload, size=8):
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(payload)
        return s.recv(size)


def postgres(host, port):
    reply = exchange(host, port, struct.pack("!ii", 8, 80877103), 1)
    return reply in (b"S", b"N"), f"SSLRequest answered {reply!r}"


def redis(host, port):
    reply = exchange(host, port, b"PING\r\n", 7)
    return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH"), f"PING answered {reply!r}"


def rabbitmq(host, port):
    reply = exchange(host, port, b"AMQP\x00\x00\x09\x01", 1)
    # A Connection.Start method frame begins with frame type 1.
    return reply == b"\x01", f"protocol header answered {reply!r}"


CHECKS = [
    ("PostgreSQL", "KEEL_CI_POSTGRES", "127.0.0.1:5432", postgres,
     "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"),
    ("Redis", "KEEL_CI_REDIS", "127.0.0.1:6379", redis,
     'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no'),
    ("RabbitMQ", "KEEL_CI_RABBITMQ", "127.0.0.1:5672", rabbitmq, "rabbitmq-server -detached"),
]

failed = False
for name, var, default, check, start in CHECKS:
    host, port = os.environ.get(var, default).rsplit(":", 1)
    try:
        ok, detail = check(host, int(port))
    except OSError as e:
        ok, detail = False, str(e)
    if ok:
        print(f"  {name} answers on {host}:{port}")
    else:
        failed = True
        print(f"ERROR: {name} does not answer on {host}:{port} ({detail}).", file=sys.stderr)
        print(f"       Start it, e.g.: {start}", file=sys.stderr)
sys.exit(1 if failed else 0)
