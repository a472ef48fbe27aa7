// The hypervisor's half of grant table v1 (xen/common/grant_table.c), run by a backend worker on behalf
// of its own (mapping) domain: map, unmap, vector map with rollback, and grant copy against the granting
// domains' tables and memories. Everything read from a granting domain's table is hostile and may change
// between two reads: the flags/domid word is snapshotted once, validated, and cmpxchg'd against the
// snapshot, with bounded retries so a guest flipping its flags cannot livelock us.
//
// Departures from Xen: the active entries (pin counts) and the maptrack live in this object, so there must
// be one GrantMapper per mapping domain (Xen's act->domid check then holds by construction, and is not
// modelled); maps are host maps only and return the page's Uint8Array view, which is writable even for a
// read-only map (JavaScript has no read-only views); handles carry a generation tag in their top bits that
// stands in for Xen's host_addr check, so a stale handle is refused instead of unmapping a reused slot.

import {
  DOMID_FIRST_RESERVED,
  DOMID_SELF,
  GNTCOPY_dest_gref,
  GNTCOPY_source_gref,
  GNTMAP_application_map,
  GNTMAP_contains_pte,
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
  GTF_permit_access,
  GTF_readonly,
  GTF_reading,
  GTF_sub_page,
  GTF_type_mask,
  GTF_writing,
  GrantEntriesV1,
  INVALID_GRANT_HANDLE,
  comboDomid,
  comboFlags,
  hexAlt,
} from './gnttab.js';
import type { GnttabLog } from './gnttab.js';
import { GuestMemory, XEN_PAGE_SIZE } from './memory.js';

/** Xen tries the flags cmpxchg at most five times, then fails: "the guest is misbehaving". */
export const GNTTAB_CMPXCHG_ATTEMPTS = 5; // xen/common/grant_table.c _set_status_v1 (retries++ == 4)

// Active entry pin counts: 8-bit counters per mapping kind (xen/common/grant_table.c struct active_grant_entry).
/** Increment of the writable host-mapping counter. */
export const GNTPIN_hstw_inc = 1 << 0; // xen/common/grant_table.c
/** Mask of the writable host-mapping counter. */
export const GNTPIN_hstw_mask = 0xff << 0; // xen/common/grant_table.c
/** Increment of the read-only host-mapping counter. */
export const GNTPIN_hstr_inc = 1 << 8; // xen/common/grant_table.c
/** Mask of the read-only host-mapping counter. */
export const GNTPIN_hstr_mask = 0xff << 8; // xen/common/grant_table.c
// Xen refuses a new pin once any counter reaches 128: "risk of counter overflow".
const GNTPIN_OVERFLOW = 0x80808080; // xen/common/grant_table.c map_grant_ref

/** Maptrack handles per maptrack frame: PAGE_SIZE / sizeof(struct grant_mapping). */
export const MAPTRACK_PER_PAGE = 4096 / 16; // xen/common/grant_table.c
/** Xen's default limit of maptrack frames per domain. */
export const MAX_MAPTRACK_FRAMES_DEFAULT = 1024; // xen/common/grant_table.c opt_max_maptrack_frames
// Handle = generation << 20 | maptrack index; 4095 frames of 256 keep the index below 2^20 - 1,
// so no handle ever equals INVALID_GRANT_HANDLE.
const MT_INDEX_BITS = 20;
const MT_INDEX_MASK = (1 << MT_INDEX_BITS) - 1;
const MT_GEN_MASK = 0xfff;
const MAX_MAPTRACK_FRAMES_LIMIT = 4095;

