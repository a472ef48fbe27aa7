import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { VirtualClock } from '../../shared/clock.js';
import {
  DOMID_SELF,
  ENOSPC,
  GNTCOPY_dest_gref,
  GNTCOPY_source_gref,
  GNTMAP_device_map,
  GNTMAP_host_map,
  GNTMAP_readonly,
  GNTST_bad_copy_arg,
  GNTST_bad_domain,
  GNTST_bad_gntref,
  GNTST_bad_handle,
  GNTST_bad_page,
  GNTST_eagain,
  GNTST_general_error,
  GNTST_no_space,
  GNTST_okay,
  GNTST_permission_denied,
  GTF_PWT,
  GTF_accept_transfer,
  GTF_permit_access,
  GTF_readonly,
  GTF_reading,
  GTF_sub_page,
  GTF_writing,
  GrantTable,
  INVALID_GRANT_HANDLE,
  gntstName,
} from '../../shared/gnttab.js';
import { GNTTAB_CMPXCHG_ATTEMPTS, GrantMapper } from '../../shared/gnttab-mapper.js';
import type { GrantCopyOp, GrantCopyPtr, GrantMapOp, GrantMapperOptions } from '../../shared/gnttab-mapper.js';
import { GuestMemory, XEN_PAGE_SIZE } from '../../shared/memory.js';

const NR_FRAMES = 4;
const NR_ENTRIES = 16;

function setup(opts: Partial<GrantMapperOptions> = {}) {
  const clock = new VirtualClock();
  const table = new GrantTable({ domid: 1, nrEntries: NR_ENTRIES, clock });
  const mem = GuestMemory.create(NR_FRAMES);
  const logs: string[] = [];
  const mapper = new GrantMapper({ domid: 0, log: (_level, message) => logs.push(message), ...opts });
  mapper.addDomain(1, table.entries.sab, mem.sab);
  return { clock, table, mem, mapper, logs };
}

type Env = ReturnType<typeof setup>;

function op(dom: number, ref: number, flags: number): GrantMapOp {
  return { dom, ref, flags, status: 1, handle: 0, bytes: null };
}

function local(buf: Uint8Array, offset = 0): GrantCopyPtr {
  return { ref: 0, domid: DOMID_SELF, offset, buf };
}

function gref(domid: number, ref: number, offset = 0): GrantCopyPtr {
  return { ref, domid, offset, buf: null };
}

function copyOp(source: GrantCopyPtr, dest: GrantCopyPtr, len: number, flags: number): GrantCopyOp {
  return { source, dest, len, flags, status: 1 };
}

// ---- map: every validation, in Xen's order, with its exact status and message ----

interface MapCase {
  name: string;
  prepare: (e: Env) => GrantMapOp;
  status: number;
  log: string;
}

const mapCases: MapCase[] = [
  {
    name: 'flags without host_map',
    prepare: (e) => op(1, e.table.grantForeignAccess(0, 1, false), 0),
    status: GNTST_bad_gntref,
    log: 'Bad flags in grant map op: 0',
  },
  {
    name: 'readonly without host_map',
    prepare: (e) => op(1, e.table.grantForeignAccess(0, 1, false), GNTMAP_readonly),
    status: GNTST_bad_gntref,
    log: 'Bad flags in grant map op: 4',
  },
  {
    name: 'device map',
    prepare: (e) => op(1, e.table.grantForeignAccess(0, 1, false), GNTMAP_host_map | GNTMAP_device_map),
    status: GNTST_general_error,
    log: 'No device mapping in HVM domain',
  },
  {
    name: 'unknown domain',
    prepare: (e) => op(9, e.table.grantForeignAccess(0, 1, false), GNTMAP_host_map),
    status: GNTST_bad_domain,
    log: 'Could not find domain 9',
  },
  {
    name: 'DOMID_SELF',
    prepare: (e) => op(DOMID_SELF, e.table.grantForeignAccess(0, 1, false), GNTMAP_host_map),
    status: GNTST_bad_domain,
    log: 'Could not find domain 32752',
  },
  {
    name: 'removed domain',
    prepare: (e) => {
      const ref = e.table.grantForeignAccess(0, 1, false);
      e.mapper.removeDomain(1);
      return op(1, ref, GNTMAP_host_map);
    },
    status: GNTST_bad_domain,
    log: 'Could not find domain 1',
  },
  { name: 'ref = nr_entries', prepare: () => op(1, NR_ENTRIES, GNTMAP_host_map), status: GNTST_bad_gntref, log: 'Bad ref 0x10 for d1' },
  { name: 'ref = 2^32-1', prepare: () => op(1, 0xffffffff, GNTMAP_host_map), status: GNTST_bad_gntref, log: 'Bad ref 0xffffffff for d1' },
  {
    name: 'never granted',
    prepare: () => op(1, 9, GNTMAP_host_map),
    status: GNTST_general_error,
    log: 'Bad flags (0) or dom (0); expected d0',
  },
  {
    name: 'granted to another domain',
    prepare: (e) => op(1, e.table.grantForeignAccess(5, 1, false), GNTMAP_host_map),
    status: GNTST_general_error,
    log: 'Bad flags (1) or dom (5); expected d0',
  },
  {
    name: 'accept_transfer entry',
    prepare: (e) => {
      const ref = e.table.grantForeignAccess(0, 1, false);
      e.table.entries.write(ref, 0, 1, GTF_accept_transfer);
      return op(1, ref, GNTMAP_host_map);
    },
    status: GNTST_general_error,
    log: 'Bad flags (2) or dom (0); expected d0',
  },
  {
    name: 'sub_page entry',
    prepare: (e) => {
      const ref = e.table.grantForeignAccess(0, 1, false);
      e.table.entries.write(ref, 0, 1, GTF_permit_access | GTF_sub_page);
      return op(1, ref, GNTMAP_host_map);
    },
    status: GNTST_general_error,
    log: 'Bad flags (101) or dom (0); expected d0',
  },
  {
    name: 'ended grant',
    prepare: (e) => {
      const ref = e.table.grantForeignAccess(0, 1, false);
      e.table.endForeignAccessRef(ref);
      return op(1, ref, GNTMAP_host_map);
    },
    status: GNTST_general_error,
    log: 'Bad flags (0) or dom (0); expected d0',
  },
  {
    name: 'writable map of a read-only grant',
    prepare: (e) => op(1, e.table.grantForeignAccess(0, 1, true), GNTMAP_host_map),
    status: GNTST_general_error,
    log: 'Attempt to write-pin a r/o grant entry',
  },
  {
    name: 'writable map of a read-only grant already mapped read-only',
    prepare: (e) => {
      const ref = e.table.grantForeignAccess(0, 1, true);
      e.mapper.map({ dom: 1, ref, flags: GNTMAP_host_map | GNTMAP_readonly });
      return op(1, ref, GNTMAP_host_map);
    },
    status: GNTST_general_error,
    log: 'Attempt to write-pin a r/o grant entry',
  },
  {
    name: 'frame outside guest memory',
    prepare: (e) => op(1, e.table.grantForeignAccess(0, NR_FRAMES, false), GNTMAP_host_map),
    status: GNTST_bad_page,
    log: 'frame of d1 ref 0x8 is out of range: expected 0 <= x < 4 but got 4',
  },
  {
    name: 'frame 2^32-1',
    prepare: (e) => op(1, e.table.grantForeignAccess(0, 0xffffffff, true), GNTMAP_host_map | GNTMAP_readonly),
    status: GNTST_bad_page,
    log: 'frame of d1 ref 0x8 is out of range: expected 0 <= x < 4 but got 4294967295',
  },
];

