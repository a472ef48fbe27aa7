// Netfront: the guest half of the Xen split network driver (Linux drivers/net/xen-netfront.c), as a synchronous
// core with bounded work functions that a loop drives: transmit(budget, source), pollTx(), pollRx(budget),
// handleGrantReturns(batch). TX and RX are named from the frontend's point of view, as Xen does.
//
// TX: a frame is written into pages of the guest's buffer pool, each page is granted read-only to the backend,
// and one tx_request per page goes on the ring (the first carries the packet's total length, NETTXF_more_data
// chains the rest, a GSO extra follows the first when the frame asks for segmentation). The driver KEEPS each
// grant until the backend posts it back as truly free (grant-return batches on a MessagePort, not the TX
// response): then gnttab_end_foreign_access_ref must succeed, the page is poisoned with 0xdb and reused, so a
// late read by the backend shows up as a corrupt payload downstream. TX responses only free request ids.
// RX: the ring is kept full of writable grants of pool pages; responses are reassembled (more_data, extras),
// access is ended (it must succeed), the frame is verified (headers, checksum, payload pattern) and the page is
// re-posted.
// Since XSA-396 (Linux 5.17): a response for an unknown id, a response producer overflow, or a grant the
// backend still maps when it should be free marks the device `broken`: it stops working until reconnect.
//
// Departures from Linux: one queue and one event channel (no multi-queue, no split channels); pages are reused
// by the driver instead of being freed to the page allocator; a TX response never releases a grant (the
// grant-return port does: this project's "completion on true free" design); grant returns are still handled
// while broken, since ending access is always safe and reconnect needs the pages back; a frame larger than one
// page is built in a scratch buffer and copied into its pages (Linux's socket copy).

import type { Clock, TimerId } from '../shared/clock.js';
import { ETH_HLEN } from '../shared/ether.js';
import type { EventPort, EvtchnDomain } from '../shared/evtchn.js';
import { GNTTAB_DEFERRED_RETRY_MS, GNTTAB_NR_RESERVED_ENTRIES, hexAlt, type GrantTable } from '../shared/gnttab.js';
import { XEN_PAGE_SIZE, type GuestMemory } from '../shared/memory.js';
import {
  ExtraInfo,
  NETRXF_extra_info,
  NETRXF_more_data,
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_extra_info,
  NETTXF_more_data,
  NET_RX_RING_SIZE,
  NET_TX_RING_SIZE,
  RxRequest,
  RxResponse,
  TxRequest,
  TxResponse,
  XEN_NETIF_EXTRA_FLAG_MORE,
  XEN_NETIF_EXTRA_TYPE_GSO,
  XEN_NETIF_EXTRA_TYPE_MAX,
  XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_MAX_TX_SIZE,
  XEN_NETIF_NR_SLOTS_MIN,
  XEN_NETIF_RSP_DROPPED,
  XEN_NETIF_RSP_ERROR,
  XEN_NETIF_RSP_NULL,
  XEN_NETIF_RSP_OKAY,
  XEN_NETIF_RX_SLOT_SIZE,
  XEN_NETIF_TX_SLOT_SIZE,
  validateRxResponse,
  validateTxResponse,
  type ExtraInfoFields,
  type RxRequestFields,
  type RxResponseFields,
  type TxRequestFields,
  type TxResponseFields,
} from '../shared/netif.js';
import { err, ok, type Result } from '../shared/result.js';
import { FrontRing, RING_OVERFLOW, sharedRingInit } from '../shared/ring.js';
import { FrameVerifier, RX_BAD_CHECKSUM, RX_BAD_FRAME, RX_CORRUPT_PAYLOAD, RX_UNVERIFIED, RX_VERIFIED } from './traffic.js';

/** transmit() publishes its requests every this many frames and after the last (Linux defers with xmit_more). */
export const NETFRONT_TX_PUSH_EVERY = 8;
/** Byte a page is filled with once its grant came back: any later read of it shows as a corrupt payload. */
export const NETFRONT_POISON = 0xdb;

// fill() on a SharedArrayBuffer view is ~17x slower than set() from a plain buffer (1258 vs 74 ns per page here).
const POISON_PAGE = new Uint8Array(XEN_PAGE_SIZE).fill(NETFRONT_POISON);
// POISON_PAGE's prefixes by length: poisoning a range costs a set() without a subarray() allocation per call.
const POISON_BY_LEN: readonly Uint8Array[] = Array.from({ length: XEN_PAGE_SIZE + 1 }, (_, n) => POISON_PAGE.subarray(0, n));
/** Most pages one skb may span before netfront linearizes it (xen-netfront.c MAX_XEN_SKB_FRAGS). */
export const MAX_XEN_SKB_FRAGS = 65536 / XEN_PAGE_SIZE + 1;
/** An RX packet whose first slot is this short may use one slot more (xen-netfront.c RX_COPY_THRESHOLD). */
export const RX_COPY_THRESHOLD = 256;
/** Linux netfront refills RX when fewer than this many requests are outstanding (xen-netfront.c NET_RX_SLOTS_MIN). */
export const NET_RX_SLOTS_MIN = XEN_NETIF_NR_SLOTS_MIN + 1;
/** How often stuck grants are retried, as Linux retries its deferred revokes (drivers/xen/grant-table.c). */
export const NETFRONT_REVOKE_RETRY_MS = GNTTAB_DEFERRED_RETRY_MS;
/**
 * How long a TX grant ended at teardown without its return keeps its ref: a late return from the old backend
 * then names a ref nobody reuses (ours: Linux has no grant-return notices).
 */
export const NETFRONT_QUARANTINE_MS = 10_000;
/** Largest frame netfront reassembles on RX: XEN_NETIF_NR_SLOTS_MIN + 1 full slots. */
export const NETFRONT_RX_MAX_FRAME = (XEN_NETIF_NR_SLOTS_MIN + 1) * XEN_PAGE_SIZE;

// What each grant reference netfront holds is used for (indexed by ref).
const REF_NONE = 0;
/** Granted read-only for a queued TX frame; waits for the backend's grant return. */
const REF_TX = 1;
/** Returned by the backend but still mapped: the device is broken and the page is never reused until ended. */
const REF_TX_STUCK = 2;
/** Outstanding TX grant of a connection torn down before the backend returned it, still mapped. */
const REF_TX_ORPHAN = 3;
/** Granted writable and posted on the RX ring. */
const REF_RX_POSTED = 4;
/** An RX buffer between response and re-post, still granted (its slot was answered with an error or an extra). */
const REF_RX_IDLE_GRANTED = 5;
/** An RX buffer between response and re-post whose access was ended (the ref is claimed, not granted). */
const REF_RX_IDLE_CLAIMED = 6;
/** A shared ring page. */
const REF_RING = 7;
/** An RX buffer or ring page still mapped when access had to end (broken, or at teardown). */
const REF_STUCK = 8;
/** A TX grant ended without its return (torn-down connection): page reused, ref held until the late return or a timeout. */
const REF_QUARANTINE = 9;

