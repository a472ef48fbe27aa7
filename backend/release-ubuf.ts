// ubuf: mainline's answer (reference/kernel-xen.md §1-2): netback keeps one ubuf_info_msgzc per pending slot
// (callback_struct) and chains a packet's slots through ->ctx; the first is the skb's destructor_arg with
// SKBFL_ZEROCOPY_ENABLE. skb_release_data completes it with success (skb_zcopy_clear(skb, true)); the callback
// (xenvif_zerocopy_callback) walks the chain and queues every slot for dealloc.
// Every path that would share zerocopy frags copies them first: skb_clone (taps, bridge floods), __pskb_copy,
// pskb_expand_head of a cloned skb, skb_segment, local delivery (skb_orphan_frags_rx); skb_copy_ubufs completes
// at once with success = false. __pskb_pull_tail completes (false) once the skb is linear; ___pskb_trim and
// tcp_trim_head drop frags without completing; skb_try_coalesce and skb_shift refuse zerocopy skbs; skb_split
// shares the uarg with a reference (skb_zerocopy_clone), as does pskb_expand_head of an uncloned skb.
// Departures: completion honours refcnt as msg_zerocopy_complete does (xenvif_zerocopy_callback ignores it and
// relies on the uarg never being shared; our skb_split shares it); skb_orphan_frags copies only foreign frags
// (skb_copy_ubufs copies every frag; local ones are already ours); a packet whose pages sit in frag_list skbs
// puts the uarg on those shinfos too (netback copies such packets instead, xenvif_handle_frag_list).
import type { Page } from './page.js';
import type { DesignInfo, GrantSink, OrphanPoint, RefDataOp } from './release.js';
import { ATOMIC_BYTES, POINTER_BYTES, attachTargets } from './release-util.js';
import { skbOrphanFrags, type SkbContext, type SkBuff, type SkbSharedInfo } from './skbuff.js';

/** struct ubuf_info_msgzc as netback's callback_struct: one per slot, chained through ctx. */
export class UbufInfo {
  /** refcount_t refcnt (meaningful on the chain's first ubuf, the one shinfos point at). */
  refcnt = 0;
  /** The zerocopy flag msg_zerocopy_complete ANDs every completion's success into. */
  zerocopy = true;
  /** The next slot of the same packet (callback_struct.ctx). */
  ctx: UbufInfo | null = null;
  /** The slot's page (callback_struct.desc is the pending index; the page stands for it). */
  desc: Page | null = null;
  /** Where the dealloc goes (netback's queue). */
  sink: GrantSink | null = null;
}

/** Per-stack state: the pool standing in for netback's preallocated per-slot callback_structs. */
class UbufState {
  readonly pool: UbufInfo[] = [];
  readonly tree: SkbSharedInfo[] = [];
}

function state(ctx: SkbContext): UbufState {
  let st = ctx.designState as UbufState | null;
  if (st === null) {
    st = new UbufState();
    ctx.designState = st;
  }
  return st;
}

/** ops->complete: AND in the success, drop one reference; at zero walk the ctx chain (xenvif_zerocopy_callback). */
function complete(ctx: SkbContext, uarg: UbufInfo, success: boolean): void {
  if (uarg.refcnt <= 0) throw new Error('ubuf_info: refcnt underflow');
  uarg.zerocopy &&= success;
  if (--uarg.refcnt !== 0) return;
  const ok = uarg.zerocopy;
  if (ok) ctx.stats.zerocopySuccess++;
  else ctx.stats.zerocopyFail++;
  const pool = state(ctx).pool;
  let u: UbufInfo | null = uarg;
  while (u !== null) {
    const next: UbufInfo | null = u.ctx;
    const page = u.desc!;
    const sink = u.sink!;
    u.ctx = null;
    u.desc = null;
    u.sink = null;
    u.zerocopy = true;
    pool.push(u);
    sink.release(page, ok);
    u = next;
  }
}