for (const c of mapCases) {
  test(`map refuses: ${c.name} -> ${gntstName(c.status)}`, (t) => {
    const e = setup();
    const o = c.prepare(e);
    const flagsBefore = o.ref < NR_ENTRIES ? e.table.entries.flags(o.ref) : 0;
    const before = e.mapper.stats().liveHandles;
    t.is(e.mapper.mapOp(o), c.status);
    t.is(o.status, c.status);
    t.is(o.handle, INVALID_GRANT_HANDLE);
    t.is(o.bytes, null);
    t.is(e.logs.at(-1), c.log);
    t.is(e.mapper.stats().liveHandles, before);
    if (o.ref < NR_ENTRIES) t.is(e.table.entries.flags(o.ref), flagsBefore, 'a refused map leaves the flags as they were');
  });
}

test('a map is the guest page itself, and flags follow the pins', (t) => {
  const { table, mem, mapper } = setup();
  const ref = table.grantForeignAccess(0, 2, false);
  const a = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map | GNTMAP_readonly });
  t.is(a.status, GNTST_okay);
  t.is(a.bytes!.buffer, mem.sab);
  t.is(a.bytes!.byteOffset, 2 * XEN_PAGE_SIZE);
  t.is(a.bytes!.length, XEN_PAGE_SIZE);
  mem.frame(2)[7] = 42;
  t.is(a.bytes![7], 42, 'not a copy');
  t.is(table.entries.flags(ref), GTF_permit_access | GTF_reading);
  const b = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map });
  t.is(b.status, GNTST_okay);
  t.is(table.entries.flags(ref), GTF_permit_access | GTF_reading | GTF_writing);
  const c = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map });
  t.deepEqual(mapper.mappedRefs(1), [ref]);
  t.is(mapper.unmap(b.handle), GNTST_okay);
  t.is(table.entries.flags(ref), GTF_permit_access | GTF_reading | GTF_writing, 'one writable map left');
  t.is(mapper.unmap(c.handle), GNTST_okay);
  t.is(table.entries.flags(ref), GTF_permit_access | GTF_reading, 'the last writable unmap clears GTF_writing');
  t.false(table.endForeignAccessRef(ref));
  t.is(mapper.unmap(a.handle), GNTST_okay);
  t.is(table.entries.flags(ref), GTF_permit_access, 'the last unmap clears GTF_reading');
  t.deepEqual(mapper.mappedRefs(1), []);
  t.true(table.endForeignAccessRef(ref));
  t.is(mapper.map({ dom: 1, ref, flags: GNTMAP_host_map }).status, GNTST_general_error, 'no map after end');
});

test('the frame is read once at the first pin: a guest rewriting it does not move the mapping', (t) => {
  const { table, mapper } = setup();
  const ref = table.grantForeignAccess(0, 1, false);
  const a = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map });
  table.entries.write(ref, 0, 3, table.entries.flags(ref));
  const b = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map });
  t.is(b.bytes!.byteOffset, XEN_PAGE_SIZE);
  t.is(a.bytes, b.bytes);
});

// ---- bounded cmpxchg retries against a guest that changes the entry between snapshot and cmpxchg ----