/** What the backend advertises (drivers/net/xen-netback/xenbus.c keys). */
export interface NetbackFeatures {
  readonly sg: boolean;
  readonly gsoTcpv4: boolean;
  readonly rxCopy: boolean;
  readonly multiQueueMaxQueues: number;
  readonly splitEventChannels: boolean;
}

/** What the frontend publishes after setupRings (xen-netfront.c setup_netfront / write_queue_xenstore_keys). */
export interface NetfrontRings {
  readonly txRingRef: number;
  readonly rxRingRef: number;
  readonly eventChannel: number;
}

/** One frame to transmit, as a TxSource hands it out; written by netfront straight into its pages. */
export interface TxPacket {
  /** Whole frame length in bytes (ETH_HLEN .. XEN_NETIF_MAX_TX_SIZE). */
  readonly len: number;
  /** Offset of the frame in its first page (0 .. XEN_PAGE_SIZE - ETH_HLEN), as skb->data's offset in its page. */
  readonly pageOffset: number;
  /** The L4 checksum holds only the pseudo-header sum: send NETTXF_csum_blank | NETTXF_data_validated. */
  readonly csumBlank: boolean;
  /** MSS for a GSO frame (XEN_NETIF_GSO_TYPE_TCPV4), 0 for none. */
  readonly gsoSize: number;
  /** Writes the whole frame contiguously at `off`. */
  writeTo(buf: Uint8Array, off: number): void;
  /**
   * Optional: writeTo at byte `at` of the whole guest memory `mem`, `view` being a DataView of its buffer (netfront
   * builds both once, so a frame in one page is written without looking up the page view's buffer and offset).
   */
  writeAt?(mem: Uint8Array, view: DataView, at: number): void;
  /**
   * Optional: writes the frame across `count` pages, from `offset` to the end of pages[0], then from 0 in each
   * next page (a frame spanning pages is then written in place instead of through netfront's scratch buffer).
   */
  writePages?(pages: readonly Uint8Array[], count: number, offset: number): void;
}

/** Where transmit(budget) takes frames from. */
export interface TxSource {
  /** The largest frame next() may return (netfront only asks when that much fits). */
  readonly maxFrameLen: number;
  /** The next frame to send, or null when nothing is due; the object may be reused after netfront returns. */
  next(now: number): TxPacket | null;
}

/** Called for each received frame that passed verification (RX_VERIFIED or RX_UNVERIFIED). */
export type RxFrameHandler = (buf: Uint8Array, off: number, len: number, verdict: number) => void;

/** A log sink, levels as Linux's dev_warn/dev_alert. */
export type NetfrontLog = (level: 'debug' | 'info' | 'warn' | 'alert', message: string) => void;

/** Options of a Netfront. */
export interface NetfrontOptions {
  /** This guest's domid (for logs). */
  readonly domid: number;
  readonly backendDomid: number;
  readonly memory: GuestMemory;
  readonly gnttab: GrantTable;
  /** This guest's event channels. */
  readonly evtchn: EvtchnDomain;
  /** The frames netfront owns: two ring pages plus the buffer pool (RX buffers and TX pages). */
  readonly frames: readonly number[];
  readonly clock: Clock;
  /** RX buffers kept posted (default NET_RX_RING_SIZE). */
  readonly rxBuffers?: number;
  /** Fill RX pages with 0xdb before re-posting them, so a response claiming bytes the backend never wrote shows. Default true. */
  readonly poisonRx?: boolean;
  /** Every good received frame, after verification (e.g. the TCP sender's ACK input). */
  readonly onFrame?: RxFrameHandler;
  /** Called from the event-channel handler, after the event is recorded (the loop's wake-up). */
  readonly onEvent?: () => void;
  readonly log?: NetfrontLog;
  /** Test seam: start the ring indices here (near 2^32 to test the wrap). Xen always starts at 0. */
  readonly ringStartIndex?: number;
}

/** Counters for the demo and the audit. */
export interface NetfrontStats {
  txPackets: number;
  txBytes: number;
  txSlots: number;
  txGso: number;
  txCsumBlank: number;
  /** Frames refused: device broken or not connected, too big for the wire format, SG or GSO not offered. */
  txDropped: number;
  /** transmit() stops for lack of ring slots, pool pages or grant references. */
  txBusy: number;
  txNotifies: number;
  txRspOkay: number;
  txRspError: number;
  txRspDropped: number;
  txRspNull: number;
  /** Responses with XEN_NETIF_RSP_ERROR or XEN_NETIF_RSP_DROPPED. */
  txErrors: number;
  /** TX grants made. */
  grantsGranted: number;
  /** TX grants the backend returned and whose access ended (page poisoned and back in the pool). */
  grantsReturned: number;
  /** TX grants ended at disconnect without a return (the backend had already let go). */
  grantsReclaimed: number;
  /** Returned grants the backend still mapped (gnttab_end_foreign_access_ref failed): a backend bug. */
  endAccessFailures: number;
  /** Grant returns naming a ref that is not an outstanding TX grant. */
  badGrantReturns: number;
  /** Returns of TX grants already ended at teardown (the old backend's late notices): accepted, nothing to do. */
  lateGrantReturns: number;
  grantReturnBatches: number;
  rxPackets: number;
  rxBytes: number;
  rxSlots: number;
  rxNotifies: number;
  rxExtras: number;
  rxGso: number;
  /** Malformed RX responses (error status, bad offset or id, missing extras or slots, too many slots). */
  rxErrors: number;
  /** Packets dropped because of such responses. */
  rxDropped: number;
  rxVerified: number;
  rxUnverified: number;
  rxBadFrames: number;
  rxChecksumErrors: number;
  /** Received payloads that do not match their pattern (poisoned or misplaced pages). */
  rxCorruptPayloads: number;
  events: number;
  /** notify() calls that failed (backend port not bound yet, or gone). */
  notifyErrors: number;
}

function zeroStats(): NetfrontStats {
  return {
    txPackets: 0,
    txBytes: 0,
    txSlots: 0,
    txGso: 0,
    txCsumBlank: 0,
    txDropped: 0,
    txBusy: 0,
    txNotifies: 0,
    txRspOkay: 0,
    txRspError: 0,
    txRspDropped: 0,
    txRspNull: 0,
    txErrors: 0,
    grantsGranted: 0,
    grantsReturned: 0,
    grantsReclaimed: 0,
    endAccessFailures: 0,
    badGrantReturns: 0,
    lateGrantReturns: 0,
    grantReturnBatches: 0,
    rxPackets: 0,
    rxBytes: 0,
    rxSlots: 0,
    rxNotifies: 0,
    rxExtras: 0,
    rxGso: 0,
    rxErrors: 0,
    rxDropped: 0,
    rxVerified: 0,
    rxUnverified: 0,
    rxBadFrames: 0,
    rxChecksumErrors: 0,
    rxCorruptPayloads: 0,
    events: 0,
    notifyErrors: 0,
  };
}

