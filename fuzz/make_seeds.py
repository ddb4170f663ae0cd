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

# ---------------------------------------------------------------------------------------------
# Store formats (crates/strongroom-store/src/audit.rs and format.rs).

def u8(n): return struct.pack(">B", n)
def u16(n): return struct.pack(">H", n)
def u32(n): return struct.pack(">I", n)
def u64(n): return struct.pack(">Q", n)
def name(s): return u8(len(s)) + s.encode()

def audit(seq, time, op, outcome, actor, target, detail, prev, mac):
    a, t, d = actor.encode(), target.encode(), detail.encode()
    return (u8(1) + u64(seq) + u64(time) + u8(op) + u8(outcome) + u8(len(a)) + a
            + u16(len(t)) + t + u16(len(d)) + d + bytes([prev] * 32) + bytes([mac] * 32))

write("audit_entry", "store-create", audit(1, 1795999415, 1, 0, "strongroom", "store", "", 0x11, 0x22))
write("audit_entry", "keyring-create", audit(2, 1795999416, 20, 0, "ops:alice", "keyring payroll",
                                             "under root service/v1", 0x33, 0x44))
write("audit_entry", "refused-unicode", audit(7, 1000, 40, 1, "naïve", "record b'k\\x00' in keyring p",
                                              "keyring p is disabled; détail", 0x55, 0x66))
write("audit_entry", "target-at-limit", audit(3, 5, 30, 2, "", "t" * 4096, "d" * 4096, 0, 0xFF))

def audit_replica(seq, time, op, outcome, actor, replica, target, detail, prev, mac):
    # Format 2: the replica of a fleet that wrote the entry, after the actor.
    a, r, t, d = actor.encode(), replica.encode(), target.encode(), detail.encode()
    return (u8(2) + u64(seq) + u64(time) + u8(op) + u8(outcome) + u8(len(a)) + a + u8(len(r)) + r
            + u16(len(t)) + t + u16(len(d)) + d + bytes([prev] * 32) + bytes([mac] * 32))

write("audit_entry", "fleet-replica", audit_replica(9, 1795999417, 20, 0, "svc", "pod-7f3a-1234",
                                                  "keyring tenant", "under root service/v1", 0x77, 0x88))

def state(code, not_before=0):
    return u8(code) + (u64(not_before) if code == 3 else b"")

def store_meta(store_id, created, kind, instance, root):
    i = instance.encode()
    return b"SRSM" + u8(1) + store_id + u64(created) + name(kind) + u16(len(i)) + i + name(root)

write("store_meta", "meta-soft", store_meta(bytes(range(16)), 1795999415, "soft", "0011223344556677", "service"))
write("store_meta", "meta-pkcs11", store_meta(bytes([7] * 16), 1, "pkcs11", "pkcs11:serial=0123abcd", "acme.prod-eu_1"))
write("store_meta", "root-enabled", u8(1) + state(1) + u64(1795999415))
write("store_meta", "root-pending", u8(1) + state(3, 1796604215) + u64(5))
write("store_meta", "root-destroyed", u8(1) + state(4) + u64(0))
def keyring_entry(kid, root, st, kek, dek, created):
    return u8(1) + u64(kid) + name(root) + st + u32(kek) + u32(dek) + u64(created)
write("store_meta", "keyring-enabled", keyring_entry(1, "service", state(1), 1, 1, 1795999415))
write("store_meta", "keyring-disabled", keyring_entry(42, "acme", state(2), 3, 9, 1))
write("store_meta", "keyring-pending", keyring_entry(2**64 - 1, "r1", state(3, 99), 2**32 - 1, 7, 5))
write("store_meta", "rootkey-v1", b"service\x00" + u32(1))
write("store_meta", "rootkey-v258", b"acme.eu-1\x00" + u32(258))
write("store_meta", "keyring-name", b"payroll")
write("store_meta", "keyring-name-2", b"tenant-42.eu_west")

# ---------------------------------------------------------------------------------------------
# strongroom.conf (crates/strongroom-cli/src/config.rs).

