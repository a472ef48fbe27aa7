// When grants go back: the release designs that decide when a foreign page mapped from a guest grant is
// truly free. skbuff and page operations only call the hooks of ReleaseDesign, at the places the seeds and
// mainline put theirs, so every design plugs in without touching them. This module holds the interface, Rusty's
// designs (rusty, naive, rusty-page) and the list of all designs; the others live in release-*.ts.
//
// Designs (DESIGNS, designByName): rusty (seed 001, the default), naive (seed 001 minus skb_ref_data_parent, the
// negative control), zccd (seed 000), net_priv and net_priv-hash (seed 002, Bolkhovitin), page-destructor (seed
// 002, Fitzhardinge on Xen's foreign pages), token and token-alloc (seed 002, Kuznetsov), ubuf (mainline), copy
// (grant copy), rusty-page (seed 001 refined per page, beyond the seeds).

import type { Page } from './page.js';
import type { SkbContext, SkBuff, SkbSharedInfo } from './skbuff.js';
import { SKB_DATAREF_SHIFT, shinfoDropData } from './skbuff.js';
import { copy } from './release-copy.js';
import { netPriv, netPrivHash } from './release-net-priv.js';
import { pageDestructor } from './release-page-destructor.js';
import { token, tokenAlloc } from './release-token.js';
import { ubuf } from './release-ubuf.js';
import { ATOMIC_BYTES, POINTER_BYTES } from './release-util.js';
import { zccd } from './release-zccd.js';

/** Where a truly free foreign page's grant goes (netback's dealloc queue; in tests a fake guest). */
export interface GrantSink {
  /** `zerocopySuccess` (default true) is mainline's ubuf completion flag: false when the frags were copied instead. */
  release(page: Page, zerocopySuccess?: boolean): void;
}

/** The operations that make a new shinfo refer to another skb's page data. */
export type RefDataOp = 'pskb_copy' | 'expand_head' | 'split' | 'segment';

/** Where mainline calls skb_orphan_frags (clone, pskb_copy, segment, expand_head of a cloned skb) or skb_orphan_frags_rx (rx). */
export type OrphanPoint = 'clone' | 'pskb_copy' | 'segment' | 'expand_head' | 'rx';

/**
 * A policy for returning grants: attach at injection, parent references, and whether frags may move; plus
 * optional hooks for the designs that need them (absent hooks cost one check; rusty and naive have none).
 */
export interface ReleaseDesign {
  readonly name: string;
  /** netback built `skb` from these foreign pages: arrange for sink.release(page) of each exactly when truly free. */
  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void;
  /** A new shinfo `child` now refers to page data of `parent` (pskb_copy, pskb_expand_head, skb_split, skb_segment). */
  refDataParent(parent: SkBuff, child: SkbSharedInfo, op: RefDataOp): void;
  /** May page references move from `from` into another skb's shinfo (skb_try_coalesce, skb_shift)? */
  mayMoveFrags(from: SkBuff, to: SkBuff): boolean;
  /** get_page on any page, before the count goes up (seed 002's net_get_page). */
  pageGet?(ctx: SkbContext, page: Page): void;
  /** put_page on any page, after the count went down (seed 002's net_put_page; Xen's foreign-page destructor). */
  pagePut?(ctx: SkbContext, page: Page): void;
  /** skb_release_data: the last reference to the shinfo's data is gone, its frags are about to be put (zccd_put, io_count--, ubuf complete). */
  shinfoRelease?(shinfo: SkbSharedInfo): void;
  /** shinfo_put dropped a reference that was not the last; `parentRef`: it was a child's orig reference. */
  shinfoDeref?(shinfo: SkbSharedInfo, parentRef: boolean): void;
  /** Frags of `from` now (also) live in `to`'s shinfo after skb_try_coalesce or skb_shift moved them. */
  fragsMoved?(from: SkBuff, to: SkBuff): void;
  /** A mainline skb_orphan_frags(_rx) call site, before `skb`'s frags are shared or delivered locally. */
  orphanPoint?(skb: SkBuff, where: OrphanPoint): void;
  /** skb_orphan_frags copied every foreign frag of this (uncloned) shinfo into local pages in place. */
  orphaned?(shinfo: SkbSharedInfo): void;
  /** __pskb_pull_tail left `skb` with no data outside its linear area. */
  pulledLinear?(skb: SkBuff): void;
}

