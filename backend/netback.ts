// Netback's TX path (drivers/net/xen-netback/netback.c). TX and RX are named from the frontend's point of view,
// as Xen does: TX is the guest sending (this file), RX is the guest receiving (netback-rx.ts).
//
// One TX action: read req_prod once per packet, refuse an overrun (FATAL), copy every request ONCE into a private
// snapshot (RING_COPY_REQUEST) and validate the snapshot (xenvif_count_requests, xenvif_get_extras); grant-copy
// the first min(size, 128) bytes into the linear area (may span slots since XSA-423, split at the local page
// boundary), map the rest of each slot read-only onto this queue's Page objects (mmap_pages[pending_idx]) as
// foreign frags, slots beyond MAX_SKB_FRAGS on a frag_list skb that is then copied out (xenvif_handle_frag_list);
// check the copy/map statuses (xenvif_tx_check_gop), set up checksum and GSO, and LAST attach the release design
// (xenvif_skb_zerocopy_prepare) before handing the skb to the stack. The design's sink queues released pages on
// the dealloc ring; flushDealloc() unmaps them in one batch, answers each slot OKAY (pending index recycled before
// the push) and notifies only when the ring macro says so. Every answered slot's gref then goes on a grant-return
// notice on the guest's MessagePort (one per action or dealloc batch): the frontend keeps a TX grant until then.
//
// Departures from Linux, on purpose:
// - No credit scheduler (`rate`), no hash extras (skb hash is not modelled), no XDP on TX.
// - Responses written by one action or one dealloc batch are pushed once at its end, not once per index.
// - A NULL response keeps the slot's id bytes as they are (Linux writes only the status), read back to do so.
// - One TX action handles at most XEN_NETIF_TX_RING_SIZE requests, so a guest cannot keep it looping.
// - tx_zerocopy_sent also counts a packet dropped by checksum_setup after it was made zerocopy, so that
//   sent = success + fail holds (Linux counts only its completion).
// - skb.data stays at the Ethernet header (the bridge's input contract); eth_type_trans's pull is not done.
// - A copy mode (txGrantCopy, for comparisons): the payload past the header is grant-copied into local pages and
//   every slot is answered at once, as netback did before 2014 and QEMU and FreeBSD's xnb still do.

import type { EventPort } from '../shared/evtchn.js';
import { ETH_P_IP, ETH_P_IPV6 } from '../shared/ether.js';
import {
  DOMID_SELF,
  GNTCOPY_source_gref,
  GNTMAP_host_map,
  GNTMAP_readonly,
  GNTST_okay,
  INVALID_GRANT_HANDLE,
  gntstName,
} from '../shared/gnttab.js';
import type { GrantCopyOp, GrantMapOp, GrantMapper } from '../shared/gnttab-mapper.js';
import { IPPROTO_TCP, IPPROTO_UDP, TCP_CSUM_OFFSET, UDP_CSUM_OFFSET, csumFold16 } from '../shared/inet.js';
import { XEN_PAGE_SIZE } from '../shared/memory.js';
import {
  ETH_HLEN,
  ExtraInfo,
  NET_TX_RING_SIZE,
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_extra_info,
  NETTXF_more_data,
  TxRequest,
  TxResponse,
  XEN_NETBACK_TX_COPY_LEN,
  XEN_NETBK_LEGACY_SLOTS_MAX,
  XEN_NETIF_EXTRA_FLAG_MORE,
  XEN_NETIF_EXTRA_TYPE_GSO,
  XEN_NETIF_EXTRA_TYPE_MAX,
  XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
  XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
  XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_GSO_TYPE_TCPV6,
  XEN_NETIF_RSP_ERROR,
  XEN_NETIF_RSP_NULL,
  XEN_NETIF_RSP_OKAY,
  type ExtraInfoFields,
  type TxRequestFields,
} from '../shared/netif.js';
import { err, ok, type Result } from '../shared/result.js';
import { RING_OVERFLOW, type BackRing } from '../shared/ring.js';
import type { GrantOracle } from './oracle.js';
import { PAGE_SIZE, allocPage, bindForeignPage, getPage, newPage, putPage, unbindForeignPage, type Page } from './page.js';
import type { GrantSink } from './release.js';
import {
  CHECKSUM_PARTIAL,
  CHECKSUM_UNNECESSARY,
  MAX_SKB_FRAGS,
  SKB_GSO_TCPV4,
  SKB_GSO_TCPV6,
  kfreeSkb,
  pskbMayPull,
  skbAddFrag,
  skbCopyBits,
  skbFillPageDesc,
  skbFragListAppend,
  skbHeadlen,
  skbPut,
  skbReserve,
  type SkBuff,
  type SkbContext,
} from './skbuff.js';
import type { XenvifStats } from './xenvif.js';

// ---- Limits (drivers/net/xen-netback/common.h, netback.c) ----

/** Pending indices per queue: one per TX ring slot (common.h MAX_PENDING_REQS = XEN_NETIF_TX_RING_SIZE). */
export const MAX_PENDING_REQS = 256; // drivers/net/xen-netback/common.h
/** Headroom netback reserves in each skb: NET_SKB_PAD = max(32, L1_CACHE_BYTES) with 64-byte lines, NET_IP_ALIGN 0 (x86). */
export const NET_SKB_PAD = 64; // include/linux/skbuff.h
/** The default NAPI budget of one TX action (include/linux/netdevice.h NAPI_POLL_WEIGHT). */
export const NAPI_POLL_WEIGHT = 64;
/** The most bytes skb_checksum_setup pulls for an IPv4 header (net/core/skbuff.c MAX_IP_HDR_LEN). */
export const MAX_IP_HDR_LEN = 128;
/** The most bytes skb_checksum_setup pulls for IPv6 headers (net/core/skbuff.c MAX_IPV6_HDR_LEN). */
export const MAX_IPV6_HDR_LEN = 256;

const PENDING_MASK = MAX_PENDING_REQS - 1;
const EXTRA_SLOTS = XEN_NETIF_EXTRA_TYPE_MAX - 1;
/** Header copy ops one packet may need: one per slot it spans plus one split at the local page boundary. */
const MAX_COPY_GROUPS = XEN_NETBK_LEGACY_SLOTS_MAX + 1;
/** Local pages a copied packet needs at most: ceil(0xffff / PAGE_SIZE). */
const MAX_LOCAL_PAGES = 16;

// Pending index states (our bookkeeping of what Linux keeps implicit), so a bad release is refused, not obeyed.
const ST_FREE = 0; // on the pending ring
const ST_COPY = 1; // a header-copy slot of the action in progress
const ST_MAPPING = 2; // a map op of the action in progress
const ST_MAPPED = 3; // mapped, not yet in an skb handed to the stack
const ST_INFLIGHT = 4; // a frag of an skb the stack holds: waiting for the release design
const ST_DEALLOC = 5; // on the dealloc ring

const IP_MF = 0x2000; // include/net/ip.h
const IP_OFFSET = 0x1fff;
const NEXTHDR_HOP = 0; // include/net/ipv6.h
const NEXTHDR_ROUTING = 43;
const NEXTHDR_FRAGMENT = 44;
const NEXTHDR_AUTH = 51;
const NEXTHDR_DEST = 60;
const IPV6_HDR_LEN = 40;
const IPV4_HDR_LEN = 20;
const MAX_TCP_HDR_LEN = 60; // include/net/tcp.h
const TCP_HDR_LEN = 20;
const UDP_HDR_LEN = 8;

// ---- The seams: logging, grant events ----

/** Log levels as netdev_dbg / netdev_info / netdev_err. */
export type NetbackLogLevel = 'debug' | 'info' | 'err';
/** A log sink. */
export type NetbackLog = (level: NetbackLogLevel, message: string) => void;

