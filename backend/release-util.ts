// Small helpers the release designs (release*.ts) share: byte sizes for the bookkeeping figures, the shinfos of
// an skb tree, and the page list a completion object owns.
import type { Page } from './page.js';
import type { GrantSink } from './release.js';
import type { SkBuff, SkbSharedInfo } from './skbuff.js';

/** x86-64 sizes used to turn what a design stores into bytes: a pointer or unsigned long, an atomic_t / refcount_t / int. */
export const POINTER_BYTES = 8;
export const ATOMIC_BYTES = 4;

/** Fills `out` with skb's shinfo and the shinfo of every skb on its frag_list chain, recursively; returns out. */
export function shinfoTree(skb: SkBuff, out: SkbSharedInfo[]): SkbSharedInfo[] {
  out.push(skb.shinfo);
  for (let c = skb.shinfo.fragList; c !== null; c = c.next) shinfoTree(c, out);
  return out;
}

/**
 * The shinfos a packet's completion state goes on at attach: skb's own, plus each frag_list skb's that holds a
 * frag on one of `pages` (netback's frag_list overflow; a frag_list skb attached on its own keeps its state).
 */
export function attachTargets(skb: SkBuff, pages: readonly Page[], out: SkbSharedInfo[]): SkbSharedInfo[] {
  out.push(skb.shinfo);
  for (let c = skb.shinfo.fragList; c !== null; c = c.next) collectHolding(c, pages, out);
  return out;
}

function collectHolding(skb: SkBuff, pages: readonly Page[], out: SkbSharedInfo[]): void {
  const s = skb.shinfo;
  for (let i = 0; i < s.nrFrags; i++) {
    if (pages.includes(s.frags[i]!.page)) {
      out.push(s);
      break;
    }
  }
  for (let c = s.fragList; c !== null; c = c.next) collectHolding(c, pages, out);
}

/**
 * What a completion object (zccd owner, net_priv command, transaction token) returns when it completes: the
 * packet's pages and the sink. Slots are nulled after use, never shrunk, so pooled objects pin nothing.
 */
export class PageList {
  sink: GrantSink | null = null;
  readonly pages: (Page | null)[] = [];
  n = 0;

  /** Takes `pages` and `sink` (the list must be empty). */
  fill(pages: readonly Page[], sink: GrantSink): void {
    if (this.sink !== null) throw new Error('PageList.fill: list is still in use');
    this.sink = sink;
    for (let i = 0; i < pages.length; i++) this.pages[i] = pages[i]!;
    this.n = pages.length;
  }

  /** Hands every page to the sink once (with the zerocopy success flag) and empties the list. */
  releaseAll(zerocopySuccess: boolean): void {
    const sink = this.sink;
    if (sink === null) throw new Error('PageList.releaseAll: released twice');
    const n = this.n;
    this.sink = null;
    this.n = 0;
    for (let i = 0; i < n; i++) {
      const page = this.pages[i]!;
      this.pages[i] = null;
      sink.release(page, zerocopySuccess);
    }
  }
}
