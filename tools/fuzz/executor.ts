// The fuzz executor: plays netback and the guest around one emulated stack, applies an op list to live skb
// handles, and checks after every step (1) the grant-lifetime oracle on each flushed batch of returned grants,
// and (2) the bytes read through every live skb against the harness's own content model (plain byte arrays
// transformed per op, never derived from the mechanism). At the end it frees everything and checks for leaks.
import { GrantOracle } from '../../backend/oracle.js';
import { allocPage, bindForeignPage, getPage, newPage, unbindForeignPage, type Page } from '../../backend/page.js';
import type { GrantSink, ReleaseDesign } from '../../backend/release.js';
import {
  __pskbPullTail,
  __skbPull,
  allocSkb,
  consumeSkb,
  EINVAL,
  kfreeSkb,
  pskbCopy,
  pskbExpandHead,
  pskbMayPull,
  pskbPull,
  pskbTrim,
  SKB_GSO_TCPV4,
  SkbContext,
  skbAddFrag,
  skbClone,
  skbCloned,
  skbCopy,
  skbCopyBits,
  skbFragListAppend,
  skbGet,
  skbHeaderRelease,
  skbHeadlen,
  skbLinearize,
  skbOrphanFrags,
  skbPush,
  skbPut,
  skbReserve,
  skbSegment,
  skbShift,
  skbSplit,
  skbTryCoalesce,
  tcpTrimHead,
  type SkBuff,
} from '../../backend/skbuff.js';
import { Random } from '../../shared/random.js';
import { FakeGuest, FRAME_SIZE, GUEST_DOMID } from './guest.js';
import { formatOp, type OpRecord } from './ops.js';

/** What went wrong first in a run. */
export type FailureKind = 'early-return' | 'double-return' | 'leak' | 'data-mismatch' | 'error';

/** The outcome of executing one op list. */
export interface RunResult {
  readonly steps: number;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly leaks: number;
  /** Bytes read through a live skb differing from the model, or inconsistent lengths / op results. */
  readonly dataMismatches: number;
  /** An op threw (a mechanism BUG() or a harness bug); the run stops there. */
  readonly errors: number;
  readonly violations: number;
  readonly firstKind: FailureKind | null;
  /** The first violations, in order of detection. */
  readonly messages: readonly string[];
  /** With `trace`, one line per op saying what it did. */
  readonly trace: readonly string[];
  /** Sum over steps of grants unreachable but not yet returned (promptness). */
  readonly lateTotal: number;
}

/** How to execute. */
export interface ExecOptions {
  readonly design: ReleaseDesign;
  readonly trace?: boolean;
  readonly maxMessages?: number;
}

/** Live skb handles the harness keeps at most (creating ops free one instead when full). */
export const MAX_HANDLES = 10;
/** Foreign Page objects netback owns (like mmap_pages[] of the pending ring) and guest frames. */
export const FOREIGN_PAGES = 128;
export const GUEST_FRAMES = 160;
/** drivers/net/xen-netback/common.h: XEN_NETBACK_TX_COPY_LEN, the header bytes grant-copied into the linear area. */
export const TX_COPY_LEN = 128;
/** include/linux/skbuff.h: NET_SKB_PAD (headroom netback reserves). */
export const NET_SKB_PAD = 32;
/** include/linux/skbuff.h: MAX_SKB_FRAGS with 4 KiB pages. */
export const MAX_FRAGS = 17;
/** Largest packet: the first TX slot's size field is a u16 (xen/include/public/io/netif.h). */
export const MAX_PACKET = 0xffff;
/** Ethernet + IPv4 + TCP headers without options: what skb_segment copies into each segment. */
export const GSO_HEADER_LEN = 14 + 20 + 20;

interface Handle {
  readonly id: number;
  skb: SkBuff;
  model: Uint8Array;
  tainted: boolean; // a mismatch was reported on it (or its ancestor): not checked again
}

/** Executes `ops` on a fresh stack with `opts.design`; never throws (a throwing op ends the run as an error). */
export function executeOps(ops: readonly OpRecord[], opts: ExecOptions): RunResult {
  return new World(opts).run(ops);
}