for (const [flips, status, attempts] of [
  [0, GNTST_okay, 1],
  [1, GNTST_okay, 2],
  [4, GNTST_okay, 5],
  [5, GNTST_general_error, 5],
  [1000, GNTST_general_error, 5],
] as const) {
  test(`a guest flipping its flags ${flips} times: ${gntstName(status)} after ${attempts} cmpxchg`, (t) => {
    let left: number = flips;
    let table: GrantTable | undefined;
    const e = setup({
      beforeCmpxchg: (_dom, ref) => {
        if (left > 0) {
          left--;
          table!.entries.storeFlags(ref, table!.entries.flags(ref) ^ GTF_PWT);
        }
      },
    });
    table = e.table;
    const ref = table.grantForeignAccess(0, 1, false);
    const r = e.mapper.map({ dom: 1, ref, flags: GNTMAP_host_map });
    t.is(r.status, status);
    t.is(e.mapper.stats().cmpxchgAttempts, attempts);
    t.is(GNTTAB_CMPXCHG_ATTEMPTS, 5);
    const busy = table.entries.flags(ref) & (GTF_reading | GTF_writing);
    if (status === GNTST_okay) {
      t.is(busy, GTF_reading | GTF_writing);
      t.is(e.mapper.stats().unstable, 0);
    } else {
      t.is(busy, 0);
      t.is(e.logs.at(-1), 'Shared grant entry is unstable');
      t.is(e.mapper.stats().unstable, 1);
    }
  });
}

test('each retry validates the new snapshot: a domid changed mid-map is refused', (t) => {
  let table: GrantTable | undefined;
  const e = setup({ beforeCmpxchg: (_d, ref) => table!.entries.write(ref, 7, 1, table!.entries.flags(ref)) });
  table = e.table;
  const ref = table.grantForeignAccess(0, 1, false);
  t.is(e.mapper.map({ dom: 1, ref, flags: GNTMAP_host_map }).status, GNTST_general_error);
  t.is(e.logs.at(-1), 'Bad flags (1) or dom (7); expected d0');
  t.is(table.entries.flags(ref), GTF_permit_access);
  t.is(e.mapper.stats().cmpxchgAttempts, 1);
});

test('a guest setting GTF_readonly mid-map makes a writable map fail', (t) => {
  let table: GrantTable | undefined;
  const e = setup({ beforeCmpxchg: (_d, ref) => table!.entries.storeFlags(ref, GTF_permit_access | GTF_readonly) });
  table = e.table;
  const ref = table.grantForeignAccess(0, 1, false);
  t.is(e.mapper.map({ dom: 1, ref, flags: GNTMAP_host_map }).status, GNTST_general_error);
  t.is(e.logs.at(-1), 'Attempt to write-pin a r/o grant entry');
  t.is(table.entries.flags(ref), GTF_permit_access | GTF_readonly);
});

// ---- pins, maptrack, handles ----

test('pin counters refuse a 129th map of one kind', (t) => {
  const { table, mapper, logs } = setup();
  const a = table.grantForeignAccess(0, 1, false);
  const b = table.grantForeignAccess(0, 2, false);
  for (let i = 0; i < 128; i++) t.is(mapper.map({ dom: 1, ref: a, flags: GNTMAP_host_map | GNTMAP_readonly }).status, GNTST_okay);
  t.is(mapper.map({ dom: 1, ref: a, flags: GNTMAP_host_map | GNTMAP_readonly }).status, GNTST_general_error);
  t.is(logs.at(-1), 'Risk of counter overflow 00008000');
  t.is(mapper.map({ dom: 1, ref: a, flags: GNTMAP_host_map }).status, GNTST_general_error, 'any full counter refuses');
  for (let i = 0; i < 128; i++) t.is(mapper.map({ dom: 1, ref: b, flags: GNTMAP_host_map }).status, GNTST_okay);
  t.is(mapper.map({ dom: 1, ref: b, flags: GNTMAP_host_map }).status, GNTST_general_error);
  t.is(logs.at(-1), 'Risk of counter overflow 00000080');
  t.is(table.entries.flags(b), GTF_permit_access | GTF_reading | GTF_writing);
  t.deepEqual(mapper.mappedRefs(1), [a, b]);
});

test('a full maptrack answers GNTST_no_space before looking at the ref', (t) => {
  const { table, mapper, logs } = setup({ maxMaptrackFrames: 1 });
  const a = table.grantForeignAccess(0, 1, false);
  const b = table.grantForeignAccess(0, 2, false);
  const c = table.grantForeignAccess(0, 3, false);
  const handles: number[] = [];
  for (const ref of [a, b]) {
    for (let j = 0; j < 128; j++) {
      const r = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map | (ref === a ? GNTMAP_readonly : 0) });
      t.is(r.status, GNTST_okay);
      handles.push(r.handle);
    }
  }
  t.is(mapper.stats().liveHandles, 256);
  t.is(mapper.map({ dom: 1, ref: c, flags: GNTMAP_host_map }).status, GNTST_no_space);
  t.is(logs.at(-1), 'Failed to obtain maptrack handle');
  t.is(mapper.map({ dom: 1, ref: 999, flags: GNTMAP_host_map }).status, GNTST_no_space);
  t.is(table.entries.flags(c), GTF_permit_access);
  t.is(mapper.unmap(handles[0]!), GNTST_okay);
  t.is(mapper.map({ dom: 1, ref: c, flags: GNTMAP_host_map }).status, GNTST_okay);
  t.is(new Set(handles).size, 256, 'handles are distinct');
});

