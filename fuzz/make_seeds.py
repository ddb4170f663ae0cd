#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/: valid instances of each format, built
from the format descriptions in the code (blob.rs, record.rs, soft/keyfile.rs). Re-run after a
format change; the seeds are committed."""
import hashlib, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))

def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def blob(alg, kind, name, version, payload_len):
    n = name.encode()
    return (b"SRWK" + bytes([1, alg, kind, len(n)]) + n + struct.pack(">I", version)
            + struct.pack(">H", payload_len) + bytes((i * 37) & 0xFF for i in range(payload_len)))

write("wrapped_blob", "kwp-root", blob(1, 1, "acme", 1, 56))
write("wrapped_blob", "kw-root", blob(2, 1, "acme.prod-eu_1", 7, 56))
write("wrapped_blob", "gcm-root", blob(3, 1, "a", 4294967295, 60))
write("wrapped_blob", "kwp-kek", blob(1, 2, "payroll", 2, 56))

def record(dek_version, body_len):
    return bytes([1]) + struct.pack(">I", dek_version) + bytes(range(12)) + bytes(body_len)

write("record_header", "empty-value", record(1, 16))
write("record_header", "short-value", record(3, 16 + 11))
write("record_header", "header-only", record(1, 0))

def keyfile(entries):
    body = b"SRKF" + bytes([1]) + bytes(range(16)) + struct.pack(">I", len(entries))
    for name, version, status in entries:
        n = name.encode()
        body += bytes([len(n)]) + n + struct.pack(">I", version) + bytes([status])
        if status != 3:
            body += bytes([0x11] * 32)
    return body + hashlib.sha256(body).digest()

write("soft_key_file", "empty", keyfile([]))
write("soft_key_file", "three", keyfile([("acme", 1, 1), ("acme", 2, 2), ("zeta", 1, 3)]))