/** One map operation, in and out, as struct gnttab_map_grant_ref (reuse op objects to map without allocating). */
export interface GrantMapOp {
  /** In: the granting domain. */
  dom: number;
  /** In: the grant reference in its table. */
  ref: number;
  /** In: GNTMAP_* flags (GNTMAP_host_map, optionally GNTMAP_readonly). */
  flags: number;
  /** Out: GNTST_* status. */
  status: number;
  /** Out: the mapping handle, or INVALID_GRANT_HANDLE. */
  handle: number;
  /** Out: the mapped page (a view of the granting guest's memory, never a copy), or null. */
  bytes: Uint8Array | null;
}

/** The outcome of one map. */
export interface GrantMapResult {
  readonly status: number;
  readonly handle: number;
  readonly bytes: Uint8Array | null;
}

/** One side of a copy, as struct gnttab_copy_ptr: a grant (ref of domid) or local memory (buf, domid DOMID_SELF). */
export interface GrantCopyPtr {
  /** The grant reference, when the op's flags say this side is a gref. */
  ref: number;
  /** The granting domain for a gref; DOMID_SELF for local memory. */
  domid: number;
  /** Byte offset in the page. */
  offset: number;
  /** Local memory, used when this side is not a gref; treated as one page starting at index 0. */
  buf: Uint8Array | null;
}

/** One copy operation, as struct gnttab_copy. */
export interface GrantCopyOp {
  source: GrantCopyPtr;
  dest: GrantCopyPtr;
  /** Bytes to copy (u16). */
  len: number;
  /** GNTCOPY_source_gref | GNTCOPY_dest_gref. */
  flags: number;
  /** Out: GNTST_* status. */
  status: number;
}

/** Counters, so that leaks and hostile guests are visible. */
export interface GrantMapperStats {
  maps: number;
  mapFailures: number;
  unmaps: number;
  unmapFailures: number;
  copies: number;
  copyFailures: number;
  /** cmpxchg attempts on guest flags (each bounded by GNTTAB_CMPXCHG_ATTEMPTS per pin). */
  cmpxchgAttempts: number;
  /** Pins refused because the guest kept changing the entry ("Shared grant entry is unstable"). */
  unstable: number;
  /** Mappings currently held. */
  liveHandles: number;
}

/** Options for a GrantMapper. */
export interface GrantMapperOptions {
  /** The mapping (local) domain, e.g. 0 for a dom0 backend; grants must name it. */
  readonly domid: number;
  /** Maptrack frames of MAPTRACK_PER_PAGE handles (default MAX_MAPTRACK_FRAMES_DEFAULT, at most 4095). */
  readonly maxMaptrackFrames?: number;
  readonly log?: GnttabLog;
  /** Test seam: runs between the snapshot of an entry and each cmpxchg on it, as a racing guest would. */
  readonly beforeCmpxchg?: (dom: number, ref: number) => void;
}

// The hypervisor's view of one granting domain: its shared table and memory plus the active entries.
class ForeignDomain {
  readonly pin: Uint32Array;
  readonly actFrame: Uint32Array;
  pinnedRefs = 0;
  dying = false;

  constructor(
    readonly domid: number,
    readonly entries: GrantEntriesV1,
    readonly memory: GuestMemory,
  ) {
    this.pin = new Uint32Array(entries.nrEntries);
    this.actFrame = new Uint32Array(entries.nrEntries);
  }
}

/**
 * The hypervisor's grant operations for one mapping domain (xen/common/grant_table.c): map, unmap,
 * vector map, copy. Single-threaded (one per backend worker); guests race it only through their tables.
 */
export class GrantMapper {
  /** The mapping domain. */
  readonly domid: number;
  private readonly log: GnttabLog | undefined;
  private readonly beforeCmpxchg: ((dom: number, ref: number) => void) | undefined;
  private readonly domains: (ForeignDomain | undefined)[] = [];
  private readonly maxHandles: number;
  // Maptrack (struct grant_mapping): a slot is free when its flags are 0.
  private mtDom = new Uint16Array(0);
  private mtRef = new Uint32Array(0);
  private mtFlags = new Uint16Array(0);
  private mtGen = new Uint16Array(0);
  private mtFree = new Int32Array(0);
  private mtFreeTop = 0;
  private mtLimit = 0;
  private readonly counters: GrantMapperStats = {
    maps: 0,
    mapFailures: 0,
    unmaps: 0,
    unmapFailures: 0,
    copies: 0,
    copyFailures: 0,
    cmpxchgAttempts: 0,
    unstable: 0,
    liveHandles: 0,
  };

