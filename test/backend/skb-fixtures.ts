// Test helpers for the sk_buff model: a fake guest sink, netback-style skb builders, a content reader and a
// tiny reachability walk (the independent oracle lives in backend/oracle.ts; this is only for our own tests).

import { PAGE_SIZE, allocPage, bindForeignPage, getPage, newPage, type Page } from '../../backend/page.js';
import type { GrantSink, ReleaseDesign } from '../../backend/release.js';
import { SkbContext, allocSkb, skbAddFrag, skbCopyBits, skbPut, skbReserve, type SkBuff } from '../../backend/skbuff.js';

/** Records every release, in order; `returned` counts per page id. */
export class FakeGuest implements GrantSink {
  readonly log: Page[] = [];
  readonly returned = new Map<number, number>();
  /** Optional hook run at each release (e.g. to check reachability at that instant). */
  onRelease: ((page: Page) => void) | null = null;

  release(page: Page): void {
    this.log.push(page);
    this.returned.set(page.id, (this.returned.get(page.id) ?? 0) + 1);
    this.onRelease?.(page);
  }

  ids(): number[] {
    return this.log.map((p) => p.id);
  }
}

let grefSerial = 1;

/** A foreign page bound to a fresh grant, its bytes a deterministic pattern seeded by `seed`. */
export function foreignPage(ctx: SkbContext, seed: number): Page {
  const page = newPage(ctx);
  const bytes = new Uint8Array(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i++) bytes[i] = (seed * 131 + i * 7) & 0xff;
  bindForeignPage(page, bytes, { domid: 1, gref: grefSerial++ });
  return page;
}

/** A local page filled with a pattern. */
export function localPage(ctx: SkbContext, seed: number): Page {
  const page = allocPage(ctx);
  for (let i = 0; i < PAGE_SIZE; i++) page.bytes[i] = (seed * 31 + i * 13 + 5) & 0xff;
  return page;
}

export interface FragSpec {
  readonly offset: number;
  readonly size: number;
  /** A local page instead of a foreign one. */
  readonly local?: boolean;
}

export interface Built {
  readonly skb: SkBuff;
  /** The foreign pages attached to the destructor. */
  readonly pages: Page[];
  /** The bytes the skb carries from data onwards. */
  readonly model: Uint8Array;
}

/**
 * Netback-style: `header` bytes copied into the linear area (after `headroom`), then one frag per spec (foreign
 * pages get an extra frag ref, the mapping keeps its own), and the foreign ones attached to the design.
 */
export function buildSkb(
  ctx: SkbContext,
  sink: GrantSink | null,
  opts: { header: number; frags: readonly FragSpec[]; headroom?: number; tailroom?: number; fclone?: boolean; seed?: number },
): Built {
  const headroom = opts.headroom ?? 32;
  const seed = opts.seed ?? 1;
  const skb = allocSkb(ctx, headroom + opts.header + (opts.tailroom ?? 0), opts.fclone ?? false);
  skbReserve(skb, headroom);
  const at = skbPut(skb, opts.header);
  const parts: number[] = [];
  for (let i = 0; i < opts.header; i++) {
    const v = (seed * 17 + i * 3 + 1) & 0xff;
    skb.head[at + i] = v;
    parts.push(v);
  }
  const pages: Page[] = [];
  opts.frags.forEach((f, i) => {
    let page: Page;
    if (f.local === true) {
      page = localPage(ctx, seed * 100 + i);
    } else {
      page = foreignPage(ctx, seed * 100 + i);
      getPage(ctx, page);
      pages.push(page);
    }
    skbAddFrag(skb, page, f.offset, f.size);
    for (let j = 0; j < f.size; j++) parts.push(page.bytes[f.offset + j]!);
  });
  if (sink !== null && pages.length > 0) ctx.design.attach(skb, pages, sink);
  return { skb, pages, model: Uint8Array.from(parts) };
}

/** A fresh context for a design, with poisoning on so stale reads show. */
export function newCtx(design: ReleaseDesign): SkbContext {
  return new SkbContext({ design, poisonFreed: true });
}

/** The bytes an skb carries, read with skb_copy_bits. */
export function contentOf(skb: SkBuff): Uint8Array {
  const out = new Uint8Array(skb.len);
  const rc = skbCopyBits(skb, 0, out, 0, skb.len);
  if (rc !== 0) throw new Error(`skb_copy_bits failed: ${rc}`);
  return out;
}

/** Every page reachable from the roots through frags and frag_lists. */
export function reachablePages(roots: Iterable<SkBuff>): Set<Page> {
  const seen = new Set<Page>();
  const walk = (skb: SkBuff): void => {
    const s = skb.shinfo;
    for (let i = 0; i < s.nrFrags; i++) seen.add(s.frags[i]!.page);
    for (let c = s.fragList; c !== null; c = c.next) walk(c);
  };
  for (const r of roots) walk(r);
  return seen;
}

/** Concatenates byte arrays. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