test('unmap answers GNTST_bad_handle for unknown, freed and stale handles', (t) => {
  const { table, mapper, logs } = setup();
  const ref = table.grantForeignAccess(0, 1, false);
  const h = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map }).handle;
  const cases: [number, string][] = [
    [INVALID_GRANT_HANDLE, 'Bad handle 0xffffffff'],
    [-1, 'Bad handle -1'],
    [1.5, 'Bad handle 1.5'],
    [(5 << 20) | 300, 'Bad handle 0x50012c'],
  ];
  for (const [handle, message] of cases) {
    t.is(mapper.unmap(handle), GNTST_bad_handle);
    t.is(logs.at(-1), message);
  }
  t.is(mapper.unmap(h), GNTST_okay);
  t.is(mapper.unmap(h), GNTST_bad_handle);
  t.is(logs.at(-1), `Zero flags for handle ${h === 0 ? '0' : `0x${h.toString(16)}`}`);
  const h2 = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map }).handle;
  t.is(h2 & 0xfffff, h & 0xfffff, 'the slot is reused');
  t.not(h2, h);
  t.is(mapper.unmap(h), GNTST_bad_handle, 'a stale handle does not unmap the new mapping');
  t.is(logs.at(-1), `Stale handle ${h === 0 ? '0' : `0x${h.toString(16)}`}`);
  t.is(table.entries.flags(ref), GTF_permit_access | GTF_reading | GTF_writing);
  t.is(mapper.unmap(h2), GNTST_okay);
  t.is(table.entries.flags(ref), GTF_permit_access);
  t.deepEqual(
    [mapper.stats().unmaps, mapper.stats().unmapFailures, mapper.stats().liveHandles],
    [2, 6, 0],
  );
});

// ---- vector map: all or nothing ----

test('mapv rolls back: no flag set, no handle live, the failure keeps its status', (t) => {
  const { table, mapper } = setup();
  const a = table.grantForeignAccess(0, 1, false);
  const b = table.grantForeignAccess(0, 2, true);
  const held = mapper.map({ dom: 1, ref: a, flags: GNTMAP_host_map | GNTMAP_readonly });
  const ops = [
    op(1, a, GNTMAP_host_map),
    op(1, b, GNTMAP_host_map | GNTMAP_readonly),
    op(1, a, GNTMAP_host_map),
    op(1, 99, GNTMAP_host_map),
    op(1, b, GNTMAP_host_map | GNTMAP_readonly),
  ];
  t.is(mapper.mapv(ops), GNTST_bad_gntref);
  t.deepEqual(
    ops.map((o) => [o.status, o.handle, o.bytes]),
    [
      [GNTST_eagain, INVALID_GRANT_HANDLE, null],
      [GNTST_eagain, INVALID_GRANT_HANDLE, null],
      [GNTST_eagain, INVALID_GRANT_HANDLE, null],
      [GNTST_bad_gntref, INVALID_GRANT_HANDLE, null],
      [GNTST_eagain, INVALID_GRANT_HANDLE, null],
    ],
  );
  t.is(table.entries.flags(a), GTF_permit_access | GTF_reading, 'the earlier read-only map is untouched');
  t.is(table.entries.flags(b), GTF_permit_access | GTF_readonly);
  t.is(mapper.stats().liveHandles, 1);
  t.deepEqual(mapper.mappedRefs(1), [a]);
  t.is(mapper.unmap(held.handle), GNTST_okay);
  t.is(table.entries.flags(a), GTF_permit_access);
});

testProp(
  'mapv maps all ops or leaves flags and handles exactly as before',
  [fc.array(fc.record({ ref: fc.integer({ min: 7, max: 12 }), ro: fc.boolean() }), { minLength: 1, maxLength: 12 })],
  (t, specs) => {
    const { table, mapper } = setup();
    table.grantForeignAccess(0, 1, false); // 8
    table.grantForeignAccess(0, 2, true); // 9
    table.grantForeignAccess(5, 2, true); // 10: another domain's
    table.grantForeignAccess(0, NR_FRAMES + 1, true); // 11: bad frame
    table.grantForeignAccess(0, 3, false); // 12
    const before = [7, 8, 9, 10, 11, 12].map((r) => table.entries.flags(r));
    const ops = specs.map((s) => op(1, s.ref, GNTMAP_host_map | (s.ro ? GNTMAP_readonly : 0)));
    const st = mapper.mapv(ops);
    if (st === GNTST_okay) {
      t.true(ops.every((o) => o.status === GNTST_okay && o.bytes !== null));
      t.is(mapper.stats().liveHandles, ops.length);
    } else {
      t.is(ops.find((o) => o.status !== GNTST_eagain)!.status, st);
      t.true(ops.every((o) => o.handle === INVALID_GRANT_HANDLE && o.bytes === null));
      t.deepEqual([7, 8, 9, 10, 11, 12].map((r) => table.entries.flags(r)), before);
      t.is(mapper.stats().liveHandles, 0);
      t.deepEqual(mapper.mappedRefs(1), []);
    }
  },
);

// ---- grant copy ----

function fill(bytes: Uint8Array, seed: number): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + seed) & 0xff;
}

testProp(
  'copy moves exactly len bytes between a grant and local memory, both ways, and releases its pins',
  [
    fc.integer({ min: 0, max: XEN_PAGE_SIZE }).chain((len) =>
      fc.tuple(fc.constant(len), fc.integer({ min: 0, max: XEN_PAGE_SIZE - len }), fc.integer({ min: 0, max: XEN_PAGE_SIZE - len })),
    ),
    fc.boolean(),
  ],
  (t, [len, soff, doff], toGrant) => {
    const { table, mem, mapper } = setup();
    const ref = table.grantForeignAccess(0, 2, false);
    const page = mem.frame(2);
    const buf = new Uint8Array(XEN_PAGE_SIZE);
    fill(page, 1);
    fill(buf, 2);
    const src = toGrant ? buf.slice() : page.slice();
    const dstBefore = toGrant ? page.slice() : buf.slice();
    const o = toGrant
      ? copyOp(local(buf, soff), gref(1, ref, doff), len, GNTCOPY_dest_gref)
      : copyOp(gref(1, ref, soff), local(buf, doff), len, GNTCOPY_source_gref);
    t.is(mapper.copy([o]), GNTST_okay);
    t.is(o.status, GNTST_okay);
    const expected = dstBefore.slice();
    expected.set(src.subarray(soff, soff + len), doff);
    t.deepEqual(toGrant ? page : buf, expected);
    t.is(table.entries.flags(ref), GTF_permit_access);
    t.deepEqual(mapper.mappedRefs(1), []);
  },
);