/** The classic cases every design's tests run (test/backend/release-designs.test.ts). */
export type ClassicCase =
  | 'expand-head of a clone'
  | 'pskb_copy'
  | 'split'
  | 'GSO segments'
  | 'pull on a clone'
  | 'coalesce across guests'
  | 'trim-head after a clone'
  | 'orphan of a queued skb';

/** Bytes of bookkeeping a design stores (x86-64 sizes of the fields and objects it really keeps). */
export interface Bookkeeping {
  /** Per guest page it tracks (struct page fields, table entries, per-slot descriptors, page-list entries). */
  readonly perPage: number;
  /** Added to every skb_shared_info, zero-copy or not. */
  readonly perSkb: number;
  /** Per netback packet (its completion object), beyond the per-page bytes. */
  readonly perPacket: number;
  /** What is counted. */
  readonly note: string;
}

/** A design with its source, its expected soundness and its bookkeeping (the entries of DESIGNS). */
export interface DesignInfo extends ReleaseDesign {
  /** Where it comes from. */
  readonly source: string;
  /** Expected to return every grant exactly once and never while reachable (for one guest and across guests). */
  readonly sound: boolean;
  /** The classic cases in which it is expected to return a grant early. */
  readonly unsoundCases: readonly ClassicCase[];
  readonly bookkeeping: Bookkeeping;
}

/** What a grant-returning shinfo destructor owns: the pages to hand back and where to. Pooled per SkbContext. */
export class GrantRelease {
  sink: GrantSink | null = null;
  /** The pages this destructor returns; only [0, count) are meaningful (slots are nulled after use, never shrunk). */
  readonly pages: (Page | null)[] = [];
  count = 0;
}

/** Takes a GrantRelease from the context's pool (or makes one), filled with `pages` and `sink`. */
function takeGrantRelease(ctx: SkbContext, pages: readonly Page[], sink: GrantSink): GrantRelease {
  const pooled = ctx.destructorArgPool.pop();
  const arg = pooled instanceof GrantRelease ? pooled : new GrantRelease();
  arg.sink = sink;
  for (let i = 0; i < pages.length; i++) arg.pages[i] = pages[i]!;
  arg.count = pages.length;
  return arg;
}

/**
 * The one shared shinfo destructor (no closure per packet): hands every attached page to its sink once.
 * Called by shinfo_put (skbuff.ts) when the shinfo and, under rusty, all its descendants are gone.
 */
export function grantDestructor(shinfo: SkbSharedInfo): void {
  const arg = shinfo.destructorArg;
  if (!(arg instanceof GrantRelease) || arg.sink === null) {
    throw new Error('grantDestructor: shinfo has no live GrantRelease (destructor ran twice?)');
  }
  shinfo.destructorArg = null;
  const sink = arg.sink;
  const n = arg.count;
  arg.sink = null;
  arg.count = 0;
  for (let i = 0; i < n; i++) {
    const page = arg.pages[i]!;
    arg.pages[i] = null; // a pooled arg must not pin pages
    sink.release(page);
  }
  shinfo.ctx.destructorArgPool.push(arg);
}

/** Shared by rusty and naive: one destructor per injected skb, on its shinfo (seed 001's shinfo->destructor). */
function attachDestructor(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
  const shinfo = skb.shinfo;
  if (shinfo.destructor !== null) throw new Error('attach: shinfo already has a destructor');
  if (skb.users === 0) throw new Error('attach: skb is freed');
  shinfo.destructorArg = takeGrantRelease(skb.ctx, pages, sink);
  shinfo.destructor = grantDestructor;
}

/**
 * skb_ref_data_parent (seed 001): hold a payload reference on the parent's shinfo if it (or its ancestry) has a
 * destructor. Returns whether it took one.
 */
function refDataParentRusty(parent: SkBuff, child: SkbSharedInfo): boolean {
  const p = parent.shinfo;
  if (p.destructor === null && p.orig === null) return false;
  // pskb_expand_head's memcpy may have copied p.orig into child: that copy holds no reference, so replacing it is right.
  if (child.orig !== null && child.orig !== p.orig) {
    throw new Error('skb_ref_data_parent: child shinfo already holds a parent reference');
  }
  child.orig = p;
  p.dataref += (1 << SKB_DATAREF_SHIFT) + 1;
  parent.cloned = true;
  parent.ctx.stats.parentRefs++;
  return true;
}

