import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { VirtualClock } from '../../shared/clock.js';
import {
  ENOSPC,
  GNTMAP_host_map,
  GNTTAB_DEFERRED_PER_TICK,
  GNTTAB_NR_RESERVED_ENTRIES,
  GRANT_ENTRY_V1_SIZE,
  GTF_PWT,
  GTF_permit_access,
  GTF_readonly,
  GTF_reading,
  GTF_writing,
  GrantEntriesV1,
  GrantTable,
  GNTST_okay,
  gntstName,
  hexAlt,
} from '../../shared/gnttab.js';
import * as gnttab from '../../shared/gnttab.js';
import { GrantMapper } from '../../shared/gnttab-mapper.js';
import { GuestMemory } from '../../shared/memory.js';

type Logged = [string, string][];

function guest(nrEntries = 16): { table: GrantTable; clock: VirtualClock; logs: Logged } {
  const clock = new VirtualClock();
  const logs: Logged = [];
  const table = new GrantTable({ domid: 1, nrEntries, clock, log: (level, message) => logs.push([level, message]) });
  return { table, clock, logs };
}

test('constants have the values of grant_table.h and xen.h', (t) => {
  const expected: Record<string, number> = {
    GTF_invalid: 0,
    GTF_permit_access: 1,
    GTF_accept_transfer: 2,
    GTF_transitive: 3,
    GTF_type_mask: 3,
    GTF_readonly: 4,
    GTF_reading: 8,
    GTF_writing: 16,
    GTF_PWT: 32,
    GTF_PCD: 64,
    GTF_PAT: 128,
    GTF_sub_page: 256,
    GTF_transfer_committed: 4,
    GTF_transfer_completed: 8,
    GNTMAP_device_map: 1,
    GNTMAP_host_map: 2,
    GNTMAP_readonly: 4,
    GNTMAP_application_map: 8,
    GNTMAP_contains_pte: 16,
    GNTCOPY_source_gref: 1,
    GNTCOPY_dest_gref: 2,
    GNTST_okay: 0,
    GNTST_general_error: -1,
    GNTST_bad_domain: -2,
    GNTST_bad_gntref: -3,
    GNTST_bad_handle: -4,
    GNTST_bad_virt_addr: -5,
    GNTST_bad_dev_addr: -6,
    GNTST_no_device_space: -7,
    GNTST_permission_denied: -8,
    GNTST_bad_page: -9,
    GNTST_bad_copy_arg: -10,
    GNTST_address_too_big: -11,
    GNTST_eagain: -12,
    GNTST_no_space: -13,
    GNTTAB_NR_RESERVED_ENTRIES: 8,
    GRANT_ENTRY_V1_SIZE: 8,
    DOMID_SELF: 0x7ff0,
    ENOSPC: 28,
  };
  const actual = gnttab as unknown as Record<string, number>;
  for (const [name, value] of Object.entries(expected)) t.is(actual[name], value, name);
});

test('gntstName gives the C name of every status and a marker for others', (t) => {
  const mod = gnttab as unknown as Record<string, unknown>;
  for (const [name, value] of Object.entries(mod)) {
    if (name.startsWith('GNTST_')) t.is(gntstName(value as number), name);
  }
  t.is(gntstName(-14), 'GNTST_unknown(-14)');
  t.is(gntstName(1), 'GNTST_unknown(1)');
  t.is(gntstName(-1.5), 'GNTST_unknown(-1.5)');
});

test('hexAlt prints like C %#x', (t) => {
  t.is(hexAlt(0), '0');
  t.is(hexAlt(8), '0x8');
  t.is(hexAlt(0x1f), '0x1f');
});

testProp(
  'a grant writes domid at byte 2 and frame at byte 4, then flags at byte 0, little-endian',
  [fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffffffff }), fc.boolean()],
  (t, domid, frame, ro) => {
    const { table } = guest();
    const ref = table.grantForeignAccess(domid, frame, ro);
    const dv = new DataView(table.entries.sab, ref * GRANT_ENTRY_V1_SIZE, GRANT_ENTRY_V1_SIZE);
    t.is(dv.getUint16(0, true), GTF_permit_access | (ro ? GTF_readonly : 0));
    t.is(dv.getUint16(2, true), domid);
    t.is(dv.getUint32(4, true), frame);
    const e = new GrantEntriesV1(table.entries.sab);
    t.is(e.domid(ref), domid);
    t.is(e.frame(ref), frame);
    t.is(e.combo(ref), (dv.getUint16(0, true) | (domid << 16)) | 0);
  },
);

