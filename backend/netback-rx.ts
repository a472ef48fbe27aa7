// Netback's RX path (drivers/net/xen-netback/rx.c): RX is the guest receiving, named from the frontend's point of
// view as Xen does. Frames the stack transmits on the vif wait on a per-queue RX queue, capped in bytes (XSA-392),
// until the guest posts RX requests; rxAction grant-copies each frame into the posted buffers (from local memory,
// or for a foreign frag straight from the source grant, as xenvif_rx_copy_add does with xen_page_foreign), one
// response per request in the request's slot, NETRXF_more_data between slots, a GSO extra when the frontend
// takes GSO, and a negative GNTST code as the status of a slot whose copy failed. A frame that waits longer than
// the drain timeout is dropped (Linux) or, with the 'orphan' policy, has its foreign frags copied out so a
// receiver that withholds requests cannot pin the sender's grants (seed 003's ctrl-Z problem).
//
// Departures from Linux: no XDP headroom and no hash extra; requests are copied (RING_COPY_REQUEST) rather than
// read in place; a corrupt req_prod (more requests than the ring holds) is counted and treated as "no slots"; each
// packet's copies run as one batch before its responses are written (Linux batches 64 ops across packets).

import type { Clock } from '../shared/clock.js';
import type { EventPort } from '../shared/evtchn.js';
import { DOMID_SELF, GNTCOPY_dest_gref, GNTCOPY_source_gref, GNTST_okay } from '../shared/gnttab.js';
import type { GrantCopyOp, GrantMapper } from '../shared/gnttab-mapper.js';
import { XEN_PAGE_SIZE } from '../shared/memory.js';
import {
  ExtraInfo,
  NET_RX_RING_SIZE,
  NETRXF_csum_blank,
  NETRXF_data_validated,
  NETRXF_extra_info,
  NETRXF_more_data,
  RxRequest,
  RxResponse,
  XEN_NETIF_EXTRA_TYPE_GSO,
  XEN_NETIF_GSO_TYPE_NONE,
  XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_GSO_TYPE_TCPV6,
  type ExtraInfoFields,
  type RxRequestFields,
  type RxResponseFields,
} from '../shared/netif.js';
import { RING_OVERFLOW, type BackRing } from '../shared/ring.js';
import type { SkbHolder } from './netdev.js';
import type { GrantEvents, NetbackLogLevel } from './netback.js';
import {
  CHECKSUM_PARTIAL,
  CHECKSUM_UNNECESSARY,
  SKB_GSO_TCPV4,
  consumeSkb,
  kfreeSkb,
  skbHeadlen,
  skbOrphanFrags,
  type SkBuff,
} from './skbuff.js';
import type { XenvifStats } from './xenvif.js';

/** The RX queue's byte cap: half a ring of pages (common.h XENVIF_RX_QUEUE_BYTES, XSA-392). */
export const XENVIF_RX_QUEUE_BYTES = (NET_RX_RING_SIZE / 2) * XEN_PAGE_SIZE; // drivers/net/xen-netback/common.h
/** How long a frame may wait for RX requests (netback.c rx_drain_timeout_msecs). */
export const RX_DRAIN_TIMEOUT_MS = 10000; // drivers/net/xen-netback/netback.c
/** Without feature-rx-notify the drain timeout is 30 ms (xenbus.c read_xenbus_vif_flags). */
export const RX_DRAIN_TIMEOUT_NO_NOTIFY_MS = 30; // drivers/net/xen-netback/xenbus.c
/** How long without RX requests before the carrier goes off (netback.c rx_stall_timeout_msecs). */
export const RX_STALL_TIMEOUT_MS = 60000; // drivers/net/xen-netback/netback.c
/** Packets one RX action delivers at most (rx.c RX_BATCH_SIZE). */
export const RX_BATCH_SIZE = 64; // drivers/net/xen-netback/rx.c

/** What happens to a frame that waited longer than the drain timeout. */
export type RxDrainPolicy = 'drop' | 'orphan';

