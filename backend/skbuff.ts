// sk_buff and skb_shared_info for the backend's emulated Linux stack (include/linux/skbuff.h,
// net/core/skbuff.c), with Rusty Russell's shinfo destructor and 'orig' parent references (seed 001).
// Netback injects guest pages mapped through grants as foreign page frags without copying; everything about
// WHEN a grant goes back is behind ctx.design (release.ts): the operations call its hooks at the places the
// seeds and mainline put theirs (an optional hook a design lacks costs one check). Offsets into head follow
// NET_SKBUFF_DATA_USES_OFFSET. The model is single-threaded per stack instance, so atomic_t is a number.
// Caller bugs that Linux BUG_ONs (or that its callers rule out) throw; runtime refusals return Linux's values.

import { PAGE_SIZE, Page, PagePool, allocPage, getPage, putPage } from './page.js';
import type { ReleaseDesign } from './release.js';

/** include/linux/skbuff.h: with 4 KiB pages, 65536/PAGE_SIZE + 1. */
export const MAX_SKB_FRAGS = 17;
/** include/linux/skbuff.h: dataref's low 16 bits count all references, the high 16 payload-only ones. */
export const SKB_DATAREF_SHIFT = 16;
export const SKB_DATAREF_MASK = (1 << SKB_DATAREF_SHIFT) - 1;

/** include/linux/skbuff.h enum skb_fclone_type. */
export const SKB_FCLONE_UNAVAILABLE = 0;
export const SKB_FCLONE_ORIG = 1;
export const SKB_FCLONE_CLONE = 2;

/** include/linux/skbuff.h gso_type bits (partial). */
export const SKB_GSO_TCPV4 = 1 << 0;
export const SKB_GSO_DODGY = 1 << 1;
export const SKB_GSO_TCP_ECN = 1 << 2;
export const SKB_GSO_TCPV6 = 1 << 4;

/** include/linux/skbuff.h ip_summed values. */
export const CHECKSUM_NONE = 0;
export const CHECKSUM_UNNECESSARY = 1;
export const CHECKSUM_COMPLETE = 2;
export const CHECKSUM_PARTIAL = 3;

/** include/uapi/asm-generic/errno-base.h; operations return them negated, as the kernel does. */
export const ENOMEM = 12;
export const EFAULT = 14;
export const EINVAL = 22;

/** L1 cache line, for SKB_DATA_ALIGN (x86: 64). */
export const SMP_CACHE_BYTES = 64;

/** SKB_DATA_ALIGN(): linear buffers are rounded up to a cache line. */
export function skbDataAlign(size: number): number {
  return (size + SMP_CACHE_BYTES - 1) & ~(SMP_CACHE_BYTES - 1);
}

const EMPTY_HEAD = new Uint8Array(0);
/** What unused frag slots point at, so a pooled shinfo pins no page. */
const NO_PAGE = new Page(-1, EMPTY_HEAD);

/** skb_frag_t: a page, an offset in it and a size. Slots are mutated in place, never shared between shinfos. */
export class SkbFrag {
  page: Page = NO_PAGE;
  offset = 0;
  size = 0;
}

/** struct skb_shared_info, which Linux places at the end of the linear buffer; Rusty's orig and destructor included. */
export class SkbSharedInfo {
  /** The stack instance that owns it (pools, stats). */
  readonly ctx: SkbContext;
  /** The linear buffer (skb->head); this shinfo "lives at its end". */
  head: Uint8Array = EMPTY_HEAD;
  nrFrags = 0;
  /** MAX_SKB_FRAGS slots; only [0, nrFrags) are meaningful. */
  readonly frags: SkbFrag[];
  /** frag_list, chained through SkBuff.next. */
  fragList: SkBuff | null = null;
  gsoSize = 0;
  gsoSegs = 0;
  gsoType = 0;
  /** atomic_t dataref: low 16 bits all refs, high 16 payload-only refs; 0 once freed. */
  dataref = 0;
  /** Rusty's shinfo destructor (seed 001): runs when this shinfo and, under rusty, all its descendants are gone. */
  destructor: ((shinfo: SkbSharedInfo) => void) | null = null;
  /** What the destructor owns (netback: the grants/pages it must return). */
  destructorArg: unknown = null;
  /** Rusty's parent reference (seed 001): a payload reference on the shinfo whose page data this one uses. */
  orig: SkbSharedInfo | null = null;
  /** Seed 000's zero-copy callback descriptors (zccd_t *zccd, *zccd2); set only by the zccd design. */
  zccd: unknown = null;
  zccd2: unknown = null;
  /** Seed 002's transaction_token (Kuznetsov); set only by the token designs. */
  transactionToken: unknown = null;
  /** Mainline's destructor_arg with SKBFL_ZEROCOPY_ENABLE: the ubuf_info; set only by the ubuf design. */
  uarg: unknown = null;
  /** rusty-page: how many child shinfos hold an orig reference on this one (kept by that design only). */
  origRefs = 0;

  constructor(ctx: SkbContext) {
    this.ctx = ctx;
    this.frags = [];
    for (let i = 0; i < MAX_SKB_FRAGS; i++) this.frags.push(new SkbFrag());
  }
}

/** struct sk_buff (the fields this model needs). */
export class SkBuff {
  /** The stack instance that owns it (pools, design, stats). */
  readonly ctx: SkbContext;
  /** frag_list chaining and simple queues. */
  next: SkBuff | null = null;
  shinfo: SkbSharedInfo;
  /** === shinfo.head. */
  head: Uint8Array = EMPTY_HEAD;
  data = 0;
  tail = 0;
  end = 0;
  len = 0;
  /** Bytes in frags + frag_list. */
  dataLen = 0;
  /** Offsets into head, -1 if unset. */
  macHeader = -1;
  networkHeader = -1;
  transportHeader = -1;
  cloned = false;
  nohdr = false;
  /** refcount_t users; 0 once freed (the object may then be pooled and reused). */
  users = 0;
  /** SKB_FCLONE_*. */
  fclone = SKB_FCLONE_UNAVAILABLE;
  /** The sk_buff_fclones this skb belongs to (null for a plain skb). */
  fclones: SkbFclones | null = null;
  ipSummed = CHECKSUM_NONE;
  csumStart = 0;
  csumOffset = 0;
  protocol = 0;

  constructor(ctx: SkbContext) {
    this.ctx = ctx;
    this.shinfo = ctx.deadShinfo;
  }
}

/** struct sk_buff_fclones: an skb allocated with its clone companion (skb_clone uses skb2 while fclone_ref is 1). */
export class SkbFclones {
  readonly skb1: SkBuff;
  readonly skb2: SkBuff;
  fcloneRef = 0;

  constructor(ctx: SkbContext) {
    this.skb1 = new SkBuff(ctx);
    this.skb2 = new SkBuff(ctx);
    this.skb1.fclones = this;
    this.skb2.fclones = this;
  }
}

/** Work counters, counted where the work happens; a later lab compares designs by them. */
export class SkbStats {
  skbAllocs = 0;
  skbFrees = 0;
  /** skb_clone served by the fclone companion. */
  fcloneHits = 0;
  shinfoAllocs = 0;
  shinfoFrees = 0;
  /** Linear buffers created because the pool had none of that size. */
  headAllocs = 0;
  pageAllocs = 0;
  pageFrees = 0;
  pageGets = 0;
  pagePuts = 0;
  /** Every byte an operation copied (linear data, frags, orphaned pages); skbCopyBits reads are not counted. */
  bytesCopied = 0;
  destructorCalls = 0;
  /** Parent (orig) references taken by a design's refDataParent. */
  parentRefs = 0;
  expandHeads = 0;
  /** skb_try_coalesce that copied `from` into `to`'s tailroom. */
  coalesceCopied = 0;
  /** skb_try_coalesce that moved page references. */
  coalesceMoved = 0;
  /** skb_try_coalesce refused by design.mayMoveFrags. */
  coalesceRefused = 0;
  /** skb_shift calls that moved data. */
  shifts = 0;
  /** skb_shift refused by design.mayMoveFrags. */
  shiftRefused = 0;
  /** Foreign frags copied into local pages by skb_orphan_frags. */
  orphanedFrags = 0;
  /** Segments produced by skb_segment. */
  segments = 0;
  /** ubuf_info completions with zerocopy success / failure (netback's tx_zerocopy_success / _fail). */
  zerocopySuccess = 0;
  zerocopyFail = 0;
  /** net_priv get/put callbacks run (seed 002: net_get_page_callback / net_put_page_callback). */
  netPageCallbacks = 0;
  /** Page-to-owner table lookups (net_priv-hash: one per get_page and put_page). */
  hashLookups = 0;
  /** Bookkeeping objects a design allocated because its pool was empty, or per send (token-alloc). */
  designAllocs = 0;
  /** Transaction tokens whose finish callback ran. */
  tokensFinished = 0;
  /** rusty-page: frags of a shinfo kept alive only by its children's orig references, put early. */
  parentDataDrops = 0;
  /** Grants handed back one page at a time by a per-page design (page-destructor; rusty-page's early path). */
  pageReleases = 0;
}

/** Options of one stack instance. */
export interface SkbContextOptions {
  readonly design: ReleaseDesign;
  /** Poison freed local pages and linear buffers so stale readers see garbage (costs a fill per free). */
  readonly poisonFreed?: boolean;
}