/** Where netfront's frames are, for leak checks: the counts always add up to the frames it was given. */
export interface NetfrontAudit {
  readonly total: number;
  readonly pool: number;
  readonly rings: number;
  /** TX pages granted and not yet returned (including orphans of a torn-down connection). */
  readonly tx: number;
  readonly rx: number;
  /** Pages whose grant could not be ended (still mapped by the backend): never reused until it can. */
  readonly stuck: number;
}

/** What transmitting one frame did (xennet_start_xmit's outcomes). */
export type XmitStatus = 'sent' | 'busy' | 'dropped';

// ---- Grant-return latency --------------------------------------------------------------------------------

const SUB_BUCKETS = 16;
const EXPONENTS = 48;
// 2^-e, exact: scaling by it is exact, as the division by 2 ** e it replaces.
const INV_POW2 = Float64Array.from({ length: EXPONENTS }, (_, e) => 2 ** -e);

/**
 * A fixed-size log-linear histogram of latencies in microseconds (16 buckets per power of two, ~6% wide):
 * bounded memory however many samples arrive; quantiles are read from bucket bounds.
 */
export class LatencyHistogram {
  /** Bucket counts: [0] holds samples below 1 us; then 16 buckets per power of two. */
  readonly counts = new Uint32Array(1 + EXPONENTS * SUB_BUCKETS);
  count = 0;
  sum = 0;
  min = Infinity;
  max = 0;

  /** Records one sample (microseconds). */
  record(us: number): void {
    const v = us > 0 ? us : 0;
    this.counts[LatencyHistogram.bucketOf(v)]!++;
    this.count++;
    this.sum += v;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
  }

  /** The bucket index of a value. */
  static bucketOf(us: number): number {
    if (!(us >= 1)) return 0;
    if (us < 0x800_0000) {
      // Integers only below 2^27 us: e = floor(log2(us)) by clz32, sub = floor(us * 16 / 2^e) - 16 by a shift.
      const e = 31 - Math.clz32(us);
      return 1 + e * SUB_BUCKETS + ((us * SUB_BUCKETS) >>> e) - SUB_BUCKETS;
    }
    const e = Math.min(EXPONENTS - 1, Math.floor(Math.log2(us)));
    const sub = Math.min(SUB_BUCKETS - 1, Math.floor((us * INV_POW2[e]! - 1) * SUB_BUCKETS));
    return 1 + e * SUB_BUCKETS + sub;
  }

  /** The upper bound (us) of bucket `i`: every sample counted there is below it. */
  static bucketUpper(i: number): number {
    if (i === 0) return 1;
    const e = Math.floor((i - 1) / SUB_BUCKETS);
    const sub = (i - 1) % SUB_BUCKETS;
    return 2 ** e * (1 + (sub + 1) / SUB_BUCKETS);
  }

  /** The q-quantile (0..1) as its bucket's upper bound, capped at the largest sample; 0 when empty. */
  quantile(q: number): number {
    return LatencyHistogram.quantileOf(this.counts, q, this.max);
  }

  /** The q-quantile of any counts array of this layout (e.g. several guests' histograms summed). */
  static quantileOf(counts: ArrayLike<number>, q: number, max = Infinity): number {
    let total = 0;
    for (let i = 0; i < counts.length; i++) total += counts[i]!;
    if (total === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * total));
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      seen += counts[i]!;
      if (seen >= rank) return Math.min(max, LatencyHistogram.bucketUpper(i));
    }
    return max;
  }

  /** Forgets every sample. */
  reset(): void {
    this.counts.fill(0);
    this.count = 0;
    this.sum = 0;
    this.min = Infinity;
    this.max = 0;
  }
}

// ---- The driver ------------------------------------------------------------------------------------------

/**
 * One netfront device with one queue (struct netfront_info + netfront_queue). Single-threaded: the guest's own
 * thread calls everything; the backend reaches it only through the rings, the grant table and the event channel.
 */
export class Netfront {
  readonly stats: NetfrontStats = zeroStats();
  /** Grant-return latency, push to return, microseconds. */
  readonly latency = new LatencyHistogram();
  readonly verifier = new FrameVerifier();
  /** Set by a backend that broke the protocol (XSA-396 checks): nothing more is sent or received until reconnect. */
  broken = false;
  /** Why the device is broken, exactly, or null. */
  brokenReason: string | null = null;
  /** The first RX problem seen (malformed response or frame), for diagnostics. */
  rxLastError: string | null = null;
  /** The backend's features once connected, else null. */
  features: NetbackFeatures | null = null;
  /** True between connect() and disconnect(). */
  connected = false;
  /** Set by the event handler; the loop clears it with takeEvent(). */
  eventPending = false;

  private readonly opts: NetfrontOptions;
  private readonly memory: GuestMemory;
  private readonly gnttab: GrantTable;
  private readonly clock: Clock;
  private readonly backend: number;
  private readonly nrFrames: number;
  private readonly rxBufferCount: number;
  private readonly poisonRx: boolean;
  // The frame pool: a stack of free frame numbers.
  private readonly pool: Int32Array;
  private poolTop = 0;
  // Per grant reference: what it is used for, its frame, and when its TX frame was pushed.
  private readonly refState: Uint8Array;
  private readonly refFrame: Int32Array;
  // Per frame: the bytes [dirtyLo, dirtyHi) that may differ from the poison byte (empty when lo >= hi). Poisoning
  // a returned TX page rewrites only those, and still leaves the whole page 0xdb: a 64-byte frame costs a 64-byte set.
  private readonly dirtyLo: Uint16Array;
  private readonly dirtyHi: Uint16Array;
  private readonly pushTime: Float64Array;
  private readonly stuck: number[] = [];
  // Refs of TX grants ended at teardown without their return, and when; released after NETFRONT_QUARANTINE_MS.
  private readonly quarantine: number[] = [];
  private readonly quarantineAt: Float64Array;
  private maintenance: TimerId | undefined;
  private txOutstanding = 0;
  // TX request ids (xen-netfront.c tx_link / TX_PENDING): pending until their response arrives.
  private readonly txIdPending = new Uint8Array(NET_TX_RING_SIZE);
  private readonly txIdFree = new Int32Array(NET_TX_RING_SIZE);
  private txIdFreeTop = 0;
  // The grant each pending id's slot carries, and which outstanding TX grants the backend already answered.
  private readonly txIdRef = new Int32Array(NET_TX_RING_SIZE).fill(-1);
  private readonly refAnswered: Uint8Array;
  private answeredOutstanding = 0;
  // RX: the ref posted in each ring slot (-1: none), and buffers between a response and their re-post.
  private readonly rxSlotRef = new Int32Array(NET_RX_RING_SIZE).fill(-1);
  private readonly rxIdle: Int32Array;
  private rxIdleTop = 0;
  private rxHeld = 0;
  private tx: FrontRing | null = null;
  private rx: FrontRing | null = null;
  private txRingRef = -1;
  private rxRingRef = -1;
  private port = -1;
  private evport: EventPort | null = null;
  // Scratch, built once.
  private readonly txScratch = new Uint8Array(XEN_NETIF_MAX_TX_SIZE);
  private readonly txPageViews: Uint8Array[] = [];
  private readonly memView: DataView;
  private readonly rxScratch = new Uint8Array(NETFRONT_RX_MAX_FRAME);
  private readonly txReq: TxRequestFields = TxRequest.create();
  private readonly txRsp: TxResponseFields = TxResponse.create();
  private readonly extra: ExtraInfoFields = ExtraInfo.create();
  private readonly rxReq: RxRequestFields = RxRequest.create();
  private readonly rxRsp: RxResponseFields = RxResponse.create();
  private readonly pageRefs = new Int32Array(MAX_XEN_SKB_FRAGS + 1);