/**
 * Everything that happens to a guest grant in netback, reported at one place: where a per-grant timeline can
 * be recorded. `returned` is called when a batch is handed back (unmapped, responses about to be pushed), with
 * the pages still bound to their grants.
 */
export interface GrantEvents {
  /** A guest grant was mapped onto `page` (page.foreign names it). */
  mapped(page: Page): void;
  /** The grants mapped on pages[0..n) are being handed back to their guests now. */
  returned(pages: readonly Page[], n: number): void;
  /** `len` bytes were grant-copied from or to grant `gref` of `domid` (TX header, RX delivery). */
  copied(domid: number, gref: number, len: number): void;
}

/** A GrantEvents that records nothing. */
export const noGrantEvents: GrantEvents = {
  mapped(_page: Page): void {},
  returned(_pages: readonly Page[], _n: number): void {},
  copied(_domid: number, _gref: number, _len: number): void {},
};

/** Wires the grant-lifetime oracle to netback: it is told of each mapping, and checks each returned batch. */
export function oracleGrantEvents(oracle: GrantOracle, next: GrantEvents = noGrantEvents): GrantEvents {
  return {
    mapped(page: Page): void {
      oracle.noteMapped(page);
      next.mapped(page);
    },
    returned(pages: readonly Page[], n: number): void {
      oracle.noteReturnedBatch(pages, n);
      next.returned(pages, n);
    },
    copied(domid: number, gref: number, len: number): void {
      next.copied(domid, gref, len);
    },
  };
}

/** What the TX queue needs from its vif (interface.c struct xenvif). */
export interface TxVif {
  /** The frontend's domain. */
  readonly domid: number;
  readonly ctx: SkbContext;
  readonly mapper: GrantMapper;
  readonly stats: XenvifStats;
  readonly events: GrantEvents;
  /** Bytes reserved before the linear data (NET_SKB_PAD; tests move it to put the header copy across a page). */
  readonly txHeadroom: number;
  /** Slots at which a packet is fatal (netback.c fatal_skb_slots). */
  readonly fatalSkbSlots: number;
  /** Copy the whole packet into local pages instead of mapping (the pre-2014 netback, QEMU, FreeBSD xnb). */
  readonly txGrantCopy: boolean;
  /** vif->disabled. */
  readonly disabled: boolean;
  /** The guest is dead: responses are still written (its ring is still mapped) but it is never notified. */
  readonly guestDead: boolean;
  /** xenvif_fatal_tx_err: disable the vif, with the reason. */
  fatal(message: string): void;
  /** A TX packet was answered with errors or dropped, with the reason (netdev_dbg). */
  txError(message: string): void;
  log(level: NetbackLogLevel, message: string): void;
  /** xenvif_mcast_add: 0, or -ENOSPC past XEN_NETBK_MCAST_MAX. */
  mcastAdd(addr: Uint8Array): number;
  /** xenvif_mcast_del. */
  mcastDel(addr: Uint8Array): void;
  /** alloc_skb; null when allocation fails (a fault hook). */
  allocSkb(size: number): SkBuff | null;
  /** netif_receive_skb: one reference to `skb` goes to the stack. */
  receive(skb: SkBuff): void;
  /** A batch of the guest's grants was unmapped and answered: post the notice (grefs[0..n)). */
  grantsReturned(grefs: Uint32Array, n: number): void;
}

/** A mapped grant the queue still holds, for teardown reports. */
export interface HeldGrant {
  readonly pendingIdx: number;
  readonly gref: number;
  /** 'inflight': the stack may still read it; 'dealloc': released, waiting for flushDealloc; 'mapped': being built. */
  readonly state: 'inflight' | 'dealloc' | 'mapped';
}

// One packet being built by a TX action (the skb and its pending indices; Linux keeps these in skb->cb and frags).
class TxPacket {
  skb: SkBuff | null = null;
  nskb: SkBuff | null = null;
  /** NETTXF_* flags of the packet's first slot. */
  flags = 0;
  /** Header copy groups: the pending index of each copied slot and its ops in this action's copy batch. */
  readonly copyIdx = new Uint16Array(MAX_COPY_GROUPS);
  readonly copyOpStart = new Uint16Array(MAX_COPY_GROUPS);
  readonly copyOpCount = new Uint8Array(MAX_COPY_GROUPS);
  /** Copy mode (txGrantCopy): the local pages the payload past the header is copied into, and their fill. */
  readonly local: Page[] = [];
  readonly localSize = new Uint16Array(MAX_LOCAL_PAGES);
  nCopy = 0;
  /** The last copied slot continues as frag 0 (sharedslot): its response comes from the frag. */
  shared = false;
  /** Pending indices of the frags (first skb) and of the frag_list skb, in map op order from mapStart. */
  readonly frags = new Uint16Array(MAX_SKB_FRAGS);
  nFrags = 0;
  readonly overflow = new Uint16Array(MAX_SKB_FRAGS);
  nOverflow = 0;
  mapStart = 0;
}

function newCopyOp(): GrantCopyOp {
  return {
    source: { ref: 0, domid: 0, offset: 0, buf: null },
    dest: { ref: 0, domid: DOMID_SELF, offset: 0, buf: null },
    len: 0,
    flags: 0,
    status: GNTST_okay,
  };
}

function copyTxReq(dst: TxRequestFields, src: Readonly<TxRequestFields>): void {
  dst.gref = src.gref;
  dst.offset = src.offset;
  dst.flags = src.flags;
  dst.id = src.id;
  dst.size = src.size;
}

function copyExtra(dst: ExtraInfoFields, src: Readonly<ExtraInfoFields>): void {
  dst.type = src.type;
  dst.flags = src.flags;
  dst.gso.size = src.gso.size;
  dst.gso.type = src.gso.type;
  dst.gso.pad = src.gso.pad;
  dst.gso.features = src.gso.features;
  dst.mcast.addr.set(src.mcast.addr);
  dst.hash.type = src.hash.type;
  dst.hash.algorithm = src.hash.algorithm;
  dst.hash.value = src.hash.value;
  dst.xdp.headroom = src.xdp.headroom;
}

/**
 * The TX half of one netback queue (struct xenvif_queue's TX state): the pending ring and its 256 Page objects,
 * the build/check/submit of each TX action, the dealloc ring and the responses. Single-threaded: the backend's
 * softirq loop calls txAction and flushDealloc; the stack calls the sink from inside kfree_skb.
 */
export class XenvifTxQueue {
  /** The TX ring (the backend's end). */
  readonly ring: BackRing;
  /** The design's sink: a released page's pending index goes on the dealloc ring (xenvif_zerocopy_callback). */
  readonly sink: GrantSink;
  /** Packets handed to the stack whose pages the design has not released yet (inflight_packets). */
  inflightPackets = 0;