/** One stack instance: its release design, counters and object pools (no allocation per packet in steady state). */
export class SkbContext {
  readonly design: ReleaseDesign;
  readonly stats = new SkbStats();
  /** Local page pool and Page id allocator. */
  readonly pages = new PagePool();
  /** Free list designs may use for their destructorArg objects. */
  readonly destructorArgPool: unknown[] = [];
  /** What a freed skb's shinfo points at: empty, never live. */
  readonly deadShinfo: SkbSharedInfo;
  readonly skbPool: SkBuff[] = [];
  readonly fclonePool: SkbFclones[] = [];
  readonly shinfoPool: SkbSharedInfo[] = [];
  /** Linear buffers by (aligned) size. */
  readonly headPool = new Map<number, Uint8Array[]>();
  readonly poisonFreed: boolean;
  /** Per-stack state of the release design (its pools, tables, token queues); null until the design needs it. */
  designState: unknown = null;

  constructor(opts: SkbContextOptions) {
    this.design = opts.design;
    this.poisonFreed = opts.poisonFreed ?? false;
    this.pages.poison = this.poisonFreed;
    this.deadShinfo = new SkbSharedInfo(this);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Allocation and pools

function takeHead(ctx: SkbContext, size: number): Uint8Array {
  const aligned = Math.max(SMP_CACHE_BYTES, skbDataAlign(size));
  const list = ctx.headPool.get(aligned);
  const head = list?.pop();
  if (head !== undefined) return head;
  ctx.stats.headAllocs++;
  return new Uint8Array(aligned);
}

function putHead(ctx: SkbContext, head: Uint8Array): void {
  if (head.length === 0) return;
  if (ctx.poisonFreed) head.fill(0x6b); // include/linux/poison.h POISON_FREE
  let list = ctx.headPool.get(head.length);
  if (list === undefined) {
    list = [];
    ctx.headPool.set(head.length, list);
  }
  list.push(head);
}

/** A fresh shinfo with a linear buffer of at least `size` bytes and dataref 1. */
function allocShinfo(ctx: SkbContext, size: number): SkbSharedInfo {
  const s = ctx.shinfoPool.pop() ?? new SkbSharedInfo(ctx);
  s.head = takeHead(ctx, size);
  s.nrFrags = 0;
  s.fragList = null;
  s.gsoSize = 0;
  s.gsoSegs = 0;
  s.gsoType = 0;
  s.dataref = 1;
  clearReleaseState(s);
  ctx.stats.shinfoAllocs++;
  return s;
}

/** Forgets everything a release design hung on a shinfo (destructor, parent, descriptors, token, uarg). */
function clearReleaseState(s: SkbSharedInfo): void {
  s.destructor = null;
  s.destructorArg = null;
  s.orig = null;
  s.zccd = null;
  s.zccd2 = null;
  s.transactionToken = null;
  s.uarg = null;
  s.origRefs = 0;
}

/** kfree(head): the shinfo and its buffer go back to the pools. */
function freeShinfo(ctx: SkbContext, s: SkbSharedInfo): void {
  putHead(ctx, s.head);
  s.head = EMPTY_HEAD;
  clearFragSlots(s, 0, MAX_SKB_FRAGS);
  s.nrFrags = 0;
  s.fragList = null;
  s.dataref = 0;
  clearReleaseState(s);
  ctx.stats.shinfoFrees++;
  ctx.shinfoPool.push(s);
}

function clearFragSlots(s: SkbSharedInfo, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const f = s.frags[i]!;
    f.page = NO_PAGE;
    f.offset = 0;
    f.size = 0;
  }
}

function setFrag(f: SkbFrag, page: Page, offset: number, size: number): void {
  f.page = page;
  f.offset = offset;
  f.size = size;
}

function copyFrag(dst: SkbFrag, src: SkbFrag): void {
  dst.page = src.page;
  dst.offset = src.offset;
  dst.size = src.size;
}

function initSkb(skb: SkBuff, shinfo: SkbSharedInfo): void {
  skb.next = null;
  skb.shinfo = shinfo;
  skb.head = shinfo.head;
  skb.data = 0;
  skb.tail = 0;
  skb.end = shinfo.head.length;
  skb.len = 0;
  skb.dataLen = 0;
  skb.macHeader = -1;
  skb.networkHeader = -1;
  skb.transportHeader = -1;
  skb.cloned = false;
  skb.nohdr = false;
  skb.users = 1;
  skb.ipSummed = CHECKSUM_NONE;
  skb.csumStart = 0;
  skb.csumOffset = 0;
  skb.protocol = 0;
}

/** __alloc_skb (net/core/skbuff.c): users 1, dataref 1, len 0; fclone allocates the clone companion too. */
export function allocSkb(ctx: SkbContext, size: number, fclone = false): SkBuff {
  if (!Number.isInteger(size) || size < 0) throw new Error(`alloc_skb: bad size ${size}`);
  const shinfo = allocShinfo(ctx, size);
  let skb: SkBuff;
  if (fclone) {
    const pair = ctx.fclonePool.pop() ?? new SkbFclones(ctx);
    pair.fcloneRef = 1;
    skb = pair.skb1;
    skb.fclone = SKB_FCLONE_ORIG;
  } else {
    skb = ctx.skbPool.pop() ?? new SkBuff(ctx);
    skb.fclone = SKB_FCLONE_UNAVAILABLE;
  }
  initSkb(skb, shinfo);
  ctx.stats.skbAllocs++;
  return skb;
}

/** A freed skb is our own bug to touch. */
function assertLive(skb: SkBuff, what: string): void {
  if (skb.users <= 0) throw new Error(`${what}: skb is freed`);
}

// ---------------------------------------------------------------------------------------------------------
// Freeing: Rusty's shinfo_put walking orig, skb_release_data, kfree_skbmem

/**
 * shinfo_put (seed 001): drop one reference; when it was the last, put the frags' pages, drop the frag_list,
 * run the destructor, free the shinfo, and drop the payload reference it held on its parent (orig).
 * `parentRef`: the reference dropped is a child's orig reference (skb_orphan_frags); the walk up the orig chain
 * drops such references too. The design hears of every step: shinfoDeref when the shinfo stays, shinfoRelease
 * when its data goes (seed 000's zccd_put in skb_release_data).
 */
export function shinfoPut(ctx: SkbContext, shinfo: SkbSharedInfo, nohdr: boolean, clone: boolean, parentRef = false): void {
  const d = ctx.design;
  let s: SkbSharedInfo | null = shinfo;
  while (s !== null) {
    if (s.dataref <= 0) throw new Error('shinfo_put on a freed shinfo');
    if (clone) {
      s.dataref -= nohdr ? (1 << SKB_DATAREF_SHIFT) + 1 : 1;
      if (s.dataref < 0 || (s.dataref & SKB_DATAREF_MASK) === 0 && s.dataref !== 0) {
        throw new Error(`shinfo_put: dataref underflow (${s.dataref.toString(16)})`);
      }
      if (s.dataref !== 0) {
        if (d.shinfoDeref !== undefined) d.shinfoDeref(s, parentRef);
        return;
      }
    } else if ((s.dataref & SKB_DATAREF_MASK) !== 1) {
      // An skb that is not cloned must be the only holder of its shinfo.
      throw new Error(`shinfo_put: uncloned skb but dataref ${s.dataref.toString(16)}`);
    }
    if (d.shinfoRelease !== undefined) d.shinfoRelease(s);
    for (let i = 0; i < s.nrFrags; i++) putPage(ctx, s.frags[i]!.page);
    s.nrFrags = 0;
    if (s.fragList !== null) {
      const list = s.fragList;
      s.fragList = null;
      skbDropList(list);
    }
    const orig: SkbSharedInfo | null = s.orig;
    if (s.destructor !== null) {
      ctx.stats.destructorCalls++;
      s.destructor(s);
    }
    freeShinfo(ctx, s);
    // We hold a payload reference to our parent.
    nohdr = true;
    clone = true;
    parentRef = true;
    s = orig;
  }
}

/**
 * Puts every frag's page and drops the frag_list of a shinfo that no live skb reads any more but that stays
 * allocated (rusty-page: a parent kept only by its children's orig references). Departure: seed 001 keeps them.
 */
export function shinfoDropData(ctx: SkbContext, s: SkbSharedInfo): void {
  const n = s.nrFrags;
  for (let i = 0; i < n; i++) putPage(ctx, s.frags[i]!.page);
  s.nrFrags = 0;
  clearFragSlots(s, 0, n);
  if (s.fragList !== null) {
    const list = s.fragList;
    s.fragList = null;
    skbDropList(list);
  }
}

/** skb_drop_list / kfree_skb_list: free every skb of a chain (shared ones only lose a reference). */
function skbDropList(first: SkBuff | null): void {
  let s = first;
  while (s !== null) {
    const next: SkBuff | null = s.next;
    kfreeSkb(s);
    s = next;
  }
}

/** skb_release_data (seed 001: shinfo_put(skb_shinfo(skb), skb->nohdr, skb->cloned)). */
function skbReleaseData(skb: SkBuff): void {
  const shinfo = skb.shinfo;
  skb.shinfo = skb.ctx.deadShinfo;
  skb.head = EMPTY_HEAD;
  shinfoPut(skb.ctx, shinfo, skb.nohdr, skb.cloned);
}

/** kfree_skbmem: plain skbs go to the pool; an fclone pair goes back once both halves are free. */
function kfreeSkbmem(skb: SkBuff): void {
  const ctx = skb.ctx;
  ctx.stats.skbFrees++;
  if (skb.fclone === SKB_FCLONE_UNAVAILABLE) {
    ctx.skbPool.push(skb);
    return;
  }
  const pair = skb.fclones;
  if (pair === null) throw new Error('fclone skb without its sk_buff_fclones');
  if (skb.fclone === SKB_FCLONE_ORIG && pair.fcloneRef === 1) {
    pair.fcloneRef = 0;
    ctx.fclonePool.push(pair);
    return;
  }
  if (--pair.fcloneRef === 0) ctx.fclonePool.push(pair);
}

/** kfree_skb (net/core/skbuff.c): users--; at 0 release the data (shinfo_put walking orig) and free the skb. */
export function kfreeSkb(skb: SkBuff): void {
  assertLive(skb, 'kfree_skb');
  if (--skb.users > 0) return;
  skbReleaseData(skb);
  skb.next = null;
  kfreeSkbmem(skb);
}

/** kfree_skb_partial: free `from` after skb_try_coalesce; a stolen head never happens here (heads are not page frags). */
export function kfreeSkbPartial(skb: SkBuff, headStolen: boolean): void {
  if (headStolen) throw new Error('kfree_skb_partial: head stealing is not modelled');
  assertLive(skb, 'kfree_skb_partial');
  if (skb.users !== 1) throw new Error(`kfree_skb_partial: skb has ${skb.users} users`);
  kfreeSkb(skb);
}

/** consume_skb: kfree_skb for a packet that was used rather than dropped (same lifetime effect). */
export function consumeSkb(skb: SkBuff): void {
  kfreeSkb(skb);
}

// ---------------------------------------------------------------------------------------------------------
// Simple accessors and linear-area helpers (include/linux/skbuff.h)

/** skb_headlen: bytes in the linear area. */
export function skbHeadlen(skb: SkBuff): number {
  return skb.len - skb.dataLen;
}

/** skb_headroom: bytes before data. */
export function skbHeadroom(skb: SkBuff): number {
  return skb.data;
}

/** skb_tailroom: bytes after tail, 0 for a nonlinear skb. */
export function skbTailroom(skb: SkBuff): number {
  return skbIsNonlinear(skb) ? 0 : skb.end - skb.tail;
}

/** skb_is_nonlinear: has frags or frag_list data. */
export function skbIsNonlinear(skb: SkBuff): boolean {
  return skb.dataLen !== 0;
}

/** skb_shared: more than one user holds this skb object. */
export function skbShared(skb: SkBuff): boolean {
  return skb.users > 1;
}

/** skb_cloned: the data (shinfo) is shared with another skb or a descendant. */
export function skbCloned(skb: SkBuff): boolean {
  return skb.cloned && (skb.shinfo.dataref & SKB_DATAREF_MASK) !== 1;
}

/** skb_header_cloned: the header part of the data is shared. */
export function skbHeaderCloned(skb: SkBuff): boolean {
  if (!skb.cloned) return false;
  const dataref = skb.shinfo.dataref;
  return (dataref & SKB_DATAREF_MASK) - (dataref >>> SKB_DATAREF_SHIFT) !== 1;
}

/** skb_header_release: this skb will only touch the payload from now on (dataref's high half +1). */
export function skbHeaderRelease(skb: SkBuff): void {
  assertLive(skb, 'skb_header_release');
  if (skb.nohdr) throw new Error('skb_header_release: already nohdr');
  skb.nohdr = true;
  skb.shinfo.dataref += 1 << SKB_DATAREF_SHIFT;
}

/** skb_get: users++. */
export function skbGet(skb: SkBuff): SkBuff {
  assertLive(skb, 'skb_get');
  skb.users++;
  return skb;
}

/** skb_reserve: make headroom on an empty skb. */
export function skbReserve(skb: SkBuff, len: number): void {
  assertLive(skb, 'skb_reserve');
  if (len < 0 || skb.tail + len > skb.end) throw new Error(`skb_reserve: ${len} does not fit (tail ${skb.tail}, end ${skb.end})`);
  skb.data += len;
  skb.tail += len;
}

/** skb_put: extend the linear data at the tail; returns the old tail offset in head. */
export function skbPut(skb: SkBuff, len: number): number {
  assertLive(skb, 'skb_put');
  if (skbIsNonlinear(skb)) throw new Error('skb_put: nonlinear skb (SKB_LINEAR_ASSERT)');
  if (len < 0 || skb.tail + len > skb.end) throw new Error(`skb_over_panic: put ${len} at tail ${skb.tail}, end ${skb.end}`);
  const old = skb.tail;
  skb.tail += len;
  skb.len += len;
  return old;
}

/** skb_push: extend the data at the front into headroom; returns the new data offset. */
export function skbPush(skb: SkBuff, len: number): number {
  assertLive(skb, 'skb_push');
  if (len < 0 || len > skb.data) throw new Error(`skb_under_panic: push ${len} with headroom ${skb.data}`);
  skb.data -= len;
  skb.len += len;
  return skb.data;
}

/** __skb_pull: remove len bytes from the front of the linear data; returns the new data offset. */
export function __skbPull(skb: SkBuff, len: number): number {
  assertLive(skb, '__skb_pull');
  if (len < 0 || len > skbHeadlen(skb)) throw new Error(`__skb_pull: ${len} exceeds headlen ${skbHeadlen(skb)}`);
  skb.len -= len;
  skb.data += len;
  return skb.data;
}

/** pskb_pull: remove len bytes from the front, pulling frags into the linear area as needed; false when it cannot. */
export function pskbPull(skb: SkBuff, len: number): boolean {
  assertLive(skb, 'pskb_pull');
  if (len < 0 || len > skb.len) return false;
  const headlen = skbHeadlen(skb);
  if (len > headlen && !__pskbPullTail(skb, len - headlen)) return false;
  skb.len -= len;
  skb.data += len;
  return true;
}

/** __skb_trim: shorten a linear skb to len. */
export function skbTrim(skb: SkBuff, len: number): void {
  assertLive(skb, '__skb_trim');
  if (skbIsNonlinear(skb)) throw new Error('__skb_trim: nonlinear skb');
  if (len < 0 || len > skb.len) throw new Error(`__skb_trim: ${len} exceeds len ${skb.len}`);
  skb.len = len;
  skb.tail = skb.data + len;
}

function checkFragRange(what: string, page: Page, off: number, size: number): void {
  if (!Number.isInteger(off) || !Number.isInteger(size) || off < 0 || size < 0 || off + size > PAGE_SIZE) {
    throw new Error(`${what}: frag [${off}, +${size}) outside page ${page.id}`);
  }
  if (page.count <= 0) throw new Error(`${what}: page ${page.id} is free`);
}

/** skb_fill_page_desc: set frag slot i (i <= nr_frags) and nr_frags = i + 1; the caller transfers one page ref; len unchanged. */
export function skbFillPageDesc(skb: SkBuff, i: number, page: Page, off: number, size: number): void {
  assertLive(skb, 'skb_fill_page_desc');
  const s = skb.shinfo;
  if (i < 0 || i >= MAX_SKB_FRAGS || i > s.nrFrags) throw new Error(`skb_fill_page_desc: slot ${i} with nr_frags ${s.nrFrags}`);
  checkFragRange('skb_fill_page_desc', page, off, size);
  setFrag(s.frags[i]!, page, off, size);
  s.nrFrags = i + 1;
}

/** skb_add_rx_frag: fill the next slot and account len/data_len; the caller transfers one page ref. */
export function skbAddFrag(skb: SkBuff, page: Page, off: number, size: number): void {
  assertLive(skb, 'skb_add_rx_frag');
  const s = skb.shinfo;
  if (s.nrFrags >= MAX_SKB_FRAGS) throw new Error(`skb_add_rx_frag: already ${MAX_SKB_FRAGS} frags`);
  checkFragRange('skb_add_rx_frag', page, off, size);
  setFrag(s.frags[s.nrFrags]!, page, off, size);
  s.nrFrags++;
  skb.len += size;
  skb.dataLen += size;
}

/** __copy_skb_header (the fields this model has): protocol, checksum state and header offsets. */
function copySkbHeader(n: SkBuff, old: SkBuff): void {
  n.protocol = old.protocol;
  n.ipSummed = old.ipSummed;
  n.csumStart = old.csumStart;
  n.csumOffset = old.csumOffset;
  n.macHeader = old.macHeader;
  n.networkHeader = old.networkHeader;
  n.transportHeader = old.transportHeader;
}

/** skb_copy_header: __copy_skb_header plus the gso fields of the shinfo. */
function skbCopyHeader(n: SkBuff, old: SkBuff): void {
  copySkbHeader(n, old);
  n.shinfo.gsoSize = old.shinfo.gsoSize;
  n.shinfo.gsoSegs = old.shinfo.gsoSegs;
  n.shinfo.gsoType = old.shinfo.gsoType;
}

/**
 * Appends `child` (ours alone, unchained) to skb's frag_list and accounts len/data_len, as ip_frag_reasm and
 * skb_gro_receive_list do. A frag_list skb with users > 1 is shared with another shinfo (pskb_copy, or under
 * rusty the parent an expand_head left behind), so its `next` is not ours to write: such links are forked
 * first (skb_clone, as ___pskb_trim does). Requires skb not cloned.
 */
export function skbFragListAppend(skb: SkBuff, child: SkBuff): void {
  assertLive(skb, 'skb_frag_list_append');
  assertLive(child, 'skb_frag_list_append');
  if (skbCloned(skb)) throw new Error('skb_frag_list_append: skb is cloned');
  if (child === skb || child.users !== 1 || child.next !== null) throw new Error('skb_frag_list_append: child must be ours alone and unchained');
  const s = skb.shinfo;
  let prev: SkBuff | null = null;
  let frag = s.fragList;
  while (frag !== null) {
    if (frag === child) throw new Error('skb_frag_list_append: child is already on the frag_list');
    if (skbShared(frag)) {
      const nfrag = skbClone(frag);
      nfrag.next = frag.next;
      consumeSkb(frag);
      frag = nfrag;
      if (prev === null) s.fragList = frag;
      else prev.next = frag;
    }
    prev = frag;
    frag = frag.next;
  }
  if (prev === null) s.fragList = child;
  else prev.next = child;
  skb.len += child.len;
  skb.dataLen += child.len;
}

// ---------------------------------------------------------------------------------------------------------
// Reading

/** skb_copy_bits: copy len bytes at offset (negative reaches into headroom) from linear data, frags and frag_list; 0 or -EFAULT. Not counted in bytesCopied. */
export function skbCopyBits(skb: SkBuff, offset: number, to: Uint8Array, toOffset: number, len: number): number {
  assertLive(skb, 'skb_copy_bits');
  // Departure: Linux does not bound a negative offset; we refuse to read before head.
  if (len < 0 || offset < -skb.data || offset > skb.len - len) return -EFAULT;
  if (toOffset < 0 || toOffset + len > to.length) throw new Error(`skb_copy_bits: destination [${toOffset}, +${len}) outside ${to.length} bytes`);
  return copyBitsInner(skb, offset, to, toOffset, len);
}

function copyBitsInner(skb: SkBuff, offset: number, to: Uint8Array, toOffset: number, len: number): number {
  let start = skbHeadlen(skb);
  let copy = start - offset;
  if (copy > 0) {
    if (copy > len) copy = len;
    const from = skb.data + offset;
    to.set(skb.head.subarray(from, from + copy), toOffset);
    len -= copy;
    if (len === 0) return 0;
    offset += copy;
    toOffset += copy;
  }
  const s = skb.shinfo;
  for (let i = 0; i < s.nrFrags; i++) {
    const f = s.frags[i]!;
    const end = start + f.size;
    copy = end - offset;
    if (copy > 0) {
      if (copy > len) copy = len;
      const from = f.offset + offset - start;
      to.set(f.page.bytes.subarray(from, from + copy), toOffset);
      len -= copy;
      if (len === 0) return 0;
      offset += copy;
      toOffset += copy;
    }
    start = end;
  }
  for (let c = s.fragList; c !== null; c = c.next) {
    const end = start + c.len;
    copy = end - offset;
    if (copy > 0) {
      if (copy > len) copy = len;
      if (copyBitsInner(c, offset - start, to, toOffset, copy) !== 0) return -EFAULT;
      len -= copy;
      if (len === 0) return 0;
      offset += copy;
      toOffset += copy;
    }
    start = end;
  }
  return len === 0 ? 0 : -EFAULT;
}

// ---------------------------------------------------------------------------------------------------------
// Clones and copies

/** skb_clone: a new skb sharing the shinfo (dataref++), from the fclone companion when it is free. */
export function skbClone(skb: SkBuff): SkBuff {
  assertLive(skb, 'skb_clone');
  const ctx = skb.ctx;
  // Mainline: skb_orphan_frags before sharing (ubuf copies zerocopy frags here).
  const d = ctx.design;
  if (d.orphanPoint !== undefined) d.orphanPoint(skb, 'clone');
  let n: SkBuff;
  const pair = skb.fclones;
  if (skb.fclone === SKB_FCLONE_ORIG && pair !== null && pair.fcloneRef === 1) {
    n = pair.skb2;
    pair.fcloneRef = 2;
    n.fclone = SKB_FCLONE_CLONE;
    ctx.stats.fcloneHits++;
  } else {
    n = ctx.skbPool.pop() ?? new SkBuff(ctx);
    n.fclone = SKB_FCLONE_UNAVAILABLE;
  }
  ctx.stats.skbAllocs++;
  // __skb_clone
  n.next = null;
  copySkbHeader(n, skb);
  n.len = skb.len;
  n.dataLen = skb.dataLen;
  n.cloned = true;
  n.nohdr = false;
  n.tail = skb.tail;
  n.end = skb.end;
  n.head = skb.head;
  n.data = skb.data;
  n.shinfo = skb.shinfo;
  n.users = 1;
  skb.shinfo.dataref++;
  skb.cloned = true;
  return n;
}

/** skb_copy: a fully linear private copy (headroom included), no frags. */
export function skbCopy(skb: SkBuff): SkBuff {
  assertLive(skb, 'skb_copy');
  const headerlen = skbHeadroom(skb);
  const n = allocSkb(skb.ctx, skb.end + skb.dataLen);
  skbReserve(n, headerlen);
  skbPut(n, skb.len);
  if (copyBitsInner(skb, -headerlen, n.head, 0, headerlen + skb.len) !== 0) throw new Error('skb_copy: skb_copy_bits failed');
  skb.ctx.stats.bytesCopied += headerlen + skb.len;
  skbCopyHeader(n, skb);
  return n;
}

/** pskb_copy (__pskb_copy_fclone): copies headlen, shares frags (get_page) and the frag_list; design.refDataParent. */
export function pskbCopy(skb: SkBuff): SkBuff {
  assertLive(skb, 'pskb_copy');
  const ctx = skb.ctx;
  // __pskb_copy_fclone: skb_orphan_frags before sharing the frags.
  const d = ctx.design;
  if (d.orphanPoint !== undefined) d.orphanPoint(skb, 'pskb_copy');
  const headroom = skbHeadroom(skb);
  const headlen = skbHeadlen(skb);
  const n = allocSkb(ctx, headlen + headroom);
  skbReserve(n, headroom);
  skbPut(n, headlen);
  n.head.set(skb.head.subarray(skb.data, skb.data + headlen), n.data);
  ctx.stats.bytesCopied += headlen;
  n.dataLen = skb.dataLen;
  n.len = skb.len;
  const s = skb.shinfo;
  const ns = n.shinfo;
  for (let i = 0; i < s.nrFrags; i++) {
    copyFrag(ns.frags[i]!, s.frags[i]!);
    getPage(ctx, s.frags[i]!.page);
  }
  ns.nrFrags = s.nrFrags;
  if (s.fragList !== null) {
    ns.fragList = s.fragList;
    skbCloneFraglist(ns);
  }
  skbCopyHeader(n, skb);
  // Seed 001 takes the parent ref only inside `if (nr_frags)`; we also take it for a shared frag_list,
  // whose skbs carry page data the parent's destructor owns.
  if (s.nrFrags > 0 || s.fragList !== null) ctx.design.refDataParent(skb, ns, 'pskb_copy');
  return n;
}

/** skb_clone_fraglist: every skb of the (now shared) chain gets one more user. */
function skbCloneFraglist(s: SkbSharedInfo): void {
  for (let c = s.fragList; c !== null; c = c.next) skbGet(c);
}

/** skb_unclone: give a cloned skb its private data (pskb_expand_head(skb, 0, 0)); 0 or -ENOMEM. */
export function skbUnclone(skb: SkBuff): number {
  assertLive(skb, 'skb_unclone');
  return skbCloned(skb) ? pskbExpandHead(skb, 0, 0) : 0;
}

/**
 * pskb_expand_head (2.6.2x with seed 001): a private head and shinfo copied from the old one (frags get_page'd,
 * frag_list skb_get'd, gso fields, destructor, destructorArg, orig), design.refDataParent, release of the old
 * data, then the new shinfo's destructor is cleared. 0 (never -ENOMEM here).
 * Departure: mainline frees only the head when not cloned; 2.6.2x (Rusty's base) always refs and releases.
 */
export function pskbExpandHead(skb: SkBuff, nhead: number, ntail: number): number {
  assertLive(skb, 'pskb_expand_head');
  if (!Number.isInteger(nhead) || !Number.isInteger(ntail) || nhead < 0 || ntail < 0) {
    throw new Error(`pskb_expand_head: bad nhead ${nhead} / ntail ${ntail}`);
  }
  if (skbShared(skb)) throw new Error('pskb_expand_head: skb is shared (BUG_ON(skb_shared(skb)))');
  const ctx = skb.ctx;
  // Mainline: a cloned skb's zerocopy frags are orphaned before its shinfo is copied.
  const d = ctx.design;
  if (d.orphanPoint !== undefined && skbCloned(skb)) d.orphanPoint(skb, 'expand_head');
  const old = skb.shinfo;
  const ns = allocShinfo(ctx, skb.end + nhead + ntail);
  // Copy only real data... and, alas, header.
  ns.head.set(skb.head.subarray(0, skb.tail), nhead);
  ctx.stats.bytesCopied += skb.tail;
  for (let i = 0; i < old.nrFrags; i++) {
    copyFrag(ns.frags[i]!, old.frags[i]!);
    getPage(ctx, old.frags[i]!.page);
  }
  ns.nrFrags = old.nrFrags;
  ns.fragList = old.fragList;
  if (ns.fragList !== null) skbCloneFraglist(ns);
  ns.gsoSize = old.gsoSize;
  ns.gsoSegs = old.gsoSegs;
  ns.gsoType = old.gsoType;
  ns.destructor = old.destructor;
  ns.destructorArg = old.destructorArg;
  ns.orig = old.orig;
  ctx.design.refDataParent(skb, ns, 'expand_head');
  if (ns.orig !== null && ns.orig === old.orig) {
    // The memcpy'd orig holds no reference of its own: a design must replace it or clear it.
    throw new Error(`pskb_expand_head: design ${ctx.design.name} left an unreferenced copy of orig`);
  }
  shinfoPut(ctx, old, skb.nohdr, skb.cloned);
  skb.shinfo = ns;
  skb.head = ns.head;
  skb.end = ns.head.length;
  skb.data += nhead;
  skb.tail += nhead;
  // skb_headers_offset_update
  if (skb.macHeader !== -1) skb.macHeader += nhead;
  if (skb.networkHeader !== -1) skb.networkHeader += nhead;
  if (skb.transportHeader !== -1) skb.transportHeader += nhead;
  if (skb.ipSummed === CHECKSUM_PARTIAL) skb.csumStart += nhead;
  skb.cloned = false;
  skb.nohdr = false;
  ns.dataref = 1;
  // Seed 001: skb_shinfo(skb)->destructor = NULL; the old shinfo keeps the destructor (and its arg).
  ns.destructor = null;
  ns.destructorArg = null;
  ctx.stats.expandHeads++;
  return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Pulling, trimming

/**
 * __pskb_pull_tail: pull delta bytes of frags/frag_list into the linear area (expanding the head if cloned or
 * short of tailroom), put_page the fully pulled pages and drop fully pulled frag_list skbs. False on failure.
 */
export function __pskbPullTail(skb: SkBuff, delta: number): boolean {
  assertLive(skb, '__pskb_pull_tail');
  if (!Number.isInteger(delta) || delta < 0 || delta > skb.dataLen) {
    throw new Error(`__pskb_pull_tail: delta ${delta} with data_len ${skb.dataLen}`);
  }
  const ctx = skb.ctx;
  let eat = skb.tail + delta - skb.end;
  if (eat > 0 || skbCloned(skb)) {
    if (pskbExpandHead(skb, 0, eat > 0 ? eat + 128 : 0) !== 0) return false;
  }
  if (copyBitsInner(skb, skbHeadlen(skb), skb.head, skb.tail, delta) !== 0) throw new Error('__pskb_pull_tail: skb_copy_bits failed');
  ctx.stats.bytesCopied += delta;
  const s = skb.shinfo;

  // Estimate size of pulled pages.
  eat = delta;
  let inFrags = false;
  for (let i = 0; i < s.nrFrags; i++) {
    const size = s.frags[i]!.size;
    if (size >= eat) {
      inFrags = true;
      break;
    }
    eat -= size;
  }
  if (!inFrags && eat > 0) {
    // The frag_list must be updated too.
    let list: SkBuff | null = s.fragList;
    let clone: SkBuff | null = null;
    let insp: SkBuff | null = null;
    do {
      if (list === null) throw new Error('__pskb_pull_tail: frag_list shorter than data_len');
      if (list.len <= eat) {
        // Eaten as whole.
        eat -= list.len;
        list = list.next;
        insp = list;
      } else {
        // Eaten partially.
        if (s.gsoSize !== 0 && skbHeadlen(list) !== 0) s.gsoType |= SKB_GSO_DODGY;
        if (skbShared(list)) {
          // Sucks! We need to fork list.
          clone = skbClone(list);
          insp = list.next;
          list = clone;
        } else {
          insp = list;
        }
        if (!pskbPull(list, eat)) {
          if (clone !== null) kfreeSkb(clone);
          return false;
        }
        break;
      }
    } while (eat > 0);
    // Free pulled out fragments.
    let l: SkBuff | null;
    while ((l = s.fragList) !== insp && l !== null) {
      s.fragList = l.next;
      consumeSkb(l);
    }
    // And insert new clone at head.
    if (clone !== null) {
      clone.next = l;
      s.fragList = clone;
    }
  }

  // Now we may commit changes to skb data.
  eat = delta;
  const n = s.nrFrags;
  let k = 0;
  for (let i = 0; i < n; i++) {
    const f = s.frags[i]!;
    if (f.size <= eat) {
      putPage(ctx, f.page);
      eat -= f.size;
    } else {
      if (k !== i) copyFrag(s.frags[k]!, f);
      if (eat > 0) {
        const g = s.frags[k]!;
        g.offset += eat;
        g.size -= eat;
        if (i === 0) {
          k = n;
          break;
        }
        eat = 0;
      }
      k++;
    }
  }
  s.nrFrags = k;
  clearFragSlots(s, k, n);
  skb.tail += delta;
  skb.dataLen -= delta;
  // Mainline: if (!skb->data_len) skb_zcopy_clear(skb, false).
  const d = ctx.design;
  if (skb.dataLen === 0 && d.pulledLinear !== undefined) d.pulledLinear(skb);
  return true;
}

/** pskb_may_pull: make sure len bytes are linear; false when the skb is shorter or the pull fails. */
export function pskbMayPull(skb: SkBuff, len: number): boolean {
  assertLive(skb, 'pskb_may_pull');
  const headlen = skbHeadlen(skb);
  if (len <= headlen) return true;
  if (len > skb.len) return false;
  return __pskbPullTail(skb, len - headlen);
}

/** skb_linearize: pull everything into the linear area; 0 or -ENOMEM. */
export function skbLinearize(skb: SkBuff): number {
  assertLive(skb, 'skb_linearize');
  if (!skbIsNonlinear(skb)) return 0;
  return __pskbPullTail(skb, skb.dataLen) ? 0 : -ENOMEM;
}

/** pskb_trim: shorten to len (no-op when len >= skb.len); ___pskb_trim unclones first and drops frags past len. 0 or error. */
export function pskbTrim(skb: SkBuff, len: number): number {
  assertLive(skb, 'pskb_trim');
  if (!Number.isInteger(len) || len < 0) throw new Error(`pskb_trim: bad len ${len}`);
  if (len >= skb.len) return 0;
  if (skb.dataLen === 0) {
    skbTrim(skb, len);
    return 0;
  }
  return ___pskbTrim(skb, len);
}

/** ___pskb_trim: the nonlinear trim. */
function ___pskbTrim(skb: SkBuff, len: number): number {
  let offset = skbHeadlen(skb);
  if (skbCloned(skb)) {
    const err = pskbExpandHead(skb, 0, 0);
    if (err !== 0) return err;
  }
  const ctx = skb.ctx;
  const s = skb.shinfo;
  const nfrags = s.nrFrags;
  let dropFrom = -1;
  if (offset >= len) {
    dropFrom = 0;
  } else {
    for (let i = 0; i < nfrags; i++) {
      const f = s.frags[i]!;
      const end = offset + f.size;
      if (end < len) {
        offset = end;
        continue;
      }
      f.size = len - offset;
      dropFrom = i + 1;
      break;
    }
  }
  if (dropFrom >= 0) {
    s.nrFrags = dropFrom;
    for (let i = dropFrom; i < nfrags; i++) putPage(ctx, s.frags[i]!.page);
    clearFragSlots(s, dropFrom, nfrags);
    if (s.fragList !== null) {
      const list = s.fragList;
      s.fragList = null;
      skbDropList(list);
    }
  } else {
    let prev: SkBuff | null = null;
    let frag = s.fragList;
    while (frag !== null) {
      const end = offset + frag.len;
      if (skbShared(frag)) {
        const nfrag = skbClone(frag);
        nfrag.next = frag.next;
        consumeSkb(frag);
        frag = nfrag;
        if (prev === null) s.fragList = frag;
        else prev.next = frag;
      }
      if (end < len) {
        offset = end;
        prev = frag;
        frag = frag.next;
        continue;
      }
      if (end > len) {
        const err = pskbTrim(frag, len - offset);
        if (err !== 0) return err;
      }
      if (frag.next !== null) {
        const rest = frag.next;
        frag.next = null;
        skbDropList(rest);
      }
      break;
    }
  }
  if (len > skbHeadlen(skb)) {
    skb.dataLen -= skb.len - len;
    skb.len = len;
  } else {
    skb.len = len;
    skb.dataLen = 0;
    skb.tail = skb.data + len;
  }
  // Departure: no skb_condense.
  return 0;
}

/**
 * tcp_trim_head (net/ipv4/tcp_output.c): unclone, then __pskb_trim_head eats len bytes from the front,
 * put_page'ing fully eaten frags. 0 or -ENOMEM. Requires 0 < len <= skb.len and no frag_list (TCP's write queue).
 */
export function tcpTrimHead(skb: SkBuff, len: number): number {
  assertLive(skb, 'tcp_trim_head');
  if (skb.shinfo.fragList !== null) throw new Error('tcp_trim_head: skb has a frag_list');
  if (!Number.isInteger(len) || len <= 0 || len > skb.len) throw new Error(`tcp_trim_head: bad len ${len} for skb len ${skb.len}`);
  const err = skbUnclone(skb);
  if (err !== 0) return err;
  // __pskb_trim_head
  const ctx = skb.ctx;
  let eat = Math.min(len, skbHeadlen(skb));
  if (eat > 0) {
    __skbPull(skb, eat);
    len -= eat;
    if (len === 0) return 0;
  }
  eat = len;
  const s = skb.shinfo;
  const n = s.nrFrags;
  let k = 0;
  for (let i = 0; i < n; i++) {
    const f = s.frags[i]!;
    if (f.size <= eat) {
      putPage(ctx, f.page);
      eat -= f.size;
    } else {
      if (k !== i) copyFrag(s.frags[k]!, f);
      if (eat > 0) {
        s.frags[k]!.offset += eat;
        s.frags[k]!.size -= eat;
        eat = 0;
      }
      k++;
    }
  }
  s.nrFrags = k;
  clearFragSlots(s, k, n);
  skb.dataLen -= len;
  skb.len = skb.dataLen;
  return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Split, segment

/**
 * skb_split: skb keeps [0, len), skb1 (fresh and empty, with tailroom for any header part) gets the rest;
 * frags move, a frag cut in two gets one more page ref; design.refDataParent(skb, skb1's shinfo).
 * Requires skb not cloned (tcp_fragment uncloned it) and no frag_list.
 */
export function skbSplit(skb: SkBuff, skb1: SkBuff, len: number): void {
  assertLive(skb, 'skb_split');
  assertLive(skb1, 'skb_split');
  const ctx = skb.ctx;
  const s = skb.shinfo;
  const s1 = skb1.shinfo;
  if (skbCloned(skb)) throw new Error('skb_split: skb is cloned (skbUnclone it first, as tcp_fragment does)');
  if (s.fragList !== null) throw new Error('skb_split: skb has a frag_list');
  if (skb1 === skb || skb1.len !== 0 || s1.nrFrags !== 0 || s1.fragList !== null || skbCloned(skb1)) {
    throw new Error('skb_split: skb1 must be a fresh, empty, private skb');
  }
  if (!Number.isInteger(len) || len < 0 || len > skb.len) throw new Error(`skb_split: bad len ${len} for skb len ${skb.len}`);
  let pos = skbHeadlen(skb);
  if (len < pos) {
    // Split line is inside header.
    const off = skbPut(skb1, pos - len);
    skb1.head.set(skb.head.subarray(skb.data + len, skb.data + pos), off);
    ctx.stats.bytesCopied += pos - len;
    for (let i = 0; i < s.nrFrags; i++) copyFrag(s1.frags[i]!, s.frags[i]!);
    s1.nrFrags = s.nrFrags;
    clearFragSlots(s, 0, s.nrFrags);
    s.nrFrags = 0;
    skb1.dataLen = skb.dataLen;
    skb1.len += skb1.dataLen;
    skb.dataLen = 0;
    skb.len = len;
    skb.tail = skb.data + len;
  } else {
    // Second chunk has no header, nothing to copy.
    const nfrags = s.nrFrags;
    let k = 0;
    s.nrFrags = 0;
    skb1.len = skb.len - len;
    skb1.dataLen = skb1.len;
    skb.len = len;
    skb.dataLen = len - pos;
    for (let i = 0; i < nfrags; i++) {
      const f = s.frags[i]!;
      const size = f.size;
      if (pos + size > len) {
        copyFrag(s1.frags[k]!, f);
        if (pos < len) {
          // Split frag: both halves keep a page reference.
          getPage(ctx, f.page);
          s1.frags[0]!.offset += len - pos;
          s1.frags[0]!.size -= len - pos;
          f.size = len - pos;
          s.nrFrags++;
        }
        k++;
      } else {
        if (s.nrFrags !== i) copyFrag(s.frags[s.nrFrags]!, f);
        s.nrFrags++;
      }
      pos += size;
    }
    clearFragSlots(s, s.nrFrags, nfrags);
    s1.nrFrags = k;
  }
  ctx.design.refDataParent(skb, s1, 'split');
}

interface SegState {
  nskb: SkBuff;
  /** The skb whose page data this segment currently holds a parent reference for (via design.refDataParent). */
  pinned: SkBuff;
  /** The local page that linear bytes after a frag are copied into, and its fill. */
  page: Page | null;
  used: number;
}

/**
 * skb_zerocopy_clone for frag sources: before sharing page data owned by `owner`, make the segment refer to
 * it. A shinfo has one orig slot, so when the segment already holds a reference to another parent, its page
 * data so far is copied and that reference dropped first (mainline: skb_copy_ubufs on a different uarg).
 */
function segPin(ctx: SkbContext, st: SegState, owner: SkBuff): void {
  if (st.pinned === owner) return;
  if (st.nskb.shinfo.orig !== null) skbOrphanFrags(st.nskb);
  ctx.design.refDataParent(owner, st.nskb.shinfo, 'segment');
  st.pinned = owner;
}

/** Appends a shared frag to the segment (get_page); false when MAX_SKB_FRAGS is exceeded. */
function segShareFrag(ctx: SkbContext, st: SegState, owner: SkBuff, page: Page, off: number, size: number): boolean {
  const s = st.nskb.shinfo;
  if (s.nrFrags >= MAX_SKB_FRAGS) return false;
  segPin(ctx, st, owner);
  getPage(ctx, page);
  setFrag(s.frags[s.nrFrags]!, page, off, size);
  s.nrFrags++;
  return true;
}

/** Copies linear bytes that follow a frag into local page frags of the segment; false when out of slots. */
function segCopyLinear(ctx: SkbContext, st: SegState, src: Uint8Array, from: number, size: number): boolean {
  const s = st.nskb.shinfo;
  while (size > 0) {
    const last = s.nrFrags > 0 ? s.frags[s.nrFrags - 1]! : null;
    if (st.page === null || st.used === PAGE_SIZE || last === null || last.page !== st.page) {
      if (s.nrFrags >= MAX_SKB_FRAGS) return false;
      st.page = allocPage(ctx);
      st.used = 0;
      setFrag(s.frags[s.nrFrags]!, st.page, 0, 0);
      s.nrFrags++;
    }
    const frag = s.frags[s.nrFrags - 1]!;
    const chunk = Math.min(size, PAGE_SIZE - st.used);
    st.page.bytes.set(src.subarray(from, from + chunk), st.used);
    ctx.stats.bytesCopied += chunk;
    frag.size += chunk;
    st.used += chunk;
    from += chunk;
    size -= chunk;
  }
  return true;
}

/**
 * Adds payload bytes [a, b) of `src` (which starts at payload offset `base`) to the segment; false on frag
 * overflow. `owner` is the nearest skb at or above src whose shinfo has a destructor or orig: its data is
 * what a parent reference must keep alive for src's pages.
 */
function segWalk(ctx: SkbContext, st: SegState, src: SkBuff, owner: SkBuff, base: number, a: number, b: number, skipLinear: boolean): boolean {
  let p = base;
  const hl = skbHeadlen(src);
  if (!skipLinear) {
    const lo = Math.max(a, p);
    const hi = Math.min(b, p + hl);
    if (lo < hi && !segCopyLinear(ctx, st, src.head, src.data + (lo - p), hi - lo)) return false;
  }
  p += hl;
  const s = src.shinfo;
  for (let i = 0; i < s.nrFrags && p < b; i++) {
    const f = s.frags[i]!;
    const lo = Math.max(a, p);
    const hi = Math.min(b, p + f.size);
    if (lo < hi && !segShareFrag(ctx, st, owner, f.page, f.offset + (lo - p), hi - lo)) return false;
    p += f.size;
  }
  for (let c = s.fragList; c !== null && p < b; c = c.next) {
    const childOwner = holdsRelease(c.shinfo) ? c : owner;
    if (p + c.len > a && !segWalk(ctx, st, c, childOwner, p, a, b, false)) return false;
    p += c.len;
  }
  return true;
}

/**
 * skb_segment (GSO): each segment gets the headers head[macHeader, data) and up to gso_size payload bytes.
 * With sg the payload's page data is shared (get_page) and design.refDataParent is called per segment (as
 * seed 001); without sg everything is copied. Returns the segments, or -EINVAL (gso_size 0, > MAX_SKB_FRAGS).
 * Departures: the input skb is left unchanged (Linux leaves it pushed by the header length); no protocol
 * header fix-ups (that is the gso_segment callbacks' job); linear bytes that follow page data (frag_list skbs
 * with a linear part) are copied into local page frags. Page data of a frag_list skb with its own destructor
 * or orig is a second parent: refDataParent is called for it too, and as a shinfo has one orig slot, the
 * segment's earlier page data is first copied (skb_orphan_frags) when it already holds another parent ref.
 */
export function skbSegment(skb: SkBuff, features: { readonly sg: boolean }): SkBuff[] | number {
  assertLive(skb, 'skb_segment');
  const ctx = skb.ctx;
  // Mainline orphans the input (and each frag_list skb) before segments share its frags.
  const d = ctx.design;
  if (d.orphanPoint !== undefined) d.orphanPoint(skb, 'segment');
  const mss = skb.shinfo.gsoSize;
  if (mss <= 0) return -EINVAL;
  const macHeader = skb.macHeader === -1 ? skb.data : skb.macHeader;
  const doffset = skb.data - macHeader;
  if (doffset < 0) return -EINVAL;
  const headroom = macHeader;
  const headlen = skbHeadlen(skb);
  const segs: SkBuff[] = [];
  let offset = 0;
  do {
    const len = Math.min(mss, skb.len - offset);
    let hsize = Math.max(0, headlen - offset);
    if (hsize > len || !features.sg) hsize = len;
    const nskb = allocSkb(ctx, hsize + doffset + headroom);
    segs.push(nskb);
    copySkbHeader(nskb, skb);
    skbReserve(nskb, headroom);
    nskb.macHeader = nskb.data;
    nskb.networkHeader = skb.networkHeader === -1 ? -1 : nskb.data + (skb.networkHeader - macHeader);
    nskb.transportHeader = skb.transportHeader === -1 ? -1 : nskb.data + (skb.transportHeader - macHeader);
    if (nskb.ipSummed === CHECKSUM_PARTIAL) nskb.csumStart = nskb.data + (skb.csumStart - macHeader);
    const hdr = skbPut(nskb, doffset);
    nskb.head.set(skb.head.subarray(macHeader, skb.data), hdr);
    ctx.stats.bytesCopied += doffset;
    if (!features.sg) {
      nskb.ipSummed = CHECKSUM_NONE;
      const at = skbPut(nskb, len);
      if (copyBitsInner(skb, offset, nskb.head, at, len) !== 0) throw new Error('skb_segment: skb_copy_bits failed');
      ctx.stats.bytesCopied += len;
    } else {
      const at = skbPut(nskb, hsize);
      nskb.head.set(skb.head.subarray(skb.data + offset, skb.data + offset + hsize), at);
      ctx.stats.bytesCopied += hsize;
      // Seed 001 takes the parent ref after filling the frags; taking it first lets frag_list sources check against it.
      ctx.design.refDataParent(skb, nskb.shinfo, 'segment');
      const st: SegState = { nskb, pinned: skb, page: null, used: 0 };
      if (!segWalk(ctx, st, skb, skb, 0, offset + hsize, offset + len, true)) {
        for (const seg of segs) kfreeSkb(seg);
        return -EINVAL; // skb_segment: too many frags
      }
      nskb.dataLen = len - hsize;
      nskb.len += nskb.dataLen;
    }
    offset += len;
  } while (offset < skb.len);
  ctx.stats.segments += segs.length;
  return segs;
}

// ---------------------------------------------------------------------------------------------------------
// Moving frags between skbs: coalesce, shift

/** Result of skbTryCoalesce. */
export type CoalesceResult = { readonly ok: false } | { readonly ok: true; readonly fragstolen: boolean; readonly delta: number };

const COALESCE_NO: CoalesceResult = { ok: false };
const COALESCE_COPIED: CoalesceResult = { ok: true, fragstolen: false, delta: 0 };

/**
 * skb_try_coalesce: append `from` to `to` (the caller then frees `from`, as kfree_skb_partial). A small `from`
 * is copied into `to`'s tailroom; otherwise its frags move when it has no linear data, both fit, neither has a
 * frag_list and design.mayMoveFrags agrees. Departures: heads are never page frags, so the head is never stolen
 * (fragstolen is always false); no truesize, so delta is the bytes whose page refs moved; when `from` was not
 * cloned its emptied len/data_len are zeroed so it stays consistent until freed.
 */
export function skbTryCoalesce(to: SkBuff, from: SkBuff): CoalesceResult {
  assertLive(to, 'skb_try_coalesce');
  assertLive(from, 'skb_try_coalesce');
  if (to === from) throw new Error('skb_try_coalesce: to === from');
  const ctx = to.ctx;
  const len = from.len;
  if (skbCloned(to)) return COALESCE_NO;
  if (len <= skbTailroom(to)) {
    if (len > 0) {
      const at = skbPut(to, len);
      if (copyBitsInner(from, 0, to.head, at, len) !== 0) throw new Error('skb_try_coalesce: skb_copy_bits failed');
      ctx.stats.bytesCopied += len;
    }
    ctx.stats.coalesceCopied++;
    return COALESCE_COPIED;
  }
  const ts = to.shinfo;
  const fs = from.shinfo;
  if (ts.fragList !== null || fs.fragList !== null) return COALESCE_NO;
  // Where mainline refuses skb_zcopy(to) || skb_zcopy(from), the design decides.
  if (!ctx.design.mayMoveFrags(from, to)) {
    ctx.stats.coalesceRefused++;
    return COALESCE_NO;
  }
  if (skbHeadlen(from) !== 0) return COALESCE_NO; // skb_head_is_locked: our heads are never page frags
  if (ts.nrFrags + fs.nrFrags > MAX_SKB_FRAGS) return COALESCE_NO;
  for (let i = 0; i < fs.nrFrags; i++) copyFrag(ts.frags[ts.nrFrags + i]!, fs.frags[i]!);
  ts.nrFrags += fs.nrFrags;
  if (!skbCloned(from)) {
    clearFragSlots(fs, 0, fs.nrFrags);
    fs.nrFrags = 0;
    from.len -= from.dataLen;
    from.dataLen = 0;
  } else {
    for (let i = 0; i < fs.nrFrags; i++) getPage(ctx, fs.frags[i]!.page);
  }
  to.len += len;
  to.dataLen += len;
  ctx.stats.coalesceMoved++;
  const d = ctx.design;
  if (d.fragsMoved !== undefined) d.fragsMoved(from, to);
  return { ok: true, fragstolen: false, delta: len };
}

/** skb_can_coalesce: the page range continues tgt's last frag. */
function skbCanCoalesce(s: SkbSharedInfo, i: number, page: Page, off: number): boolean {
  if (i === 0) return false;
  const f = s.frags[i - 1]!;
  return page === f.page && off === f.offset + f.size;
}

/**
 * skb_shift (TCP SACK): move shiftlen bytes of page data from the front of `skb` to the end of `tgt`;
 * returns the bytes shifted, 0 when refused (skb has linear data, design.mayMoveFrags says no, or tgt is
 * out of slots). Both are uncloned first. Requires shiftlen <= skb.len and no frag_list (TCP's queues).
 */
export function skbShift(tgt: SkBuff, skb: SkBuff, shiftlen: number): number {
  assertLive(tgt, 'skb_shift');
  assertLive(skb, 'skb_shift');
  if (tgt === skb) throw new Error('skb_shift: tgt === skb');
  if (!Number.isInteger(shiftlen) || shiftlen < 0 || shiftlen > skb.len) {
    throw new Error(`skb_shift: shiftlen ${shiftlen} with skb len ${skb.len}`);
  }
  if (tgt.shinfo.fragList !== null || skb.shinfo.fragList !== null) throw new Error('skb_shift: frag_list skbs are never shifted');
  const ctx = skb.ctx;
  if (skbHeadlen(skb) !== 0) return 0;
  if (shiftlen === 0) return 0;
  // Where mainline refuses skb_zcopy(tgt) || skb_zcopy(skb), the design decides.
  if (!ctx.design.mayMoveFrags(skb, tgt)) {
    ctx.stats.shiftRefused++;
    return 0;
  }
  let todo = shiftlen;
  let from = 0;
  let to = tgt.shinfo.nrFrags;
  let merge: number;
  {
    const ff = skb.shinfo.frags[from]!;
    if (!skbCanCoalesce(tgt.shinfo, to, ff.page, ff.offset)) {
      merge = -1;
    } else {
      merge = to - 1;
      todo -= ff.size;
      if (todo < 0) {
        if (skbUnclone(skb) !== 0 || skbUnclone(tgt) !== 0) return 0;
        // All previous frag pointers might be stale.
        const f2 = skb.shinfo.frags[from]!;
        tgt.shinfo.frags[merge]!.size += shiftlen;
        f2.size -= shiftlen;
        f2.offset += shiftlen;
        return shiftDone(tgt, skb, shiftlen);
      }
      from++;
    }
  }
  // Skip full, not-fitting skb to avoid expensive operations.
  if (shiftlen === skb.len && skb.shinfo.nrFrags - from > MAX_SKB_FRAGS - to) return 0;
  if (skbUnclone(skb) !== 0 || skbUnclone(tgt) !== 0) return 0;
  const ss = skb.shinfo;
  const ts = tgt.shinfo;
  const firstTo = to;
  while (todo > 0 && from < ss.nrFrags) {
    if (to === MAX_SKB_FRAGS) {
      clearFragSlots(ts, firstTo, MAX_SKB_FRAGS);
      return 0;
    }
    const ff = ss.frags[from]!;
    const ft = ts.frags[to]!;
    if (todo >= ff.size) {
      copyFrag(ft, ff);
      todo -= ff.size;
      from++;
      to++;
    } else {
      getPage(ctx, ff.page);
      setFrag(ft, ff.page, ff.offset, todo);
      ff.offset += todo;
      ff.size -= todo;
      todo = 0;
      to++;
      break;
    }
  }
  // Ready to "commit" this state change to tgt.
  ts.nrFrags = to;
  if (merge >= 0) {
    const ff = ss.frags[0]!;
    ts.frags[merge]!.size += ff.size;
    putPage(ctx, ff.page);
  }
  // Reposition in the original skb.
  const n = ss.nrFrags;
  to = 0;
  while (from < n) copyFrag(ss.frags[to++]!, ss.frags[from++]!);
  ss.nrFrags = to;
  clearFragSlots(ss, to, n);
  if (todo > 0 && ss.nrFrags === 0) throw new Error('skb_shift: ran out of frags');
  return shiftDone(tgt, skb, shiftlen);
}

function shiftDone(tgt: SkBuff, skb: SkBuff, shiftlen: number): number {
  tgt.ipSummed = CHECKSUM_PARTIAL;
  skb.ipSummed = CHECKSUM_PARTIAL;
  skb.len -= shiftlen;
  skb.dataLen -= shiftlen;
  tgt.len += shiftlen;
  tgt.dataLen += shiftlen;
  skb.ctx.stats.shifts++;
  const d = skb.ctx.design;
  if (d.fragsMoved !== undefined) d.fragsMoved(skb, tgt);
  return shiftlen;
}

// ---------------------------------------------------------------------------------------------------------
// Orphaning foreign frags

/** Does a design's completion state hang on this shinfo (destructor, orig, zccd, token, ubuf)? */
function holdsRelease(s: SkbSharedInfo): boolean {
  return s.destructor !== null || s.orig !== null || s.zccd !== null || s.zccd2 !== null || s.transactionToken !== null || s.uarg !== null;
}

/** Does this skb (or its frag_list, recursively) refer to foreign pages, or hold a design's completion state? */
function needsOrphan(skb: SkBuff): boolean {
  const s = skb.shinfo;
  if (holdsRelease(s)) return true;
  for (let i = 0; i < s.nrFrags; i++) if (s.frags[i]!.page.foreign !== null) return true;
  for (let c = s.fragList; c !== null; c = c.next) if (needsOrphan(c)) return true;
  return false;
}

/** A local page holding a copy of a foreign frag's bytes at the same offset. */
function copyForeignFrag(ctx: SkbContext, dst: SkbFrag, src: SkbFrag): void {
  const page = allocPage(ctx);
  page.bytes.set(src.page.bytes.subarray(src.offset, src.offset + src.size), src.offset);
  ctx.stats.bytesCopied += src.size;
  ctx.stats.orphanedFrags++;
  setFrag(dst, page, src.offset, src.size);
}

/** Fills the empty shinfo `dst` with src's frags (foreign ones copied, local ones get_page'd) and an orphaned frag_list. */
function fillOrphaned(ctx: SkbContext, dst: SkbSharedInfo, src: SkbSharedInfo): void {
  for (let i = 0; i < src.nrFrags; i++) {
    const f = src.frags[i]!;
    if (f.page.foreign !== null) {
      copyForeignFrag(ctx, dst.frags[i]!, f);
    } else {
      getPage(ctx, f.page);
      copyFrag(dst.frags[i]!, f);
    }
  }
  dst.nrFrags = src.nrFrags;
  dst.fragList = orphanedFragList(src.fragList);
  dst.gsoSize = src.gsoSize;
  dst.gsoSegs = src.gsoSegs;
  dst.gsoType = src.gsoType;
}

/** A frag_list for a new owner: the same chain (skb_get) when nothing in it needs orphaning, else a new chain of private copies. */
function orphanedFragList(first: SkBuff | null): SkBuff | null {
  if (first === null) return null;
  let needs = false;
  for (let c: SkBuff | null = first; c !== null; c = c.next) {
    if (needsOrphan(c)) {
      needs = true;
      break;
    }
  }
  if (!needs) {
    for (let c: SkBuff | null = first; c !== null; c = c.next) skbGet(c);
    return first;
  }
  let head: SkBuff | null = null;
  let last: SkBuff | null = null;
  for (let c: SkBuff | null = first; c !== null; c = c.next) {
    const n = needsOrphan(c) ? orphanedCopy(c) : skbClone(c);
    if (last === null) head = n;
    else last.next = n;
    last = n;
  }
  return head;
}

/** A private copy of `skb` with no foreign pages, no parent ref and no destructor (headroom and headlen copied). */
function orphanedCopy(skb: SkBuff): SkBuff {
  const ctx = skb.ctx;
  const headroom = skbHeadroom(skb);
  const headlen = skbHeadlen(skb);
  const n = allocSkb(ctx, headroom + headlen);
  skbReserve(n, headroom);
  skbPut(n, headlen);
  n.head.set(skb.head.subarray(0, skb.tail), 0);
  ctx.stats.bytesCopied += skb.tail;
  n.len = skb.len;
  n.dataLen = skb.dataLen;
  copySkbHeader(n, skb);
  fillOrphaned(ctx, n.shinfo, skb.shinfo);
  return n;
}

/**
 * skb_orphan_frags: copy every foreign frag (frag_list skbs too) into local pages and release the foreign
 * refs, so this skb pins no grant. A cloned skb first gets a private head+shinfo WITHOUT a parent reference
 * (it no longer uses the parent's pages; XSA-392: a stalled receiver must not pin a sender's grants); an
 * uncloned one is converted in place, dropping its orig reference and running its destructor now
 * (mainline: skb_copy_ubufs completes the ubuf at once). Returns 0.
 */
export function skbOrphanFrags(skb: SkBuff): number {
  assertLive(skb, 'skb_orphan_frags');
  if (!needsOrphan(skb)) return 0;
  const ctx = skb.ctx;
  const old = skb.shinfo;
  if (skbCloned(skb)) {
    const ns = allocShinfo(ctx, skb.end);
    ns.head.set(skb.head.subarray(0, skb.tail), 0);
    ctx.stats.bytesCopied += skb.tail;
    fillOrphaned(ctx, ns, old);
    shinfoPut(ctx, old, skb.nohdr, skb.cloned);
    skb.shinfo = ns;
    skb.head = ns.head;
    skb.end = ns.head.length;
    skb.cloned = false;
    skb.nohdr = false;
    return 0;
  }
  for (let i = 0; i < old.nrFrags; i++) {
    const f = old.frags[i]!;
    if (f.page.foreign === null) continue;
    const foreign = f.page;
    copyForeignFrag(ctx, f, f);
    putPage(ctx, foreign);
  }
  if (old.fragList !== null) {
    const list = old.fragList;
    const fresh = orphanedFragList(list);
    old.fragList = fresh;
    skbDropList(list);
  }
  const orig = old.orig;
  if (orig !== null) {
    old.orig = null;
    shinfoPut(ctx, orig, true, true, true);
  }
  if (old.destructor !== null) {
    const d = old.destructor;
    old.destructor = null;
    ctx.stats.destructorCalls++;
    d(old);
    old.destructorArg = null;
  }
  // Copied data carries no zero-copy state (seed 000's __skb_linearize: "copied data => no zccd").
  const design = ctx.design;
  if (design.orphaned !== undefined) design.orphaned(old);
  return 0;
}

/**
 * skb_orphan_frags_rx: local delivery (and taps, tun) must not keep zerocopy frags: a design that orphans on
 * delivery (ubuf) copies them here; for the others this is a no-op (keeping the frags is the design under test).
 */
export function skbOrphanFragsRx(skb: SkBuff): number {
  assertLive(skb, 'skb_orphan_frags_rx');
  const d = skb.ctx.design;
  if (d.orphanPoint !== undefined) d.orphanPoint(skb, 'rx');
  return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Invariants

/** Asserts the model's own invariants on a live skb and its frag_list (throws on violation); for tests. */
export function skbCheck(skb: SkBuff): void {
  const fail = (m: string): never => {
    throw new Error(`skbCheck: ${m}`);
  };
  if (skb.users <= 0) fail('skb is freed');
  const s = skb.shinfo;
  if (s.dataref <= 0 || (s.dataref & SKB_DATAREF_MASK) === 0) fail(`dataref ${s.dataref}`);
  if (skb.head !== s.head) fail('head !== shinfo.head');
  if (skb.end !== s.head.length) fail(`end ${skb.end} !== head length ${s.head.length}`);
  if (!(0 <= skb.data && skb.data <= skb.tail && skb.tail <= skb.end)) fail(`data ${skb.data} tail ${skb.tail} end ${skb.end}`);
  if (skb.len !== skb.tail - skb.data + skb.dataLen) fail(`len ${skb.len} !== headlen ${skb.tail - skb.data} + data_len ${skb.dataLen}`);
  if (s.nrFrags < 0 || s.nrFrags > MAX_SKB_FRAGS) fail(`nr_frags ${s.nrFrags}`);
  let sum = 0;
  for (let i = 0; i < s.nrFrags; i++) {
    const f = s.frags[i]!;
    if (f.page === NO_PAGE) fail(`frag ${i} has no page`);
    if (f.offset < 0 || f.size < 0 || f.offset + f.size > PAGE_SIZE) fail(`frag ${i} [${f.offset}, +${f.size}) outside the page`);
    if (f.page.count <= 0) fail(`frag ${i} page ${f.page.id} is free`);
    sum += f.size;
  }
  for (let c = s.fragList; c !== null; c = c.next) {
    skbCheck(c);
    sum += c.len;
  }
  if (sum !== skb.dataLen) fail(`data_len ${skb.dataLen} !== frags + frag_list ${sum}`);
  if (!skb.cloned && (s.dataref & SKB_DATAREF_MASK) !== 1) fail(`uncloned skb with dataref ${s.dataref.toString(16)}`);
}