test('copy between grants of two domains', (t) => {
  const { table, mem, mapper } = setup();
  const table2 = new GrantTable({ domid: 2, nrEntries: 10, clock: new VirtualClock() });
  const mem2 = GuestMemory.create(2);
  mapper.addDomain(2, table2.entries.sab, mem2.sab);
  const s = table.grantForeignAccess(0, 3, true);
  const d = table2.grantForeignAccess(0, 1, false);
  fill(mem.frame(3), 9);
  t.is(mapper.copy([copyOp(gref(1, s, 100), gref(2, d, 50), 1000, GNTCOPY_source_gref | GNTCOPY_dest_gref)]), GNTST_okay);
  t.deepEqual(mem2.frame(1).subarray(50, 1050), mem.frame(3).subarray(100, 1100));
  t.is(mem2.frame(1)[49], 0);
  t.is(mem2.frame(1)[1050], 0);
  t.is(table.entries.flags(s), GTF_permit_access | GTF_readonly);
  t.is(table2.entries.flags(d), GTF_permit_access);
});

interface CopyCase {
  name: string;
  make: (e: Env, buf: Uint8Array) => GrantCopyOp;
  status: number;
  log: string;
}

const copyCases: CopyCase[] = [
  {
    name: 'source crosses the page',
    make: (e, buf) => copyOp(gref(1, e.table.grantForeignAccess(0, 1, true), 4000), local(buf), 97, GNTCOPY_source_gref),
    status: GNTST_bad_copy_arg,
    log: 'copy beyond page area',
  },
  {
    name: 'dest crosses the page',
    make: (e, buf) => copyOp(local(buf), gref(1, e.table.grantForeignAccess(0, 1, false), 1), 4096, GNTCOPY_dest_gref),
    status: GNTST_bad_copy_arg,
    log: 'copy beyond page area',
  },
  {
    name: 'local sides cross the page',
    make: (_e, buf) => copyOp(local(buf, 4096), local(buf), 1, 0),
    status: GNTST_bad_copy_arg,
    log: 'copy beyond page area',
  },
  {
    name: 'into a read-only grant',
    make: (e, buf) => copyOp(local(buf), gref(1, e.table.grantForeignAccess(0, 1, true)), 10, GNTCOPY_dest_gref),
    status: GNTST_general_error,
    log: 'Attempt to write-pin a r/o grant entry',
  },
  {
    name: 'local source not DOMID_SELF',
    make: (e, buf) => copyOp({ ...local(buf), domid: 1 }, gref(1, e.table.grantForeignAccess(0, 1, false)), 10, GNTCOPY_dest_gref),
    status: GNTST_permission_denied,
    log: 'Only DOMID_SELF may copy by frame: source d1',
  },
  {
    name: 'local dest not DOMID_SELF',
    make: (e, buf) => copyOp(gref(1, e.table.grantForeignAccess(0, 1, true)), { ...local(buf), domid: 0 }, 10, GNTCOPY_source_gref),
    status: GNTST_permission_denied,
    log: 'Only DOMID_SELF may copy by frame: dest d0',
  },
  {
    name: 'unknown source domain',
    make: (_e, buf) => copyOp(gref(4, 8), local(buf), 10, GNTCOPY_source_gref),
    status: GNTST_bad_domain,
    log: 'Could not find domain 4',
  },
  {
    name: 'domains are checked before refs: bad source ref, unknown dest domain',
    make: (_e) => copyOp(gref(1, 99), gref(4, 8), 10, GNTCOPY_source_gref | GNTCOPY_dest_gref),
    status: GNTST_bad_domain,
    log: 'Could not find domain 4',
  },
  {
    name: 'refs are checked before the page: bad source ref and a crossing copy',
    make: (_e, buf) => copyOp(gref(1, 99, 4000), local(buf), 200, GNTCOPY_source_gref),
    status: GNTST_bad_gntref,
    log: 'Bad grant reference 0x63',
  },
  {
    name: 'ungranted source',
    make: (_e, buf) => copyOp(gref(1, 9), local(buf), 10, GNTCOPY_source_gref),
    status: GNTST_general_error,
    log: 'Bad flags (0) or dom (0); expected d0',
  },
  {
    name: 'source frame outside guest memory',
    make: (e, buf) => copyOp(gref(1, e.table.grantForeignAccess(0, 9, true)), local(buf), 10, GNTCOPY_source_gref),
    status: GNTST_bad_page,
    log: 'frame of d1 ref 0x8 is out of range: expected 0 <= x < 4 but got 9',
  },
  {
    name: 'good source, bad dest ref: the source pin is released',
    make: (e) => copyOp(gref(1, e.table.grantForeignAccess(0, 1, true)), gref(1, 16), 10, GNTCOPY_source_gref | GNTCOPY_dest_gref),
    status: GNTST_bad_gntref,
    log: 'Bad grant reference 0x10',
  },
];