  constructor(opts: NetfrontOptions) {
    this.opts = opts;
    this.memory = opts.memory;
    this.gnttab = opts.gnttab;
    this.clock = opts.clock;
    this.backend = opts.backendDomid;
    const frames = opts.frames;
    const seen = new Set<number>();
    for (const f of frames) {
      if (!opts.memory.hasFrame(f)) throw new RangeError(`frame is out of range: expected 0 <= x < ${opts.memory.nrFrames} but got ${f}`);
      if (seen.has(f)) throw new RangeError(`frame ${f} is given twice`);
      seen.add(f);
    }
    this.rxBufferCount = opts.rxBuffers ?? NET_RX_RING_SIZE;
    if (!Number.isInteger(this.rxBufferCount) || this.rxBufferCount < 1 || this.rxBufferCount > NET_RX_RING_SIZE) {
      throw new RangeError(`rxBuffers must be an integer in [1, ${NET_RX_RING_SIZE}] but got ${this.rxBufferCount}`);
    }
    if (frames.length < 2 + this.rxBufferCount + 1) {
      throw new RangeError(`frames must hold at least ${2 + this.rxBufferCount + 1} frames (2 rings, ${this.rxBufferCount} RX buffers, 1 TX page) but got ${frames.length}`);
    }
    this.nrFrames = frames.length;
    this.pool = new Int32Array(frames.length);
    for (let i = frames.length - 1; i >= 0; i--) this.pool[this.poolTop++] = frames[i]!;
    const n = opts.gnttab.nrEntries;
    this.refState = new Uint8Array(n);
    this.refFrame = new Int32Array(n).fill(-1);
    this.pushTime = new Float64Array(n);
    this.refAnswered = new Uint8Array(n);
    this.quarantineAt = new Float64Array(n);
    this.rxIdle = new Int32Array(this.rxBufferCount);
    this.poisonRx = opts.poisonRx ?? true;
    this.memView = new DataView(opts.memory.sab);
    // Nothing is known of a page's bytes until netfront first poisons it.
    this.dirtyLo = new Uint16Array(opts.memory.nrFrames);
    this.dirtyHi = new Uint16Array(opts.memory.nrFrames).fill(XEN_PAGE_SIZE);
  }

  // ---- Lifecycle (xen-netfront.c talk_to_netback / xennet_connect / xennet_disconnect_backend) ----

  /**
   * Allocates, initialises and grants the TX and RX ring pages and allocates and binds the event channel
   * (setup_netfront). Resets `broken`, as talk_to_netback does for a reconnect. Returns what to publish.
   */
  setupRings(): Result<NetfrontRings> {
    if (this.tx !== null) throw new Error('setupRings: rings are already set up');
    if (this.poolTop < 2) return err(`no free page for the rings: ${this.poolTop} in the pool`);
    if (this.gnttab.freeCount < 2) return err(`no free grant reference for the rings: ${this.gnttab.freeCount} free`);
    this.broken = false;
    this.brokenReason = null;
    const start = this.opts.ringStartIndex ?? 0;
    const txFrame = this.pool[--this.poolTop]!;
    const rxFrame = this.pool[--this.poolTop]!;
    this.memory.frame(txFrame).fill(0);
    this.memory.frame(rxFrame).fill(0);
    const sab = this.memory.sab;
    sharedRingInit(sab, txFrame * XEN_PAGE_SIZE, start);
    sharedRingInit(sab, rxFrame * XEN_PAGE_SIZE, start);
    this.txRingRef = this.grantPage(txFrame, false, REF_RING);
    this.rxRingRef = this.grantPage(rxFrame, false, REF_RING);
    const port = this.opts.evtchn.allocUnbound(this.backend);
    if (!port.ok) {
      this.releaseRings();
      return err(`cannot allocate an event channel: ${port.error}`);
    }
    this.port = port.value;
    this.opts.evtchn.bind(this.port, this.onEvent);
    this.evport = this.opts.evtchn.port(this.port);
    this.tx = new FrontRing(sab, txFrame * XEN_PAGE_SIZE, XEN_NETIF_TX_SLOT_SIZE, start);
    this.rx = new FrontRing(sab, rxFrame * XEN_PAGE_SIZE, XEN_NETIF_RX_SLOT_SIZE, start);
    this.txIdFreeTop = 0;
    for (let id = NET_TX_RING_SIZE - 1; id >= 0; id--) this.txIdFree[this.txIdFreeTop++] = id;
    this.txIdPending.fill(0);
    this.rxSlotRef.fill(-1);
    return ok({ txRingRef: this.txRingRef, rxRingRef: this.rxRingRef, eventChannel: this.port });
  }

  /**
   * The keys are published: remember the backend's features and fill the RX ring (xennet_connect's
   * xennet_alloc_rx_buffers). Returns how many RX buffers were posted.
   */
  connect(features: NetbackFeatures): number {
    if (this.rx === null) throw new Error('connect: setupRings first');
    if (this.connected) throw new Error('connect: already connected');
    this.features = features;
    this.connected = true;
    // Grant the RX buffers once; afterwards they circulate between the ring and the idle list.
    while (this.rxHeld < this.rxBufferCount && this.poolTop > 0 && this.gnttab.freeCount > 0) {
      const frame = this.pool[--this.poolTop]!;
      if (this.poisonRx) this.memory.frame(frame).set(POISON_PAGE);
      const ref = this.grantPage(frame, false, REF_RX_IDLE_GRANTED);
      this.rxIdle[this.rxIdleTop++] = ref;
      this.rxHeld++;
    }
    return this.refillRx();
  }

