#!/usr/bin/python3
"""Record how a real Ceph OSD's cls_lock answers a scripted session.

Run against a Ceph 16 cluster (for example the project's single-node recipe)
with Debian's python3-rados:

    /usr/bin/python3 capture_golden.py CEPH_CONF POOL > ceph-pacific-lock.json

Two clients, A and B (two librados instances, so two entity names and
addresses), call the class's methods with inputs encoded here by hand from
Ceph's cls_lock_ops.h. For every step the JSON records the caller, the
object, the method, the input, whether it ran in a write or a read
operation, the return code, the output, the object's user xattrs after the
step and the time on this machine just after the step returned (the OSD runs
on the same clock). clslock's TestCephGolden replays the session against the
Go class and compares everything byte for byte.
"""
import json
import struct
import subprocess
import sys
import time

import rados


def u8(v): return struct.pack('<B', v)
def u32(v): return struct.pack('<I', v)
def s64(v): return struct.pack('<q', v)
def string(s): return u32(len(s)) + s.encode()


def struct_v1(body):
    """ENCODE_START(1, 1) ... ENCODE_FINISH."""
    return b'\x01\x01' + u32(len(body)) + body


def lock_op(name, typ, cookie, tag, desc, sec, nsec, flags):
    return struct_v1(string(name) + u8(typ) + string(cookie) + string(tag) +
                     string(desc) + u32(sec) + u32(nsec) + u8(flags))


def unlock_op(name, cookie):
    return struct_v1(string(name) + string(cookie))


def break_op(name, locker_num, cookie):
    return struct_v1(string(name) + u8(8) + s64(locker_num) + string(cookie))


def get_info_op(name):
    return struct_v1(string(name))


def assert_op(name, typ, cookie, tag):
    return struct_v1(string(name) + u8(typ) + string(cookie) + string(tag))


def set_cookie_op(name, typ, cookie, tag, new_cookie):
    return struct_v1(string(name) + u8(typ) + string(cookie) + string(tag) + string(new_cookie))


EXCL, SHARED, EPH = 1, 2, 3
MAY, MUST = 1, 2
WRITE_METHODS = {'lock', 'unlock', 'break_lock', 'set_cookie'}