write("cli_config", "soft", b"""# strongroom configuration, written by `strongroom init`.
# It never holds a PIN, only where to find one.
format = 1
backend = soft
primary-root = service
cache-ttl-secs = 300
destruction-delay-secs = 604800
audit-data-access = false
""")
write("cli_config", "pkcs11-label-env", b"""format = 1
backend = pkcs11
pkcs11.module = /usr/lib/softhsm/libsofthsm2.so
pkcs11.token = my token
pkcs11.pin-env = STRONGROOM_PIN
primary-root = acme.prod
audit-data-access = true
""")
write("cli_config", "pkcs11-slot-file", b"""format=1
backend=pkcs11
pkcs11.module=/opt/hsm/lib/libcs_pkcs11_R3.so
pkcs11.slot=3
pkcs11.pin-file=/run/secrets/hsm-pin
primary-root=service
cache-ttl-secs=60
destruction-delay-secs=3600
""")
write("cli_config", "toml-soft", b"""# strongroom configuration, written by `strongroom init`.
format = 2
backend = "soft"
primary-root = "service"
cache-ttl-secs = 300
destruction-delay-secs = 604800
audit-data-access = false
""")
write("cli_config", "toml-pkcs11", b"""format = 2
backend = "pkcs11"   # a trailing comment
primary-root = "service"

[pkcs11]
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "my-token"
pin-env = "STRONGROOM_PIN"
namespace = "strongroom-3f9a01bc"
""")
write("cli_config", "toml-postgres-fleet", b"""format = 2
backend = "soft"
primary-root = "service"

[storage]
engine = "postgres"
url-env = "STRONGROOM_PG_URL"
schema = "strongroom"
pool-size = 8
fleet = true
fleet-poll-ms = 250
""")
write("cli_config", "minimal-crlf", b"format = 1\r\nbackend = soft\r\nprimary-root = r\r\n")

# ---------------------------------------------------------------------------------------------
# PKCS#11 root records and key selectors (crates/strongroom-pkcs11/src/objects.rs).

write("pkcs11_root_record", "enabled-managed", b"strongroom-root v1; seq=1; state=enabled; key=managed")
write("pkcs11_root_record", "disabled-label", b"strongroom-root v1; seq=2; state=disabled(encrypt,decrypt); key=label:customer key; 2026")
write("pkcs11_root_record", "disabled-wrap", b"strongroom-root v1; seq=9; state=disabled(wrap,unwrap); key=managed")
write("pkcs11_root_record", "destroyed-id", b"strongroom-root v1; seq=18446744073709551615; state=destroyed; key=id:0a1b2c")
write("pkcs11_root_record", "selector-id", b"id:0A1b2c")
write("pkcs11_root_record", "selector-label", b"label:customer key 2026")
write("pkcs11_root_record", "selector-bare", b"my-root-key")

# ---------------------------------------------------------------------------------------------
# key_wrap_diff: [sel][ctl][kek][data]; sel & 3 picks the KEK length (0: 16, 1: 24, 2: 32).