/** As mainline refuses zerocopy skbs (skb_zcopy(to) || skb_zcopy(from)): frags of destructor/orig shinfos stay put. */
function mayMoveFragsRusty(from: SkBuff, to: SkBuff): boolean {
  const f = from.shinfo;
  const t = to.shinfo;
  return f.destructor === null && f.orig === null && t.destructor === null && t.orig === null;
}

/** Seed 001's three shinfo fields as this model stores them: destructor, destructorArg, orig. */
const RUSTY_PER_SKB = 3 * POINTER_BYTES;
/** A GrantRelease: the sink and the page count (its page list is counted per page). */
const GRANT_RELEASE_BYTES = POINTER_BYTES + ATOMIC_BYTES;

/** Rusty Russell's design (seed 001): shinfo destructor + 'orig' parent references; refuses to move frags of such skbs. */
export const rusty: DesignInfo = {
  name: 'rusty',
  source: 'seed 001: R. Russell, "net: add destructor for skb data" (shinfo destructor, orig, skb_ref_data_parent), LKML 2008-12-21',
  sound: true,
  unsoundCases: [],
  bookkeeping: {
    perSkb: RUSTY_PER_SKB,
    perPage: POINTER_BYTES,
    perPacket: GRANT_RELEASE_BYTES,
    note: 'shinfo destructor, destructor_arg, orig; a GrantRelease {sink, count} with one page pointer per grant',
  },
  attach: attachDestructor,
  refDataParent(parent: SkBuff, child: SkbSharedInfo, _op: RefDataOp): void {
    refDataParentRusty(parent, child);
  },
  mayMoveFrags: mayMoveFragsRusty,
};

/** The negative control: seed 001's shinfo destructor without skb_ref_data_parent, and frags move freely. */
export const naive: DesignInfo = {
  name: 'naive',
  source: 'seed 001 minus skb_ref_data_parent: the shinfo destructor alone (H. Xu\'s objection in seed 002, netdev 2008-12-20)',
  sound: false,
  unsoundCases: [
    'expand-head of a clone',
    'pskb_copy',
    'split',
    'GSO segments',
    'pull on a clone',
    'coalesce across guests',
    'trim-head after a clone',
  ],
  bookkeeping: {
    perSkb: 2 * POINTER_BYTES,
    perPage: POINTER_BYTES,
    perPacket: GRANT_RELEASE_BYTES,
    note: 'shinfo destructor, destructor_arg; a GrantRelease {sink, count} with one page pointer per grant',
  },
  attach: attachDestructor,
  refDataParent(_parent: SkBuff, _child: SkbSharedInfo, _op: RefDataOp): void {
    // deliberately nothing: a derived shinfo does not keep the destructor's shinfo alive
  },
  mayMoveFrags(_from: SkBuff, _to: SkBuff): boolean {
    return true;
  },
};

// ---- rusty-page: Rusty's chain refined per page (beyond the seeds) ----

/** One payload reference: what a child's orig holds on its parent (seed 001's atomic_add). */
const PARENT_REF = (1 << SKB_DATAREF_SHIFT) + 1;

/** rusty-page: hands one page of a live GrantRelease back now and forgets it there, so the destructor skips it. */
function releasePageNow(ctx: SkbContext, arg: GrantRelease, page: Page): void {
  const sink = arg.sink;
  if (sink === null) throw new Error(`rusty-page: page ${page.id} tagged with a finished GrantRelease`);
  let i = 0;
  while (i < arg.count && arg.pages[i] !== page) i++;
  if (i === arg.count) throw new Error(`rusty-page: page ${page.id} is not in its GrantRelease`);
  arg.pages[i] = null;
  page.priv = null;
  ctx.stats.pageReleases++;
  sink.release(page);
}

