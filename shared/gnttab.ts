// Grant table v1: the shared ABI (xen/include/public/grant_table.h), the entry layout, and the guest side
// (Linux drivers/xen/grant-table.c): grant, end access, Linux's deferred revoke. The hypervisor side
// (map/unmap/copy, xen/common/grant_table.c) lives in gnttab-mapper.ts and shares the accessors below.
// The table is one SharedArrayBuffer owned by the granting guest; the hypervisor side treats it as hostile.

import type { Clock, TimerId } from './clock.js';

// ---- Entry types and flags: xen/include/public/grant_table.h ----

/** Entry type: no grant. */
export const GTF_invalid = 0; // grant_table.h
/** Entry type: the grantee may map or copy the frame. */
export const GTF_permit_access = 1; // grant_table.h
/** Entry type: the grantee may transfer a page to us (not modelled beyond the constant). */
export const GTF_accept_transfer = 2; // grant_table.h
/** Entry type: transitive grant (v2 only). */
export const GTF_transitive = 3; // grant_table.h
/** Mask of the entry type bits. */
export const GTF_type_mask = 3; // grant_table.h
/** Set by the guest: the grantee may only read the frame. */
export const GTF_readonly = 1 << 2; // grant_table.h (_GTF_readonly)
/** Set by Xen while the grantee holds a mapping or copy of the frame. */
export const GTF_reading = 1 << 3; // grant_table.h (_GTF_reading)
/** Set by Xen while the grantee holds a writable mapping or copy of the frame. */
export const GTF_writing = 1 << 4; // grant_table.h (_GTF_writing)
/** Cache attribute: page write-through. */
export const GTF_PWT = 1 << 5; // grant_table.h
/** Cache attribute: page cache disable. */
export const GTF_PCD = 1 << 6; // grant_table.h
/** Cache attribute: PAT. */
export const GTF_PAT = 1 << 7; // grant_table.h
/** Sub-page grant (v2); Xen refuses to map an entry with it set. */
export const GTF_sub_page = 1 << 8; // grant_table.h (_GTF_sub_page)
/** Transfer subflag: Xen committed the transfer. */
export const GTF_transfer_committed = 1 << 2; // grant_table.h
/** Transfer subflag: the transfer completed. */
export const GTF_transfer_completed = 1 << 3; // grant_table.h

// ---- Map flags (struct gnttab_map_grant_ref.flags): grant_table.h ----

/** Map for access by I/O devices. */
export const GNTMAP_device_map = 1 << 0; // grant_table.h (_GNTMAP_device_map)
/** Map for access by the host CPU. */
export const GNTMAP_host_map = 1 << 1; // grant_table.h (_GNTMAP_host_map)
/** Map read-only. */
export const GNTMAP_readonly = 1 << 2; // grant_table.h (_GNTMAP_readonly)
/** Map for application access (PV only). */
export const GNTMAP_application_map = 1 << 3; // grant_table.h (_GNTMAP_application_map)
/** host_addr is a PTE address (PV only). */
export const GNTMAP_contains_pte = 1 << 4; // grant_table.h (_GNTMAP_contains_pte)

// ---- Copy flags (struct gnttab_copy.flags): grant_table.h ----

/** The copy source is a grant reference (else a local frame). */
export const GNTCOPY_source_gref = 1 << 0; // grant_table.h (_GNTCOPY_source_gref)
/** The copy destination is a grant reference (else a local frame). */
export const GNTCOPY_dest_gref = 1 << 1; // grant_table.h (_GNTCOPY_dest_gref)

// ---- Status codes: grant_table.h ----