test('refs are handed out above the reserved entries until -ENOSPC, and recycled after free', (t) => {
  const { table } = guest(12);
  const refs: number[] = [];
  for (let i = 0; i < 100; i++) {
    const ref = table.grantForeignAccess(0, 1, false);
    if (ref < 0) {
      t.is(ref, -ENOSPC);
      break;
    }
    refs.push(ref);
  }
  t.deepEqual([...refs].sort((a, b) => a - b), [8, 9, 10, 11]);
  t.is(table.freeCount, 0);
  t.true(table.endForeignAccessRef(10));
  t.is(table.grantForeignAccess(0, 1, false), -ENOSPC, 'an ended ref is still the caller\'s until freed');
  table.freeRef(10);
  t.is(table.grantForeignAccess(0, 2, true), 10);
  t.is(table.entries.frame(10), 2);
});

test('end access clears the flags only when neither GTF_reading nor GTF_writing is set', (t) => {
  const { table, logs } = guest();
  const ref = table.grantForeignAccess(0, 3, false);
  for (const busy of [GTF_reading, GTF_writing, GTF_reading | GTF_writing]) {
    table.entries.storeFlags(ref, GTF_permit_access | busy); // as the hypervisor does while mapped
    t.true(table.queryForeignAccess(ref));
    t.false(table.endForeignAccessRef(ref));
    t.is(table.entries.flags(ref), GTF_permit_access | busy, 'a refused end leaves the entry alone');
  }
  t.deepEqual(logs.at(-1), ['warn', 'WARNING: g.e. 0x8 still in use!']);
  table.entries.storeFlags(ref, GTF_permit_access | GTF_PWT);
  t.false(table.queryForeignAccess(ref));
  t.true(table.endForeignAccessRef(ref));
  t.is(table.entries.flags(ref), 0);
});

test('deferred revoke: retried every second, warns once after 60 tries, frees the ref when unmapped', (t) => {
  const { table, clock, logs } = guest(10);
  const mem = GuestMemory.create(4);
  const mapper = new GrantMapper({ domid: 0 });
  mapper.addDomain(1, table.entries.sab, mem.sab);
  const ref = table.grantForeignAccess(0, 2, false);
  const other = table.grantForeignAccess(0, 3, true);
  const m = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map });
  t.is(m.status, GNTST_okay);

  table.endForeignAccess(ref);
  t.deepEqual(logs, [
    ['warn', 'WARNING: g.e. 0x8 still in use!'],
    ['debug', 'deferring g.e. 0x8 (pfn 0x2)'],
  ]);
  t.deepEqual(table.query().deferred, [{ ref, tries: 0 }]);
  t.is(table.grantForeignAccess(0, 1, false), -ENOSPC, 'a deferred ref is never handed out');
  t.is(clock.nextDeadline(), 1000);

  for (let i = 1; i < 60; i++) clock.advance(1000);
  t.deepEqual(table.query().deferred, [{ ref, tries: 59 }]);
  t.false(logs.some(([, msg]) => msg.includes('still pending')));
  clock.advance(1000);
  t.deepEqual(logs.at(-1), ['warn', 'g.e. 0x8 still pending']);
  for (let i = 0; i < 100; i++) clock.advance(1000);
  t.is(logs.filter(([, msg]) => msg === 'g.e. 0x8 still pending').length, 1, 'the warning comes once');
  t.deepEqual(table.query().deferred, [{ ref, tries: 160 }]);
  t.is(table.entries.flags(ref), GTF_permit_access | GTF_reading | GTF_writing, 'still granted while deferred');

  t.is(mapper.unmap(m.handle), GNTST_okay);
  clock.advance(999);
  t.deepEqual(table.query().deferred, [{ ref, tries: 160 }], 'retried on the timer, not on unmap');
  clock.advance(1);
  t.deepEqual(logs.at(-1), ['debug', 'freeing g.e. 0x8']);
  const q = table.query();
  t.deepEqual(q.deferred, []);
  t.deepEqual(q.outstanding, [{ ref: other, domid: 0, frame: 3, readonly: true, inUse: false }]);
  t.is(q.free, 1);
  t.is(table.entries.flags(ref), 0);
  t.is(clock.nextDeadline(), Infinity, 'the timer stops with an empty list');
  t.is(table.grantForeignAccess(0, 1, false), ref);
});