  private readonly vif: TxVif;
  private readonly port: EventPort;
  // pending_ring of free indices, pending_tx_info, mmap_pages, grant_tx_handle (netback.c).
  private readonly pendingRing = new Uint16Array(MAX_PENDING_REQS);
  private pendingProd = MAX_PENDING_REQS;
  private pendingCons = 0;
  private readonly pendingReq: TxRequestFields[] = [];
  private readonly pendingExtra = new Uint8Array(MAX_PENDING_REQS);
  private readonly state = new Uint8Array(MAX_PENDING_REQS);
  private readonly mmapPages: Page[] = [];
  // The pending index of each of our Page objects, by Page.id (ids are dense per SkbContext); -1 for other pages.
  private pageIdx = new Int32Array(MAX_PENDING_REQS).fill(-1);
  // The grant each pending index's page is bound to: one object per index, refilled at each map.
  private readonly grantIds: { domid: number; gref: number }[] = [];
  private readonly grantHandle = new Uint32Array(MAX_PENDING_REQS).fill(INVALID_GRANT_HANDLE);
  // Zerocopy completion of one packet (the ubuf ctx chain): a record counting the packet's pages still held, found
  // from each of its pending indices. Departure: Linux completes a chain once, so its head slot is never reused
  // before; a design here may release a packet's pages one by one (page-destructor, rusty-page), and the first
  // page's slot can be answered and reused while the rest is held, so the count cannot live on that slot.
  private readonly zcRecord = new Uint16Array(MAX_PENDING_REQS);
  private readonly zcRemaining = new Uint8Array(MAX_PENDING_REQS);
  private readonly zcFailed = new Uint8Array(MAX_PENDING_REQS);
  // Free records (a packet holds at least one pending index, so MAX_PENDING_REQS records always suffice).
  private readonly zcFree = Uint16Array.from({ length: MAX_PENDING_REQS }, (_, i) => i);
  private zcFreeTop = MAX_PENDING_REQS;
  // dealloc_ring (netback.c).
  private readonly deallocRing = new Uint16Array(MAX_PENDING_REQS);
  private deallocProd = 0;
  private deallocCons = 0;
  // Scratch, built once: request snapshots, extras, the copy/map batches, packets, batches of returned pages.
  private readonly txreq: TxRequestFields = TxRequest.create();
  private readonly slots: TxRequestFields[] = [];
  private readonly errReqs: TxRequestFields[] = [];
  private readonly extraScratch: ExtraInfoFields = ExtraInfo.create();
  private readonly extras: ExtraInfoFields[] = [];
  private readonly extraPresent = new Uint8Array(EXTRA_SLOTS);
  // Whether extraPresent has a bit set (clearing it costs a fill call per packet otherwise).
  private extrasSeen = false;
  private readonly copyOps: GrantCopyOp[] = [];
  private nCopyOps = 0;
  private readonly mapOps: GrantMapOp[] = [];
  private readonly mapIdx = new Uint16Array(MAX_PENDING_REQS);
  private nMapOps = 0;
  private readonly packets: TxPacket[] = [];
  private nPackets = 0;
  private readonly attachPages: Page[] = [];
  private readonly localPages: Page[] = [];
  private readonly localSizes = new Uint16Array(MAX_SKB_FRAGS);
  private readonly retPages: Page[] = [];
  private readonly retIdx = new Uint16Array(MAX_PENDING_REQS);
  private readonly retGrefs = new Uint32Array(MAX_PENDING_REQS);
  private nRetGrefs = 0;
  private readonly rsp = TxResponse.create();
  private pushPending = false;

  constructor(vif: TxVif, ring: BackRing, port: EventPort) {
    if (ring.size !== NET_TX_RING_SIZE) throw new Error(`TX ring must have ${NET_TX_RING_SIZE} slots but has ${ring.size}`);
    this.vif = vif;
    this.ring = ring;
    this.port = port;
    for (let i = 0; i < MAX_PENDING_REQS; i++) {
      this.pendingRing[i] = i;
      this.pendingReq.push(TxRequest.create());
      const page = newPage(vif.ctx);
      this.mmapPages.push(page);
      this.setPageIdx(page, i);
      this.grantIds.push({ domid: 0, gref: 0 });
      this.mapOps.push({ dom: 0, ref: 0, flags: 0, status: GNTST_okay, handle: INVALID_GRANT_HANDLE, bytes: null });
      this.copyOps.push(newCopyOp());
      this.errReqs.push(TxRequest.create());
    }
    for (let i = 0; i <= XEN_NETBK_LEGACY_SLOTS_MAX; i++) this.slots.push(TxRequest.create());
    for (let i = 0; i < EXTRA_SLOTS; i++) this.extras.push(ExtraInfo.create());
    const self = this;
    const sink = {
      // Mainline's ubuf callback says whether the frags were really sent zerocopy; a mechanism may pass that along.
      release(page: Page, zerocopySuccess = true): void {
        self.zerocopyCallback(page, zerocopySuccess);
      },
    };
    this.sink = sink;
  }

  /** Pending indices in use (nr_pending_reqs). */
  get nrPendingReqs(): number {
    return MAX_PENDING_REQS - ((this.pendingProd - this.pendingCons) >>> 0);
  }

  /** Released pages waiting for flushDealloc (tx_dealloc_work_todo). */
  get deallocPending(): number {
    return (this.deallocProd - this.deallocCons) >>> 0;
  }

  /** Whether the guest has published requests we have not consumed (an overrun counts, so it is noticed). */
  hasWork(): boolean {
    return this.ring.unconsumedRequests() !== 0;
  }

  /**
   * One TX action (xenvif_tx_action): builds at most `budget` packets from the ring, copies and maps their
   * grants in one batch, checks and submits them to the stack; returns the number of packets submitted. When
   * it ran out of requests it re-arms req_event (RING_FINAL_CHECK_FOR_REQUESTS) so the guest's next push notifies.
   */
  txAction(budget: number = NAPI_POLL_WEIGHT): number {
    if (this.vif.disabled) return 0;
    this.nPackets = 0;
    this.nCopyOps = 0;
    this.nMapOps = 0;
    this.buildGops(budget);
    let done = 0;
    if (this.nPackets > 0) {
      this.runGrantOps();
      done = this.submit();
    }
    this.flushResponses();
    if (done < budget && !this.vif.disabled) this.ring.finalCheckForRequests();
    return done;
  }

  /**
   * The dealloc action (xenvif_tx_dealloc_action): unmaps every released page in one batch, answers each slot
   * OKAY with its pending index recycled first, pushes once, notifies if the ring says so, and posts the batch's
   * grefs on the guest's port. Returns the number of grants returned.
   */
  flushDealloc(): number {
    let n = 0;
    while (this.deallocCons !== this.deallocProd) {
      const idx = this.deallocRing[this.deallocCons & PENDING_MASK]!;
      this.deallocCons = (this.deallocCons + 1) >>> 0;
      this.retIdx[n] = idx;
      this.retPages[n] = this.mmapPages[idx]!;
      this.unmapHandle(idx);
      n++;
    }
    if (n === 0) return 0;
    this.vif.events.returned(this.retPages, n);
    for (let i = 0; i < n; i++) this.recyclePage(this.retIdx[i]!);
    for (let i = 0; i < n; i++) this.idxRelease(this.retIdx[i]!, XEN_NETIF_RSP_OKAY);
    clearArray(this.retPages);
    this.flushResponses();
    return n;
  }

  /** Every grant this queue still has mapped (teardown reports "Page still granted!"). */
  heldGrants(): HeldGrant[] {
    const out: HeldGrant[] = [];
    for (let i = 0; i < MAX_PENDING_REQS; i++) {
      const s = this.state[i];
      if (s !== ST_INFLIGHT && s !== ST_DEALLOC && s !== ST_MAPPED) continue;
      const g = this.mmapPages[i]!.foreign;
      out.push({
        pendingIdx: i,
        gref: g === null ? -1 : g.gref,
        state: s === ST_INFLIGHT ? 'inflight' : s === ST_DEALLOC ? 'dealloc' : 'mapped',
      });
    }
    return out;
  }

  // ---- build (xenvif_tx_build_gops) ----