/** Normal return. */
export const GNTST_okay = 0; // grant_table.h
/** General undefined error. */
export const GNTST_general_error = -1; // grant_table.h
/** Unrecognised domain id. */
export const GNTST_bad_domain = -2; // grant_table.h
/** Unrecognised or inappropriate gntref. */
export const GNTST_bad_gntref = -3; // grant_table.h
/** Unrecognised or inappropriate handle. */
export const GNTST_bad_handle = -4; // grant_table.h
/** Inappropriate virtual address to map. */
export const GNTST_bad_virt_addr = -5; // grant_table.h
/** Inappropriate device address to unmap. */
export const GNTST_bad_dev_addr = -6; // grant_table.h
/** Out of space in I/O MMU. */
export const GNTST_no_device_space = -7; // grant_table.h
/** Not enough privilege for operation. */
export const GNTST_permission_denied = -8; // grant_table.h
/** Specified page was invalid for op. */
export const GNTST_bad_page = -9; // grant_table.h
/** Copy arguments cross page boundary. */
export const GNTST_bad_copy_arg = -10; // grant_table.h
/** Transfer page address too large. */
export const GNTST_address_too_big = -11; // grant_table.h
/** Operation not done; try again. */
export const GNTST_eagain = -12; // grant_table.h
/** Out of space (handles etc); Xen >= 4.17 answers it when the maptrack is full. */
export const GNTST_no_space = -13; // grant_table.h

const GNTST_NAMES: readonly string[] = [
  'GNTST_okay',
  'GNTST_general_error',
  'GNTST_bad_domain',
  'GNTST_bad_gntref',
  'GNTST_bad_handle',
  'GNTST_bad_virt_addr',
  'GNTST_bad_dev_addr',
  'GNTST_no_device_space',
  'GNTST_permission_denied',
  'GNTST_bad_page',
  'GNTST_bad_copy_arg',
  'GNTST_address_too_big',
  'GNTST_eagain',
  'GNTST_no_space',
];

/** The C name of a GNTST_* status (`GNTST_bad_gntref`), or `GNTST_unknown(n)` for anything else. */
export function gntstName(code: number): string {
  const name = Number.isInteger(code) && code <= 0 ? GNTST_NAMES[-code] : undefined;
  return name ?? `GNTST_unknown(${String(code)})`;
}

// ---- Domain ids, references, handles ----

/** First domid reserved for special meanings. */
export const DOMID_FIRST_RESERVED = 0x7ff0; // xen/include/public/xen.h
/** "The calling domain" in hypercall arguments. */
export const DOMID_SELF = 0x7ff0; // xen/include/public/xen.h
/** Entries 0..7 are reserved for the toolstack (xenstore, console); Linux never hands them out. */
export const GNTTAB_NR_RESERVED_ENTRIES = 8; // grant_table.h
/** A reference that names no grant. */
export const INVALID_GRANT_REF = 0xffffffff; // include/xen/grant_table.h (Linux)
/** A handle that names no mapping. */
export const INVALID_GRANT_HANDLE = 0xffffffff; // include/xen/grant_table.h (Linux)
/** errno for "no free grant reference" (Linux returns -ENOSPC). */
export const ENOSPC = 28; // include/uapi/asm-generic/errno-base.h

// ---- Entry layout: grant_entry_v1_t { u16 flags; domid_t domid; u32 frame; } ----

/** sizeof(grant_entry_v1_t). */
export const GRANT_ENTRY_V1_SIZE = 8; // grant_table.h
/** Byte offset of `flags` (u16) in an entry. */
export const GRANT_ENTRY_V1_FLAGS = 0; // grant_table.h
/** Byte offset of `domid` (u16) in an entry. */
export const GRANT_ENTRY_V1_DOMID = 2; // grant_table.h
/** Byte offset of `frame` (u32) in an entry. */
export const GRANT_ENTRY_V1_FRAME = 4; // grant_table.h
/** Most entries a table may have: Xen's default 64 grant frames of 512 v1 entries. */
export const GNTTAB_MAX_ENTRIES = 64 * (4096 / GRANT_ENTRY_V1_SIZE); // xen/common/grant_table.c opt_max_grant_frames

// Xen updates flags and domid as one 32-bit word (union grant_combo); the layout below assumes the
// little-endian order every Node platform uses, so refuse to load anywhere else.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('grantwire: grant entries assume a little-endian host');
}

/** The flags half of a grant_combo word. */
export function comboFlags(combo: number): number {
  return combo & 0xffff;
}

/** The domid half of a grant_combo word. */
export function comboDomid(combo: number): number {
  return combo >>> 16;
}

/** Typed views over a v1 grant table buffer: the one place that knows the entry layout. */
export class GrantEntriesV1 {
  /** The table buffer. */
  readonly sab: SharedArrayBuffer;
  /** Number of entries (the buffer holds whole entries only). */
  readonly nrEntries: number;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly i32: Int32Array;