class World {
  private readonly ctx: SkbContext;
  private readonly design: ReleaseDesign;
  private readonly guest = new FakeGuest(GUEST_FRAMES);
  private readonly oracle: GrantOracle;
  private readonly handles: Handle[] = [];
  private readonly queue: Page[] = [];
  private readonly sink: GrantSink;
  private readonly freePages: Page[] = [];
  private nForeign = 0;
  // Indexed by Page.id: the guest frame a foreign page is mapped from, -1 when not mapped by us.
  private readonly frameOf: number[] = [];
  private readonly isOurs: boolean[] = [];
  private nextHandle = 0;
  private mapSerial = 0;
  private scratch = new Uint8Array(MAX_PACKET + 1);
  private readonly traceOn: boolean;
  private readonly maxMessages: number;
  private line = '';
  private readonly notes: string[] = [];

  private steps = 0;
  private dataMismatches = 0;
  private errors = 0;
  private firstKind: FailureKind | null = null;
  private readonly messages: string[] = [];
  private oracleSeen = 0;
  private readonly trace: string[] = [];
  private lateTotal = 0;

  constructor(opts: ExecOptions) {
    this.design = opts.design;
    // Freed local pages and heads are poisoned too, so a premature local free also shows up as a mismatch.
    this.ctx = new SkbContext({ design: opts.design, poisonFreed: true });
    this.traceOn = opts.trace ?? false;
    this.maxMessages = opts.maxMessages ?? 8;
    const queue = this.queue;
    // Netback's dealloc queue: a destructor firing only queues; grants go back when the harness flushes.
    this.sink = { release: (page: Page) => void queue.push(page) };
    this.oracle = new GrantOracle(() => this.roots());
  }

  private *roots(): Iterable<SkBuff> {
    for (const h of this.handles) yield h.skb;
  }