/** What the RX queue needs from its vif. */
export interface RxVif {
  /** The frontend's domain. */
  readonly domid: number;
  readonly mapper: GrantMapper;
  readonly clock: Clock;
  readonly stats: XenvifStats;
  readonly events: GrantEvents;
  /** GSO types the frontend takes: bit (1 << XEN_NETIF_GSO_TYPE_*) (xenbus.c vif->gso_mask). */
  readonly gsoMask: number;
  /** The guest is dead: never notify it. */
  readonly guestDead: boolean;
  /** Carrier off/on from stall detection (xenvif_queue_carrier_off / _on). */
  setStalled(stalled: boolean): void;
  log(level: NetbackLogLevel, message: string): void;
}

/** Options of an RX queue. */
export interface RxQueueOptions {
  readonly maxBytes: number;
  readonly drainTimeoutMs: number;
  /** 0 disables stall detection (as without feature-rx-notify). */
  readonly stallTimeoutMs: number;
  readonly policy: RxDrainPolicy;
}

// xenvif_gso_type.
function xenGsoType(skb: SkBuff): number {
  if (skb.shinfo.gsoSize === 0) return XEN_NETIF_GSO_TYPE_NONE;
  return (skb.shinfo.gsoType & SKB_GSO_TCPV4) !== 0 ? XEN_NETIF_GSO_TYPE_TCPV4 : XEN_NETIF_GSO_TYPE_TCPV6;
}

/** Slots the frame at the head of the queue needs (xenvif_update_needed_slots). */
export function rxSlotsNeeded(skb: SkBuff): number {
  let needed = Math.ceil(skb.len / XEN_PAGE_SIZE);
  if (skb.shinfo.gsoSize !== 0) needed++;
  return needed;
}

function newCopyOp(): GrantCopyOp {
  return {
    source: { ref: 0, domid: DOMID_SELF, offset: 0, buf: null },
    dest: { ref: 0, domid: 0, offset: 0, buf: null },
    len: 0,
    flags: 0,
    status: GNTST_okay,
  };
}

/**
 * The RX half of one netback queue: the guest RX queue (bytes capped, drain timeout) and the RX action. Single-
 * threaded: the stack queues through queueTail (xenvif_start_xmit), the backend's loop runs rxAction.
 */
export class XenvifRxQueue implements SkbHolder {
  readonly ring: BackRing;
  /** Bytes queued (rx_queue_len). */
  queuedBytes = 0;
  /** Whether stall detection turned the carrier off. */
  stalled = false;

  private readonly vif: RxVif;
  private readonly port: EventPort;
  private readonly opts: RxQueueOptions;
  // The queue: a ring of skbs with their expiry, growing by doubling.
  private skbs: (SkBuff | null)[] = new Array<SkBuff | null>(64).fill(null);
  private expires = new Float64Array(64);
  private orphaned = new Uint8Array(64);
  private head = 0;
  private count = 0;
  private lastRxTime: number;
  // Scratch for one packet: requests, responses, extras, copy ops and the slot each op fills.
  private readonly req: RxRequestFields = RxRequest.create();
  private readonly rsps: RxResponseFields[] = [];
  private readonly rspIsExtra: boolean[] = [];
  private readonly extra: ExtraInfoFields = ExtraInfo.create();
  private readonly ops: GrantCopyOp[] = [];
  private readonly batch: GrantCopyOp[] = [];
  private opSlot = new Int32Array(64);
  private nOps = 0;
  private pushPending = false;

  constructor(vif: RxVif, ring: BackRing, port: EventPort, opts: RxQueueOptions) {
    if (ring.size !== NET_RX_RING_SIZE) throw new Error(`RX ring must have ${NET_RX_RING_SIZE} slots but has ${ring.size}`);
    this.vif = vif;
    this.ring = ring;
    this.port = port;
    this.opts = opts;
    this.lastRxTime = vif.clock.now();
  }

  /** Frames queued. */
  get queuedPackets(): number {
    return this.count;
  }