  private buildGops(budget: number): void {
    const vif = this.vif;
    const ring = this.ring;
    let iterations = 0;
    while (this.nPackets < budget && iterations++ < NET_TX_RING_SIZE) {
      let workToDo = ring.unconsumedRequests();
      if (workToDo === RING_OVERFLOW) {
        vif.fatal(`Impossible number of requests. req_prod ${ring.reqProdSnapshot}, req_cons ${ring.reqCons}, size ${ring.size}`);
        break;
      }
      if (workToDo === 0) break;
      const txreq = this.txreq;
      ring.copyRequest(ring.reqCons, TxRequest, txreq);
      ring.consumeRequests(1);
      workToDo--;

      if (this.extrasSeen) {
        this.extraPresent.fill(0);
        this.extrasSeen = false;
      }
      let extraCount = 0;
      if ((txreq.flags & NETTXF_extra_info) !== 0) {
        const r = this.getExtras(workToDo);
        if (r < 0) break;
        extraCount = r;
        workToDo -= r;
      }

      if (this.extraPresent[XEN_NETIF_EXTRA_TYPE_MCAST_ADD - 1] !== 0) {
        const rc = vif.mcastAdd(this.extras[XEN_NETIF_EXTRA_TYPE_MCAST_ADD - 1]!.mcast.addr);
        if (rc !== 0) vif.txError('Too many multicast addresses');
        this.makeTxResponse(txreq, extraCount, rc === 0 ? XEN_NETIF_RSP_OKAY : XEN_NETIF_RSP_ERROR, false);
        continue;
      }
      if (this.extraPresent[XEN_NETIF_EXTRA_TYPE_MCAST_DEL - 1] !== 0) {
        vif.mcastDel(this.extras[XEN_NETIF_EXTRA_TYPE_MCAST_DEL - 1]!.mcast.addr);
        this.makeTxResponse(txreq, extraCount, XEN_NETIF_RSP_OKAY, false);
        continue;
      }

      let dataLen = txreq.size > XEN_NETBACK_TX_COPY_LEN ? XEN_NETBACK_TX_COPY_LEN : txreq.size;
      const ret = this.countRequests(txreq, extraCount, workToDo);
      if (ret < 0) break;

      if (txreq.size < ETH_HLEN) {
        vif.txError(`Bad packet size: ${txreq.size}`);
        this.txErr(txreq, extraCount, ret);
        break;
      }
      // No crossing a page as the payload mustn't fragment.
      if (txreq.offset + txreq.size > XEN_PAGE_SIZE) {
        vif.fatal(`txreq.offset: ${txreq.offset}, size: ${txreq.size}, end: ${txreq.offset + txreq.size}`);
        break;
      }
      // XSA-432: with that many slots the whole first slot is copied, so the rest fits the frags.
      if (ret >= XEN_NETBK_LEGACY_SLOTS_MAX - 1 && dataLen < txreq.size) dataLen = txreq.size;

      const skb = vif.allocSkb(dataLen + vif.txHeadroom);
      if (skb === null) {
        vif.txError("Can't allocate a skb in start_xmit.");
        this.txErr(txreq, extraCount, ret);
        break;
      }
      skbReserve(skb, vif.txHeadroom);
      let nskb: SkBuff | null = null;
      if (ret > MAX_SKB_FRAGS && !vif.txGrantCopy) {
        nskb = vif.allocSkb(vif.txHeadroom);
        if (nskb === null) {
          kfreeSkb(skb);
          this.txErr(txreq, extraCount, ret);
          vif.txError("Can't allocate the frag_list skb.");
          break;
        }
        skbReserve(nskb, vif.txHeadroom);
      }

      if (this.extraPresent[XEN_NETIF_EXTRA_TYPE_GSO - 1] !== 0) {
        const gso = this.extras[XEN_NETIF_EXTRA_TYPE_GSO - 1]!;
        const bad = setSkbGso(skb, gso);
        if (bad !== null) {
          vif.fatal(bad);
          kfreeSkb(skb);
          if (nskb !== null) kfreeSkb(nskb);
          break;
        }
      }

      const pkt = this.nextPacket();
      pkt.skb = skb;
      pkt.nskb = nskb;
      pkt.flags = txreq.flags;
      // The frag slots are consumed first: a zero-length one is answered while the requests are built.
      ring.consumeRequests(ret);
      this.getRequests(pkt, skb, ret + 1, extraCount, dataLen);
      if (this.nMapOps >= MAX_PENDING_REQS) break;
    }
  }

  private nextPacket(): TxPacket {
    let p = this.packets[this.nPackets];
    if (p === undefined) {
      p = new TxPacket();
      this.packets.push(p);
    }
    this.nPackets++;
    p.nCopy = 0;
    clearArray(p.local);
    p.shared = false;
    p.nFrags = 0;
    p.nOverflow = 0;
    return p;
  }

  // xenvif_get_extras: consumes the extra slots; returns their count, or -1 after a FATAL.
  private getExtras(workToDo: number): number {
    const ring = this.ring;
    const e = this.extraScratch;
    let count = 0;
    do {
      if (workToDo-- <= 0) {
        this.vif.fatal('Missing extra info');
        return -1;
      }
      ring.copyRequest(ring.reqCons, ExtraInfo, e);
      ring.consumeRequests(1);
      count++;
      if (e.type === 0 || e.type >= XEN_NETIF_EXTRA_TYPE_MAX) {
        this.vif.fatal(`Invalid extra type: ${e.type}`);
        return -1;
      }
      // A repeated type overwrites the earlier one (the last wins), as Linux's memcpy into extras[type - 1].
      copyExtra(this.extras[e.type - 1]!, e);
      this.extraPresent[e.type - 1] = 1;
      this.extrasSeen = true;
    } while ((e.flags & XEN_NETIF_EXTRA_FLAG_MORE) !== 0);
    return count;
  }

  // xenvif_count_requests: snapshots the frag slots into this.slots[1..]; leaves first.size = the first slot's own
  // size. Returns the number of frag slots, or -1 after a FATAL or after answering the packet ERROR.
  private countRequests(first: TxRequestFields, extraCount: number, workToDo: number): number {
    const vif = this.vif;
    const ring = this.ring;
    const cons = ring.reqCons;
    copyTxReq(this.slots[0]!, first);
    if ((first.flags & NETTXF_more_data) === 0) return 0;
    let slots = 0;
    let dropErr = '';
    const dropped = this.errReqs[0]!;
    let moreData: boolean;
    do {
      if (slots >= workToDo) {
        vif.fatal(`Asked for ${workToDo} slots but exceeds this limit`);
        return -1;
      }
      // This guest is really using too many slots and considered malicious.
      if (slots >= vif.fatalSkbSlots) {
        vif.fatal(`Malicious frontend using ${slots} slots, threshold ${vif.fatalSkbSlots}`);
        return -1;
      }
      // Slots past the legacy limit (18) drop the packet; every slot is still consumed and answered.
      if (dropErr === '' && slots >= XEN_NETBK_LEGACY_SLOTS_MAX) {
        dropErr = `Too many slots (${slots}) exceeding limit (${XEN_NETBK_LEGACY_SLOTS_MAX}), dropping packet`;
      }
      const txp = dropErr === '' ? this.slots[slots + 1]! : dropped;
      ring.copyRequest(cons + slots, TxRequest, txp);
      // A frame >= 64 KiB overflows first->size; not fatal, as buggy frontends do it: drop the packet.
      if (dropErr === '' && txp.size > first.size) {
        dropErr = `Invalid tx request, slot size ${txp.size} > remaining size ${first.size}`;
      }
      first.size = (first.size - txp.size) & 0xffff;
      slots++;
      if (txp.offset + txp.size > XEN_PAGE_SIZE) {
        vif.fatal(`Cross page boundary, txp->offset: ${txp.offset}, size: ${txp.size}`);
        return -1;
      }
      moreData = (txp.flags & NETTXF_more_data) !== 0;
    } while (moreData);
    if (dropErr !== '') {
      vif.txError(dropErr);
      this.txErr(first, extraCount, slots);
      return -1;
    }
    this.slots[0]!.size = first.size;
    return slots;
  }

  // xenvif_tx_err: the first slot (with its extras) and nFrags frag slots are consumed and answered ERROR. The frag
  // requests are copied again first, since the responses overwrite their slots.
  private txErr(first: TxRequestFields, extraCount: number, nFrags: number): void {
    const ring = this.ring;
    const cons = ring.reqCons;
    for (let i = 0; i < nFrags; i++) ring.copyRequest(cons + i, TxRequest, this.errReqs[i]!);
    ring.consumeRequests(nFrags);
    this.makeTxResponse(first, extraCount, XEN_NETIF_RSP_ERROR);
    for (let i = 0; i < nFrags; i++) this.makeTxResponse(this.errReqs[i]!, 0, XEN_NETIF_RSP_ERROR);
    this.vif.stats.txErrorResponses += 1 + nFrags;
  }