/** skb_zcopy_clear(skb, success) on one shinfo: complete and clear its zerocopy state. */
function clear(s: SkbSharedInfo, success: boolean): void {
  const uarg = s.uarg as UbufInfo | null;
  if (uarg === null) return;
  s.uarg = null;
  complete(s.ctx, uarg, success);
}

/** Mainline zerocopy completion: one refcounted ubuf_info per shinfo, chaining the packet's per-slot descriptors. */
export const ubuf: DesignInfo = {
  name: 'ubuf',
  source:
    'mainline: ubuf_info / SKBFL_ZEROCOPY_ENABLE (a6686f2f382b, 2011) as xen-netback uses it since 2014 ' +
    '(xenvif_zerocopy_callback); reference/kernel-xen.md §1',
  sound: true,
  unsoundCases: [],
  bookkeeping: {
    perSkb: POINTER_BYTES,
    // ubuf_info {ops, refcnt, flags} + {desc, ctx} + mmpin {user, num_pg}.
    perPage: POINTER_BYTES + 2 * ATOMIC_BYTES + 2 * POINTER_BYTES + 2 * POINTER_BYTES,
    perPacket: 0,
    note: 'shinfo destructor_arg; one ubuf_info_msgzc (callback_struct) per slot',
  },
  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
    if (skb.users === 0) throw new Error('attach: skb is freed');
    if (pages.length === 0) return;
    const ctx = skb.ctx;
    const st = state(ctx);
    // xenvif_fill_frags: chain the slots' callback_structs.
    let first: UbufInfo | null = null;
    let last: UbufInfo | null = null;
    for (let i = 0; i < pages.length; i++) {
      let u = st.pool.pop();
      if (u === undefined) {
        u = new UbufInfo();
        ctx.stats.designAllocs++;
      }
      u.desc = pages[i]!;
      u.sink = sink;
      u.ctx = null;
      u.zerocopy = true;
      u.refcnt = 0;
      if (last === null) first = u;
      else last.ctx = u;
      last = u;
    }
    // xenvif_skb_zerocopy_prepare: skb_shinfo(skb)->destructor_arg = uarg, SKBFL_ZEROCOPY_ENABLE.
    const tree = st.tree;
    tree.length = 0;
    attachTargets(skb, pages, tree);
    for (let i = 0; i < tree.length; i++) {
      const s = tree[i]!;
      if (s.uarg !== null) throw new Error('ubuf attach: shinfo already has a ubuf_info');
      s.uarg = first;
      first!.refcnt++;
    }
    tree.length = 0;
  },
  refDataParent(parent: SkBuff, child: SkbSharedInfo, _op: RefDataOp): void {
    // skb_zerocopy_clone (skb_split; pskb_expand_head takes a reference on the uarg it keeps).
    const uarg = parent.shinfo.uarg as UbufInfo | null;
    if (uarg === null || child.uarg === uarg) return;
    if (child.uarg !== null) throw new Error('ubuf: a shinfo would need a second ubuf_info (skb_copy_ubufs territory)');
    child.uarg = uarg;
    uarg.refcnt++;
  },
  mayMoveFrags(from: SkBuff, to: SkBuff): boolean {
    // skb_try_coalesce / skb_shift: refuse if skb_zcopy(to) || skb_zcopy(from).
    return from.shinfo.uarg === null && to.shinfo.uarg === null;
  },
  orphanPoint(skb: SkBuff, _where: OrphanPoint): void {
    // skb_orphan_frags(_rx): netback's ubufs lack SKBFL_DONT_ORPHAN, so every call site copies.
    skbOrphanFrags(skb);
  },
  orphaned(s: SkbSharedInfo): void {
    // skb_copy_ubufs: skb_zcopy_clear(skb, false).
    clear(s, false);
  },
  pulledLinear(skb: SkBuff): void {
    clear(skb.shinfo, false);
  },
  shinfoRelease(s: SkbSharedInfo): void {
    clear(s, true);
  },
};