h = bytes.fromhex
k128 = h("000102030405060708090A0B0C0D0E0F")
k192 = h("000102030405060708090A0B0C0D0E0F1011121314151617")
k256 = h("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
write("key_wrap_diff", "rfc3394-4.1-wrap", b"\x00\x00" + k128 + h("00112233445566778899AABBCCDDEEFF"))
write("key_wrap_diff", "rfc3394-4.1-unwrap", b"\x00\x00" + k128 + h("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"))
write("key_wrap_diff", "rfc3394-4.4-wrap", b"\x01\x47" + k192 + h("00112233445566778899AABBCCDDEEFF0001020304050607"))
write("key_wrap_diff", "rfc3394-4.6-unwrap", b"\x02\x88" + k256 + h("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"))
kwp = h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
write("key_wrap_diff", "rfc5649-20-wrap", b"\x01\x08" + kwp + h("c37b7e6492584340bed12207808941155068f738"))
write("key_wrap_diff", "rfc5649-20-unwrap", b"\x01\x18" + kwp + h("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"))
write("key_wrap_diff", "rfc5649-7-unwrap", b"\x01\x09" + kwp + h("afbeb0f07dfbf5419200f2ccb50bb24f"))
write("key_wrap_diff", "bound-32", b"\x02\x02" + k256 + bytes(range(32)) + b"keyring/payroll/kek/1")

# ---------------------------------------------------------------------------------------------
# store_model: [options] then operations (see strongroom_fuzz_checks::store_model). An opcode picks the
# operation (code % 24), the keyring ((code >> 5) % 3), the root (code >> 7) and "now"
# (code & 0x20).

OPS = ["put", "put", "get", "get", "delete", "list", "batch", "rotate_kek", "rotate_dek",
       "reencrypt", "disable", "enable", "schedule", "cancel", "destroy", "create", "move",
       "rotate_root", "disable_root", "enable_root", "root_lifecycle", "run_due", "reopen",
       "purge_cache"]

def op(kind, kr=None, root=None, now=None, hi=None):
    for c in range(256):
        if OPS[c % 24] != kind:
            continue
        if kr is not None and (c >> 5) % 3 != kr:
            continue
        if root is not None and (c >> 7) != root:
            continue
        if now is not None and bool(c & 0x20) != now:
            continue
        if hi is not None and (c >> 5) != hi:
            continue
        return bytes([c])
    raise ValueError((kind, kr, root, now, hi))

def key(s):
    """A record key of up to 3 characters from a, b, NUL, 0xff."""
    alphabet = [b"a", b"b", b"\x00", b"\xff"]
    code = len(s)
    for i, ch in enumerate(s):
        code |= alphabet.index(bytes([ch])) << (2 + 2 * i)
    return bytes([code])

def value(v):
    return bytes([len(v)]) + v

def batch(kr, items):
    n = len(items)
    for i, (_, v) in enumerate(items):
        if v is None:
            n |= 1 << (3 + i)
    out = op("batch", kr) + bytes([n])
    for k, v in items:
        out += key(k) + (value(v) if v is not None else b"")
    return out

write("store_model", "records", bytes([0b110])
      + op("put", 0) + key(b"a") + value(b"hello")
      + op("put", 0) + key(b"ab") + value(b"")
      + op("put", 1) + key(b"") + value(b"\x00\x01")
      + op("get", 0) + key(b"a")
      + op("list", 0) + key(b"a")
      + batch(0, [(b"b", b"x"), (b"a", None), (b"\x00", b"yz")])
      + op("delete", 0) + key(b"ab")
      + op("rotate_kek", 0) + op("rotate_dek", 0) + op("put", 0) + key(b"a") + value(b"v2")
      + op("reencrypt", 0) + op("reopen") + op("get", 0) + key(b"a"))
write("store_model", "keyring-lifecycle", bytes([0b001])
      + op("put", 0) + key(b"a") + value(b"1")
      + op("disable", 0) + op("get", 0) + key(b"a") + op("reencrypt", 0)
      + op("enable", 0) + op("schedule", 0, now=False) + op("cancel", 0) + op("enable", 0)
      + op("schedule", 1, now=True) + op("run_due") + op("get", 1) + key(b"")
      + op("create", 2, root=1) + op("put", 2) + key(b"b") + value(b"two")
      + op("destroy", 0) + op("create", 0, root=0) + op("reopen"))
write("store_model", "root-lifecycle", bytes([0b100])
      + op("put", 1) + key(b"a") + value(b"under r1")
      + op("disable_root") + op("put", 1) + key(b"a") + value(b"refused")
      + op("enable_root") + op("rotate_root", root=1) + op("rotate_root", root=0)
      + op("move", 1, root=0) + op("root_lifecycle", hi=1, now=True)
      + op("get", 1) + key(b"a") + op("create", 2, root=1) + op("reopen")
      + op("root_lifecycle", hi=3) + op("get", 1) + key(b"a"))
write("store_model", "rollover-and-cache", bytes([0b000])
      + op("put", 0) + key(b"a") + value(b"1") + op("put", 0) + key(b"b") + value(b"2")
      + op("put", 0) + key(b"a") + value(b"3") + op("purge_cache") + op("get", 0) + key(b"b")
      + op("reencrypt", 0) + op("put", 0) + bytes([0xFF]) + value(b"too big")
      + op("root_lifecycle", hi=6) + op("get", 1) + key(b"a"))

# ---------------------------------------------------------------------------------------------
# Minimal inputs for the bugs found while writing the targets (fixed in e72e4c2; see
# fuzz/regressions/README.md), written to fuzz/regressions/<target>/.

def regression(target, name, data):
    d = os.path.join(HERE, "regressions", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# An audit entry whose 4096-byte target (as the writer clips it) was extended: the MAC and the
# chain hash covered only the first 4096 bytes, so the extension verified.
regression("audit_entry", "target-extended-past-4096",
           audit(3, 5, 41, 0, "ops", "t" * 4096 + "; and this text is not authenticated", "", 0, 0xFF))
# Store metadata with a 65-byte backend kind: parsed, but serializing it tripped put_name's
# debug assertion (names are at most 64 bytes).
regression("store_meta", "backend-kind-65-bytes", store_meta(bytes(16), 1, "k" * 65, "i", "service"))
# Disable k0, re-encrypt it (refused), destroy it, reopen: an unfinished re-encryption of k0 was
# reported for good.
regression("store_model", "refused-reencrypt-leaves-a-job", bytes([0])
           + op("disable", 0) + op("reencrypt", 0) + op("destroy", 0) + op("reopen"))
# Found by store_model (a hang, fixed: such a batch is now refused with TooLarge): DEK rollover
# after 1 encryption, then a batch of two puts on k0 never returned.
regression("store_model", "batch-over-the-dek-quota-never-returns", bytes([0])
           + batch(0, [(b"a", b""), (b"b", b"")]))