  constructor(opts: GrantMapperOptions) {
    if (!Number.isInteger(opts.domid) || opts.domid < 0 || opts.domid >= DOMID_FIRST_RESERVED) {
      throw new RangeError(`domid must be an integer in [0, ${DOMID_FIRST_RESERVED - 1}] but got ${String(opts.domid)}`);
    }
    const frames = opts.maxMaptrackFrames ?? MAX_MAPTRACK_FRAMES_DEFAULT;
    if (!Number.isInteger(frames) || frames < 1 || frames > MAX_MAPTRACK_FRAMES_LIMIT) {
      throw new RangeError(
        `maxMaptrackFrames must be an integer in [1, ${MAX_MAPTRACK_FRAMES_LIMIT}] but got ${String(frames)}`,
      );
    }
    this.domid = opts.domid;
    this.log = opts.log;
    this.beforeCmpxchg = opts.beforeCmpxchg;
    this.maxHandles = frames * MAPTRACK_PER_PAGE;
  }

  /** Makes a granting domain known: its table buffer and memory buffer; throws on a bad or duplicate id. */
  addDomain(dom: number, table: SharedArrayBuffer, memory: SharedArrayBuffer): void {
    if (!Number.isInteger(dom) || dom < 0 || dom >= DOMID_FIRST_RESERVED) {
      throw new RangeError(`dom must be an integer in [0, ${DOMID_FIRST_RESERVED - 1}] but got ${String(dom)}`);
    }
    const old = this.domains[dom];
    if (old !== undefined) {
      throw new Error(
        old.dying ? `d${dom} is dying with ${old.pinnedRefs} refs still mapped` : `d${dom} is already known`,
      );
    }
    this.domains[dom] = new ForeignDomain(dom, new GrantEntriesV1(table), GuestMemory.fromBuffer(memory));
  }

  /**
   * Forgets a dead guest: new maps and copies answer GNTST_bad_domain; mappings already held stay valid
   * until unmapped (as Xen keeps a dying domain until its last foreign mapping goes). Returns how many
   * of its refs are still mapped.
   */
  removeDomain(dom: number): number {
    const d = this.domains[dom];
    if (d === undefined || d.dying) throw new Error(`d${String(dom)} is not known`);
    d.dying = true;
    if (d.pinnedRefs === 0) this.domains[dom] = undefined;
    return d.pinnedRefs;
  }

  /** Refs of `dom` that this domain still maps or copies (empty for an unknown domain). */
  mappedRefs(dom: number): number[] {
    const d = this.domains[dom];
    const refs: number[] = [];
    if (d === undefined) return refs;
    for (let ref = 0; ref < d.pin.length; ref++) if (d.pin[ref] !== 0) refs.push(ref);
    return refs;
  }

  /** A snapshot of the counters. */
  stats(): GrantMapperStats {
    return { ...this.counters };
  }

  /** Maps one grant (GNTTABOP_map_grant_ref); allocates the result object (use `mapOp` to avoid that). */
  map(req: { readonly dom: number; readonly ref: number; readonly flags: number }): GrantMapResult {
    const op: GrantMapOp = { dom: req.dom, ref: req.ref, flags: req.flags, status: 0, handle: 0, bytes: null };
    this.mapOp(op);
    return op;
  }