  /**
   * xenvif_rx_queue_tail: queues `skb` (taking its reference) with its drain deadline; false, keeping nothing,
   * when the queue already holds maxBytes (the caller drops and counts).
   */
  queueTail(skb: SkBuff): boolean {
    if (this.queuedBytes >= this.opts.maxBytes) return false;
    if (this.count === this.skbs.length) this.grow();
    const i = (this.head + this.count) & (this.skbs.length - 1);
    this.skbs[i] = skb;
    this.expires[i] = this.vif.clock.now() + this.opts.drainTimeoutMs;
    this.orphaned[i] = 0;
    this.count++;
    this.queuedBytes += skb.len;
    return true;
  }

  /**
   * One RX action (xenvif_rx_action, then the kthread's stall check and xenvif_rx_queue_drop_expired): delivers
   * up to `budget` frames while the guest has posted enough requests, pushes the responses once (notifying only
   * if the ring says so), then handles stalls and expired frames. Returns the frames delivered.
   */
  rxAction(budget: number = RX_BATCH_SIZE): number {
    let done = 0;
    while (this.count > 0 && done < budget && this.slotsAvailable()) {
      this.rxSkb();
      done++;
    }
    if (this.pushPending) {
      this.pushPending = false;
      if (this.ring.pushResponsesAndCheckNotify() && !this.vif.guestDead) {
        this.vif.stats.rxNotifies++;
        this.port.notify();
      }
    }
    const now = this.vif.clock.now();
    if (this.opts.stallTimeoutMs > 0) this.checkStall(now);
    this.expire(now);
    return done;
  }

  /** Whether the head frame could be delivered now, or a deadline has passed (xenvif_have_rx_work, roughly). */
  hasWork(): boolean {
    if (this.count === 0) return false;
    if (this.expires[this.head]! <= this.vif.clock.now()) return true;
    const n = this.ring.unconsumedRequests();
    return n !== RING_OVERFLOW && n >= rxSlotsNeeded(this.skbs[this.head]!);
  }

  /** The earliest drain deadline of a frame still to be dropped or orphaned, or Infinity. */
  nextDeadline(): number {
    for (let k = 0; k < this.count; k++) {
      const i = (this.head + k) & (this.skbs.length - 1);
      if (this.opts.policy === 'drop' || this.orphaned[i] === 0) return this.expires[i]!;
    }
    return Infinity;
  }

  /** Frees every queued frame (xenvif_rx_queue_purge). */
  purge(): void {
    while (this.count > 0) kfreeSkb(this.dequeue());
  }

  /** Visits every queued skb (the oracle's roots). */
  forEachSkb(fn: (skb: SkBuff) => void): void {
    const mask = this.skbs.length - 1;
    for (let k = 0; k < this.count; k++) fn(this.skbs[(this.head + k) & mask]!);
  }

  private grow(): void {
    const n = this.skbs.length * 2;
    const skbs = new Array<SkBuff | null>(n).fill(null);
    const expires = new Float64Array(n);
    const orphaned = new Uint8Array(n);
    const mask = this.skbs.length - 1;
    for (let k = 0; k < this.count; k++) {
      const i = (this.head + k) & mask;
      skbs[k] = this.skbs[i]!;
      expires[k] = this.expires[i]!;
      orphaned[k] = this.orphaned[i]!;
    }
    this.skbs = skbs;
    this.expires = expires;
    this.orphaned = orphaned;
    this.head = 0;
  }

  // xenvif_rx_dequeue.
  private dequeue(): SkBuff {
    const skb = this.skbs[this.head]!;
    this.skbs[this.head] = null;
    this.head = (this.head + 1) & (this.skbs.length - 1);
    this.count--;
    this.queuedBytes -= skb.len;
    return skb;
  }

  // xenvif_rx_ring_slots_available: enough requests for the head frame? If not, ask to be woken by the next one.
  private slotsAvailable(): boolean {
    const needed = rxSlotsNeeded(this.skbs[this.head]!);
    const ring = this.ring;
    let n = ring.unconsumedRequests();
    if (n === RING_OVERFLOW) {
      this.vif.stats.rxRingOverflows++;
      return false;
    }
    if (n >= needed) return true;
    ring.setReqEvent((ring.reqProdSnapshot + 1) >>> 0);
    n = ring.unconsumedRequests();
    return n !== RING_OVERFLOW && n >= needed;
  }