for (const c of copyCases) {
  test(`copy refuses: ${c.name} -> ${gntstName(c.status)}`, (t) => {
    const e = setup();
    const buf = new Uint8Array(XEN_PAGE_SIZE);
    fill(buf, 5);
    const page = e.mem.frame(1);
    fill(page, 6);
    const bufBefore = buf.slice();
    const pageBefore = page.slice();
    const o = c.make(e, buf);
    const flagsBefore = Array.from({ length: NR_ENTRIES - 8 }, (_, i) => e.table.entries.flags(i + 8));
    t.is(e.mapper.copy([o]), c.status);
    t.is(o.status, c.status);
    t.is(e.logs.at(-1), c.log);
    t.deepEqual(buf, bufBefore, 'nothing written');
    t.deepEqual(page, pageBefore, 'nothing written');
    t.deepEqual(
      Array.from({ length: NR_ENTRIES - 8 }, (_, i) => e.table.entries.flags(i + 8)),
      flagsBefore,
      'no pin left behind',
    );
    t.deepEqual(e.mapper.mappedRefs(1), []);
  });
}

test('copy reports per-op statuses and carries on after a failed op', (t) => {
  const { table, mem, mapper } = setup();
  const ref = table.grantForeignAccess(0, 1, false);
  const buf = new Uint8Array(XEN_PAGE_SIZE);
  mem.frame(1).fill(7);
  const ops = [
    copyOp(gref(1, ref), local(buf), 10, GNTCOPY_source_gref),
    copyOp(gref(1, ref, 4095), local(buf), 2, GNTCOPY_source_gref),
    copyOp(gref(1, ref), local(buf, 20), 10, GNTCOPY_source_gref),
  ];
  t.is(mapper.copy(ops), GNTST_bad_copy_arg);
  t.deepEqual(ops.map((o) => o.status), [GNTST_okay, GNTST_bad_copy_arg, GNTST_okay]);
  t.is(buf[25], 7);
  t.deepEqual([mapper.stats().copies, mapper.stats().copyFailures], [2, 1]);
});

test('copy pins the grant while it copies: the guest cannot end access mid-copy', (t) => {
  const { table, mem, mapper } = setup();
  const s = table.grantForeignAccess(0, 1, true);
  const d = table.grantForeignAccess(0, 2, false);
  mem.frame(1).fill(3);
  const seen: [string, boolean, number][] = [];
  // A local buffer that plays the guest from inside the copy: set() runs when it is the dest,
  // subarray() when it is the source, both after the grant was claimed and before it is released.
  class Spy extends Uint8Array {
    override set(array: ArrayLike<number>, offset?: number): void {
      seen.push(['set', table.endForeignAccessRef(s), table.entries.flags(s)]);
      super.set(array, offset);
    }
    override subarray(begin?: number, end?: number) {
      seen.push(['subarray', table.endForeignAccessRef(d), table.entries.flags(d)]);
      return new Uint8Array(this.buffer, this.byteOffset, this.length).subarray(begin, end);
    }
  }
  const spy = new Spy(XEN_PAGE_SIZE).fill(9);
  t.is(mapper.copy([copyOp(gref(1, s), local(spy), 8, GNTCOPY_source_gref)]), GNTST_okay);
  t.is(mapper.copy([copyOp(local(spy, 100), gref(1, d), 8, GNTCOPY_dest_gref)]), GNTST_okay);
  t.deepEqual(seen, [
    ['set', false, GTF_permit_access | GTF_readonly | GTF_reading],
    ['subarray', false, GTF_permit_access | GTF_reading | GTF_writing],
  ]);
  t.is(spy[7], 3);
  t.is(mem.frame(2)[7], 9);
  t.true(table.endForeignAccessRef(s));
  t.true(table.endForeignAccessRef(d));
});

test('copy allows a sub_page entry that map refuses, and coexists with a held map', (t) => {
  const { table, mem, mapper } = setup();
  const ref = table.grantForeignAccess(0, 1, false);
  table.entries.write(ref, 0, 1, GTF_permit_access | GTF_sub_page);
  const buf = new Uint8Array(XEN_PAGE_SIZE).fill(4);
  t.is(mapper.map({ dom: 1, ref, flags: GNTMAP_host_map }).status, GNTST_general_error);
  t.is(mapper.copy([copyOp(local(buf), gref(1, ref), 16, GNTCOPY_dest_gref)]), GNTST_okay);
  t.is(mem.frame(1)[15], 4);
  const r2 = table.grantForeignAccess(0, 2, false);
  const held = mapper.map({ dom: 1, ref: r2, flags: GNTMAP_host_map | GNTMAP_readonly });
  t.is(mapper.copy([copyOp(local(buf), gref(1, r2), 16, GNTCOPY_dest_gref)]), GNTST_okay);
  t.is(table.entries.flags(r2), GTF_permit_access | GTF_reading, 'the copy dropped only its own writable pin');
  t.is(mapper.unmap(held.handle), GNTST_okay);
  t.is(table.entries.flags(r2), GTF_permit_access);
});

// ---- domains ----

test('a removed domain refuses new maps and copies but its mappings can still be unmapped', (t) => {
  const { table, mem, mapper } = setup();
  const ref = table.grantForeignAccess(0, 1, false);
  const m = mapper.map({ dom: 1, ref, flags: GNTMAP_host_map });
  t.is(mapper.removeDomain(1), 1);
  t.deepEqual(mapper.mappedRefs(1), [ref]);
  t.is(mapper.map({ dom: 1, ref, flags: GNTMAP_host_map }).status, GNTST_bad_domain);
  t.is(mapper.copy([copyOp(gref(1, ref), local(new Uint8Array(16)), 1, GNTCOPY_source_gref)]), GNTST_bad_domain);
  t.throws(() => mapper.addDomain(1, table.entries.sab, mem.sab), { message: 'd1 is dying with 1 refs still mapped' });
  t.throws(() => mapper.removeDomain(1), { message: 'd1 is not known' });
  t.is(mapper.unmap(m.handle), GNTST_okay);
  t.is(table.entries.flags(ref), GTF_permit_access);
  t.deepEqual(mapper.mappedRefs(1), []);
  mapper.addDomain(1, table.entries.sab, mem.sab);
  t.is(mapper.map({ dom: 1, ref, flags: GNTMAP_host_map }).status, GNTST_okay);
});