  /**
   * Tears the connection down (xennet_disconnect_backend): closes the event channel and ends access to every
   * ring page, RX buffer and outstanding TX page. What the backend still maps is kept aside (never reused) and
   * retried by retryRevokes(); grant returns for torn-down TX grants are still accepted. Returns the pages
   * still stuck.
   */
  disconnect(): number {
    this.connected = false;
    this.features = null;
    this.eventPending = false;
    if (this.port >= 0) {
      this.opts.evtchn.unbind(this.port);
      const c = this.opts.evtchn.close(this.port);
      if (!c.ok) this.log('warn', `cannot close event channel ${this.port}: ${c.error}`);
      this.port = -1;
      this.evport = null;
    }
    const states = this.refState;
    for (let ref = GNTTAB_NR_RESERVED_ENTRIES; ref < states.length; ref++) {
      switch (states[ref]) {
        case REF_TX:
          if (this.gnttab.endForeignAccessRef(ref)) {
            this.txOutstanding--;
            this.stats.grantsReclaimed++;
            this.quarantineRef(ref);
          } else {
            states[ref] = REF_TX_ORPHAN;
            this.stuck.push(ref);
          }
          break;
        case REF_RX_POSTED:
        case REF_RX_IDLE_GRANTED:
          this.rxHeld--;
          if (!this.endAndRecycle(ref, false)) this.makeStuck(ref);
          break;
        case REF_RX_IDLE_CLAIMED:
          this.rxHeld--;
          this.gnttab.freeRef(ref);
          this.recycle(ref, false);
          break;
        case REF_RING:
          if (!this.endAndRecycle(ref, false)) this.makeStuck(ref);
          break;
        default:
          break;
      }
    }
    this.rxIdleTop = 0;
    this.rxSlotRef.fill(-1);
    this.scheduleMaintenance();
    this.tx = null;
    this.rx = null;
    this.txRingRef = -1;
    this.rxRingRef = -1;
    return this.stuck.length;
  }

  /** Retries ending access to stuck grants (as Linux's deferred list does every second); returns how many ended. */
  retryRevokes(): number {
    let done = 0;
    for (let i = this.stuck.length - 1; i >= 0; i--) {
      const ref = this.stuck[i]!;
      const st = this.refState[ref];
      if (!this.gnttab.endForeignAccessRef(ref)) continue;
      this.stuck.splice(i, 1);
      done++;
      // granted = returned + reclaimed + outstanding: a stuck grant was returned, an orphan never was.
      if (st === REF_TX_ORPHAN) {
        this.txOutstanding--;
        this.stats.grantsReclaimed++;
        this.quarantineRef(ref);
        continue;
      }
      this.gnttab.freeRef(ref);
      if (st === REF_TX_STUCK) {
        this.txOutstanding--;
        this.stats.grantsReturned++;
      }
      this.recycle(ref, st === REF_TX_STUCK);
    }
    return done;
  }

  /** Refs held back after teardown so that a late grant return cannot name a reused ref. */
  get quarantinedRefs(): number {
    return this.quarantine.length;
  }

  /** Stops the retry timer (the guest is going away; stuck grants stay stuck, held refs stay held). */
  dispose(): void {
    if (this.maintenance !== undefined) this.opts.clock.cancel(this.maintenance);
    this.maintenance = undefined;
  }

  // The page goes back to the pool now (access has ended); the ref waits for the late return or the timeout.
  private quarantineRef(ref: number): void {
    const frame = this.refFrame[ref]!;
    this.poisonFrame(frame);
    this.pool[this.poolTop++] = frame;
    this.refFrame[ref] = -1;
    if (this.refAnswered[ref] !== 0) {
      this.refAnswered[ref] = 0;
      this.answeredOutstanding--;
    }
    this.refState[ref] = REF_QUARANTINE;
    this.quarantineAt[ref] = this.clock.now();
    this.quarantine.push(ref);
  }

  private releaseQuarantine(ref: number): void {
    this.gnttab.freeRef(ref);
    this.refState[ref] = REF_NONE;
    this.quarantine.splice(this.quarantine.indexOf(ref), 1);
  }

  // Linux's deferred-revoke timer, for our stuck grants and held refs: runs while either list is non-empty.
  private scheduleMaintenance(): void {
    if (this.maintenance !== undefined || (this.stuck.length === 0 && this.quarantine.length === 0)) return;
    this.maintenance = this.clock.schedule(NETFRONT_REVOKE_RETRY_MS, this.onMaintenance);
  }

  private readonly onMaintenance = (): void => {
    this.maintenance = undefined;
    this.retryRevokes();
    const now = this.clock.now();
    for (let i = this.quarantine.length - 1; i >= 0; i--) {
      const ref = this.quarantine[i]!;
      if (now - this.quarantineAt[ref]! >= NETFRONT_QUARANTINE_MS) this.releaseQuarantine(ref);
    }
    this.scheduleMaintenance();
  };

  /** Where every frame netfront owns is now. */
  audit(): NetfrontAudit {
    let rings = 0;
    for (let ref = GNTTAB_NR_RESERVED_ENTRIES; ref < this.refState.length; ref++) if (this.refState[ref] === REF_RING) rings++;
    let stuckTx = 0;
    for (const ref of this.stuck) if (this.refState[ref] === REF_TX_STUCK || this.refState[ref] === REF_TX_ORPHAN) stuckTx++;
    return {
      total: this.nrFrames,
      pool: this.poolTop,
      rings,
      tx: this.txOutstanding - stuckTx,
      rx: this.rxHeld,
      stuck: this.stuck.length,
    };
  }

  /** TX grants made and not yet returned (granted - returned), stuck ones included. */
  get grantsOutstanding(): number {
    return this.txOutstanding;
  }

  /**
   * Outstanding TX grants whose slot the backend has already answered on the ring: normally a short-lived
   * figure (the return follows the response); one that only grows means the backend answers slots it never
   * returns on the port.
   */
  get grantsAnsweredNotReturned(): number {
    return this.answeredOutstanding;
  }

  /** The bound event channel, or -1. */
  get eventChannel(): number {
    return this.port;
  }

  /** Clears and returns the event flag the handler sets. */
  takeEvent(): boolean {
    const e = this.eventPending;
    this.eventPending = false;
    return e;
  }

  // ---- TX (xennet_start_xmit, xennet_tx_buf_gc) ----

  /** Whether a frame of `maxLen` bytes at any page offset fits now (netfront_tx_slot_available, plus pages and refs). */
  canTransmit(maxLen: number): boolean {
    const tx = this.tx;
    if (tx === null || !this.connected || this.broken) return false;
    return this.roomFor(tx, Math.ceil((XEN_PAGE_SIZE - ETH_HLEN + maxLen) / XEN_PAGE_SIZE));
  }

  // Ring slots (one more for a GSO extra), pages, refs and ids for a frame of `pages` pages.
  private roomFor(tx: FrontRing, pages: number): boolean {
    return tx.freeRequests() >= pages + 1 && this.poolTop >= pages && this.gnttab.freeCount >= pages && this.txIdFreeTop >= pages;
  }

  /**
   * Sends up to `budget` frames from `source`, publishing them every NETFRONT_TX_PUSH_EVERY frames and at the end,
   * and notifying the backend once if any push crossed req_event.
   */
  transmit(budget: number, source: TxSource): number {
    if (!this.connected || this.broken) return 0;
    const now = this.clock.now();
    const tx = this.tx!;
    let sent = 0;
    let notify = false;
    let maxLen = -1;
    let pages = 0;
    while (sent < budget) {
      // canTransmit(source.maxFrameLen), the page count worked out once per value.
      if (source.maxFrameLen !== maxLen) {
        maxLen = source.maxFrameLen;
        pages = Math.ceil((XEN_PAGE_SIZE - ETH_HLEN + maxLen) / XEN_PAGE_SIZE);
      }
      if (this.broken || !this.roomFor(tx, pages)) {
        this.stats.txBusy++;
        break;
      }
      const p = source.next(now);
      if (p === null) break;
      const st = this.queue(p, now);
      if (st === 'busy') break;
      if (st === 'dropped') continue;
      sent++;
      // Linux's xmit_more: requests are published in groups (each push is a seq-cst store and two loads).
      if (sent % NETFRONT_TX_PUSH_EVERY === 0) notify = tx.pushRequestsAndCheckNotify() || notify;
    }
    if (sent % NETFRONT_TX_PUSH_EVERY !== 0) notify = tx.pushRequestsAndCheckNotify() || notify;
    if (notify) this.kick(true);
    return sent;
  }