def main():
    conf, pool = sys.argv[1], sys.argv[2]
    clients, ioctxs = {}, {}
    for who in 'AB':
        c = rados.Rados(conffile=conf)
        c.connect()
        clients[who] = {'id': c.get_instance_id(), 'addr': c.get_addrs()}
        ioctxs[who] = c.open_ioctx(pool)
    admin = ioctxs['A']
    prefix = 'clslock.golden.%d.' % time.time_ns()
    steps = []

    def state(oid):
        try:
            size, _ = admin.stat(oid)
        except rados.ObjectNotFound:
            return {'exists': False, 'size': 0, 'xattrs': {}}
        return {'exists': True, 'size': size, 'xattrs': {k: v.hex() for k, v in admin.get_xattrs(oid)}}

    def setup(obj, data=None, xattrs=()):
        """Changes the object outside the class, recorded as a step."""
        oid = prefix + obj
        if data is not None:
            admin.write_full(oid, data)
        for k, v in xattrs:
            admin.set_xattr(oid, k, v)
        steps.append(dict({'note': 'setup', 'object': obj, 'setup': True,
                           'set_data': None if data is None else data.hex(),
                           'set_xattrs': {k: v.hex() for k, v in xattrs}}, **state(oid)))

    def step(who, obj, method, inp, write=None, note=''):
        if write is None:
            write = method in WRITE_METHODS
        oid = prefix + obj
        io = ioctxs[who]
        rc, out = 0, b''
        try:
            if write:
                op = io.create_write_op()
                try:
                    op.execute('lock', method, inp)
                    io.operate_write_op(op, oid)
                finally:
                    op.release()
            else:
                _, out = io.execute(oid, 'lock', method, inp, length=65536)
        except rados.Error as e:
            rc = -e.errno
        now = time.time_ns()
        steps.append(dict({'note': note, 'client': who, 'object': obj, 'method': method,
                           'write': write, 'input': inp.hex(), 'rc': rc, 'output': bytes(out).hex(),
                           'now_ns': now}, **state(oid)))
        return rc

    # A missing object.
    step('A', 'o1', 'get_info', get_info_op('L'), note='get_info on a missing object')
    step('A', 'o1', 'unlock', unlock_op('L', 'c1'), note='unlock on a missing object')
    step('A', 'o1', 'assert_locked', assert_op('L', EXCL, 'c1', 't'), write=True,
         note='assert_locked in a write on a missing object')
    step('A', 'o1', 'break_lock', break_op('L', clients['B']['id'], 'c1'), note='break_lock on a missing object')
    step('A', 'o1', 'set_cookie', set_cookie_op('L', EXCL, 'c1', 't', 'c2'), note='set_cookie on a missing object')

    # Exclusive lock, renewals, conflicts.
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c1', 't', 'd', 0, 0, 0), note='lock creates the object')
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c1', 't', 'd', 0, 0, 0), note='relock: EEXIST')
    step('B', 'o1', 'lock', lock_op('L', EXCL, 'c2', 't', 'd', 0, 0, 0), note='other client exclusive: EBUSY')
    step('B', 'o1', 'lock', lock_op('L', SHARED, 'c2', 't', 'd', 0, 0, 0), note='other client shared: EBUSY')
    step('B', 'o1', 'lock', lock_op('L', EXCL, 'c2', 'x', 'd', 0, 0, 0), note='other tag: EBUSY')
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c1', 'x', 'd', 0, 0, MAY), note='renew with another tag: EBUSY')
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c1', 't', 'd2', 0, 0, MAY), note='renew (may): new description')
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c1', 't', 'd2', 0, 0, MAY | MUST), note='both flags: EINVAL')
    step('B', 'o1', 'lock', lock_op('L', EXCL, 'c2', 't', 'd', 0, 0, MUST), note='must-renew, not holder: ENOENT')
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c1', 't', 'd3', 0, 0, MUST), note='must-renew by the holder')
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c1', 't', 'd3', 0, 0, 4), note='unknown flag bit: plain lock, EEXIST')
    step('A', 'o1', 'lock', lock_op('L', 0, 'c1', 't', 'd', 0, 0, 0), note='type none: EINVAL')
    step('A', 'o1', 'lock', lock_op('L', 4, 'c1', 't', 'd', 0, 0, 0), note='type 4: EINVAL')
    step('A', 'o1', 'lock', lock_op('', EXCL, 'c1', 't', 'd', 0, 0, 0), note='empty name: EINVAL')
    step('A', 'o1', 'get_info', get_info_op('L'), note='get_info: one exclusive holder')
    step('B', 'o1', 'get_info', get_info_op('nolock'), note='get_info of a lock never taken')

    # assert_locked and set_cookie.
    step('A', 'o1', 'assert_locked', assert_op('L', EXCL, 'c1', 't'), note='assert: held')
    step('A', 'o1', 'assert_locked', assert_op('L', EXCL, 'c1', 't'), write=True, note='assert in a write: held')
    step('B', 'o1', 'assert_locked', assert_op('L', EXCL, 'c1', 't'), note='assert by another client: EBUSY')
    step('A', 'o1', 'assert_locked', assert_op('L', SHARED, 'c1', 't'), note='assert wrong type: EBUSY')
    step('A', 'o1', 'assert_locked', assert_op('L', EXCL, 'c1', 'x'), note='assert wrong tag: EBUSY')
    step('A', 'o1', 'assert_locked', assert_op('L', EXCL, 'zz', 't'), note='assert wrong cookie: EBUSY')
    step('A', 'o1', 'assert_locked', assert_op('L', 0, 'c1', 't'), note='assert type none: EINVAL')
    step('A', 'o1', 'assert_locked', assert_op('', EXCL, 'c1', 't'), note='assert empty name: EINVAL')
    step('A', 'o1', 'assert_locked', assert_op('nolock', EXCL, 'c1', 't'), note='assert on an unlocked lock: EBUSY')
    step('A', 'o1', 'set_cookie', set_cookie_op('L', EXCL, 'c1', 't', 'c3'), note='set_cookie c1 -> c3')
    step('A', 'o1', 'set_cookie', set_cookie_op('L', EXCL, 'c3', 't', 'c3'), note='set_cookie to the same cookie: EBUSY')
    step('B', 'o1', 'set_cookie', set_cookie_op('L', EXCL, 'c3', 't', 'c4'), note='set_cookie by another client: EBUSY')
    step('A', 'o1', 'set_cookie', set_cookie_op('L', SHARED, 'c3', 't', 'c4'), note='set_cookie wrong type: EBUSY')
    step('A', 'o1', 'set_cookie', set_cookie_op('L', 9, 'c3', 't', 'c4'), note='set_cookie type 9: EINVAL')

    # Unlock and break.
    step('A', 'o1', 'unlock', unlock_op('L', 'c1'), note='unlock with the old cookie: ENOENT')
    step('B', 'o1', 'unlock', unlock_op('L', 'c3'), note='unlock by another client: ENOENT')
    step('B', 'o1', 'break_lock', break_op('L', clients['B']['id'], 'c3'), note='break naming the wrong locker: ENOENT')
    step('B', 'o1', 'break_lock', break_op('L', clients['A']['id'], 'c3'), note='break A\'s lock')
    step('A', 'o1', 'get_info', get_info_op('L'), note='get_info after break: no holders, type and tag kept')
    step('A', 'o1', 'break_lock', break_op('L', clients['A']['id'], 'c3'), note='break again: ENOENT')

    # Shared locks.
    step('A', 'o1', 'lock', lock_op('L', SHARED, 'c1', 's', '', 0, 0, 0), note='shared with a new tag once free')
    step('B', 'o1', 'lock', lock_op('L', SHARED, 'c2', 's', 'B', 0, 0, 0), note='second shared holder')
    step('B', 'o1', 'lock', lock_op('L', SHARED, 'c5', 's', 'B', 0, 0, 0), note='same client, another cookie')
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c9', 's', '', 0, 0, 0), note='exclusive over shared: EBUSY')
    step('A', 'o1', 'lock', lock_op('L', SHARED, 'c1', 's', '', 0, 0, 0), note='shared relock: EEXIST')
    step('A', 'o1', 'lock', lock_op('L', EXCL, 'c1', 's', '', 0, 0, MAY),
         note='renew as exclusive while others share: EBUSY')
    step('B', 'o1', 'get_info', get_info_op('L'), note='get_info: three shared holders')
    step('B', 'o1', 'unlock', unlock_op('L', 'c5'), note='unlock one of them')
    step('B', 'o1', 'lock', lock_op('M', EXCL, 'm', '', '', 0, 0, 0), note='a second lock on the object')
    step('A', 'o1', 'list_locks', b'', note='list_locks')
    step('A', 'o1', 'list_locks', b'ignored', note='list_locks ignores its input')

    # Malformed inputs.
    step('A', 'o1', 'lock', b'', note='empty input: EINVAL')
    step('A', 'o1', 'lock', b'\x01\x02\x04\x00\x00\x00abcd', note='compat 2: EINVAL')
    step('A', 'o1', 'get_info', b'\x01\x01\x05\x00\x00\x00\x09\x00\x00\x00a', note='string past the struct: EINVAL')
    step('A', 'o1', 'get_info', get_info_op('L') + b'trailing', note='trailing bytes are ignored')
    step('A', 'o1', 'unlock', b'\x01', note='truncated: EINVAL')

    # Expiration.
    step('A', 'o1', 'lock', lock_op('D', EXCL, 'c1', '', 'expires', 1, 500000000, 0), note='lock for 1.5 s')
    step('B', 'o1', 'lock', lock_op('D', EXCL, 'c2', '', '', 0, 0, 0), note='before expiry: EBUSY')
    step('B', 'o1', 'get_info', get_info_op('D'), note='get_info before expiry')
    time.sleep(2.5)
    step('B', 'o1', 'get_info', get_info_op('D'), note='get_info after expiry: no holders')
    step('A', 'o1', 'assert_locked', assert_op('D', EXCL, 'c1', ''), note='assert after expiry: EBUSY')
    step('A', 'o1', 'unlock', unlock_op('D', 'c1'), note='unlock after expiry: ENOENT')
    step('A', 'o1', 'lock', lock_op('D', EXCL, 'c1', '', 'expires', 1, 0, MUST), note='must-renew after expiry: ENOENT')
    step('B', 'o1', 'lock', lock_op('D', EXCL, 'c2', 'new', '', 0, 0, 0), note='after expiry: another client, another tag')
    step('A', 'o1', 'lock', lock_op('H', EXCL, 'c1', '', '', 0xfffffff0, 0, 0), note='huge duration')
    step('A', 'o1', 'lock', lock_op('N', EXCL, 'c1', '', '', 0, 2999999999, 0), note='unnormalised nanoseconds')
    step('A', 'o1', 'get_info', get_info_op('N'), note='get_info of the unnormalised expiration')

    # Ephemeral locks.
    step('A', 'o2', 'lock', lock_op('E', EPH, 'c1', '', '', 0, 0, 0), note='ephemeral lock creates the object')
    step('B', 'o2', 'lock', lock_op('E', EPH, 'c2', '', '', 0, 0, 0), note='ephemeral: EBUSY')
    step('B', 'o2', 'lock', lock_op('E', EXCL, 'c2', '', '', 0, 0, 0), note='exclusive over ephemeral: EBUSY')
    step('A', 'o2', 'lock', lock_op('E', EPH, 'c1', '', '', 0, 0, MAY), note='ephemeral renew')
    step('A', 'o2', 'unlock', unlock_op('E', 'c1'), note='ephemeral unlock removes the object')
    setup('o3', data=b'data that goes with the object', xattrs=[('other', b'x')])
    step('A', 'o3', 'lock', lock_op('E', EPH, 'c1', '', '', 0, 0, 0), note='ephemeral lock on an object with data')
    step('B', 'o3', 'break_lock', break_op('E', clients['A']['id'], 'c1'), note='breaking it removes the object')
    step('A', 'o4', 'lock', lock_op('E', EPH, 'c1', '', '', 1, 0, 0), note='ephemeral lock for 1 s')
    time.sleep(2)
    step('B', 'o4', 'get_info', get_info_op('E'), note='get_info after the ephemeral lock expired')
    step('B', 'o4', 'unlock', unlock_op('E', 'c2'), note='unlock after it expired: ENOENT, object kept')
    step('B', 'o4', 'lock', lock_op('E', EPH, 'c2', '', '', 0, 0, 0), note='lock after it expired')

    # State the class did not write.
    setup('o5', xattrs=[('lock.bad', b'\x01\x02\x00\x00\x00\x00'),
                        ('lock.', struct_v1(u32(0) + u8(0) + string(''))),
                        ('lockx', b''), ('alpha', b'')])
    step('A', 'o5', 'get_info', get_info_op('bad'), note='undecodable state: EIO')
    step('A', 'o5', 'lock', lock_op('bad', EXCL, 'c1', '', '', 0, 0, 0), note='lock over undecodable state: EIO')
    step('A', 'o5', 'list_locks', b'', note='list_locks with an empty lock name and other xattrs')
    step('A', 'o5', 'get_info', get_info_op(''), note='get_info of the empty name')

    osd = subprocess.run(['ceph-osd', '--version'], capture_output=True, text=True).stdout.strip()
    json.dump({'ceph': osd, 'clients': clients,
               'steps': steps}, sys.stdout, indent=1)
    print()


if __name__ == '__main__':
    main()