test('our own callers\' mistakes throw with exact messages', (t) => {
  const { table, mem, mapper } = setup();
  const cases: [() => unknown, string][] = [
    [() => mapper.addDomain(1, table.entries.sab, mem.sab), 'd1 is already known'],
    [() => mapper.addDomain(0x7ff0, table.entries.sab, mem.sab), 'dom must be an integer in [0, 32751] but got 32752'],
    [() => mapper.addDomain(2, new SharedArrayBuffer(7), mem.sab), 'grant table must be 1 to 32768 entries of 8 bytes but got 7 bytes'],
    [() => mapper.addDomain(2, table.entries.sab, new SharedArrayBuffer(100)), 'guest memory must be 1 to 1048576 whole frames of 4096 bytes but got 100 bytes'],
    [() => mapper.removeDomain(3), 'd3 is not known'],
    [() => mapper.mapOp(op(1, -1, GNTMAP_host_map)), 'map op must have u16 dom, u32 ref, u16 flags but got 1, -1, 2'],
    [() => mapper.mapOp(op(65536, 8, GNTMAP_host_map)), 'map op must have u16 dom, u32 ref, u16 flags but got 65536, 8, 2'],
    [() => mapper.copy([copyOp(local(new Uint8Array(4)), local(new Uint8Array(4)), 5, 0)]), 'copy source overruns its buf: offset 0 + len 5 > 4'],
    [() => mapper.copy([copyOp({ ...local(new Uint8Array(4)), buf: null }, local(new Uint8Array(4)), 1, 0)]), 'copy source is local memory but has no buf'],
    [() => mapper.copy([copyOp(local(new Uint8Array(4)), local(new Uint8Array(4)), 65536, 0)]), 'copy op must have u16 len, offsets and flags but got 65536, 0, 0, 0'],
    [() => new GrantMapper({ domid: 0, maxMaptrackFrames: 0 }), 'maxMaptrackFrames must be an integer in [1, 4095] but got 0'],
    [() => new GrantMapper({ domid: -1 }), 'domid must be an integer in [0, 32751] but got -1'],
  ];
  for (const [fn, message] of cases) t.throws(fn, { message });
});

// ---- the guest and the hypervisor together, against a model ----

type Cmd =
  | { k: 'grant'; dom: number; frame: number; ro: boolean }
  | { k: 'map'; ref: number; ro: boolean }
  | { k: 'unmap'; h: number }
  | { k: 'endRef'; ref: number }
  | { k: 'end'; ref: number }
  | { k: 'free'; ref: number }
  | { k: 'regrant'; ref: number; ro: boolean }
  | { k: 'copy'; ref: number; toGrant: boolean }
  | { k: 'tick' };

const refArb = fc.integer({ min: 8, max: 10 }); // three usable refs: maps hit grants, and -ENOSPC happens
const grantArb = fc.record({
  k: fc.constant('grant' as const),
  dom: fc.constantFrom(0, 0, 0, 5),
  frame: fc.constantFrom(0, 1, 2, 3, NR_FRAMES),
  ro: fc.boolean(),
});
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  grantArb,
  grantArb,
  fc.record({ k: fc.constant('map' as const), ref: refArb, ro: fc.boolean() }),
  fc.record({ k: fc.constant('map' as const), ref: refArb, ro: fc.boolean() }),
  fc.record({ k: fc.constant('unmap' as const), h: fc.nat(40) }),
  fc.record({ k: fc.constant('unmap' as const), h: fc.nat(40) }),
  fc.record({ k: fc.constant('endRef' as const), ref: refArb }),
  fc.record({ k: fc.constant('end' as const), ref: refArb }),
  fc.record({ k: fc.constant('free' as const), ref: refArb }),
  fc.record({ k: fc.constant('regrant' as const), ref: refArb, ro: fc.boolean() }),
  fc.record({ k: fc.constant('copy' as const), ref: refArb, toGrant: fc.boolean() }),
  fc.record({ k: fc.constant('tick' as const) }),
);

interface MRef {
  state: 'free' | 'claimed' | 'granted' | 'deferred';
  dom: number;
  frame: number;
  ro: boolean;
  r: number;
  w: number;
  tries: number;
}

// The hypervisor's answer to pinning `m` (a map or copy), from grant_table.c's rules.
function expectPin(m: MRef, ro: boolean): number {
  if (m.r >= 128 || m.w >= 128) return GNTST_general_error;
  const pinned = m.r + m.w > 0;
  const valid = m.state === 'granted' || m.state === 'deferred';
  if (!pinned && (!valid || m.dom !== 0)) return GNTST_general_error;
  if (!ro && m.w === 0 && m.ro) return GNTST_general_error;
  if (!pinned && m.frame >= NR_FRAMES) return GNTST_bad_page;
  return GNTST_okay;
}