  /** Maps one grant in place: fills op.status, op.handle and op.bytes; returns op.status. */
  mapOp(op: GrantMapOp): number {
    const { dom, ref, flags } = op;
    if (!isU16(dom) || !isU32(ref) || !isU16(flags)) {
      throw new RangeError(
        `map op must have u16 dom, u32 ref, u16 flags but got ${String(dom)}, ${String(ref)}, ${String(flags)}`,
      );
    }
    op.handle = INVALID_GRANT_HANDLE;
    op.bytes = null;
    const st = this.mapOne(op);
    op.status = st;
    if (st === GNTST_okay) this.counters.maps++;
    else this.counters.mapFailures++;
    return st;
  }

  /**
   * Maps every op or none: when any op fails, the ones that succeeded are unmapped again and answer
   * GNTST_eagain ("not done; try again"); failed ops keep their own status. Returns the first failure, or okay.
   */
  mapv(ops: readonly GrantMapOp[]): number {
    let first = GNTST_okay;
    for (let i = 0; i < ops.length; i++) {
      const st = this.mapOp(ops[i]!);
      if (st !== GNTST_okay && first === GNTST_okay) first = st;
    }
    if (first === GNTST_okay) return first;
    for (let i = ops.length - 1; i >= 0; i--) {
      const op = ops[i]!;
      if (op.status !== GNTST_okay) continue;
      this.unmap(op.handle);
      op.status = GNTST_eagain;
      op.handle = INVALID_GRANT_HANDLE;
      op.bytes = null;
    }
    return first;
  }

  /** Unmaps one mapping (GNTTABOP_unmap_grant_ref); the last unmap of a ref clears its GTF_reading/GTF_writing. */
  unmap(handle: number): number {
    const st = this.unmapOne(handle);
    if (st === GNTST_okay) this.counters.unmaps++;
    else this.counters.unmapFailures++;
    return st;
  }

  /** Runs copy ops[0..count) (GNTTABOP_copy), filling each op.status; returns the first failure, or okay. */
  copy(ops: readonly GrantCopyOp[], count: number = ops.length): number {
    let first = GNTST_okay;
    const n = Math.min(count, ops.length);
    for (let i = 0; i < n; i++) {
      const op = ops[i]!;
      const st = this.copyOne(op);
      op.status = st;
      if (st === GNTST_okay) {
        this.counters.copies++;
      } else {
        this.counters.copyFailures++;
        if (first === GNTST_okay) first = st;
      }
    }
    return first;
  }

  // map_grant_ref, in Xen's order of checks.
  private mapOne(op: GrantMapOp): number {
    const flags = op.flags;
    if ((flags & (GNTMAP_host_map | GNTMAP_device_map)) === 0) {
      this.log?.('info', `Bad flags in grant map op: ${flags.toString(16)}`);
      return GNTST_bad_gntref;
    }
    // We play an HVM/PVH backend: only host maps, as Xen's paging_mode_external() check.
    if ((flags & (GNTMAP_device_map | GNTMAP_application_map | GNTMAP_contains_pte)) !== 0) {
      this.log?.('info', 'No device mapping in HVM domain');
      return GNTST_general_error;
    }
    const d = this.lookup(op.dom);
    if (d === undefined) {
      this.log?.('info', `Could not find domain ${op.dom}`);
      return GNTST_bad_domain;
    }
    const index = this.getMaptrack();
    if (index < 0) {
      this.log?.('info', 'Failed to obtain maptrack handle');
      return GNTST_no_space;
    }
    const ref = op.ref;
    if (ref >= d.entries.nrEntries) {
      this.putMaptrack(index);
      this.log?.('warn', `Bad ref ${hexAlt(ref)} for d${d.domid}`);
      return GNTST_bad_gntref;
    }
    const readonly = (flags & GNTMAP_readonly) !== 0;
    const st = this.pinGrant(d, ref, readonly, true);
    if (st !== GNTST_okay) {
      this.putMaptrack(index);
      return st;
    }
    this.mtDom[index] = d.domid;
    this.mtRef[index] = ref;
    this.mtFlags[index] = flags;
    this.counters.liveHandles++;
    op.handle = ((this.mtGen[index]! << MT_INDEX_BITS) | index) >>> 0;
    op.bytes = d.memory.frame(d.actFrame[ref]!);
    return GNTST_okay;
  }