  /** Wraps a table buffer; throws RangeError unless it holds 1..GNTTAB_MAX_ENTRIES whole entries. */
  constructor(sab: SharedArrayBuffer) {
    const len = sab.byteLength;
    if (len === 0 || len % GRANT_ENTRY_V1_SIZE !== 0 || len / GRANT_ENTRY_V1_SIZE > GNTTAB_MAX_ENTRIES) {
      throw new RangeError(
        `grant table must be 1 to ${GNTTAB_MAX_ENTRIES} entries of ${GRANT_ENTRY_V1_SIZE} bytes but got ${len} bytes`,
      );
    }
    this.sab = sab;
    this.nrEntries = len / GRANT_ENTRY_V1_SIZE;
    this.u16 = new Uint16Array(sab);
    this.u32 = new Uint32Array(sab);
    this.i32 = new Int32Array(sab);
  }

  /** Allocates a zeroed table of `nrEntries` entries. */
  static create(nrEntries: number): GrantEntriesV1 {
    if (!Number.isInteger(nrEntries) || nrEntries < 1 || nrEntries > GNTTAB_MAX_ENTRIES) {
      throw new RangeError(`nrEntries must be an integer in [1, ${GNTTAB_MAX_ENTRIES}] but got ${String(nrEntries)}`);
    }
    return new GrantEntriesV1(new SharedArrayBuffer(nrEntries * GRANT_ENTRY_V1_SIZE));
  }

  /** Atomically reads `flags` of entry `ref`. */
  flags(ref: number): number {
    return Atomics.load(this.u16, ref * 4 + GRANT_ENTRY_V1_FLAGS / 2);
  }

  /** Atomically reads `domid` of entry `ref`. */
  domid(ref: number): number {
    return Atomics.load(this.u16, ref * 4 + GRANT_ENTRY_V1_DOMID / 2);
  }

  /** Atomically reads `frame` of entry `ref`. */
  frame(ref: number): number {
    return Atomics.load(this.u32, ref * 2 + GRANT_ENTRY_V1_FRAME / 4);
  }

  /** Atomically reads flags and domid as one signed 32-bit grant_combo word. */
  combo(ref: number): number {
    return Atomics.load(this.i32, ref * 2);
  }

  /** cmpxchg on the grant_combo word (as Xen's guest_cmpxchg); returns the previous word. */
  cmpxchgCombo(ref: number, expected: number, replacement: number): number {
    return Atomics.compareExchange(this.i32, ref * 2, expected, replacement);
  }

  /** cmpxchg on the u16 flags word (as Linux's sync_cmpxchg); returns the previous flags. */
  cmpxchgFlags(ref: number, expected: number, replacement: number): number {
    return Atomics.compareExchange(this.u16, ref * 4 + GRANT_ENTRY_V1_FLAGS / 2, expected, replacement);
  }

  /** Atomically clears `mask` in `flags` (Xen's gnttab_clear_flags). */
  clearFlags(ref: number, mask: number): void {
    Atomics.and(this.u16, ref * 4 + GRANT_ENTRY_V1_FLAGS / 2, ~mask & 0xffff);
  }

  /** Atomically stores `flags` alone (tests use it to play a hostile guest). */
  storeFlags(ref: number, flags: number): void {
    Atomics.store(this.u16, ref * 4 + GRANT_ENTRY_V1_FLAGS / 2, flags);
  }

  /**
   * Writes domid and frame, then flags (gnttab_update_entry_v1): plain stores, then a seq-cst store of flags that
   * orders them before it as Linux's wmb() does (a reader that sees the flags with Atomics.load sees them too).
   */
  write(ref: number, domid: number, frame: number, flags: number): void {
    this.u16[ref * 4 + GRANT_ENTRY_V1_DOMID / 2] = domid;
    this.u32[ref * 2 + GRANT_ENTRY_V1_FRAME / 4] = frame;
    Atomics.store(this.u16, ref * 4 + GRANT_ENTRY_V1_FLAGS / 2, flags);
  }
}

/** A log sink; levels follow Linux's pr_debug/pr_info/pr_warn and Xen's XENLOG_INFO/WARNING. */
export type GnttabLog = (level: 'debug' | 'info' | 'warn', message: string) => void;