  // xenvif_get_requests: header copy ops for exactly dataLen bytes (spanning slots, split at the local page
  // boundary), then a read-only map op for the rest of every slot; zero-length slots are answered OKAY at once.
  private getRequests(pkt: TxPacket, skb: SkBuff, nSlots: number, extraCount: number, dataLen: number): void {
    const vif = this.vif;
    const slots = this.slots;
    let destOff = skbPut(skb, dataLen);
    let remaining = dataLen;
    let s = 0;
    let lastPartial = false;
    while (remaining > 0) {
      const txp = slots[s]!;
      let amount = remaining > txp.size ? txp.size : remaining;
      const head = skb.head;
      const inPage = (head.byteOffset + destOff) & (XEN_PAGE_SIZE - 1);
      const pageStart = destOff - inPage;
      if (pageStart < 0) throw new Error(`netback: skb head at byte offset ${head.byteOffset} is not page-aligned`);
      // Don't cross a local page boundary (a grant copy must stay within one page on each side).
      if (inPage + amount > XEN_PAGE_SIZE) amount = XEN_PAGE_SIZE - inPage;
      const idx = this.pendingRing[this.pendingCons & PENDING_MASK]!;
      // The head as the copy's local page: itself when it starts the page (every head up to a page long).
      const dest = pageStart === 0 && head.byteOffset === 0 ? head : head.subarray(pageStart);
      this.addCopyOp(pkt, idx, txp.gref, txp.offset, dest, inPage, amount);
      destOff += amount;
      remaining -= amount;
      if (amount === txp.size) {
        // The copy covered the whole request: its slot is answered after the copy.
        copyTxReq(this.pendingReq[idx]!, txp);
        this.pendingExtra[idx] = s === 0 ? extraCount : 0;
        this.takePending(idx, ST_COPY);
        s++;
        lastPartial = false;
      } else {
        // Partially covered: the remainder is copied next (a page split) or mapped.
        txp.offset += amount;
        txp.size -= amount;
        lastPartial = true;
      }
    }
    pkt.shared = lastPartial && !vif.txGrantCopy;
    pkt.mapStart = this.nMapOps;
    let local: Page | null = null;
    let localOff = 0;
    for (; s < nSlots; s++) {
      const txp = slots[s]!;
      if (txp.size === 0) {
        // XSA-448: a zero-length slot is no frag; answer it now.
        this.makeTxResponse(txp, 0, XEN_NETIF_RSP_OKAY);
        vif.stats.txZeroLengthSlots++;
        continue;
      }
      if (vif.txGrantCopy) {
        // Copy mode: the rest of the packet is packed into fresh local pages, each op within one page on both sides.
        const idx = this.pendingRing[this.pendingCons & PENDING_MASK]!;
        copyTxReq(this.pendingReq[idx]!, txp);
        this.pendingExtra[idx] = s === 0 ? extraCount : 0;
        let srcOff = txp.offset;
        let left = txp.size;
        while (left > 0) {
          if (local === null || localOff === PAGE_SIZE) {
            local = allocPage(vif.ctx);
            pkt.local.push(local);
            pkt.localSize[pkt.local.length - 1] = 0;
            localOff = 0;
          }
          const n = left < PAGE_SIZE - localOff ? left : PAGE_SIZE - localOff;
          this.addCopyOp(pkt, idx, txp.gref, srcOff, local.bytes, localOff, n);
          pkt.localSize[pkt.local.length - 1]! += n;
          localOff += n;
          srcOff += n;
          left -= n;
        }
        this.takePending(idx, ST_COPY);
        continue;
      }
      const idx = this.pendingRing[this.pendingCons & PENDING_MASK]!;
      copyTxReq(this.pendingReq[idx]!, txp);
      this.pendingExtra[idx] = s === 0 ? extraCount : 0;
      this.takePending(idx, ST_MAPPING);
      const op = this.mapOps[this.nMapOps]!;
      op.dom = vif.domid;
      op.ref = txp.gref;
      op.flags = GNTMAP_host_map | GNTMAP_readonly;
      op.status = GNTST_okay;
      op.handle = INVALID_GRANT_HANDLE;
      op.bytes = null;
      this.mapIdx[this.nMapOps++] = idx;
      if (pkt.nFrags < MAX_SKB_FRAGS) {
        pkt.frags[pkt.nFrags++] = idx;
      } else {
        if (pkt.nskb === null) throw new Error('netback: frag overflow without a frag_list skb');
        pkt.overflow[pkt.nOverflow++] = idx;
      }
    }
  }

  // One grant copy op from (gref, srcOff) into local memory `buf` at `destOff`, grouped with the other ops of the
  // same slot (pending index): a slot is answered once, with the first failure of its ops.
  private addCopyOp(pkt: TxPacket, idx: number, gref: number, srcOff: number, buf: Uint8Array, destOff: number, len: number): void {
    const opNo = this.nCopyOps++;
    let op = this.copyOps[opNo];
    if (op === undefined) {
      op = newCopyOp();
      this.copyOps.push(op);
    }
    op.source.ref = gref;
    op.source.domid = this.vif.domid;
    op.source.offset = srcOff;
    op.source.buf = null;
    op.dest.ref = 0;
    op.dest.domid = DOMID_SELF;
    op.dest.offset = destOff;
    op.dest.buf = buf;
    op.len = len;
    op.flags = GNTCOPY_source_gref;
    op.status = GNTST_okay;
    const g = pkt.nCopy;
    if (g > 0 && pkt.copyIdx[g - 1] === idx) {
      pkt.copyOpCount[g - 1]!++;
    } else {
      pkt.copyIdx[g] = idx;
      pkt.copyOpStart[g] = opNo;
      pkt.copyOpCount[g] = 1;
      pkt.nCopy = g + 1;
    }
  }

  private takePending(idx: number, state: number): void {
    if (this.pendingCons === this.pendingProd) throw new Error('netback: pending ring is empty');
    if (this.state[idx] !== ST_FREE) throw new Error(`netback: pending_idx ${idx} taken while in state ${this.state[idx]}`);
    this.pendingCons = (this.pendingCons + 1) >>> 0;
    this.state[idx] = state;
  }

  // ---- the batched hypercalls ----

  private runGrantOps(): void {
    const vif = this.vif;
    const mapper = vif.mapper;
    const ops = this.copyOps;
    const nCopy = this.nCopyOps;
    if (nCopy > 0) mapper.copy(ops, nCopy);
    for (let i = 0; i < nCopy; i++) {
      const op = ops[i]!;
      op.dest.buf = null; // drop the view of the head: the skb may be freed and its head reused
      if (op.status === GNTST_okay) vif.events.copied(vif.domid, op.source.ref, op.len);
    }
    for (let i = 0; i < this.nMapOps; i++) {
      const op = this.mapOps[i]!;
      const idx = this.mapIdx[i]!;
      if (mapper.mapOp(op) !== GNTST_okay) continue;
      this.grantHandle[idx] = op.handle;
      const page = this.mmapPages[idx]!;
      const grant = this.grantIds[idx]!;
      grant.domid = vif.domid;
      grant.gref = op.ref;
      bindForeignPage(page, op.bytes!, grant);
      op.bytes = null;
      this.state[idx] = ST_MAPPED;
      vif.events.mapped(page);
    }
  }

  // ---- check and submit (xenvif_tx_check_gop, xenvif_tx_submit) ----

