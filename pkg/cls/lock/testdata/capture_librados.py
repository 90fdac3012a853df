#!/usr/bin/python3
"""Capture the method inputs librados itself sends for cls_lock calls.

    /usr/bin/python3 capture_librados.py CEPH_CONF POOL > librados-inputs.json

Runs librados' own lock calls (python3-rados' lock_exclusive, lock_shared and
unlock, which are rados_lock_exclusive, rados_lock_shared and rados_unlock,
and the rados tool's "lock get", "lock info", "lock list" and "lock break",
which call cls_lock_client directly) under strace, and cuts each method's input out of
the bytes written to the OSD's socket (auth none: msgr2 frames are in the
clear). An input is found as a struct envelope (u8 1, u8 1, u32 length)
whose first field is the lock name. clslock's TestLibradosInputs checks
that its client calls encode the same bytes.
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

CALLS = r'''
import rados, sys
c = rados.Rados(conffile=sys.argv[1]); c.connect()
io = c.open_ioctx(sys.argv[2])
oid = sys.argv[3]
io.lock_exclusive(oid, 'lockx', 'cookie-x', desc='exclusive desc', duration=None, flags=1)
io.lock_shared(oid, 'locks', 'cookie-s', 'tag-s', desc='shared desc', duration=None, flags=0)
io.unlock(oid, 'lockx', 'cookie-x')
print(c.get_instance_id())
'''


def traced(argv):
    """Runs argv under strace; returns its stdout and every byte it wrote to sockets."""
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, 'strace')
        out = subprocess.run(['strace', '-f', '-qq', '-e', 'trace=sendmsg,sendto,write,writev',
                              '-xx', '-s', '1000000', '-o', log] + argv,
                             check=True, capture_output=True, text=True).stdout
        sent = bytearray()
        with open(log) as f:
            for line in f:
                for s in re.findall(r'"((?:\\x[0-9a-f]{2})*)"', line):
                    sent += bytes.fromhex(s.replace('\\x', ''))
        return out, bytes(sent)


def find_inputs(sent, name):
    """Every struct envelope in sent whose first field is the string name."""
    key = struct.pack('<I', len(name)) + name.encode()
    found, i = [], sent.find(key)
    while i >= 0:
        if i >= 6 and sent[i - 6:i - 4] == b'\x01\x01':
            n = struct.unpack('<I', sent[i - 4:i])[0]
            found.append(sent[i - 6:i + n].hex())
        i = sent.find(key, i + 1)
    return found


def main():
    conf, pool = sys.argv[1], sys.argv[2]
    oid = 'clslock.librados.%d' % time.time_ns()
    out, sent = traced(['/usr/bin/python3', '-c', CALLS, conf, pool, oid])
    client = int(out.split()[-1])
    # The lock calls in the order they were made; each name's first
    # envelope is the lock, the second (lockx) the unlock.
    lockx = find_inputs(sent, 'lockx')
    locks = find_inputs(sent, 'locks')
    rados = ['rados', '-c', conf, '-p', pool]
    # A duration through the rados tool: python3-rados 16 leaves the
    # timeval's microseconds uninitialised.
    _, get = traced(rados + ['lock', 'get', oid, 'lockd', '--lock-cookie', 'cookie-d', '--lock-tag', 'tag-d',
                             '--lock-description', 'desc d', '--lock-duration', '30', '--lock-type', 'exclusive'])
    _, info = traced(rados + ['lock', 'info', oid, 'locks'])
    _, lst = traced(rados + ['lock', 'list', oid])
    _, brk = traced(rados + ['lock', 'break', oid, 'locks', 'client.%d' % client, '--lock-cookie', 'cookie-s'])
    json.dump({
        'ceph': subprocess.run(['ceph-osd', '--version'], capture_output=True, text=True).stdout.strip(),
        'client': client,
        'inputs': [
            {'call': "rados_lock_exclusive(oid, 'lockx', 'cookie-x', 'exclusive desc', no duration, LOCK_FLAG_MAY_RENEW)",
             'method': 'lock', 'input': lockx[0]},
            {'call': "rados_lock_shared(oid, 'locks', 'cookie-s', 'tag-s', 'shared desc', no duration, 0)",
             'method': 'lock', 'input': locks[0]},
            {'call': "rados_unlock(oid, 'lockx', 'cookie-x')", 'method': 'unlock', 'input': lockx[1]},
            {'call': 'rados lock get oid lockd --lock-cookie cookie-d --lock-tag tag-d '
                     "--lock-description 'desc d' --lock-duration 30 --lock-type exclusive",
             'method': 'lock', 'input': find_inputs(get, 'lockd')[0]},
            {'call': 'rados lock info oid locks', 'method': 'get_info', 'input': find_inputs(info, 'locks')[0]},
            {'call': 'rados lock break oid locks client.<A> --lock-cookie cookie-s', 'method': 'break_lock',
             'input': find_inputs(brk, 'locks')[0]},
        ],
        # list_locks sends no input: nothing to find, but the call must work.
        'list_locks_sent_bytes': len(lst) > 0,
    }, sys.stdout, indent=1)
    print()


if __name__ == '__main__':
    main()