/** printf's `%#x`: `0x1f`, and plain `0` for zero. */
export function hexAlt(n: number): string {
  return n === 0 ? '0' : `0x${n.toString(16)}`;
}

// ---- Guest side: Linux drivers/xen/grant-table.c ----

/** Linux retries deferred revokes every second (jiffies + HZ). */
export const GNTTAB_DEFERRED_RETRY_MS = 1000; // drivers/xen/grant-table.c gnttab_add_deferred
/** Linux warns "still pending" after this many failed deferred retries (entry->warn_delay). */
export const GNTTAB_DEFERRED_WARN_TRIES = 60; // drivers/xen/grant-table.c gnttab_add_deferred
/** Linux retries at most this many deferred entries per timer tick (free_per_iteration). */
export const GNTTAB_DEFERRED_PER_TICK = 10; // drivers/xen/grant-table.c gnttab_handle_deferred

const REF_FREE = 0;
const REF_CLAIMED = 1; // allocated to the caller, no grant in the entry
const REF_GRANTED = 2;
const REF_DEFERRED = 3; // access ended by the owner but still in use: on the deferred list

/** A grant the owner still has outstanding. */
export interface OutstandingGrant {
  readonly ref: number;
  readonly domid: number;
  readonly frame: number;
  readonly readonly: boolean;
  /** GTF_reading or GTF_writing is set: the grantee holds a mapping or copy. */
  readonly inUse: boolean;
}

/** A grant whose revoke was refused and is retried on the timer. */
export interface DeferredGrant {
  readonly ref: number;
  /** Failed timer retries so far. */
  readonly tries: number;
}

/** What `GrantTable.query()` reports. */
export interface GrantTableQuery {
  readonly outstanding: OutstandingGrant[];
  readonly deferred: DeferredGrant[];
  /** Refs whose access ended (endForeignAccessRef) but that the caller has not freed yet. */
  readonly claimed: number[];
  readonly free: number;
}

/** Options for a guest's grant table. */
export interface GrantTableOptions {
  /** The owning (granting) domain. */
  readonly domid: number;
  /** Entries in the table, including the GNTTAB_NR_RESERVED_ENTRIES reserved ones. */
  readonly nrEntries: number;
  /** Drives the deferred-revoke timer. */
  readonly clock: Clock;
  readonly log?: GnttabLog;
}

/**
 * The granting guest's grant table (Linux's grant-table.c over grant table v1). Single-threaded: only
 * the owner calls it; the hypervisor side touches the shared entries only through Atomics.
 */
export class GrantTable {
  /** The shared entries (post `entries.sab` to the backend worker). */
  readonly entries: GrantEntriesV1;
  /** The owning domain. */
  readonly domid: number;
  private readonly clock: Clock;
  private readonly log: GnttabLog | undefined;
  private readonly state: Uint8Array;
  private readonly freeStack: Int32Array;
  private freeTop = 0;
  // The deferred list is a FIFO ring of refs, as Linux's list_add_tail/list_first_entry.
  private readonly deferredRing: Int32Array;
  private deferredHead = 0;
  private deferredLen = 0;
  private readonly deferredTries: Int32Array;
  private timer: TimerId | undefined;

  constructor(opts: GrantTableOptions) {
    if (!Number.isInteger(opts.domid) || opts.domid < 0 || opts.domid >= DOMID_FIRST_RESERVED) {
      throw new RangeError(`domid must be an integer in [0, ${DOMID_FIRST_RESERVED - 1}] but got ${String(opts.domid)}`);
    }
    const n = opts.nrEntries;
    if (!Number.isInteger(n) || n <= GNTTAB_NR_RESERVED_ENTRIES || n > GNTTAB_MAX_ENTRIES) {
      throw new RangeError(
        `nrEntries must be an integer in [${GNTTAB_NR_RESERVED_ENTRIES + 1}, ${GNTTAB_MAX_ENTRIES}] but got ${String(n)}`,
      );
    }
    this.entries = GrantEntriesV1.create(n);
    this.domid = opts.domid;
    this.clock = opts.clock;
    this.log = opts.log;
    this.state = new Uint8Array(n);
    this.freeStack = new Int32Array(n);
    this.deferredRing = new Int32Array(n);
    this.deferredTries = new Int32Array(n);
    // Pushed high to low so the lowest ref is handed out first; the reserved entries are never free.
    for (let ref = n - 1; ref >= GNTTAB_NR_RESERVED_ENTRIES; ref--) this.freeStack[this.freeTop++] = ref;
    for (let ref = 0; ref < GNTTAB_NR_RESERVED_ENTRIES; ref++) this.state[ref] = REF_CLAIMED;
  }