  // unmap_common + unmap_common_complete.
  private unmapOne(handle: number): number {
    if (!isU32(handle)) {
      this.log?.('info', `Bad handle ${String(handle)}`);
      return GNTST_bad_handle;
    }
    const index = handle & MT_INDEX_MASK;
    if (index >= this.mtLimit) {
      this.log?.('info', `Bad handle ${hexAlt(handle)}`);
      return GNTST_bad_handle;
    }
    const flags = this.mtFlags[index]!;
    if (flags === 0) {
      this.log?.('info', `Zero flags for handle ${hexAlt(handle)}`);
      return GNTST_bad_handle;
    }
    if (this.mtGen[index] !== handle >>> MT_INDEX_BITS) {
      this.log?.('info', `Stale handle ${hexAlt(handle)}`);
      return GNTST_bad_handle;
    }
    const d = this.domains[this.mtDom[index]!]!; // pinned, so still present even if dying
    this.unpinGrant(d, this.mtRef[index]!, (flags & GNTMAP_readonly) !== 0);
    this.mtGen[index] = (this.mtGen[index]! + 1) & MT_GEN_MASK;
    this.putMaptrack(index);
    this.counters.liveHandles--;
    return GNTST_okay;
  }

  // gnttab_copy_one: lock both domains, claim source then dest, check bounds, copy, release.
  private copyOne(op: GrantCopyOp): number {
    const src = op.source;
    const dst = op.dest;
    const len = op.len;
    if (!isU16(len) || !isU16(src.offset) || !isU16(dst.offset) || !isU16(op.flags)) {
      throw new RangeError(
        `copy op must have u16 len, offsets and flags but got ${String(len)}, ${String(src.offset)}, ` +
          `${String(dst.offset)}, ${String(op.flags)}`,
      );
    }
    const srcGref = (op.flags & GNTCOPY_source_gref) !== 0;
    const dstGref = (op.flags & GNTCOPY_dest_gref) !== 0;
    checkLocal(src, srcGref, len, 'source');
    checkLocal(dst, dstGref, len, 'dest');
    // gnttab_copy_lock_domain: only DOMID_SELF may be referenced by frame.
    let sd: ForeignDomain | undefined;
    let dd: ForeignDomain | undefined;
    if (!srcGref) {
      if (src.domid !== DOMID_SELF) {
        return this.copyFail(GNTST_permission_denied, `Only DOMID_SELF may copy by frame: source d${src.domid}`);
      }
    } else {
      sd = this.lookup(src.domid === DOMID_SELF ? this.domid : src.domid);
      if (sd === undefined) return this.copyFail(GNTST_bad_domain, `Could not find domain ${src.domid}`);
    }
    if (!dstGref) {
      if (dst.domid !== DOMID_SELF) {
        return this.copyFail(GNTST_permission_denied, `Only DOMID_SELF may copy by frame: dest d${dst.domid}`);
      }
    } else {
      dd = this.lookup(dst.domid === DOMID_SELF ? this.domid : dst.domid);
      if (dd === undefined) return this.copyFail(GNTST_bad_domain, `Could not find domain ${dst.domid}`);
    }
    let srcBytes: Uint8Array;
    let dstBytes: Uint8Array;
    if (sd !== undefined) {
      const st = this.claimForCopy(sd, src.ref, true);
      if (st !== GNTST_okay) return st;
      srcBytes = sd.memory.frame(sd.actFrame[src.ref]!);
    } else {
      srcBytes = src.buf!;
    }
    if (dd !== undefined) {
      const st = this.claimForCopy(dd, dst.ref, false);
      if (st !== GNTST_okay) {
        if (sd !== undefined) this.unpinGrant(sd, src.ref, true);
        return st;
      }
      dstBytes = dd.memory.frame(dd.actFrame[dst.ref]!);
    } else {
      dstBytes = dst.buf!;
    }
    let st = GNTST_okay;
    // gnttab_copy_buf: "copy beyond page area".
    if (src.offset + len > XEN_PAGE_SIZE || dst.offset + len > XEN_PAGE_SIZE) {
      st = this.copyFail(GNTST_bad_copy_arg, 'copy beyond page area');
    } else if (len > 0) {
      dstBytes.set(srcBytes.subarray(src.offset, src.offset + len), dst.offset);
    }
    // release_grant_for_copy: the pins held the guest off ending access while we copied.
    if (dd !== undefined) this.unpinGrant(dd, dst.ref, false);
    if (sd !== undefined) this.unpinGrant(sd, src.ref, true);
    return st;
  }