testProp(
  'random grant/map/unmap/end/copy/tick sequences match a simple model',
  [fc.array(cmdArb, { minLength: 10, maxLength: 150, size: 'medium' })],
  (t, cmds) => {
    const { clock, mapper } = setup();
    const NR = 11;
    const small = new GrantTable({ domid: 1, nrEntries: NR, clock });
    mapper.removeDomain(1);
    mapper.addDomain(1, small.entries.sab, GuestMemory.create(NR_FRAMES).sab);
    const model: MRef[] = Array.from({ length: NR }, () => ({ state: 'free', dom: 0, frame: 0, ro: false, r: 0, w: 0, tries: 0 }));
    const deferredQ: number[] = [];
    const handles: { h: number; ref: number; ro: boolean; live: boolean }[] = [];
    const buf = new Uint8Array(XEN_PAGE_SIZE);
    const check = (after: string): void => {
      // The shared flags are exactly what the grant state and the pins say.
      for (let ref = 8; ref < NR; ref++) {
        const m = model[ref]!;
        const valid = m.state === 'granted' || m.state === 'deferred';
        const want = valid
          ? GTF_permit_access | (m.ro ? GTF_readonly : 0) | (m.r + m.w > 0 ? GTF_reading : 0) | (m.w > 0 ? GTF_writing : 0)
          : 0;
        t.is(small.entries.flags(ref), want, `flags of ref ${ref} after ${after}`);
        t.false(!valid && m.r + m.w > 0, 'a ref is never ended while pinned');
      }
      const q = small.query();
      t.deepEqual(q.outstanding.map((g) => g.ref), model.flatMap((m, i) => (m.state === 'granted' ? [i] : [])));
      t.deepEqual(q.deferred, deferredQ.map((ref) => ({ ref, tries: model[ref]!.tries })));
      t.deepEqual(q.claimed, model.flatMap((m, i) => (i >= 8 && m.state === 'claimed' ? [i] : [])));
      t.is(q.free, model.filter((m, i) => i >= 8 && m.state === 'free').length);
      t.deepEqual(mapper.mappedRefs(1), model.flatMap((m, i) => (m.r + m.w > 0 ? [i] : [])));
      t.is(mapper.stats().liveHandles, handles.filter((h) => h.live).length);
    };
    check('setup');
    for (const c of cmds) {
      switch (c.k) {
        case 'grant': {
          const ref = small.grantForeignAccess(c.dom, c.frame, c.ro);
          if (!model.some((m, i) => i >= 8 && m.state === 'free')) {
            t.is(ref, -ENOSPC);
            break;
          }
          t.is(model[ref]?.state, 'free', `grant handed out ref ${ref}`);
          Object.assign(model[ref]!, { state: 'granted', dom: c.dom, frame: c.frame, ro: c.ro });
          break;
        }
        case 'regrant': {
          const m = model[c.ref]!;
          if (m.state !== 'claimed') break;
          small.grantForeignAccessRef(c.ref, 0, 1, c.ro);
          Object.assign(m, { state: 'granted', dom: 0, frame: 1, ro: c.ro });
          break;
        }
        case 'map': {
          const m = model[c.ref]!;
          const want = expectPin(m, c.ro);
          const r = mapper.map({ dom: 1, ref: c.ref, flags: GNTMAP_host_map | (c.ro ? GNTMAP_readonly : 0) });
          t.is(gntstName(r.status), gntstName(want), `map ${c.ref} ro=${c.ro}`);
          if (r.status === GNTST_okay) {
            if (c.ro) m.r++;
            else m.w++;
            handles.push({ h: r.handle, ref: c.ref, ro: c.ro, live: true });
          }
          break;
        }
        case 'copy': {
          const m = model[c.ref]!;
          const want = expectPin(m, !c.toGrant);
          const o = c.toGrant
            ? copyOp(local(buf), gref(1, c.ref), 64, GNTCOPY_dest_gref)
            : copyOp(gref(1, c.ref), local(buf), 64, GNTCOPY_source_gref);
          t.is(gntstName(mapper.copy([o])), gntstName(want), `copy ${c.ref} toGrant=${c.toGrant}`);
          break;
        }
        case 'unmap': {
          const entry = handles[c.h];
          const st = mapper.unmap(entry === undefined ? INVALID_GRANT_HANDLE : entry.h);
          t.is(st, entry?.live === true ? GNTST_okay : GNTST_bad_handle);
          if (entry?.live === true) {
            entry.live = false;
            if (entry.ro) model[entry.ref]!.r--;
            else model[entry.ref]!.w--;
          }
          break;
        }
        case 'endRef': {
          const m = model[c.ref]!;
          if (m.state !== 'granted') break;
          const idle = m.r + m.w === 0;
          t.is(small.endForeignAccessRef(c.ref), idle);
          if (idle) m.state = 'claimed';
          break;
        }
        case 'end': {
          const m = model[c.ref]!;
          if (m.state === 'claimed' || (m.state === 'granted' && m.r + m.w === 0)) {
            small.endForeignAccess(c.ref);
            m.state = 'free';
          } else if (m.state === 'granted') {
            small.endForeignAccess(c.ref);
            m.state = 'deferred';
            m.tries = 0;
            deferredQ.push(c.ref);
          }
          break;
        }
        case 'free': {
          const m = model[c.ref]!;
          if (m.state !== 'claimed') break;
          small.freeRef(c.ref);
          m.state = 'free';
          break;
        }
        case 'tick': {
          clock.advance(1000);
          let first = -1;
          for (let nr = 10; nr > 0 && deferredQ.length > 0; nr--) {
            const ref = deferredQ[0]!;
            if (ref === first) break;
            deferredQ.shift();
            const m = model[ref]!;
            if (m.r + m.w === 0) {
              m.state = 'free';
            } else {
              m.tries++;
              if (first < 0) first = ref;
              deferredQ.push(ref);
            }
          }
          break;
        }
      }
      check(c.k);
    }
  },
);