  private submit(): number {
    const vif = this.vif;
    let done = 0;
    for (let p = 0; p < this.nPackets; p++) {
      const pkt = this.packets[p]!;
      const skb = pkt.skb!;
      const nskb = pkt.nskb;
      pkt.skb = null;
      pkt.nskb = null;
      if (this.checkGop(pkt) !== GNTST_okay) {
        // check_gop answered and unmapped every slot; no frag was added, so freeing releases nothing of the guest's.
        kfreeSkb(skb);
        if (nskb !== null) kfreeSkb(nskb);
        for (let i = 0; i < pkt.local.length; i++) putPage(vif.ctx, pkt.local[i]!);
        clearArray(pkt.local);
        continue;
      }
      // Copy mode: the local pages become the frags (their allocation reference goes to the skb).
      for (let i = 0; i < pkt.local.length; i++) skbAddFrag(skb, pkt.local[i]!, 0, pkt.localSize[i]!);
      if (pkt.local.length > 0) vif.stats.txGrantCopied++;
      clearArray(pkt.local);
      if ((pkt.flags & NETTXF_csum_blank) !== 0) skb.ipSummed = CHECKSUM_PARTIAL;
      else if ((pkt.flags & NETTXF_data_validated) !== 0) skb.ipSummed = CHECKSUM_UNNECESSARY;

      const pages = this.attachPages;
      clearArray(pages);
      this.fillFrags(skb, pkt.frags, pkt.nFrags, pages);
      if (nskb !== null) this.handleFragList(skb, nskb, pkt, pages);

      skb.macHeader = skb.data;
      skb.networkHeader = skb.data + ETH_HLEN;
      skb.transportHeader = -1;
      skb.protocol = (skb.head[skb.data + 12]! << 8) | skb.head[skb.data + 13]!;

      const cs = checksumSetup(skb, vif.stats);
      if (!cs.ok) {
        vif.txError(`Can't setup checksum in net_tx_action: ${cs.error}`);
        vif.stats.txChecksumDrops++;
        // The pages go back through the design like any other (Linux: zerocopy_prepare, then kfree_skb).
        if (pages.length > 0) this.zerocopyPrepare(skb, pages);
        kfreeSkb(skb);
        continue;
      }
      if (skb.shinfo.gsoSize !== 0) {
        // GSO implies having the L4 header, which checksum_setup has just located.
        if (skb.transportHeader < 0) {
          vif.txError('GSO packet without a transport header');
          if (pages.length > 0) this.zerocopyPrepare(skb, pages);
          kfreeSkb(skb);
          continue;
        }
        const th = skb.transportHeader;
        const hdrlen = th - skb.data + (skb.head[th + 12]! >>> 4) * 4; // skb_tcp_all_headers
        const mss = skb.shinfo.gsoSize;
        const payload = skb.len - hdrlen;
        skb.shinfo.gsoSegs = payload > 0 ? Math.ceil(payload / mss) & 0xffff : 0;
      }
      vif.stats.rxBytes += skb.len;
      vif.stats.rxPackets++;
      done++;
      // Zerocopy is enabled only now, right before the stack sees the skb (xenvif_skb_zerocopy_prepare).
      if (pages.length > 0) this.zerocopyPrepare(skb, pages);
      vif.receive(skb);
    }
    clearArray(this.attachPages);
    return done;
  }

  // xenvif_tx_check_gop: every slot of a failed packet is answered here (ERROR for the failed ones, OKAY for the
  // others after unmapping them); fully copied slots of a good packet are answered OKAY now.
  private checkGop(pkt: TxPacket): number {
    let errSt = GNTST_okay;
    const last = pkt.nCopy - 1;
    for (let c = 0; c < pkt.nCopy; c++) {
      const idx = pkt.copyIdx[c]!;
      let st = GNTST_okay;
      const start = pkt.copyOpStart[c]!;
      for (let k = 0; k < pkt.copyOpCount[c]!; k++) {
        const s = this.copyOps[start + k]!.status;
        if (s !== GNTST_okay && st === GNTST_okay) st = s;
      }
      const answers = c < last || !pkt.shared;
      if (st === GNTST_okay) {
        if (answers) this.idxRelease(idx, XEN_NETIF_RSP_OKAY);
      } else {
        errSt = st;
        this.vif.stats.txCopyErrors++;
        this.vif.txError(
          `Grant copy of header failed! status: ${st} (${gntstName(st)}) pending_idx: ${idx} ref: ${this.copyOps[start]!.source.ref}`,
        );
        if (answers) {
          this.idxRelease(idx, XEN_NETIF_RSP_ERROR);
          this.vif.stats.txErrorResponses++;
        }
      }
    }
    const n = pkt.nFrags + pkt.nOverflow;
    for (let k = 0; k < n; k++) {
      const idx = k < pkt.nFrags ? pkt.frags[k]! : pkt.overflow[k - pkt.nFrags]!;
      const op = this.mapOps[pkt.mapStart + k]!;
      const st = op.status;
      if (st === GNTST_okay) {
        if (errSt !== GNTST_okay) {
          // An earlier (header copy) error: invalidate this frag; the slot shared with the header answers ERROR.
          this.unmapNow(idx);
          const bad = k === 0 && pkt.shared;
          this.idxRelease(idx, bad ? XEN_NETIF_RSP_ERROR : XEN_NETIF_RSP_OKAY);
          if (bad) this.vif.stats.txErrorResponses++;
        }
        continue;
      }
      this.vif.stats.txMapErrors++;
      this.vif.txError(`Grant map of ${k}. frag failed! status: ${st} (${gntstName(st)}) pending_idx: ${idx} ref: ${op.ref}`);
      this.idxRelease(idx, XEN_NETIF_RSP_ERROR);
      this.vif.stats.txErrorResponses++;
      if (errSt !== GNTST_okay) continue;
      // First error: invalidate the frags before it.
      for (let j = 0; j < k; j++) {
        const pj = j < pkt.nFrags ? pkt.frags[j]! : pkt.overflow[j - pkt.nFrags]!;
        this.unmapNow(pj);
        this.idxRelease(pj, XEN_NETIF_RSP_OKAY);
      }
      errSt = st;
    }
    return errSt;
  }

  // xenvif_fill_frags: each mapped page becomes a frag with one stack reference (get_page offsets the stack's put_page).
  private fillFrags(skb: SkBuff, list: Uint16Array, n: number, pages: Page[]): void {
    const ctx = this.vif.ctx;
    for (let i = 0; i < n; i++) {
      const idx = list[i]!;
      const page = this.mmapPages[idx]!;
      const req = this.pendingReq[idx]!;
      getPage(ctx, page);
      skbAddFrag(skb, page, req.offset, req.size);
      pages.push(page);
    }
  }

  // xenvif_handle_frag_list: more slots than MAX_SKB_FRAGS. Everything past the linear area is copied into local
  // pages, the foreign frags are put, and their grants are completed at once (two ubufs: sent += 2, success += 2).
  private handleFragList(skb: SkBuff, nskb: SkBuff, pkt: TxPacket, pages: Page[]): void {
    const vif = this.vif;
    const ctx = vif.ctx;
    vif.stats.txZerocopySent += 2;
    vif.stats.txFragOverflow++;
    this.fillFrags(nskb, pkt.overflow, pkt.nOverflow, pages);
    skbFragListAppend(skb, nskb);
    const local = this.localPages;
    clearArray(local);
    let offset = skbHeadlen(skb);
    while (offset < skb.len) {
      if (local.length >= MAX_SKB_FRAGS) throw new Error('netback: frag_list consolidation needs more than MAX_SKB_FRAGS pages');
      const page = allocPage(ctx);
      const len = skb.len - offset < PAGE_SIZE ? skb.len - offset : PAGE_SIZE;
      if (skbCopyBits(skb, offset, page.bytes, 0, len) !== 0) throw new Error('netback: skb_copy_bits failed on our own frag_list');
      ctx.stats.bytesCopied += len;
      this.localSizes[local.length] = len;
      local.push(page);
      offset += len;
    }
    const sh = skb.shinfo;
    for (let f = 0; f < sh.nrFrags; f++) putPage(ctx, sh.frags[f]!.page);
    sh.nrFrags = 0;
    for (let j = 0; j < local.length; j++) skbFillPageDesc(skb, j, local[j]!, 0, this.localSizes[j]!);
    sh.fragList = null;
    kfreeSkb(nskb);
    clearArray(local);
    for (let i = 0; i < pages.length; i++) this.deallocEnqueue(this.idxOf(pages[i]!));
    vif.stats.txZerocopySuccess += 2;
    clearArray(pages);
  }

