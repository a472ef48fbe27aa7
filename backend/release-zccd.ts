// zccd: seed 000's zero-copy callback descriptors (yzy, "tcp-zero-copy patch for kernel 2.6.12-6", LKML 2006-04),
// modelled as the patch is written. Each netback packet owns one zccd_t (the patch's "embed as first member of
// custom struct"); every shinfo holding its pages carries it in one of two slots (zccd, zccd2) with a reference;
// skb_release_data puts both slots and zccd_put to zero returns the packet's grants.
// The patch covers: __alloc_skb (slots NULL), skb_release_data (put), pskb_copy (get and copy both slots),
// pskb_expand_head (stash, get, release the old data, set), __skb_linearize (copied data => no descriptor) and
// do_tcp_sendpages (a send whose descriptor would be a third forces a new segment).
// It does not cover skb_split or skb_segment: the new shinfo gets frags but no descriptor, and this model does
// nothing there either, so the oracle sees the consequence (an early return when the original dies first).
// Departures: skb_try_coalesce and skb_shift postdate the patch; frags joining another skb there follow
// do_tcp_sendpages' rule (carry the descriptor into a free slot, refuse when it would be a third).
// skb_orphan_frags (which the patch predates) is treated like its __skb_linearize hunk: the copy drops the slots.
import type { Page } from './page.js';
import type { DesignInfo, GrantSink, RefDataOp } from './release.js';
import { ATOMIC_BYTES, POINTER_BYTES, PageList, attachTargets } from './release-util.js';
import type { SkbContext, SkBuff, SkbSharedInfo } from './skbuff.js';

/** zccd_t plus the custom struct it is embedded in: the owner's page list and sink. */
export class Zccd {
  /** atomic_t zccd_count. */
  count = 0;
  /** The owner: the netback packet's grants. */
  readonly owner = new PageList();
}

/** Per-stack state: the pool standing in for netback's preallocated per-packet structs. */
class ZccdState {
  readonly pool: Zccd[] = [];
  readonly tree: SkbSharedInfo[] = [];
}

function state(ctx: SkbContext): ZccdState {
  let st = ctx.designState as ZccdState | null;
  if (st === null) {
    st = new ZccdState();
    ctx.designState = st;
  }
  return st;
}

/** zccd_get (seed 000). */
function zccdGet(d: Zccd): void {
  if (d.count <= 0) throw new Error('zccd_get on a released descriptor');
  d.count++;
}

/** zccd_put (seed 000): at zero the destructor runs: the owner's grants go to the sink and the struct back to the pool. */
function zccdPut(ctx: SkbContext, d: Zccd): void {
  if (d.count <= 0) throw new Error('zccd_put on a released descriptor');
  if (--d.count !== 0) return;
  d.owner.releaseAll(true);
  state(ctx).pool.push(d);
}

/** do_tcp_sendpages' slot rule: reference `d` from `s` (zccd_get) unless it already does; false when both slots hold others. */
function zccdPlace(s: SkbSharedInfo, d: Zccd): boolean {
  if (s.zccd === d || s.zccd2 === d) return true;
  if (s.zccd === null) s.zccd = d;
  else if (s.zccd2 === null) s.zccd2 = d;
  else return false;
  zccdGet(d);
  return true;
}

/** The slots of `from` that `to` lacks must fit in `to`'s free slots (else tcp_sendpage_zccd starts a new segment). */
function fits(from: SkbSharedInfo, to: SkbSharedInfo): boolean {
  let need = 0;
  if (from.zccd !== null && from.zccd !== to.zccd && from.zccd !== to.zccd2) need++;
  if (from.zccd2 !== null && from.zccd2 !== to.zccd && from.zccd2 !== to.zccd2) need++;
  const free = (to.zccd === null ? 1 : 0) + (to.zccd2 === null ? 1 : 0);
  return need <= free;
}

/** skb_release_data's hunk: put both descriptors and clear the slots. */
function dropSlots(s: SkbSharedInfo): void {
  const a = s.zccd as Zccd | null;
  const b = s.zccd2 as Zccd | null;
  s.zccd = null;
  s.zccd2 = null;
  if (a !== null) zccdPut(s.ctx, a);
  if (b !== null) zccdPut(s.ctx, b);
}

/** seed 000: two refcounted descriptor slots per shinfo, as the patch is written (unsound for split and segment). */
export const zccd: DesignInfo = {
  name: 'zccd',
  source: 'seed 000: yzy, tcp-zero-copy patch for 2.6.12-6 (zccd_t, skb_shared_info zccd/zccd2, tcp_sendpage_zccd), LKML 2006-04',
  sound: false,
  unsoundCases: ['split', 'GSO segments'],
  bookkeeping: {
    perSkb: 2 * POINTER_BYTES,
    perPage: POINTER_BYTES,
    perPacket: ATOMIC_BYTES + POINTER_BYTES + POINTER_BYTES + ATOMIC_BYTES,
    note: 'shinfo zccd + zccd2; zccd_t {zccd_count, zccd_destructor}; the owner\'s sink, page count and one page pointer per grant',
  },

  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
    if (skb.users === 0) throw new Error('attach: skb is freed');
    const st = state(skb.ctx);
    let d = st.pool.pop();
    if (d === undefined) {
      d = new Zccd();
      skb.ctx.stats.designAllocs++;
    }
    // zccd_init: the sender's own reference while it sends.
    d.count = 1;
    d.owner.fill(pages, sink);
    const tree = st.tree;
    tree.length = 0;
    attachTargets(skb, pages, tree);
    for (let i = 0; i < tree.length; i++) {
      if (!zccdPlace(tree[i]!, d)) throw new Error('zccd attach: shinfo already holds two other descriptors');
    }
    tree.length = 0;
    zccdPut(skb.ctx, d);
  },

  refDataParent(parent: SkBuff, child: SkbSharedInfo, op: RefDataOp): void {
    // The patch's pskb_copy and pskb_expand_head hunks; skb_split and skb_segment have none.
    if (op !== 'pskb_copy' && op !== 'expand_head') return;
    const p = parent.shinfo;
    if (p.zccd !== null) zccdPlace(child, p.zccd as Zccd);
    if (p.zccd2 !== null) zccdPlace(child, p.zccd2 as Zccd);
  },

  mayMoveFrags(from: SkBuff, to: SkBuff): boolean {
    return fits(from.shinfo, to.shinfo);
  },

  fragsMoved(from: SkBuff, to: SkBuff): void {
    const f = from.shinfo;
    const t = to.shinfo;
    if (f.zccd !== null && !zccdPlace(t, f.zccd as Zccd)) throw new Error('zccd: third descriptor after mayMoveFrags');
    if (f.zccd2 !== null && !zccdPlace(t, f.zccd2 as Zccd)) throw new Error('zccd: third descriptor after mayMoveFrags');
  },

  shinfoRelease: dropSlots,
  orphaned: dropSlots,
};