  /** Sends one frame now (xennet_start_xmit): 'busy' leaves it with the caller, 'dropped' counts it as lost. */
  xmit(p: TxPacket): XmitStatus {
    if (!this.connected || this.broken) {
      this.stats.txDropped++;
      return 'dropped';
    }
    const st = this.queue(p, this.clock.now());
    if (st === 'sent' && this.tx!.pushRequestsAndCheckNotify()) this.kick(true);
    return st;
  }

  /**
   * Consumes TX responses (xennet_tx_buf_gc): each frees its request id only; the grants stay until the
   * backend returns them. An overflowing producer, a bad id or a response for an inactive request marks the
   * device broken. Returns the responses consumed.
   */
  pollTx(): number {
    const tx = this.tx;
    if (tx === null || this.broken) return 0;
    const rsp = this.txRsp;
    const s = this.stats;
    let handled = 0;
    for (;;) {
      const n = tx.unconsumedResponses();
      if (n === RING_OVERFLOW) {
        this.markBroken(`tx ${tx.overflowError()}`);
        return handled;
      }
      const cons = tx.rspCons;
      for (let i = 0; i < n; i++) {
        tx.copyResponse((cons + i) >>> 0, TxResponse, rsp);
        const status = rsp.status;
        if (status === XEN_NETIF_RSP_NULL) {
          s.txRspNull++;
          continue;
        }
        if (status < XEN_NETIF_RSP_DROPPED || status > XEN_NETIF_RSP_NULL || rsp.id >= NET_TX_RING_SIZE) {
          const v = validateTxResponse(rsp);
          this.markBroken(v.ok ? `tx response is invalid` : v.error);
          tx.consumeResponses(i);
          return handled + i;
        }
        const id = rsp.id;
        if (this.txIdPending[id] === 0) {
          this.markBroken(`tx response for inactive request id ${id}`);
          tx.consumeResponses(i);
          return handled + i;
        }
        this.txIdPending[id] = 0;
        this.txIdFree[this.txIdFreeTop++] = id;
        const ref = this.txIdRef[id]!;
        if (this.refState[ref] === REF_TX && this.refAnswered[ref] === 0) {
          this.refAnswered[ref] = 1;
          this.answeredOutstanding++;
        }
        if (status === XEN_NETIF_RSP_OKAY) s.txRspOkay++;
        else if (status === XEN_NETIF_RSP_ERROR) {
          s.txRspError++;
          s.txErrors++;
        } else {
          s.txRspDropped++;
          s.txErrors++;
        }
      }
      tx.consumeResponses(n);
      handled += n;
      if (!tx.finalCheckForResponses()) return handled;
    }
  }

  /**
   * Takes a batch of grant references the backend says are truly free (its grant-return message): each must be
   * an outstanding TX grant whose access now ends; its page is poisoned and reused. A ref still mapped, or one
   * that is not outstanding, is a backend bug: counted, and the device is marked broken. Returns refs reclaimed.
   */
  handleGrantReturns(grefs: ArrayLike<number>, count: number = grefs.length): number {
    const s = this.stats;
    s.grantReturnBatches++;
    const now = this.clock.now();
    const states = this.refState;
    const n = Math.min(count, grefs.length);
    let done = 0;
    for (let i = 0; i < n; i++) {
      const ref = grefs[i]!;
      if (!Number.isInteger(ref) || ref < GNTTAB_NR_RESERVED_ENTRIES || ref >= states.length) {
        s.badGrantReturns++;
        this.markBroken(`grant return names ref ${String(ref)}: expected ${GNTTAB_NR_RESERVED_ENTRIES} <= ref < ${states.length}`);
        continue;
      }
      const st = states[ref];
      if (st === REF_QUARANTINE) {
        // The old backend's return of a grant we ended at teardown: it is done with the ref, release it now.
        s.lateGrantReturns++;
        this.releaseQuarantine(ref);
        continue;
      }
      if (st !== REF_TX && st !== REF_TX_ORPHAN) {
        s.badGrantReturns++;
        this.markBroken(`grant return names ref ${hexAlt(ref)}, which is not an outstanding TX grant`);
        continue;
      }
      if (!this.gnttab.endForeignAccessRef(ref)) {
        s.endAccessFailures++;
        if (st === REF_TX) {
          states[ref] = REF_TX_STUCK;
          this.stuck.push(ref);
          this.scheduleMaintenance();
          this.markBroken(`Grant still in use by backend domain: ref ${hexAlt(ref)}`);
        }
        continue;
      }
      this.gnttab.freeRef(ref);
      if (st === REF_TX_ORPHAN) this.stuck.splice(this.stuck.indexOf(ref), 1);
      this.latency.record((now - this.pushTime[ref]!) * 1000);
      this.txOutstanding--;
      s.grantsReturned++;
      this.recycle(ref, true);
      done++;
    }
    return done;
  }