  // xenvif_skb_zerocopy_prepare: attach the release design last; one completion counts the packet's pages.
  private zerocopyPrepare(skb: SkBuff, pages: Page[]): void {
    if (this.zcFreeTop === 0) throw new Error('netback: no zerocopy record free (more packets than pending slots in flight)');
    const rec = this.zcFree[--this.zcFreeTop]!;
    for (let i = 0; i < pages.length; i++) {
      const idx = this.idxOf(pages[i]!);
      this.zcRecord[idx] = rec;
      this.state[idx] = ST_INFLIGHT;
    }
    this.zcRemaining[rec] = pages.length;
    this.zcFailed[rec] = 0;
    this.inflightPackets++;
    this.vif.stats.txZerocopySent++;
    this.vif.ctx.design.attach(skb, pages, this.sink);
    clearArray(pages);
  }

  // xenvif_zerocopy_callback, per page: the design says this page is truly free.
  private zerocopyCallback(page: Page, success: boolean): void {
    const vif = this.vif;
    const idx = this.idxOf(page);
    if (idx < 0) {
      vif.stats.deallocRefused++;
      vif.log('err', `dealloc: page ${page.id} is not one of this queue's pages`);
      return;
    }
    if (this.state[idx] !== ST_INFLIGHT) {
      // Linux would BUG(); a second release must not become a second response or unmap.
      vif.stats.deallocRefused++;
      vif.log('err', `dealloc: pending_idx ${idx} (page ${page.id}) released while not in flight`);
      return;
    }
    this.deallocEnqueue(idx);
    const rec = this.zcRecord[idx]!;
    if (!success) this.zcFailed[rec] = 1;
    if (--this.zcRemaining[rec]! === 0) {
      this.inflightPackets--;
      if (this.zcFailed[rec] !== 0) vif.stats.txZerocopyFail++;
      else vif.stats.txZerocopySuccess++;
      this.zcFree[this.zcFreeTop++] = rec;
    }
  }

  private deallocEnqueue(idx: number): void {
    if (((this.deallocProd - this.deallocCons) >>> 0) >= MAX_PENDING_REQS) throw new Error('netback: dealloc ring overflow');
    this.state[idx] = ST_DEALLOC;
    this.deallocRing[this.deallocProd & PENDING_MASK] = idx;
    this.deallocProd = (this.deallocProd + 1) >>> 0;
  }

  // ---- unmap, recycle, respond ----

  // Our pending index of `page`, or -1 when it is not one of this queue's pages.
  private idxOf(page: Page): number {
    const id = page.id;
    if (id >= this.pageIdx.length) return -1;
    const idx = this.pageIdx[id]!;
    return idx >= 0 && this.mmapPages[idx] === page ? idx : -1;
  }

  private setPageIdx(page: Page, idx: number): void {
    const id = page.id;
    if (id >= this.pageIdx.length) {
      const grown = new Int32Array(Math.max(id + 1, this.pageIdx.length * 2)).fill(-1);
      grown.set(this.pageIdx);
      this.pageIdx = grown;
    }
    this.pageIdx[id] = idx;
  }

  private unmapHandle(idx: number): void {
    const handle = this.grantHandle[idx]!;
    if (handle === INVALID_GRANT_HANDLE) throw new Error(`netback: Trying to unmap invalid handle! pending_idx: 0x${idx.toString(16)}`);
    this.grantHandle[idx] = INVALID_GRANT_HANDLE;
    const st = this.vif.mapper.unmap(handle);
    if (st !== GNTST_okay) throw new Error(`netback: Unmap fail: pending_idx ${idx} handle 0x${handle.toString(16)} status ${st}`);
  }

  // xenvif_idx_unmap: one grant back at once (a failed packet's good frags).
  private unmapNow(idx: number): void {
    this.unmapHandle(idx);
    const pages = this.retPages;
    clearArray(pages);
    pages.push(this.mmapPages[idx]!);
    this.vif.events.returned(pages, 1);
    clearArray(pages);
    this.recyclePage(idx);
  }

  // The mapping's own reference goes with the unmap; a page the stack still holds (a design returned it early) is
  // retired and replaced, so the pending index can be reused without touching it.
  private recyclePage(idx: number): void {
    const page = this.mmapPages[idx]!;
    if (page.count === 1) {
      unbindForeignPage(this.vif.ctx, page);
      return;
    }
    this.vif.stats.pagesRetired++;
    this.vif.log('err', `pending_idx ${idx}: page ${page.id} still has ${page.count - 1} stack references after its grant went back`);
    this.pageIdx[page.id] = -1;
    const fresh = newPage(this.vif.ctx);
    this.mmapPages[idx] = fresh;
    this.setPageIdx(fresh, idx);
    // The retired page keeps its grant identity; the index gets a new one for its next mapping.
    this.grantIds[idx] = { domid: 0, gref: 0 };
  }

  // xenvif_idx_release: answer the slot, and recycle the pending index before the response is pushed.
  private idxRelease(idx: number, status: number): void {
    this.makeTxResponse(this.pendingReq[idx]!, this.pendingExtra[idx]!, status);
    this.state[idx] = ST_FREE;
    this.pendingRing[this.pendingProd & PENDING_MASK] = idx;
    this.pendingProd = (this.pendingProd + 1) >>> 0;
  }

  // make_tx_response: the request's response, then RSP_NULL for each of its extra slots. The request's grant is
  // done with (copied, unmapped, or refused): it goes on the next grant-return notice, unless it is a multicast
  // control request, whose gref means nothing.
  private makeTxResponse(req: Readonly<TxRequestFields>, extraCount: number, status: number, hasGrant = true): void {
    const ring = this.ring;
    const r = this.rsp;
    r.id = req.id;
    r.status = status;
    ring.putResponse(TxResponse, r);
    if (hasGrant) {
      this.retGrefs[this.nRetGrefs++] = req.gref;
      if (this.nRetGrefs === MAX_PENDING_REQS) this.postGrantReturns();
    }
    for (let i = 0; i < extraCount; i++) {
      r.id = ring.view.getUint16(ring.slotOffset(ring.rspProdPvt) + TxResponse.OFF_ID, true);
      r.status = XEN_NETIF_RSP_NULL;
      ring.putResponse(TxResponse, r);
    }
    this.pushPending = true;
  }

  // push_tx_responses for everything written since the last push, then the batch's grant-return notice.
  private flushResponses(): void {
    if (this.pushPending) {
      this.pushPending = false;
      if (this.ring.pushResponsesAndCheckNotify() && !this.vif.guestDead) {
        this.vif.stats.txNotifies++;
        this.port.notify();
      }
    }
    if (this.nRetGrefs > 0) this.postGrantReturns();
  }

  private postGrantReturns(): void {
    this.vif.grantsReturned(this.retGrefs, this.nRetGrefs);
    this.nRetGrefs = 0;
  }
}

// Empties an array by pops: `length = 0` is a runtime call (~30 ns), a pop of a short array is inlined.
function clearArray(a: unknown[]): void {
  while (a.length !== 0) a.pop();
}

// The one successful Result<void>: results are immutable, so a shared object spares an allocation per packet.
const OK: Result<void> = ok(undefined);