  // xenvif_rx_skb: one frame into as many posted buffers as it needs.
  private rxSkb(): void {
    const vif = this.vif;
    const ring = this.ring;
    const skb = this.dequeue();
    vif.stats.txBytes += skb.len;
    vif.stats.txPackets++;
    this.lastRxTime = vif.clock.now();

    const gsoType = xenGsoType(skb);
    let extraCount = 0;
    if (gsoType !== XEN_NETIF_GSO_TYPE_NONE && ((1 << gsoType) & vif.gsoMask) !== 0) extraCount = 1;

    // The chunk iterator (xenvif_pkt_state): the current skb (head, then its frag_list), frag (-1 = linear), offset.
    let fragIter: SkBuff | null = skb;
    let frag = -1;
    let fragOffset = 0;
    let remaining = skb.len;
    let slot = 0;
    this.nOps = 0;
    do {
      ring.copyRequest(ring.reqCons, RxRequest, this.req);
      const rsp = this.rspAt(slot);
      if (slot !== 0 && extraCount !== 0) {
        // xenvif_rx_extra_slot: extras go after the first data slot.
        const e = this.extra;
        e.type = XEN_NETIF_EXTRA_TYPE_GSO;
        e.flags = 0;
        e.gso.size = skb.shinfo.gsoSize;
        e.gso.type = gsoType;
        e.gso.pad = 0;
        e.gso.features = 0;
        extraCount--;
        this.rspIsExtra[slot] = true;
      } else {
        // xenvif_rx_data_slot: fill this buffer from offset 0 until it is full or the frame ends.
        let offset = 0;
        do {
          if (fragIter === null) throw new Error('netback: RX frame ran out of data before its length');
          let src: Uint8Array;
          let srcOff: number;
          let len: number;
          let foreign = null;
          if (frag === -1) {
            const hl = skbHeadlen(fragIter);
            const p = fragIter.data + fragOffset;
            const inPage = (fragIter.head.byteOffset + p) & (XEN_PAGE_SIZE - 1);
            src = fragIter.head.subarray(p - inPage);
            srcOff = inPage;
            len = hl - fragOffset;
          } else {
            const f = fragIter.shinfo.frags[frag]!;
            src = f.page.bytes;
            srcOff = f.offset + fragOffset;
            len = f.size - fragOffset;
            foreign = f.page.foreign;
          }
          if (len > XEN_PAGE_SIZE - offset) len = XEN_PAGE_SIZE - offset;
          if (len > XEN_PAGE_SIZE - srcOff) len = XEN_PAGE_SIZE - srcOff;
          if (len > 0) {
            const op = this.nextOp(slot);
            op.flags = GNTCOPY_dest_gref;
            if (foreign !== null) {
              op.source.ref = foreign.gref;
              op.source.domid = foreign.domid;
              op.source.buf = null;
              op.flags |= GNTCOPY_source_gref;
            } else {
              op.source.ref = 0;
              op.source.domid = DOMID_SELF;
              op.source.buf = src;
            }
            op.source.offset = srcOff;
            op.dest.ref = this.req.gref;
            op.dest.domid = vif.domid;
            op.dest.offset = offset;
            op.dest.buf = null;
            op.len = len;
            fragOffset += len;
            offset += len;
            remaining -= len;
          }
          // xenvif_rx_next_frag: advance past an exhausted linear area or frag.
          const fragLen = frag === -1 ? skbHeadlen(fragIter) : fragIter.shinfo.frags[frag]!.size;
          if (fragOffset >= fragLen) {
            frag++;
            fragOffset = 0;
            if (frag >= fragIter.shinfo.nrFrags) {
              fragIter = fragIter === skb ? skb.shinfo.fragList : fragIter.next;
              frag = -1;
            }
          }
        } while (offset < XEN_PAGE_SIZE && remaining > 0);
        let flags = remaining > 0 ? NETRXF_more_data : 0;
        if (slot === 0) {
          if (skb.ipSummed === CHECKSUM_PARTIAL) flags |= NETRXF_csum_blank | NETRXF_data_validated;
          else if (skb.ipSummed === CHECKSUM_UNNECESSARY) flags |= NETRXF_data_validated;
          if (extraCount !== 0) flags |= NETRXF_extra_info;
        }
        rsp.offset = 0;
        rsp.flags = flags;
        rsp.status = offset;
        this.rspIsExtra[slot] = false;
      }
      rsp.id = this.req.id;
      ring.consumeRequests(1);
      slot++;
    } while (remaining > 0 || extraCount !== 0);

    this.copyFlush();
    for (let s = 0; s < slot; s++) {
      if (this.rspIsExtra[s]) ring.putResponse(ExtraInfo, this.extra);
      else ring.putResponse(RxResponse, this.rsps[s]!);
    }
    this.pushPending = true;
    consumeSkb(skb);
  }