  /** Number of entries. */
  get nrEntries(): number {
    return this.entries.nrEntries;
  }

  /** Number of refs on the free list. */
  get freeCount(): number {
    return this.freeTop;
  }

  /** Allocates a ref and grants `domid` access to `frame` (gnttab_grant_foreign_access); -ENOSPC when none is free. */
  grantForeignAccess(domid: number, frame: number, readonly: boolean): number {
    checkGrantArgs(domid, frame);
    if (this.freeTop === 0) return -ENOSPC;
    const ref = this.freeStack[--this.freeTop]!;
    this.state[ref] = REF_GRANTED;
    this.entries.write(ref, domid, frame, GTF_permit_access | (readonly ? GTF_readonly : 0));
    return ref;
  }

  /** Re-grants a ref the caller holds after endForeignAccessRef (gnttab_grant_foreign_access_ref). */
  grantForeignAccessRef(ref: number, domid: number, frame: number, readonly: boolean): void {
    this.expectState(ref, REF_CLAIMED, 'grantForeignAccessRef');
    checkGrantArgs(domid, frame);
    this.state[ref] = REF_GRANTED;
    this.entries.write(ref, domid, frame, GTF_permit_access | (readonly ? GTF_readonly : 0));
  }

  /** True while the grantee holds a mapping or copy of `ref` (gnttab_query_foreign_access). */
  queryForeignAccess(ref: number): boolean {
    this.checkRef(ref);
    return (this.entries.flags(ref) & (GTF_reading | GTF_writing)) !== 0;
  }

  /**
   * Ends access to a granted ref unless it is in use (gnttab_end_foreign_access_ref): true when the
   * entry is now invalid and the caller still holds the ref (free it with `freeRef`), false (and a
   * warning) when the grantee still maps it.
   */
  endForeignAccessRef(ref: number): boolean {
    this.expectState(ref, REF_GRANTED, 'endForeignAccessRef');
    if (this.tryEnd(ref)) {
      this.state[ref] = REF_CLAIMED;
      return true;
    }
    this.log?.('warn', `WARNING: g.e. ${hexAlt(ref)} still in use!`);
    return false;
  }

  /** Returns a ref whose access has ended to the free list (gnttab_free_grant_reference). */
  freeRef(ref: number): void {
    this.expectState(ref, REF_CLAIMED, 'freeRef');
    this.putFree(ref);
  }

  /**
   * Ends access and frees the ref now, or, when the grantee still uses it, puts it on the deferred list
   * that a 1 s timer retries (gnttab_end_foreign_access). The ref is never reused before the end succeeds.
   */
  endForeignAccess(ref: number): void {
    this.checkRef(ref);
    const s = this.state[ref];
    if (s === REF_CLAIMED) {
      this.putFree(ref);
      return;
    }
    this.expectState(ref, REF_GRANTED, 'endForeignAccess');
    if (this.tryEnd(ref)) {
      this.putFree(ref);
      return;
    }
    this.log?.('warn', `WARNING: g.e. ${hexAlt(ref)} still in use!`);
    this.state[ref] = REF_DEFERRED;
    this.deferredTries[ref] = 0;
    this.deferredRing[(this.deferredHead + this.deferredLen) % this.deferredRing.length] = ref;
    this.deferredLen++;
    this.log?.('debug', `deferring g.e. ${hexAlt(ref)} (pfn ${hexAlt(this.entries.frame(ref))})`);
    if (this.timer === undefined) this.timer = this.clock.schedule(GNTTAB_DEFERRED_RETRY_MS, this.onDeferredTimer);
  }