  // Writes one frame into pool pages, grants them and puts its requests (not pushed). Linux's order of checks.
  private queue(p: TxPacket, now: number): XmitStatus {
    const s = this.stats;
    const len = p.len;
    const off = p.pageOffset;
    if (!Number.isInteger(off) || off < 0 || off > XEN_PAGE_SIZE - ETH_HLEN) {
      throw new RangeError(`pageOffset must be an integer in [0, ${XEN_PAGE_SIZE - ETH_HLEN}] but got ${off}`);
    }
    if (!Number.isInteger(len) || len < ETH_HLEN || len > XEN_NETIF_MAX_TX_SIZE) {
      // "skb->len = %u, too big for wire format"
      s.txDropped++;
      return 'dropped';
    }
    const pages = Math.ceil((off + len) / XEN_PAGE_SIZE);
    const gso = p.gsoSize > 0;
    const f = this.features!;
    if ((pages > 1 && !f.sg) || (gso && !f.gsoTcpv4) || p.gsoSize > 0xffff) {
      s.txDropped++;
      return 'dropped';
    }
    const tx = this.tx!;
    const slots = pages + (gso ? 1 : 0);
    if (tx.freeRequests() < slots || this.poolTop < pages || this.gnttab.freeCount < pages || this.txIdFreeTop < pages) {
      s.txBusy++;
      return 'busy';
    }
    // Write the frame: straight into the page when it fits one, else through the scratch buffer.
    const mem = this.memory;
    const refs = this.pageRefs;
    if (pages === 1) {
      const frame = this.pool[this.poolTop - 1]!;
      if (p.writeAt !== undefined) p.writeAt(mem.bytes, this.memView, frame * XEN_PAGE_SIZE + off);
      else p.writeTo(mem.frame(frame), off);
      this.markDirty(frame, off, off + len);
    } else if (p.writePages !== undefined) {
      const views = this.txPageViews;
      let done = 0;
      for (let i = 0; i < pages; i++) {
        const frame = this.pool[this.poolTop - 1 - i]!;
        const at = i === 0 ? off : 0;
        const n = Math.min(len - done, XEN_PAGE_SIZE - at);
        views[i] = mem.frame(frame);
        this.markDirty(frame, at, at + n);
        done += n;
      }
      p.writePages(views, pages, off);
    } else {
      p.writeTo(this.txScratch, 0);
      let done = 0;
      for (let i = 0; i < pages; i++) {
        const frame = this.pool[this.poolTop - 1 - i]!;
        const at = i === 0 ? off : 0;
        const n = Math.min(len - done, XEN_PAGE_SIZE - at);
        mem.frame(frame).set(this.txScratch.subarray(done, done + n), at);
        this.markDirty(frame, at, at + n);
        done += n;
      }
    }
    for (let i = 0; i < pages; i++) {
      const frame = this.pool[--this.poolTop]!;
      const ref = this.grantPage(frame, true, REF_TX);
      this.pushTime[ref] = now;
      refs[i] = ref;
    }
    this.txOutstanding += pages;
    s.grantsGranted += pages;
    // The requests: the first carries the total length, then the GSO extra, then one per further page.
    const req = this.txReq;
    let flags = pages > 1 ? NETTXF_more_data : 0;
    if (p.csumBlank) {
      flags |= NETTXF_csum_blank | NETTXF_data_validated;
      s.txCsumBlank++;
    }
    if (gso) flags |= NETTXF_extra_info;
    req.gref = refs[0]!;
    req.offset = off;
    req.flags = flags;
    req.id = this.takeTxId(refs[0]!);
    req.size = len;
    tx.putRequest(TxRequest, req);
    if (gso) {
      const e = this.extra;
      e.type = XEN_NETIF_EXTRA_TYPE_GSO;
      e.flags = 0;
      e.gso.size = p.gsoSize;
      e.gso.type = XEN_NETIF_GSO_TYPE_TCPV4;
      e.gso.pad = 0;
      e.gso.features = 0;
      tx.putRequest(ExtraInfo, e);
      s.txGso++;
    }
    let left = len - Math.min(len, XEN_PAGE_SIZE - off);
    for (let i = 1; i < pages; i++) {
      const n = Math.min(left, XEN_PAGE_SIZE);
      left -= n;
      req.gref = refs[i]!;
      req.offset = 0;
      req.flags = i < pages - 1 ? NETTXF_more_data : 0;
      req.id = this.takeTxId(refs[i]!);
      req.size = n;
      tx.putRequest(TxRequest, req);
    }
    s.txPackets++;
    s.txBytes += len;
    s.txSlots += slots;
    return 'sent';
  }

  private takeTxId(ref: number): number {
    const id = this.txIdFree[--this.txIdFreeTop]!;
    this.txIdPending[id] = 1;
    this.txIdRef[id] = ref;
    return id;
  }

  // ---- RX (xennet_poll, xennet_get_responses, xennet_alloc_rx_buffers) ----

  /**
   * Handles up to `budget` received packets (xennet_poll): reassembles each, ends access to its buffers, verifies
   * it, hands good frames to onFrame, and re-posts the buffers. Returns the packets handled.
   */
  pollRx(budget: number): number {
    const rx = this.rx;
    if (rx === null || !this.connected || this.broken) return 0;
    let packets = 0;
    for (;;) {
      const n = rx.unconsumedResponses();
      if (n === RING_OVERFLOW) {
        this.markBroken(`rx ${rx.overflowError()}`);
        return packets;
      }
      const first = rx.rspCons;
      const end = (first + n) >>> 0;
      let cons = first;
      while (packets < budget && cons !== end) {
        cons = (cons + this.rxPacket(cons, end)) >>> 0;
        packets++;
      }
      rx.consumeResponses((cons - first) >>> 0);
      this.refillRx();
      if (this.broken || cons !== end || packets >= budget) return packets;
      if (!rx.finalCheckForResponses()) return packets;
    }
  }

  /** Whether RX responses are waiting (RING_HAS_UNCONSUMED_RESPONSES). */
  rxPending(): boolean {
    const rx = this.rx;
    return rx !== null && rx.unconsumedResponses() !== 0;
  }

  // One packet starting at response `first` (xennet_get_responses + xennet_get_extras); returns slots consumed.
  private rxPacket(first: number, end: number): number {
    const rx = this.rx!;
    const s = this.stats;
    const rsp = this.rxRsp;
    rx.copyResponse(first, RxResponse, rsp);
    const flags0 = rsp.flags;
    let cons = first;
    let error: string | null = null;
    // Extras follow the first response; their slots' buffers were not written and go back as they are.
    if ((flags0 & NETRXF_extra_info) !== 0) {
      const e = this.extra;
      do {
        if (((cons + 1) >>> 0) === end) {
          error = 'Missing extra info';
          break;
        }
        cons = (cons + 1) >>> 0;
        rx.copyResponse(cons, ExtraInfo, e);
        s.rxExtras++;
        this.moveRxSlot(cons);
        if (e.type === 0 || e.type >= XEN_NETIF_EXTRA_TYPE_MAX) error ??= `Invalid extra type: ${e.type}`;
        else if (e.type === XEN_NETIF_EXTRA_TYPE_GSO) s.rxGso++;
      } while ((e.flags & XEN_NETIF_EXTRA_FLAG_MORE) !== 0);
    }
    const max = XEN_NETIF_NR_SLOTS_MIN + (rsp.status <= RX_COPY_THRESHOLD ? 1 : 0);
    let slot = first;
    let slots = 1;
    let total = 0;
    let inPlace = -1; // frame of a single-slot packet read in its page
    let inPlaceOff = 0;
    for (;;) {
      const idx = slot & (NET_RX_RING_SIZE - 1);
      if (rsp.id !== idx || rsp.status < 0 || rsp.offset + rsp.status > XEN_PAGE_SIZE) {
        const v = validateRxResponse(rsp, idx);
        error ??= v.ok ? `rx response status ${rsp.status} is an error` : v.error;
        this.moveRxSlot(slot);
      } else {
        const ref = this.rxSlotRef[idx]!;
        this.rxSlotRef[idx] = -1;
        if (ref < 0) {
          error ??= `Bad rx response id ${rsp.id}`;
        } else if (!this.gnttab.endForeignAccessRef(ref)) {
          s.endAccessFailures++;
          this.makeStuck(ref);
          this.rxHeld--;
          this.markBroken(`Grant still in use by backend domain: rx ref ${hexAlt(ref)}`);
          error ??= 'rx buffer still in use';
        } else {
          this.refState[ref] = REF_RX_IDLE_CLAIMED;
          this.rxIdle[this.rxIdleTop++] = ref;
          const frame = this.refFrame[ref]!;
          const len = rsp.status;
          if (error === null) {
            const page = this.memory.frame(frame);
            if (slots === 1 && (rsp.flags & NETRXF_more_data) === 0) {
              inPlace = frame;
              inPlaceOff = rsp.offset;
            } else {
              this.rxScratch.set(page.subarray(rsp.offset, rsp.offset + len), total);
            }
          }
          total += len;
        }
      }
      if ((rsp.flags & NETRXF_more_data) === 0) break;
      if (((cons + 1) >>> 0) === end) {
        error ??= 'Need more slots';
        break;
      }
      cons = (cons + 1) >>> 0;
      slot = cons;
      slots++;
      if (slots > max) error ??= `Too many slots: ${slots} > ${max}`;
      rx.copyResponse(cons, RxResponse, rsp);
    }
    const used = ((cons - first) >>> 0) + 1;
    s.rxSlots += used;
    if (error !== null) {
      s.rxErrors++;
      s.rxDropped++;
      this.rxLastError ??= error;
      this.log('warn', error);
      return used;
    }
    s.rxPackets++;
    s.rxBytes += total;
    const buf = inPlace >= 0 ? this.memory.frame(inPlace) : this.rxScratch;
    const off = inPlace >= 0 ? inPlaceOff : 0;
    const verdict = this.verifier.verify(buf, off, total, flags0);
    switch (verdict) {
      case RX_VERIFIED:
        s.rxVerified++;
        break;
      case RX_UNVERIFIED:
        s.rxUnverified++;
        break;
      case RX_BAD_FRAME:
        s.rxBadFrames++;
        break;
      case RX_BAD_CHECKSUM:
        s.rxChecksumErrors++;
        break;
      case RX_CORRUPT_PAYLOAD:
        s.rxCorruptPayloads++;
        break;
    }
    if (verdict !== RX_VERIFIED && verdict !== RX_UNVERIFIED) {
      this.rxLastError ??= this.verifier.error;
      return used;
    }
    this.opts.onFrame?.(buf, off, total, verdict);
    return used;
  }