  run(ops: readonly OpRecord[]): RunResult {
    let stopped = false;
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      this.steps++;
      this.oracle.step = i + 1;
      this.line = '';
      this.notes.length = 0;
      try {
        this.apply(op);
        this.flush();
        this.checkAll(i + 1);
        this.lateTotal += this.oracle.scanLate();
      } catch (e) {
        this.error(`step ${i + 1} (${formatOp(op)}) threw: ${describeError(e)}`);
        stopped = true;
      }
      if (this.traceOn) this.trace.push(this.notes.length === 0 ? this.line : `${this.line} [after ${this.notes.join(', ')}]`);
      if (stopped) break;
    }
    if (!stopped) {
      this.oracle.step = ops.length + 1;
      try {
        while (this.handles.length > 0) kfreeSkb(this.handles.pop()!.skb);
        this.flush();
        this.oracle.checkQuiescent();
        this.pullOracleMessages();
      } catch (e) {
        this.error(`teardown threw: ${describeError(e)}`);
      }
    }
    const r = this.oracle.report;
    return {
      steps: this.steps,
      earlyReturns: r.earlyReturns,
      doubleReturns: r.doubleReturns,
      leaks: r.leaks,
      dataMismatches: this.dataMismatches,
      errors: this.errors,
      violations: r.earlyReturns + r.doubleReturns + r.leaks + this.dataMismatches + this.errors,
      firstKind: this.firstKind,
      messages: this.messages,
      trace: this.trace,
      lateTotal: this.lateTotal,
    };
  }

  // ---- violations ----

  private error(message: string): void {
    this.errors++;
    this.firstKind ??= 'error';
    if (this.messages.length < this.maxMessages) this.messages.push(message);
  }

  private mismatch(h: Handle, message: string): void {
    this.dataMismatches++;
    this.firstKind ??= 'data-mismatch';
    h.tainted = true;
    if (this.messages.length < this.maxMessages) this.messages.push(`step ${this.oracle.step}: data mismatch: #${h.id} ${message}`);
  }

  private pullOracleMessages(): void {
    if (this.oracle.violationCount === this.oracleSeen) return;
    this.oracleSeen = this.oracle.violationCount;
    const vs = this.oracle.report.violations;
    this.firstKind ??= vs[0]?.kind ?? 'early-return';
    for (const v of vs) {
      if (this.messages.length >= this.maxMessages) break;
      if (!this.messages.includes(v.message)) this.messages.push(v.message);
    }
  }

  // ---- netback side: grants, the dealloc queue ----

  /** Flushes the dealloc queue to the guest: the oracle checks the batch, then the guest poisons and reuses each frame. */
  private flush(): void {
    const q = this.queue;
    if (q.length === 0) return;
    this.oracle.noteReturnedBatch(q);
    for (const page of q) {
      const id = page.id;
      const f = this.frameOf[id] ?? -1;
      if (!this.isOurs[id] || f < 0) continue; // a local page or a second return: the oracle counted it
      this.frameOf[id] = -1;
      this.guest.poison(f);
      this.guest.freeFrame(f);
      // Netback's unmap drops the mapping's ref; a page the stack still holds (after an early return) is retired.
      if (page.count === 1) {
        unbindForeignPage(this.ctx, page);
        this.freePages.push(page);
      } else if (!this.oracle.isReachable(page)) {
        // Returned in time, yet get_page/put_page do not balance: the stack leaked a page reference.
        this.error(`step ${this.oracle.step}: page ${id} came back unreachable but still holds ${page.count - 1} stack page references`);
      }
    }
    q.length = 0;
    this.pullOracleMessages();
  }

  /** Maps a fresh guest frame holding a unique pattern onto a recycled Page object, or returns null when out. */
  private mapGrant(): Page | null {
    let page = this.freePages.shift();
    if (page === undefined) {
      if (this.nForeign >= FOREIGN_PAGES) return null;
      this.nForeign++;
      page = newPage(this.ctx);
      this.isOurs[page.id] = true;
    }
    const f = this.guest.allocFrame();
    if (f < 0) {
      this.freePages.unshift(page);
      return null;
    }
    this.guest.fill(f, ++this.mapSerial);
    bindForeignPage(page, this.guest.view(f), { domid: GUEST_DOMID, gref: this.guest.newGref() });
    this.frameOf[page.id] = f;
    this.oracle.noteMapped(page);
    return page;
  }

  // ---- handles ----

  private pick(a: number): Handle | null {
    const n = this.handles.length;
    return n === 0 ? null : this.handles[a % n]!;
  }

  private pickTwo(a: number, b: number): [Handle, Handle] | null {
    const n = this.handles.length;
    if (n < 2) return null;
    const x = a % n;
    const y = (x + 1 + (b % (n - 1))) % n;
    return [this.handles[x]!, this.handles[y]!];
  }

  private add(skb: SkBuff, model: Uint8Array, tainted: boolean): Handle {
    const h: Handle = { id: this.nextHandle++, skb, model, tainted };
    this.handles.push(h);
    return h;
  }

  private remove(h: Handle): void {
    const i = this.handles.indexOf(h);
    if (i < 0) throw new Error(`harness: handle #${h.id} is not live`);
    this.handles.splice(i, 1);
  }

  private sharers(skb: SkBuff): number {
    let n = 0;
    for (const h of this.handles) if (h.skb === skb) n++;
    return n;
  }

  /** skb_share_check: a handle about to modify an skb that another handle also holds gets its own clone. */
  private unshare(h: Handle): void {
    if (this.sharers(h.skb) < 2) return;
    const n = skbClone(h.skb);
    kfreeSkb(h.skb);
    h.skb = n;
    this.note(`skb_share_check(#${h.id})`);
  }

  /** skb_unclone: a private head and shinfo before modifying frags. Returns false if it failed. */
  private unclone(h: Handle): boolean {
    if (!skbCloned(h.skb)) return true;
    const rc = pskbExpandHead(h.skb, 0, 0);
    this.note(`skb_unclone(#${h.id})`);
    if (rc !== 0) {
      this.mismatch(h, `pskb_expand_head(0, 0) for skb_unclone returned ${rc}`);
      return false;
    }
    return true;
  }

  private hasFragList(skb: SkBuff): boolean {
    return skb.shinfo.fragList !== null;
  }

  private say(s: string): void {
    if (this.traceOn) this.line += s;
  }

  /** A preparatory step (share check, unclone), shown after the op's own description. */
  private note(s: string): void {
    if (this.traceOn) this.notes.push(s);
  }

  private full(a: number): boolean {
    if (this.handles.length < MAX_HANDLES) return false;
    const h = this.handles[a % this.handles.length]!;
    this.say(`(full) free #${h.id}`);
    this.remove(h);
    kfreeSkb(h.skb);
    return true;
  }

  // ---- ops ----

  private apply(op: OpRecord): void {
    const { a, b, c } = op;
    switch (op.op) {
      case 'build':
        if (!this.full(a)) this.build(a, b, c);
        return;
      case 'clone':
      case 'get':
      case 'copy':
      case 'pskb_copy':
        if (!this.full(b)) this.duplicate(op.op, a);
        return;
      case 'expand_head':
        return this.expandHead(a, b, c);
      case 'pull_tail':
        return this.pullTail(a, b);
      case 'may_pull':
        return this.mayPull(a, b);
      case 'pull':
        return this.pull(a, b);
      case 'header_release':
        return this.headerRelease(a);
      case 'linearize':
        return this.linearize(a);
      case 'split':
        return this.split(a, b);
      case 'segment':
        return this.segment(a, b, c);
      case 'trim':
        return this.trim(a, b);
      case 'trim_head':
        return this.trimHead(a, b);
      case 'coalesce':
        return this.coalesce(a, b);
      case 'shift':
        return this.shift(a, b, c);
      case 'orphan':
        return this.orphan(a);
      case 'chain':
        return this.chain(a, b);
      case 'free':
        return this.free(a, b);
    }
  }

  /** Netback's xenvif_tx_build_gops + xenvif_tx_submit, simplified: header copy, mapped frags, frag_list overflow. */
  private build(a: number, b: number, c: number): void {
    const r = new Random(a);
    if ((b & 7) === 0) {
      // A purely linear skb (e.g. a fully copied small packet, or locally generated).
      const len = r.int(1, 2000);
      const skb = allocSkb(this.ctx, NET_SKB_PAD + len, ((b >>> 3) & 1) === 1);
      skbReserve(skb, NET_SKB_PAD);
      const off = skbPut(skb, len);
      fillRandom(skb.head, off, len, r);
      const h = this.add(skb, skb.head.slice(off, off + len), false);
      this.say(`#${h.id} = linear skb, len ${len}`);
      return;
    }
    if ((b & 7) === 1) {
      // A TCP write-queue skb (tcp_sendmsg): no linear data, local page frags only; what skb_shift works on.
      const n = r.int(1, 6);
      const skb = allocSkb(this.ctx, NET_SKB_PAD, ((b >>> 3) & 1) === 1);
      skbReserve(skb, NET_SKB_PAD);
      const pieces: Uint8Array[] = [];
      for (let i = 0; i < n; i++) {
        const page = allocPage(this.ctx);
        const offset = r.chance(0.5) ? 0 : r.int(0, FRAME_SIZE - 1);
        const size = r.int(1, FRAME_SIZE - offset);
        fillRandom(page.bytes, offset, size, r);
        skbAddFrag(skb, page, offset, size);
        pieces.push(page.bytes.slice(offset, offset + size));
      }
      const h = this.add(skb, concat(pieces), false);
      this.say(`#${h.id} = paged local skb, len ${skb.len}: ${n} frags, headlen 0`);
      return;
    }
    // Slot layout: (offset, size) within a frame, netif_tx_request style; the total stays within a u16.
    const cls = c % 20;
    const nslots = cls < 5 ? 1 : cls < 13 ? r.int(1, 4) : cls < 18 ? r.int(2, 9) : r.int(16, 26);
    const maxSize = cls < 5 ? 200 : cls < 13 ? 1500 : 4096;
    const local = r.int(0, 3) === 0 ? r.float() * 0.4 : 0; // some packets mix in local pages
    const fclone = ((b >>> 3) & 1) === 1;

    const skb = allocSkb(this.ctx, NET_SKB_PAD + TX_COPY_LEN, fclone);
    skbReserve(skb, NET_SKB_PAD);
    const pieces: Uint8Array[] = [];
    let total = 0;
    const mainPages: Page[] = [];
    const listPages: Page[] = [];
    let list: SkBuff | null = null;
    let frags = 0;
    let nForeign = 0;
    let nLocal = 0;
    for (let s = 0; s < nslots; s++) {
      const offset = r.chance(0.5) ? 0 : r.int(0, FRAME_SIZE - 1);
      let size = r.int(1, Math.min(maxSize, FRAME_SIZE - offset));
      if (s === 0 && size < 14) size = Math.min(14, FRAME_SIZE - offset); // first slot >= ETH_HLEN
      if (total + size > MAX_PACKET) break;
      let fragOff = offset;
      let fragSize = size;
      const useLocal = s > 0 && r.chance(local);
      let page: Page | null = null;
      if (useLocal) {
        page = allocPage(this.ctx);
        fillRandom(page.bytes, offset, size, r);
      } else {
        page = this.mapGrant();
        if (page === null) break; // netback out of pending slots: the packet is shorter
      }
      if (s === 0) {
        // Grant-copy the header into the linear area; the rest of the first slot stays mapped.
        const hl = Math.min(TX_COPY_LEN, size);
        const at = skbPut(skb, hl);
        skb.head.set(page.bytes.subarray(offset, offset + hl), at);
        fragOff += hl;
        fragSize -= hl;
      }
      pieces.push(page.bytes.slice(offset, offset + size));
      total += size;
      if (fragSize === 0) {
        // Fully copied slot: answered at once (the grant goes straight back, nothing of it is mapped).
        this.queue.push(page);
        continue;
      }
      if (!useLocal) getPage(this.ctx, page); // the frag's ref; the mapping keeps its own
      if (frags < MAX_FRAGS) {
        skbAddFrag(skb, page, fragOff, fragSize);
        if (!useLocal) mainPages.push(page);
      } else {
        list ??= allocSkb(this.ctx, 0);
        skbAddFrag(list, page, fragOff, fragSize);
        if (!useLocal) listPages.push(page);
      }
      frags++;
      if (useLocal) nLocal++;
      else nForeign++;
    }
    if (list !== null) {
      this.design.attach(list, listPages, this.sink);
      skb.shinfo.fragList = list;
      skb.len += list.len;
      skb.dataLen += list.len;
    }
    this.design.attach(skb, mainPages, this.sink);
    const h = this.add(skb, concat(pieces), false);
    this.say(
      `#${h.id} = netback skb${fclone ? ' (fclone)' : ''}, len ${skb.len}: ${frags} frags (${nForeign} foreign, ${nLocal} local)` +
        (list === null ? '' : `, ${listPages.length} foreign in a frag_list skb`),
    );
  }

  private duplicate(kind: 'clone' | 'get' | 'copy' | 'pskb_copy', a: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    let n: SkBuff;
    switch (kind) {
      case 'clone':
        n = skbClone(h.skb);
        break;
      case 'get':
        n = skbGet(h.skb);
        if (n !== h.skb) throw new Error('skb_get returned another skb');
        break;
      case 'copy':
        n = skbCopy(h.skb);
        break;
      case 'pskb_copy':
        n = pskbCopy(h.skb);
        break;
    }
    const d = this.add(n, h.model, h.tainted);
    this.say(`#${d.id} = ${kind === 'get' ? 'skb_get' : kind === 'copy' ? 'skb_copy' : kind === 'clone' ? 'skb_clone' : 'pskb_copy'}(#${h.id})`);
    if (kind === 'copy' && n.dataLen !== 0) this.mismatch(d, `skb_copy left dataLen ${n.dataLen}, expected a linear copy`);
  }

  private expandHead(a: number, b: number, c: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    this.unshare(h);
    const nhead = b % 65;
    const ntail = c % 65;
    const rc = pskbExpandHead(h.skb, nhead, ntail);
    this.say(`pskb_expand_head(#${h.id}, ${nhead}, ${ntail}) = ${rc}`);
    if (rc !== 0) this.mismatch(h, `pskb_expand_head returned ${rc}`);
  }

  private pullTail(a: number, b: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    if (h.skb.dataLen === 0) return this.say(`__pskb_pull_tail(#${h.id}): linear, skipped`);
    this.unshare(h);
    const delta = 1 + (b % h.skb.dataLen);
    const before = skbHeadlen(h.skb);
    const okPull = __pskbPullTail(h.skb, delta);
    this.say(`__pskb_pull_tail(#${h.id}, ${delta}) = ${okPull}`);
    if (!okPull) this.mismatch(h, `__pskb_pull_tail(${delta}) failed with dataLen ${h.skb.dataLen}`);
    else if (skbHeadlen(h.skb) !== before + delta) this.mismatch(h, `__pskb_pull_tail(${delta}) left headlen ${skbHeadlen(h.skb)}, expected ${before + delta}`);
  }

  private mayPull(a: number, b: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    this.unshare(h);
    const len = b % (h.skb.len + 9);
    const got = pskbMayPull(h.skb, len);
    this.say(`pskb_may_pull(#${h.id}, ${len}) = ${got}`);
    const want = len <= h.model.length;
    if (got !== want) this.mismatch(h, `pskb_may_pull(${len}) = ${got} with len ${h.model.length}`);
    else if (got && skbHeadlen(h.skb) < len) this.mismatch(h, `pskb_may_pull(${len}) left headlen ${skbHeadlen(h.skb)}`);
  }

  private pull(a: number, b: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    this.unshare(h);
    const len = b % (h.skb.len + 1);
    const got = pskbPull(h.skb, len);
    this.say(`pskb_pull(#${h.id}, ${len}) = ${got}`);
    if (!got) return this.mismatch(h, `pskb_pull(${len}) failed with len ${h.model.length}`);
    h.model = h.model.slice(len);
  }

  /** skb_header_release: from now on this skb holds a payload-only reference (dataref's high half). */
  private headerRelease(a: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    if (h.skb.nohdr) return this.say(`skb_header_release(#${h.id}): already nohdr, skipped`);
    skbHeaderRelease(h.skb);
    this.say(`skb_header_release(#${h.id})`);
  }

  private linearize(a: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    this.unshare(h);
    const rc = skbLinearize(h.skb);
    this.say(`skb_linearize(#${h.id}) = ${rc}`);
    if (rc !== 0) this.mismatch(h, `skb_linearize returned ${rc}`);
    // Linux's __pskb_pull_tail leaves zero-length frag_list members behind; linear means no data outside the head.
    else if (h.skb.dataLen !== 0 || h.skb.shinfo.nrFrags !== 0) {
      this.mismatch(h, `skb_linearize left it nonlinear: dataLen ${h.skb.dataLen}, nrFrags ${h.skb.shinfo.nrFrags}`);
    }
  }

  /** tcp_fragment: unclone, then skb_split into a fresh skb sized for the linear remainder. */
  private split(a: number, b: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    if (h.skb.len < 2 || this.hasFragList(h.skb)) return this.say(`skb_split(#${h.id}): len ${h.skb.len}${this.hasFragList(h.skb) ? ' with frag_list' : ''}, skipped`);
    if (this.handles.length >= MAX_HANDLES) return this.say('(full) skipped');
    this.unshare(h);
    if (!this.unclone(h)) return;
    const len = 1 + (b % (h.skb.len - 1));
    const nsize = Math.max(0, skbHeadlen(h.skb) - len);
    const skb1 = allocSkb(this.ctx, NET_SKB_PAD + nsize);
    skbReserve(skb1, NET_SKB_PAD);
    skbSplit(h.skb, skb1, len);
    const m = h.model;
    h.model = m.slice(0, len);
    const n = this.add(skb1, m.slice(len), h.tainted);
    this.say(`#${n.id} = skb_split(#${h.id}, ${len})`);
  }

  /** Software GSO: headers in the linear area, gso_size set, skb_segment, the original kept or consumed. */
  private segment(a: number, b: number, c: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    if (h.skb.len <= GSO_HEADER_LEN) return this.say(`skb_segment(#${h.id}): len ${h.skb.len} too short, skipped`);
    this.unshare(h);
    if (!pskbMayPull(h.skb, GSO_HEADER_LEN)) return this.mismatch(h, `pskb_may_pull(${GSO_HEADER_LEN}) failed with len ${h.skb.len}`);
    const skb = h.skb;
    skb.macHeader = skb.data;
    skb.networkHeader = skb.data + 14;
    skb.transportHeader = skb.data + 34;
    __skbPull(skb, GSO_HEADER_LEN);
    const plen = skb.len;
    const maxSegs = 8;
    const gso = Math.max(1 + (b % plen), Math.ceil(plen / maxSegs));
    const sh = skb.shinfo;
    const saved = [sh.gsoSize, sh.gsoSegs, sh.gsoType];
    sh.gsoSize = gso;
    sh.gsoSegs = Math.ceil(plen / gso);
    sh.gsoType = SKB_GSO_TCPV4;
    const sg = (c & 1) === 1;
    const res = skbSegment(skb, { sg });
    // Put the original back as it was (the GSO caller pushes the headers back).
    [sh.gsoSize, sh.gsoSegs, sh.gsoType] = saved as [number, number, number];
    skbPush(skb, GSO_HEADER_LEN);
    if (typeof res === 'number') {
      // With sg a segment may need more than MAX_SKB_FRAGS frags: skb_segment refuses (-EINVAL), nothing changes.
      if (sg && res === -EINVAL) return this.say(`skb_segment(#${h.id}, gso ${gso}, sg) refused: ${res}`);
      return this.mismatch(h, `skb_segment(gso ${gso}, sg ${sg}) returned ${res}`);
    }
    const hdr = h.model.subarray(0, GSO_HEADER_LEN);
    const ids: number[] = [];
    const expectSegs = Math.ceil(plen / gso);
    for (let i = 0; i < res.length; i++) {
      const from = GSO_HEADER_LEN + i * gso;
      const seg = this.add(res[i]!, concat([hdr, h.model.subarray(from, Math.min(from + gso, h.model.length))]), h.tainted);
      ids.push(seg.id);
    }
    this.say(`#${ids.join(', #')} = skb_segment(#${h.id}, gso ${gso}, sg ${sg})`);
    if (res.length !== expectSegs) this.mismatch(h, `skb_segment(gso ${gso}) of ${plen} payload bytes made ${res.length} segments, expected ${expectSegs}`);
    if ((c & 2) === 2) {
      this.remove(h);
      consumeSkb(skb);
      this.say(`, consume_skb(#${h.id})`);
    }
    // Too many handles: drop the oldest segments beyond the cap (the device sent them).
    while (this.handles.length > MAX_HANDLES + maxSegs) kfreeSkb(this.handles.shift()!.skb);
  }

  private trim(a: number, b: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    if (h.skb.len === 0) return this.say(`pskb_trim(#${h.id}): empty, skipped`);
    this.unshare(h);
    const len = b % h.skb.len;
    const rc = pskbTrim(h.skb, len);
    this.say(`pskb_trim(#${h.id}, ${len}) = ${rc}`);
    if (rc !== 0) return this.mismatch(h, `pskb_trim(${len}) returned ${rc}`);
    h.model = h.model.slice(0, len);
  }

  private trimHead(a: number, b: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    if (h.skb.len < 2 || this.hasFragList(h.skb)) return this.say(`tcp_trim_head(#${h.id}): skipped`);
    this.unshare(h);
    const len = 1 + (b % (h.skb.len - 1));
    const rc = tcpTrimHead(h.skb, len);
    this.say(`tcp_trim_head(#${h.id}, ${len}) = ${rc}`);
    if (rc !== 0) return this.mismatch(h, `tcp_trim_head(${len}) returned ${rc}`);
    h.model = h.model.slice(len);
  }

  /** tcp_try_coalesce: skb_try_coalesce, then kfree_skb_partial(from, fragstolen) on success. */
  private coalesce(a: number, b: number): void {
    const pair = this.pickTwo(a, b);
    if (pair === null) return this.say('(fewer than 2 skbs)');
    const [to, from] = pair;
    if (to.skb === from.skb) return this.say(`skb_try_coalesce(#${to.id}, #${from.id}): same skb, skipped`);
    this.unshare(to);
    this.unshare(from);
    const res = skbTryCoalesce(to.skb, from.skb);
    if (!res.ok) return this.say(`skb_try_coalesce(#${to.id}, #${from.id}) refused`);
    this.say(`skb_try_coalesce(#${to.id}, #${from.id}): fragstolen ${res.fragstolen}`);
    to.model = concat([to.model, from.model]);
    to.tainted ||= from.tainted;
    this.remove(from);
    kfreeSkb(from.skb); // kfree_skb_partial(from, fragstolen): our heads are never stolen (see skbTryCoalesce)
  }

  /** tcp_shift_skb_data: skb_shift between two skbs without frag_list (skb_shift unclones them itself). */
  private shift(a: number, b: number, c: number): void {
    const pair = this.pickTwo(a, b);
    if (pair === null) return this.say('(fewer than 2 skbs)');
    const [tgt, src] = pair;
    if (tgt.skb === src.skb || src.skb.len === 0 || this.hasFragList(tgt.skb) || this.hasFragList(src.skb)) {
      return this.say(`skb_shift(#${tgt.id}, #${src.id}): skipped`);
    }
    this.unshare(tgt);
    this.unshare(src);
    const shiftlen = 1 + (c % src.skb.len);
    const n = skbShift(tgt.skb, src.skb, shiftlen);
    this.say(`skb_shift(#${tgt.id}, #${src.id}, ${shiftlen}) = ${n}`);
    if (n < 0 || n > shiftlen) return this.mismatch(src, `skb_shift(${shiftlen}) returned ${n}`);
    tgt.model = concat([tgt.model, src.model.subarray(0, n)]);
    src.model = src.model.slice(n);
    tgt.tainted ||= src.tainted;
  }

  private orphan(a: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    this.unshare(h);
    const rc = skbOrphanFrags(h.skb);
    this.say(`skb_orphan_frags(#${h.id}) = ${rc}`);
    if (rc !== 0) return this.mismatch(h, `skb_orphan_frags returned ${rc}`);
    const left = this.foreignFragsOf(h.skb);
    if (left > 0) this.mismatch(h, `skb_orphan_frags left ${left} frags on foreign pages`);
  }

  private foreignFragsOf(skb: SkBuff): number {
    let n = 0;
    const sh = skb.shinfo;
    for (let i = 0; i < sh.nrFrags; i++) if (this.isOurs[sh.frags[i]!.page.id]) n++;
    for (let f = sh.fragList; f !== null; f = f.next) n += this.foreignFragsOf(f);
    return n;
  }

  /** skb_gro_receive / ip_frag_reasm style: `tail` joins `head`'s frag_list (head uncloned, tail ours alone). */
  private chain(a: number, b: number): void {
    const pair = this.pickTwo(a, b);
    if (pair === null) return this.say('(fewer than 2 skbs)');
    const [head, tail] = pair;
    if (head.skb === tail.skb || this.hasFragList(tail.skb)) return this.say(`chain(#${head.id}, #${tail.id}): skipped`);
    this.unshare(head);
    this.unshare(tail);
    if (!this.unclone(head)) return;
    const appended = this.hasFragList(head.skb);
    skbFragListAppend(head.skb, tail.skb);
    head.model = concat([head.model, tail.model]);
    head.tainted ||= tail.tainted;
    this.remove(tail);
    this.say(`#${tail.id} joins the frag_list of #${head.id}${appended ? ' (appended)' : ''}`);
  }

  private free(a: number, b: number): void {
    const h = this.pick(a);
    if (h === null) return this.say('(no skb)');
    this.remove(h);
    if ((b & 1) === 0) kfreeSkb(h.skb);
    else consumeSkb(h.skb);
    this.say(`${(b & 1) === 0 ? 'kfree_skb' : 'consume_skb'}(#${h.id})`);
  }

  // ---- checks ----

  private checkAll(step: number): void {
    for (const h of this.handles) if (!h.tainted) this.check(h, step);
  }

  private check(h: Handle, step: number): void {
    const skb = h.skb;
    const m = h.model;
    if (skb.len !== m.length) return this.mismatch(h, `len is ${skb.len} but the model has ${m.length} bytes`);
    let held = 0;
    const sh = skb.shinfo;
    for (let i = 0; i < sh.nrFrags; i++) held += sh.frags[i]!.size;
    for (let f = sh.fragList; f !== null; f = f.next) held += f.len;
    if (skb.dataLen !== held) return this.mismatch(h, `dataLen is ${skb.dataLen} but frags and frag_list hold ${held}`);
    if (skb.tail - skb.data !== skb.len - skb.dataLen) {
      return this.mismatch(h, `linear area tail-data is ${skb.tail - skb.data} but len-dataLen is ${skb.len - skb.dataLen}`);
    }
    if (this.scratch.length < m.length) this.scratch = new Uint8Array(m.length);
    const buf = this.scratch;
    const rc = skbCopyBits(skb, 0, buf, 0, m.length);
    if (rc !== 0) return this.mismatch(h, `skb_copy_bits(0, ${m.length}) returned ${rc}`);
    const got = buf.subarray(0, m.length);
    if (Buffer.compare(got, m) !== 0) {
      let i = 0;
      while (got[i] === m[i]) i++;
      this.mismatch(h, `byte ${i} of ${m.length} reads 0x${hex(got[i]!)} but the model has 0x${hex(m[i]!)} (step ${step})`);
    }
  }
}

function hex(b: number): string {
  return b.toString(16).padStart(2, '0');
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function fillRandom(buf: Uint8Array, off: number, len: number, r: Random): void {
  for (let i = 0; i < len; i += 4) {
    const x = r.u32();
    for (let k = 0; k < 4 && i + k < len; k++) buf[off + i + k] = (x >>> (8 * k)) & 0xff;
  }
}

function describeError(e: unknown): string {
  if (e instanceof Error) {
    const frame = e.stack?.split('\n').find((l) => l.includes('/backend/') || l.includes('/tools/'));
    return `${e.name}: ${e.message}${frame === undefined ? '' : ` (${frame.trim()})`}`;
  }
  return String(e);
}