  private rspAt(slot: number): RxResponseFields {
    let r = this.rsps[slot];
    if (r === undefined) {
      r = RxResponse.create();
      this.rsps[slot] = r;
      this.rspIsExtra[slot] = false;
    }
    return r;
  }

  private nextOp(slot: number): GrantCopyOp {
    if (this.nOps === this.ops.length) this.ops.push(newCopyOp());
    if (this.nOps === this.opSlot.length) {
      const g = new Int32Array(this.opSlot.length * 2);
      g.set(this.opSlot);
      this.opSlot = g;
    }
    this.opSlot[this.nOps] = slot;
    return this.ops[this.nOps++]!;
  }

  // xenvif_rx_copy_flush: one batch; a failed op puts its GNTST code in its slot's status.
  private copyFlush(): void {
    const vif = this.vif;
    const batch = this.batch;
    batch.length = 0;
    for (let i = 0; i < this.nOps; i++) batch.push(this.ops[i]!);
    if (batch.length === 0) return;
    vif.mapper.copy(batch);
    for (let i = 0; i < batch.length; i++) {
      const op = batch[i]!;
      op.source.buf = null;
      if (op.status !== GNTST_okay) {
        vif.stats.rxCopyErrors++;
        this.rsps[this.opSlot[i]!]!.status = op.status;
        continue;
      }
      vif.events.copied(op.dest.domid, op.dest.ref, op.len);
      if ((op.flags & GNTCOPY_source_gref) !== 0) vif.events.copied(op.source.domid, op.source.ref, op.len);
    }
    batch.length = 0;
  }

  // xenvif_rx_queue_stalled / _ready: carrier off after stallTimeout without enough requests, on when they come.
  private checkStall(now: number): void {
    const needed = this.count === 0 ? 0 : rxSlotsNeeded(this.skbs[this.head]!);
    let slots = this.ring.unconsumedRequests();
    if (slots === RING_OVERFLOW) slots = 0;
    if (!this.stalled && slots < needed && now > this.lastRxTime + this.opts.stallTimeoutMs) {
      this.stalled = true;
      this.vif.log('info', 'Guest Rx stalled');
      this.vif.setStalled(true);
    } else if (this.stalled && slots >= needed) {
      this.stalled = false;
      this.lastRxTime = now;
      this.vif.log('info', 'Guest Rx ready');
      this.vif.setStalled(false);
    }
  }

  // xenvif_rx_queue_drop_expired, or with the 'orphan' policy skb_orphan_frags on each expired frame.
  private expire(now: number): void {
    const stats = this.vif.stats;
    if (this.opts.policy === 'drop') {
      while (this.count > 0 && this.expires[this.head]! <= now) {
        kfreeSkb(this.dequeue());
        stats.rxDropped++;
      }
      return;
    }
    const mask = this.skbs.length - 1;
    for (let k = 0; k < this.count; k++) {
      const i = (this.head + k) & mask;
      if (this.expires[i]! > now) break;
      if (this.orphaned[i] !== 0) continue;
      this.orphaned[i] = 1;
      const rc = skbOrphanFrags(this.skbs[i]!);
      if (rc !== 0) {
        // Nothing was copied: the frame keeps its frags and still waits (it is not retried).
        this.vif.log('err', `skb_orphan_frags failed (${rc}) on an expired RX frame`);
        continue;
      }
      stats.rxDrainOrphaned++;
    }
  }
}