  // acquire_grant_for_copy: the ref range check, then the same pin as a map (sub_page allowed).
  private claimForCopy(d: ForeignDomain, ref: number, readonly: boolean): number {
    if (!isU32(ref)) throw new RangeError(`copy ref must be a u32 but got ${String(ref)}`);
    if (ref >= d.entries.nrEntries) return this.copyFail(GNTST_bad_gntref, `Bad grant reference ${hexAlt(ref)}`);
    return this.pinGrant(d, ref, readonly, false);
  }

  private copyFail(st: number, message: string): number {
    this.log?.('warn', message);
    return st;
  }

  // Pins a ref for a host mapping or copy: the active-entry checks of map_grant_ref/acquire_grant_for_copy.
  private pinGrant(d: ForeignDomain, ref: number, readonly: boolean, mapflag: boolean): number {
    const pin = d.pin[ref]!;
    if ((pin & GNTPIN_OVERFLOW) !== 0) {
      this.log?.('warn', `Risk of counter overflow ${pin.toString(16).padStart(8, '0')}`);
      return GNTST_general_error;
    }
    if (pin === 0 || (!readonly && (pin & GNTPIN_hstw_mask) === 0)) {
      const st = this.setStatus(d, ref, pin !== 0, readonly, mapflag);
      if (st !== GNTST_okay) return st;
      if (pin === 0) {
        // The frame is read once, after the pin: later rewrites by the guest do not move our mapping.
        const frame = d.entries.frame(ref);
        if (!d.memory.hasFrame(frame)) {
          // unlock_out_clear: undo the flags we just set.
          d.entries.clearFlags(ref, readonly ? GTF_reading : GTF_reading | GTF_writing);
          this.log?.(
            'warn',
            `frame of d${d.domid} ref ${hexAlt(ref)} is out of range: expected 0 <= x < ${d.memory.nrFrames} but got ${frame}`,
          );
          return GNTST_bad_page;
        }
        d.actFrame[ref] = frame;
        d.pinnedRefs++;
      }
    }
    d.pin[ref] = pin + (readonly ? GNTPIN_hstr_inc : GNTPIN_hstw_inc);
    return GNTST_okay;
  }

  // Drops one pin; the last writable pin clears GTF_writing, the last pin clears GTF_reading.
  private unpinGrant(d: ForeignDomain, ref: number, readonly: boolean): void {
    const pin = d.pin[ref]! - (readonly ? GNTPIN_hstr_inc : GNTPIN_hstw_inc);
    d.pin[ref] = pin;
    let clear = 0;
    if (!readonly && (pin & GNTPIN_hstw_mask) === 0) clear |= GTF_writing;
    if (pin === 0) clear |= GTF_reading;
    if (clear !== 0) d.entries.clearFlags(ref, clear);
    if (pin === 0 && --d.pinnedRefs === 0 && d.dying) this.domains[d.domid] = undefined;
  }