// xenvif_set_skb_gso: null, or the FATAL message.
function setSkbGso(skb: SkBuff, gso: Readonly<ExtraInfoFields>): string | null {
  if (gso.gso.size === 0) return 'GSO size must not be zero.';
  switch (gso.gso.type) {
    case XEN_NETIF_GSO_TYPE_TCPV4:
      skb.shinfo.gsoType = SKB_GSO_TCPV4;
      break;
    case XEN_NETIF_GSO_TYPE_TCPV6:
      skb.shinfo.gsoType = SKB_GSO_TCPV6;
      break;
    default:
      return `Bad GSO type ${gso.gso.type}.`;
  }
  skb.shinfo.gsoSize = gso.gso.size;
  return null;
}

/** The counters checksum_setup updates. */
export interface ChecksumSetupStats {
  rxGsoChecksumFixup: number;
}

/**
 * netback's checksum_setup (netback.c) and skb_checksum_setup (net/core/skbuff.c): a GSO skb without
 * csum_blank is forced to CHECKSUM_PARTIAL with its pseudo-header checksum recomputed; a CHECKSUM_PARTIAL skb
 * gets csumStart/csumOffset and its transport header from its IPv4/IPv6 and TCP/UDP headers (pulled into the
 * linear area). Peer data: returns the exact reason it cannot, never throws.
 */
export function checksumSetup(skb: SkBuff, stats: ChecksumSetupStats): Result<void> {
  let recalculate = false;
  if (skb.ipSummed !== CHECKSUM_PARTIAL && skb.shinfo.gsoSize !== 0) {
    stats.rxGsoChecksumFixup++;
    skb.ipSummed = CHECKSUM_PARTIAL;
    recalculate = true;
  }
  if (skb.ipSummed !== CHECKSUM_PARTIAL) return OK;
  if (skb.protocol === ETH_P_IP) return checksumSetupIpv4(skb, recalculate);
  if (skb.protocol === ETH_P_IPV6) return checksumSetupIpv6(skb, recalculate);
  return err(`protocol 0x${skb.protocol.toString(16).padStart(4, '0')} is not IPv4 or IPv6`);
}

// skb_maybe_pull_tail: make `len` bytes (from data) linear, pulling up to `max` eagerly.
function maybePullTail(skb: SkBuff, len: number, max: number, what: string): Result<void> {
  if (skbHeadlen(skb) >= len) return OK;
  if (max > skb.len) max = skb.len;
  if (!pskbMayPull(skb, max)) return err(`${what} cannot be pulled`);
  if (skbHeadlen(skb) < len) return err(`${what} is truncated: expected >= ${len} bytes but got ${skb.len}`);
  return OK;
}

function get16(b: Uint8Array, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}

function checksumSetupIpv4(skb: SkBuff, recalculate: boolean): Result<void> {
  const nh = ETH_HLEN;
  let r = maybePullTail(skb, nh + IPV4_HDR_LEN, nh + MAX_IP_HDR_LEN, 'IPv4 header');
  if (!r.ok) return r;
  let h = skb.head;
  let d = skb.data;
  const ihl = (h[d + nh]! & 0x0f) * 4;
  if (ihl < IPV4_HDR_LEN) return err(`IPv4 ihl is corrupt: expected >= ${IPV4_HDR_LEN} but got ${ihl}`);
  if ((get16(h, d + nh + 6) & (IP_MF | IP_OFFSET)) !== 0) return err('IPv4 packet is a fragment');
  const proto = h[d + nh + 9]!;
  const off = nh + ihl;
  r = setupL4(skb, proto, off, 'IPv4');
  if (!r.ok) return r;
  if (recalculate) {
    h = skb.head;
    d = skb.data;
    const pseudo =
      get16(h, d + nh + 12) + get16(h, d + nh + 14) + get16(h, d + nh + 16) + get16(h, d + nh + 18) + proto + (skb.len - off);
    writeCsumField(skb, csumFold16(pseudo));
  }
  return OK;
}

function checksumSetupIpv6(skb: SkBuff, recalculate: boolean): Result<void> {
  const nh = ETH_HLEN;
  let r = maybePullTail(skb, nh + IPV6_HDR_LEN, nh + MAX_IPV6_HDR_LEN, 'IPv6 header');
  if (!r.ok) return r;
  let nexthdr = skb.head[skb.data + nh + 6]!;
  const payloadLen = get16(skb.head, skb.data + nh + 4);
  let off = IPV6_HDR_LEN;
  let done = false;
  let fragment = false;
  while (off <= IPV6_HDR_LEN + payloadLen && !done) {
    switch (nexthdr) {
      case NEXTHDR_DEST:
      case NEXTHDR_HOP:
      case NEXTHDR_ROUTING: {
        r = maybePullTail(skb, nh + off + 2, nh + MAX_IPV6_HDR_LEN, 'IPv6 option header');
        if (!r.ok) return r;
        const p = skb.data + nh + off;
        nexthdr = skb.head[p]!;
        off += (skb.head[p + 1]! + 1) << 3;
        break;
      }
      case NEXTHDR_AUTH: {
        r = maybePullTail(skb, nh + off + 2, nh + MAX_IPV6_HDR_LEN, 'IPv6 AH header');
        if (!r.ok) return r;
        const p = skb.data + nh + off;
        nexthdr = skb.head[p]!;
        off += (skb.head[p + 1]! + 2) << 2;
        break;
      }
      case NEXTHDR_FRAGMENT: {
        r = maybePullTail(skb, nh + off + 8, nh + MAX_IPV6_HDR_LEN, 'IPv6 fragment header');
        if (!r.ok) return r;
        const p = skb.data + nh + off;
        if ((get16(skb.head, p + 2) & 0xfff9) !== 0) fragment = true; // IP6_OFFSET | IP6_MF
        nexthdr = skb.head[p]!;
        off += 8;
        break;
      }
      default:
        done = true;
        break;
    }
  }
  if (!done) return err('IPv6 extension headers are corrupt: no upper-layer header found');
  if (fragment) return err('IPv6 packet is a fragment');
  r = setupL4(skb, nexthdr, nh + off, 'IPv6');
  if (!r.ok) return r;
  if (recalculate) {
    const h = skb.head;
    const ip = skb.data + nh;
    let sum = 0;
    for (let i = 8; i < 40; i += 2) sum += get16(h, ip + i);
    const l4len = skb.len - nh - off;
    sum += (l4len >>> 16) + (l4len & 0xffff) + nexthdr;
    writeCsumField(skb, csumFold16(sum));
  }
  return OK;
}

// skb_checksum_setup_ip + skb_partial_csum_set: `off` is the transport header's offset from data (the MAC header).
function setupL4(skb: SkBuff, proto: number, off: number, family: string): Result<void> {
  let csumOff: number;
  let hlen: number;
  let maxLen: number;
  if (proto === IPPROTO_TCP) {
    csumOff = TCP_CSUM_OFFSET;
    hlen = TCP_HDR_LEN;
    maxLen = MAX_TCP_HDR_LEN;
  } else if (proto === IPPROTO_UDP) {
    csumOff = UDP_CSUM_OFFSET;
    hlen = UDP_HDR_LEN;
    maxLen = UDP_HDR_LEN;
  } else {
    return err(`${family} protocol ${proto} is not TCP or UDP`);
  }
  const r = maybePullTail(skb, off + hlen, off + maxLen, proto === IPPROTO_TCP ? 'TCP header' : 'UDP header');
  if (!r.ok) return r;
  skb.ipSummed = CHECKSUM_PARTIAL;
  skb.csumStart = skb.data + off;
  skb.csumOffset = csumOff;
  skb.transportHeader = skb.data + off;
  return OK;
}

function writeCsumField(skb: SkBuff, v: number): void {
  const at = skb.csumStart + skb.csumOffset;
  skb.head[at] = v >>> 8;
  skb.head[at + 1] = v & 0xff;
}