  // xennet_move_rx_slot: the buffer of an answered slot goes back unchanged (still granted).
  private moveRxSlot(slot: number): void {
    const idx = slot & (NET_RX_RING_SIZE - 1);
    const ref = this.rxSlotRef[idx]!;
    if (ref < 0) return;
    this.rxSlotRef[idx] = -1;
    this.refState[ref] = REF_RX_IDLE_GRANTED;
    this.rxIdle[this.rxIdleTop++] = ref;
  }

  // xennet_alloc_rx_buffers: post every idle buffer the ring has room for, push, notify if told to.
  private refillRx(): number {
    const rx = this.rx!;
    const req = this.rxReq;
    let posted = 0;
    while (this.rxIdleTop > 0 && rx.freeRequests() > 0) {
      const ref = this.rxIdle[--this.rxIdleTop]!;
      if (this.refState[ref] === REF_RX_IDLE_CLAIMED) {
        const frame = this.refFrame[ref]!;
        if (this.poisonRx) this.memory.frame(frame).set(POISON_PAGE);
        this.gnttab.grantForeignAccessRef(ref, this.backend, frame, false);
      }
      const idx = rx.reqProdPvt & (NET_RX_RING_SIZE - 1);
      req.id = idx;
      req.gref = ref;
      rx.putRequest(RxRequest, req);
      this.rxSlotRef[idx] = ref;
      this.refState[ref] = REF_RX_POSTED;
      posted++;
    }
    if (posted > 0 && rx.pushRequestsAndCheckNotify()) this.kick(false);
    return posted;
  }

  // ---- Helpers ----

  private readonly onEvent = (): void => {
    this.stats.events++;
    this.eventPending = true;
    this.opts.onEvent?.();
  };

  private kick(tx: boolean): void {
    if (tx) this.stats.txNotifies++;
    else this.stats.rxNotifies++;
    const r = this.evport?.notify() ?? -1;
    if (r !== 0) this.stats.notifyErrors++;
  }

  private grantPage(frame: number, readonly: boolean, state: number): number {
    const ref = this.gnttab.grantForeignAccess(this.backend, frame, readonly);
    if (ref < 0) throw new Error(`grantPage: no free grant reference (callers check freeCount first)`);
    this.refState[ref] = state;
    this.refFrame[ref] = frame;
    return ref;
  }

  // Ends access and, on success, frees the ref and puts the page back (poisoned for TX pages).
  private endAndRecycle(ref: number, poison: boolean): boolean {
    if (!this.gnttab.endForeignAccessRef(ref)) return false;
    this.gnttab.freeRef(ref);
    this.recycle(ref, poison);
    return true;
  }

  private recycle(ref: number, poison: boolean): void {
    if (this.refAnswered[ref] !== 0) {
      this.refAnswered[ref] = 0;
      this.answeredOutstanding--;
    }
    const frame = this.refFrame[ref]!;
    // A TX page is poisoned; any other (an RX buffer, a ring) comes back with bytes the backend may have written.
    if (poison) this.poisonFrame(frame);
    else this.markDirty(frame, 0, XEN_PAGE_SIZE);
    this.refState[ref] = REF_NONE;
    this.refFrame[ref] = -1;
    this.pool[this.poolTop++] = frame;
  }

  // Fills the frame's dirty bytes with NETFRONT_POISON: afterwards every byte of the page is the poison byte.
  private poisonFrame(frame: number): void {
    const lo = this.dirtyLo[frame]!;
    const hi = this.dirtyHi[frame]!;
    if (lo < hi) this.memory.frame(frame).set(POISON_BY_LEN[hi - lo]!, lo);
    this.dirtyLo[frame] = XEN_PAGE_SIZE;
    this.dirtyHi[frame] = 0;
  }

  private markDirty(frame: number, lo: number, hi: number): void {
    if (lo < this.dirtyLo[frame]!) this.dirtyLo[frame] = lo;
    if (hi > this.dirtyHi[frame]!) this.dirtyHi[frame] = hi;
  }

  private makeStuck(ref: number): void {
    this.refState[ref] = REF_STUCK;
    this.stuck.push(ref);
    this.scheduleMaintenance();
  }

  private releaseRings(): void {
    for (const ref of [this.txRingRef, this.rxRingRef]) if (ref >= 0 && !this.endAndRecycle(ref, false)) this.makeStuck(ref);
    this.txRingRef = -1;
    this.rxRingRef = -1;
  }

  private markBroken(reason: string): void {
    if (!this.broken) {
      this.broken = true;
      this.brokenReason = reason;
      this.log('alert', `${reason}; Disabled for further use`);
    }
  }

  private log(level: 'debug' | 'info' | 'warn' | 'alert', message: string): void {
    this.opts.log?.(level, `vif d${this.opts.domid}: ${message}`);
  }
}