  // _set_status_v1: snapshot flags+domid once, validate the snapshot, cmpxchg against it, at most
  // GNTTAB_CMPXCHG_ATTEMPTS times; every failure is GNTST_general_error, as in Xen.
  private setStatus(d: ForeignDomain, ref: number, pinned: boolean, readonly: boolean, mapflag: boolean): number {
    const mask = mapflag ? GTF_type_mask | GTF_sub_page : GTF_type_mask;
    let scombo = d.entries.combo(ref);
    for (let attempt = 1; ; attempt++) {
      const flags = comboFlags(scombo);
      const domid = comboDomid(scombo);
      if (!pinned && ((flags & mask) !== GTF_permit_access || domid !== this.domid)) {
        this.log?.('warn', `Bad flags (${flags.toString(16)}) or dom (${domid}); expected d${this.domid}`);
        return GNTST_general_error;
      }
      let nflags = flags | GTF_reading;
      if (!readonly) {
        nflags |= GTF_writing;
        if ((flags & GTF_readonly) !== 0) {
          this.log?.('warn', 'Attempt to write-pin a r/o grant entry');
          return GNTST_general_error;
        }
      }
      this.beforeCmpxchg?.(d.domid, ref);
      this.counters.cmpxchgAttempts++;
      const prev = d.entries.cmpxchgCombo(ref, scombo, (scombo & ~0xffff) | nflags);
      if (prev === scombo) return GNTST_okay;
      if (attempt === GNTTAB_CMPXCHG_ATTEMPTS) {
        this.counters.unstable++;
        this.log?.('warn', 'Shared grant entry is unstable');
        return GNTST_general_error;
      }
      scombo = prev;
    }
  }

  private lookup(dom: number): ForeignDomain | undefined {
    const d = this.domains[dom];
    return d === undefined || d.dying ? undefined : d;
  }

  private getMaptrack(): number {
    if (this.mtFreeTop === 0 && !this.growMaptrack()) return -1;
    return this.mtFree[--this.mtFreeTop]!;
  }

  private putMaptrack(index: number): void {
    this.mtFlags[index] = 0;
    this.mtFree[this.mtFreeTop++] = index;
  }

  // Grows the maptrack by doubling (at least one frame), as Xen adds maptrack frames on demand.
  private growMaptrack(): boolean {
    const old = this.mtLimit;
    if (old >= this.maxHandles) return false;
    const limit = Math.min(this.maxHandles, Math.max(MAPTRACK_PER_PAGE, old * 2));
    this.mtDom = grow(this.mtDom, new Uint16Array(limit));
    this.mtRef = grow(this.mtRef, new Uint32Array(limit));
    this.mtFlags = grow(this.mtFlags, new Uint16Array(limit));
    this.mtGen = grow(this.mtGen, new Uint16Array(limit));
    this.mtFree = grow(this.mtFree, new Int32Array(limit));
    for (let i = limit - 1; i >= old; i--) this.mtFree[this.mtFreeTop++] = i;
    this.mtLimit = limit;
    return true;
  }
}

function grow<T extends Uint8Array | Uint16Array | Uint32Array | Int32Array>(from: T, to: T): T {
  to.set(from as ArrayLike<number>);
  return to;
}

function isU16(x: number): boolean {
  return (x & 0xffff) === x;
}

function isU32(x: number): boolean {
  return x >>> 0 === x;
}

// Local memory is ours: a missing or short buffer is our caller's bug (the page rule is checked later, as Xen).
function checkLocal(p: GrantCopyPtr, isGref: boolean, len: number, side: string): void {
  if (isGref) return;
  if (p.buf === null) throw new Error(`copy ${side} is local memory but has no buf`);
  if (p.offset + len <= XEN_PAGE_SIZE && p.offset + len > p.buf.length) {
    throw new RangeError(`copy ${side} overruns its buf: offset ${p.offset} + len ${len} > ${p.buf.length}`);
  }
}
