// copy: netback grant-copies everything (as QEMU's and FreeBSD's netbacks and MirageOS do: reference/peers.md
// §1-3; Linux netback before 2014 for the linear part). Modelled at attach: every frag on an attached foreign page
// (in the skb or on its frag_list) is copied into a local page at the same offset, the foreign reference is put,
// and every grant goes back at once (success = false: nothing was sent zero-copy). Nothing hangs on the skb.
import { allocPage, putPage, type Page } from './page.js';
import type { DesignInfo, GrantSink, RefDataOp } from './release.js';
import { shinfoTree } from './release-util.js';
import type { SkBuff, SkbSharedInfo } from './skbuff.js';

/** Grant copy: no zero-copy at all, every grant back at attach. */
export const copy: DesignInfo = {
  name: 'copy',
  source: 'grant copy (GNTTABOP_copy) of every slot: QEMU xen_nic, FreeBSD xnb, mirage-net-xen; reference/peers.md',
  sound: true,
  unsoundCases: [],
  bookkeeping: { perPage: 0, perSkb: 0, perPacket: 0, note: 'nothing: the data is copied instead' },
  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
    if (skb.users === 0) throw new Error('attach: skb is freed');
    const ctx = skb.ctx;
    for (const s of shinfoTree(skb, [])) {
      for (let i = 0; i < s.nrFrags; i++) {
        const f = s.frags[i]!;
        const src = f.page;
        if (!pages.includes(src)) continue;
        const local = allocPage(ctx);
        local.bytes.set(src.bytes.subarray(f.offset, f.offset + f.size), f.offset);
        ctx.stats.bytesCopied += f.size;
        f.page = local;
        putPage(ctx, src);
      }
    }
    for (let i = 0; i < pages.length; i++) {
      const page = pages[i]!;
      if (page.count !== 1) throw new Error(`copy attach: page ${page.id} still has ${page.count - 1} stack references after the copy`);
      sink.release(page, false);
    }
  },
  refDataParent(_parent: SkBuff, _child: SkbSharedInfo, _op: RefDataOp): void {
    // Nothing is shared with the guest any more.
  },
  mayMoveFrags(_from: SkBuff, _to: SkBuff): boolean {
    return true;
  },
};
