// When grants go back: the release designs that decide when a foreign page mapped from a guest grant is
// truly free. skbuff operations only call the three hooks below, so later designs (zccd, net_priv page
// callbacks, transaction tokens, ubuf_info, grant copy) plug in without touching them.

import type { Page } from './page.js';
import type { SkbContext, SkBuff, SkbSharedInfo } from './skbuff.js';
import { SKB_DATAREF_SHIFT } from './skbuff.js';

/** Where a truly free foreign page's grant goes (netback's dealloc queue; in tests a fake guest). */
export interface GrantSink {
  release(page: Page): void;
}

/** The operations that make a new shinfo refer to another skb's page data. */
export type RefDataOp = 'pskb_copy' | 'expand_head' | 'split' | 'segment';

/** A policy for returning grants: attach at injection, parent references, and whether frags may move. */
export interface ReleaseDesign {
  readonly name: string;
  /** netback built `skb` from these foreign pages: arrange for sink.release(page) of each exactly when truly free. */
  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void;
  /** A new shinfo `child` now refers to page data of `parent` (pskb_copy, pskb_expand_head, skb_split, skb_segment). */
  refDataParent(parent: SkBuff, child: SkbSharedInfo, op: RefDataOp): void;
  /** May page references move from `from` into another skb's shinfo (skb_try_coalesce, skb_shift)? */
  mayMoveFrags(from: SkBuff, to: SkBuff): boolean;
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

/** Shared by both designs: one destructor per injected skb, on its shinfo (seed 001's shinfo->destructor). */
function attachDestructor(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
  const shinfo = skb.shinfo;
  if (shinfo.destructor !== null) throw new Error('attach: shinfo already has a destructor');
  if (skb.users === 0) throw new Error('attach: skb is freed');
  shinfo.destructorArg = takeGrantRelease(skb.ctx, pages, sink);
  shinfo.destructor = grantDestructor;
}

/** skb_ref_data_parent (seed 001): hold a payload reference on the parent's shinfo if it (or its ancestry) has a destructor. */
function refDataParentRusty(parent: SkBuff, child: SkbSharedInfo): void {
  const p = parent.shinfo;
  if (p.destructor === null && p.orig === null) return;
  // pskb_expand_head's memcpy may have copied p.orig into child: that copy holds no reference, so replacing it is right.
  if (child.orig !== null && child.orig !== p.orig) {
    throw new Error('skb_ref_data_parent: child shinfo already holds a parent reference');
  }
  child.orig = p;
  p.dataref += (1 << SKB_DATAREF_SHIFT) + 1;
  parent.cloned = true;
  parent.ctx.stats.parentRefs++;
}

/** Rusty Russell's design (seed 001): shinfo destructor + 'orig' parent references; refuses to move frags of such skbs. */
export const rusty: ReleaseDesign = {
  name: 'rusty',
  attach: attachDestructor,
  refDataParent(parent: SkBuff, child: SkbSharedInfo, _op: RefDataOp): void {
    refDataParentRusty(parent, child);
  },
  // As mainline refuses zerocopy skbs (skb_zcopy(to) || skb_zcopy(from)): frags of destructor/orig shinfos stay put.
  mayMoveFrags(from: SkBuff, to: SkBuff): boolean {
    const f = from.shinfo;
    const t = to.shinfo;
    return f.destructor === null && f.orig === null && t.destructor === null && t.orig === null;
  },
};

/** The negative control: seed 001's shinfo destructor without skb_ref_data_parent, and frags move freely. */
export const naive: ReleaseDesign = {
  name: 'naive',
  attach: attachDestructor,
  refDataParent(_parent: SkBuff, _child: SkbSharedInfo, _op: RefDataOp): void {
    // deliberately nothing: a derived shinfo does not keep the destructor's shinfo alive
  },
  mayMoveFrags(_from: SkBuff, _to: SkBuff): boolean {
    return true;
  },
};

const designs: readonly ReleaseDesign[] = [rusty, naive];

/** The design called `name`, or undefined. */
export function designByName(name: string): ReleaseDesign | undefined {
  return designs.find((d) => d.name === name);
}