  /** Outstanding, deferred and claimed grants, for leak checks and debugging. */
  query(): GrantTableQuery {
    const outstanding: OutstandingGrant[] = [];
    const claimed: number[] = [];
    for (let ref = GNTTAB_NR_RESERVED_ENTRIES; ref < this.state.length; ref++) {
      const s = this.state[ref];
      if (s === REF_GRANTED) {
        const flags = this.entries.flags(ref);
        outstanding.push({
          ref,
          domid: this.entries.domid(ref),
          frame: this.entries.frame(ref),
          readonly: (flags & GTF_readonly) !== 0,
          inUse: (flags & (GTF_reading | GTF_writing)) !== 0,
        });
      } else if (s === REF_CLAIMED) {
        claimed.push(ref);
      }
    }
    const deferred: DeferredGrant[] = [];
    for (let i = 0; i < this.deferredLen; i++) {
      const ref = this.deferredRing[(this.deferredHead + i) % this.deferredRing.length]!;
      deferred.push({ ref, tries: this.deferredTries[ref]! });
    }
    return { outstanding, deferred, claimed, free: this.freeTop };
  }

  /** Stops the deferred-revoke timer (deferred refs stay deferred: they are leaked, not reused). */
  dispose(): void {
    if (this.timer !== undefined) this.clock.cancel(this.timer);
    this.timer = undefined;
  }

  // gnttab_end_foreign_access_ref_v1: cmpxchg flags to 0 unless GTF_reading|GTF_writing is set.
  private tryEnd(ref: number): boolean {
    let flags = this.entries.flags(ref);
    for (;;) {
      if ((flags & (GTF_reading | GTF_writing)) !== 0) return false;
      const prev = this.entries.cmpxchgFlags(ref, flags, 0);
      if (prev === flags) return true;
      flags = prev;
    }
  }

  // gnttab_handle_deferred: at most GNTTAB_DEFERRED_PER_TICK entries, each at most once per tick.
  private readonly onDeferredTimer = (): void => {
    this.timer = undefined;
    const ring = this.deferredRing;
    let first = -1;
    for (let nr = GNTTAB_DEFERRED_PER_TICK; nr > 0 && this.deferredLen > 0; nr--) {
      const ref = ring[this.deferredHead]!;
      if (ref === first) break;
      this.deferredHead = (this.deferredHead + 1) % ring.length;
      this.deferredLen--;
      if (this.tryEnd(ref)) {
        this.log?.('debug', `freeing g.e. ${hexAlt(ref)}`);
        this.putFree(ref);
        continue;
      }
      const tries = ++this.deferredTries[ref]!;
      if (tries === GNTTAB_DEFERRED_WARN_TRIES) this.log?.('warn', `g.e. ${hexAlt(ref)} still pending`);
      if (first < 0) first = ref;
      ring[(this.deferredHead + this.deferredLen) % ring.length] = ref;
      this.deferredLen++;
    }
    if (this.deferredLen > 0) this.timer = this.clock.schedule(GNTTAB_DEFERRED_RETRY_MS, this.onDeferredTimer);
  };

  private putFree(ref: number): void {
    this.state[ref] = REF_FREE;
    this.freeStack[this.freeTop++] = ref;
  }

  private checkRef(ref: number): void {
    if (!Number.isInteger(ref) || ref < GNTTAB_NR_RESERVED_ENTRIES || ref >= this.state.length) {
      throw new RangeError(
        `ref is out of range: expected ${GNTTAB_NR_RESERVED_ENTRIES} <= x < ${this.state.length} but got ${String(ref)}`,
      );
    }
  }

  private expectState(ref: number, want: number, op: string): void {
    this.checkRef(ref);
    const s = this.state[ref]!;
    if (s !== want) {
      throw new Error(`${op}: g.e. ${hexAlt(ref)} is ${REF_STATE_NAMES[s]!}, expected ${REF_STATE_NAMES[want]!}`);
    }
  }
}

const REF_STATE_NAMES: readonly string[] = ['free', 'claimed', 'granted', 'deferred'];

function checkGrantArgs(domid: number, frame: number): void {
  if (!Number.isInteger(domid) || domid < 0 || domid > 0xffff) {
    throw new RangeError(`domid must be a u16 but got ${String(domid)}`);
  }
  if (!Number.isInteger(frame) || frame < 0 || frame > 0xffffffff) {
    throw new RangeError(`frame must be a u32 but got ${String(frame)}`);
  }
}