/** rusty-page's shinfo destructor: returns the pages not yet returned one by one, then recycles the arg. */
export function rustyPageDestructor(shinfo: SkbSharedInfo): void {
  const arg = shinfo.destructorArg;
  if (!(arg instanceof GrantRelease) || arg.sink === null) {
    throw new Error('rustyPageDestructor: shinfo has no live GrantRelease (destructor ran twice?)');
  }
  shinfo.destructorArg = null;
  const sink = arg.sink;
  const n = arg.count;
  arg.sink = null;
  arg.count = 0;
  for (let i = 0; i < n; i++) {
    const page = arg.pages[i];
    if (page === null || page === undefined) continue;
    arg.pages[i] = null;
    page.priv = null;
    sink.release(page);
  }
  shinfo.ctx.destructorArgPool.push(arg);
}

/**
 * Rusty's chain refined per page, going beyond the seeds. The chain keeps shinfos alive exactly as seed 001, but
 * (1) a shinfo kept only by its children's orig references has frags nobody can read: they are put at once
 * (dataref equals origRefs payload references), and (2) each attached page points at its GrantRelease (page.priv)
 * and goes back as soon as its count falls back to the mapping's own reference (the put_page hook; Evgeniy
 * Polyakov's "destructor with two parameters: skb and page" in seed 002). Pages still held when the chain dies go
 * back with the destructor as in rusty. Safety rests on the frag page references every live shinfo holds.
 */
export const rustyPage: DesignInfo = {
  name: 'rusty-page',
  source: 'seed 001 (R. Russell) refined per page, beyond the seeds; E. Polyakov\'s per-page destructor call (seed 002, netdev 2008-12-20)',
  sound: true,
  unsoundCases: [],
  bookkeeping: {
    perSkb: RUSTY_PER_SKB + ATOMIC_BYTES,
    perPage: POINTER_BYTES + POINTER_BYTES,
    perPacket: GRANT_RELEASE_BYTES,
    note: 'rusty\'s shinfo fields plus origRefs; per page the GrantRelease entry and page.priv; GrantRelease {sink, count}',
  },
  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
    const shinfo = skb.shinfo;
    if (shinfo.destructor !== null) throw new Error('attach: shinfo already has a destructor');
    if (skb.users === 0) throw new Error('attach: skb is freed');
    const arg = takeGrantRelease(skb.ctx, pages, sink);
    shinfo.destructorArg = arg;
    shinfo.destructor = rustyPageDestructor;
    for (let i = 0; i < pages.length; i++) {
      const page = pages[i]!;
      if (page.priv !== null) throw new Error(`rusty-page attach: page ${page.id} already belongs to a GrantRelease`);
      page.priv = arg;
    }
    for (let i = 0; i < pages.length; i++) if (pages[i]!.count === 1) releasePageNow(skb.ctx, arg, pages[i]!);
  },
  refDataParent(parent: SkBuff, child: SkbSharedInfo, _op: RefDataOp): void {
    if (refDataParentRusty(parent, child)) parent.shinfo.origRefs++;
  },
  mayMoveFrags: mayMoveFragsRusty,
  pagePut(ctx: SkbContext, page: Page): void {
    const arg = page.priv as GrantRelease | null;
    if (arg !== null && page.count === 1) releasePageNow(ctx, arg, page);
  },
  shinfoDeref(s: SkbSharedInfo, parentRef: boolean): void {
    if (parentRef) s.origRefs--;
    // Only children's payload references left: no skb reads this shinfo's frags any more.
    if (s.origRefs > 0 && s.dataref === s.origRefs * PARENT_REF && (s.nrFrags > 0 || s.fragList !== null)) {
      s.ctx.stats.parentDataDrops++;
      shinfoDropData(s.ctx, s);
    }
  },
};

export { copy, netPriv, netPrivHash, pageDestructor, token, tokenAlloc, ubuf, zccd };

/** Every design, in the order the issue lists them. */
export const DESIGNS: readonly DesignInfo[] = [rusty, naive, zccd, netPriv, netPrivHash, pageDestructor, token, tokenAlloc, ubuf, copy, rustyPage];

/** The names of all designs (what `--design` accepts). */
export const DESIGN_NAMES: readonly string[] = DESIGNS.map((d) => d.name);

/** The design called `name`, or undefined. */
export function designByName(name: string): DesignInfo | undefined {
  return DESIGNS.find((d) => d.name === name);
}