test('a deferred tick retries at most 10 entries, each once, oldest first', (t) => {
  const { table, clock } = guest(8 + 14);
  const refs: number[] = [];
  for (let i = 0; i < 12; i++) {
    const ref = table.grantForeignAccess(0, i, false);
    table.entries.storeFlags(ref, GTF_permit_access | GTF_reading);
    table.endForeignAccess(ref);
    refs.push(ref);
  }
  clock.advance(1000);
  t.deepEqual(
    table.query().deferred,
    [...refs.slice(10), ...refs.slice(0, 10)].map((ref, i) => ({ ref, tries: i < 2 ? 0 : 1 })),
  );
  for (const ref of refs) table.entries.clearFlags(ref, GTF_reading);
  clock.advance(1000);
  t.is(table.query().deferred.length, 12 - GNTTAB_DEFERRED_PER_TICK);
  clock.advance(1000);
  t.deepEqual(table.query().deferred, []);
  t.is(table.freeCount, 14);
});

test('endForeignAccess frees at once when not in use, and frees a claimed ref', (t) => {
  const { table, clock } = guest(10);
  const a = table.grantForeignAccess(0, 1, false);
  const b = table.grantForeignAccess(0, 2, false);
  table.endForeignAccess(a);
  t.true(table.endForeignAccessRef(b));
  table.endForeignAccess(b);
  t.is(table.freeCount, 2);
  t.is(clock.nextDeadline(), Infinity);
  t.deepEqual(table.query(), { outstanding: [], deferred: [], claimed: [], free: 2 });
});

test('misuse by our own caller throws with exact messages', (t) => {
  const { table } = guest(10);
  const ref = table.grantForeignAccess(0, 1, false);
  table.entries.storeFlags(ref, GTF_permit_access | GTF_reading);
  table.endForeignAccess(ref);
  const cases: [() => unknown, string][] = [
    [() => table.endForeignAccess(ref), 'endForeignAccess: g.e. 0x8 is deferred, expected granted'],
    [() => table.endForeignAccessRef(9), 'endForeignAccessRef: g.e. 0x9 is free, expected granted'],
    [() => table.freeRef(ref), 'freeRef: g.e. 0x8 is deferred, expected claimed'],
    [() => table.grantForeignAccessRef(9, 0, 1, false), 'grantForeignAccessRef: g.e. 0x9 is free, expected claimed'],
    [() => table.endForeignAccessRef(7), 'ref is out of range: expected 8 <= x < 10 but got 7'],
    [() => table.queryForeignAccess(10), 'ref is out of range: expected 8 <= x < 10 but got 10'],
    [() => table.grantForeignAccess(0x10000, 1, false), 'domid must be a u16 but got 65536'],
    [() => table.grantForeignAccess(0, -1, false), 'frame must be a u32 but got -1'],
    [() => table.grantForeignAccess(0, 2 ** 32, false), 'frame must be a u32 but got 4294967296'],
    [
      () => new GrantTable({ domid: 1, nrEntries: 8, clock: new VirtualClock() }),
      'nrEntries must be an integer in [9, 32768] but got 8',
    ],
    [
      () => new GrantTable({ domid: 0x7ff0, nrEntries: 9, clock: new VirtualClock() }),
      'domid must be an integer in [0, 32751] but got 32752',
    ],
    [() => new GrantEntriesV1(new SharedArrayBuffer(12)), 'grant table must be 1 to 32768 entries of 8 bytes but got 12 bytes'],
  ];
  for (const [fn, message] of cases) t.throws(fn, { message });
});

test('grantForeignAccessRef re-grants a claimed ref with new contents', (t) => {
  const { table } = guest(10);
  const ref = table.grantForeignAccess(0, 1, false);
  t.true(table.endForeignAccessRef(ref));
  t.deepEqual(table.query().claimed, [ref]);
  table.grantForeignAccessRef(ref, 4, 77, true);
  t.deepEqual(table.query().outstanding, [{ ref, domid: 4, frame: 77, readonly: true, inUse: false }]);
});

test('dispose stops the deferred timer', (t) => {
  const { table, clock } = guest(10);
  const ref = table.grantForeignAccess(0, 1, false);
  table.entries.storeFlags(ref, GTF_permit_access | GTF_reading);
  table.endForeignAccess(ref);
  t.is(clock.nextDeadline(), 1000);
  table.dispose();
  t.is(clock.nextDeadline(), Infinity);
  t.is(GNTTAB_NR_RESERVED_ENTRIES, 8);
});
