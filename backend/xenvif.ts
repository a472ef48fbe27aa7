// One virtual interface of netback (drivers/net/xen-netback/interface.c): the NetDevice a guest's vif is on the
// bridge, its counters (the ethtool ones of interface.c plus netdev stats), the FATAL switch (vif->disabled,
// carrier off, nothing new answered until the next connect), multicast control, and the data-path connect and
// teardown. One queue per vif (multi-queue is not modelled). TX and RX are named from the frontend's point of
// view, as Xen does: TX is what the guest sends (netback.ts), RX what it receives (netback-rx.ts).
//
// Teardown: beginDisconnect stops both directions and purges the RX queue; grants the stack still holds come
// back through the release design as usual, flushDealloc unmaps and answers them (never notifying a dead guest);
// whenDrained resolves once none is held, after which finishDisconnect drops the queues.

import type { Clock } from '../shared/clock.js';
import { ETH_BROADCAST, ETH_HLEN, isMulticastMac, readMac } from '../shared/ether.js';
import type { EventPort } from '../shared/evtchn.js';
import type { GrantMapper } from '../shared/gnttab-mapper.js';
import { makeGrantReturnMessage, postGrantReturn, type GrantReturnPort } from '../shared/grant-return.js';
import { XEN_NETBK_MCAST_MAX, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6, FATAL_SKB_SLOTS_DEFAULT, XEN_NETBK_LEGACY_SLOTS_MAX } from '../shared/netif.js';
import type { BackRing } from '../shared/ring.js';
import { tcpGsoCheck, tcpGsoSegment } from './gso.js';
import type { NetDevice, NetdevFeatures, SkbHolder } from './netdev.js';
import {
  NAPI_POLL_WEIGHT,
  NET_SKB_PAD,
  XenvifTxQueue,
  noGrantEvents,
  type GrantEvents,
  type HeldGrant,
  type NetbackLog,
  type NetbackLogLevel,
} from './netback.js';
import {
  RX_BATCH_SIZE,
  RX_DRAIN_TIMEOUT_MS,
  RX_DRAIN_TIMEOUT_NO_NOTIFY_MS,
  RX_STALL_TIMEOUT_MS,
  XENVIF_RX_QUEUE_BYTES,
  XenvifRxQueue,
  type RxDrainPolicy,
} from './netback-rx.js';
import { SKB_GSO_TCPV4, allocSkb, kfreeSkb, type SkBuff, type SkbContext } from './skbuff.js';

/** -ENOSPC, as xenvif_mcast_add returns it. */
const ENOSPC = 28;
/** ETH_DATA_LEN: the vif's default MTU (interface.c ether_setup). */
export const XENVIF_DEFAULT_MTU = 1500;

/** The vif's counters: Linux's names (camelCase) where Linux has one, each with where it counts. */
export class XenvifStats {
  /** Frames the guest sent that went to the stack (netback.c xenvif_tx_submit, queue->stats.rx_*). */
  rxBytes = 0;
  rxPackets = 0;
  /** Frames delivered to the guest (rx.c xenvif_rx_next_skb, queue->stats.tx_*). */
  txBytes = 0;
  txPackets = 0;
  /** Frames the stack gave us that we dropped: not connected, carrier off, multicast filter, queue full (dev->stats.tx_dropped). */
  txDropped = 0;
  /** Of txDropped: the RX queue was at its byte cap (XSA-392). */
  rxQueueFull = 0;
  /** Frames dropped at the drain timeout (rx.c xenvif_rx_queue_drop_expired, dev->stats.rx_dropped). */
  rxDropped = 0;
  /** Frames whose foreign frags were copied out at the drain timeout ('orphan' policy). */
  rxDrainOrphaned = 0;
  /** ethtool counters of interface.c. */
  txZerocopySent = 0;
  txZerocopySuccess = 0;
  txZerocopyFail = 0;
  txFragOverflow = 0;
  rxGsoChecksumFixup = 0;
  /** TX slots answered XEN_NETIF_RSP_ERROR. */
  txErrorResponses = 0;
  /** TX slots of zero length answered at once (XSA-448). */
  txZeroLengthSlots = 0;
  txCopyErrors = 0;
  txMapErrors = 0;
  /** TX packets whose payload was grant-copied into local pages (txGrantCopy). */
  txGrantCopied = 0;
  /** TX packets dropped by checksum_setup (their slots are answered OKAY). */
  txChecksumDrops = 0;
  /** FATAL errors (the vif was disabled). */
  fatalErrors = 0;
  /** Releases refused by the dealloc path (a page not in flight: a design released it twice). */
  deallocRefused = 0;
  /** Pages still referenced by the stack when their grant went back (a design returned them early). */
  pagesRetired = 0;
  /** GSO frames segmented in software because the frontend does not take their type. */
  rxGsoSegmented = 0;
  rxCopyErrors = 0;
  /** RX polls that found a corrupt req_prod. */
  rxRingOverflows = 0;
  /** Event channel notifications sent on TX / RX. */
  txNotifies = 0;
  rxNotifies = 0;
  /** Grant-return notices posted, and grefs in them. */
  grantReturnNotices = 0;
  grantsReturned = 0;
}

/** What the frontend asked for (xenbus.c read_xenbus_vif_flags and friends). */
export interface XenvifFeatures {
  /** feature-sg. */
  readonly canSg: boolean;
  /** Bits (1 << XEN_NETIF_GSO_TYPE_*) from feature-gso-tcpv4/6. */
  readonly gsoMask: number;
  /** !feature-no-csum-offload. */
  readonly ipCsum: boolean;
  /** feature-ipv6-csum-offload. */
  readonly ipv6Csum: boolean;
  /** feature-rx-notify: without it the drain timeout is 30 ms and stall detection is off. */
  readonly rxNotify: boolean;
  /** request-multicast-control: RX multicast frames are filtered by the guest's list. */
  readonly multicastControl: boolean;
}

/** Linux's defaults for a frontend that wrote no feature keys. */
export const DEFAULT_XENVIF_FEATURES: XenvifFeatures = {
  canSg: false,
  gsoMask: 0,
  ipCsum: true,
  ipv6Csum: false,
  rxNotify: true,
  multicastControl: false,
};

/** Options of a vif (the module parameters and interface.c defaults). */
export interface XenvifOptions {
  /** The frontend's domain. */
  readonly domid: number;
  /** The vif's handle (devid). */
  readonly handle: number;
  readonly ctx: SkbContext;
  readonly mapper: GrantMapper;
  readonly clock: Clock;
  readonly events?: GrantEvents;
  readonly log?: NetbackLog;
  readonly mtu?: number;
  readonly rxDrainTimeoutMs?: number;
  readonly rxStallTimeoutMs?: number;
  readonly rxQueueMaxBytes?: number;
  /** What the drain timeout does: 'drop' (Linux, default) or 'orphan' (copy foreign frags out, keep the frame). */
  readonly rxDrainPolicy?: RxDrainPolicy;
  readonly fatalSkbSlots?: number;
  /** Headroom before the TX linear data (default NET_SKB_PAD). */
  readonly txHeadroom?: number;
  /** Grant-copy TX payloads into local pages instead of mapping them (default false: zero-copy). */
  readonly txGrantCopy?: boolean;
  /** alloc_skb (a fault hook: return null to fail an allocation). */
  readonly allocSkb?: (ctx: SkbContext, size: number) => SkBuff | null;
}

/** The data path of a connect (xenvif_connect_data): mapped rings, bound ports, the frontend's features. */
export interface XenvifConnection {
  readonly txRing: BackRing;
  readonly rxRing: BackRing;
  /** Notifies the frontend of TX responses. */
  readonly txPort: EventPort;
  /** Notifies the frontend of RX responses (the same port unless split event channels). */
  readonly rxPort: EventPort;
  readonly features?: Partial<XenvifFeatures>;
  /** Where grant-return notices go (the guest's MessagePort), or null for none. */
  readonly grantReturnPort?: GrantReturnPort | null;
}

/** The vif's life: no data path, connected, or waiting for the stack to give back the guest's grants. */
export type XenvifState = 'idle' | 'connected' | 'disconnecting';

/** Where a vif plugs into the backend stack (Stack has these). */
export interface VifStackHost {
  attachPort(dev: NetDevice): (skb: SkBuff) => void;
  detachPort(dev: NetDevice): void;
  addHolder(h: SkbHolder): void;
  removeHolder(h: SkbHolder): void;
  /** A TX action's frames are one batch: the stack may read its clock once for all of them. */
  enterSoftirq?(): void;
  exitSoftirq?(): void;
}

/**
 * struct xenvif with one queue: a NetDevice (ndo_start_xmit queues frames for the guest) and an SkbHolder (its RX
 * queue), driven by a loop that calls txAction, rxAction and flushDealloc. Single-threaded.
 */
export class Xenvif implements NetDevice, SkbHolder {
  readonly name: string;
  readonly domid: number;
  readonly handle: number;
  readonly ctx: SkbContext;
  readonly mapper: GrantMapper;
  readonly clock: Clock;
  readonly events: GrantEvents;
  readonly stats = new XenvifStats();
  readonly txHeadroom: number;
  readonly fatalSkbSlots: number;
  readonly txGrantCopy: boolean;
  mtu: number;
  /** vif->disabled: a FATAL error; nothing new is consumed or answered until the next connect. */
  disabled = false;
  /** netif_carrier_ok. */
  carrier = false;
  /** The FATAL error that disabled the vif, or null. */
  fatalError: string | null = null;
  /** The last TX error (a packet answered ERROR or dropped), or null. */
  lastTxError: string | null = null;
  /** The guest is dead: no notifications, no grant-return notices. */
  guestDead = false;
  /** The frontend's features of the current connection. */
  feat: XenvifFeatures = DEFAULT_XENVIF_FEATURES;
  tx: XenvifTxQueue | null = null;
  rx: XenvifRxQueue | null = null;

  private readonly logFn: NetbackLog | undefined;
  private readonly opts: XenvifOptions;
  private readonly allocFn: (ctx: SkbContext, size: number) => SkBuff | null;
  private netdevFeatures: NetdevFeatures = { sg: false, tso: false };
  private vifState: XenvifState = 'idle';
  private input: ((skb: SkBuff) => void) | null = null;
  private host: VifStackHost | null = null;
  private readonly mcast: number[] = [];
  private grantPort: GrantReturnPort | null = null;
  private grantSeq = 0;
  private drainWaiters: (() => void)[] = [];
  private pendingWork = false;

  constructor(opts: XenvifOptions) {
    this.opts = opts;
    this.domid = opts.domid;
    this.handle = opts.handle;
    this.name = `vif${opts.domid}.${opts.handle}`;
    this.ctx = opts.ctx;
    this.mapper = opts.mapper;
    this.clock = opts.clock;
    this.events = opts.events ?? noGrantEvents;
    this.logFn = opts.log;
    this.mtu = opts.mtu ?? XENVIF_DEFAULT_MTU;
    this.txHeadroom = opts.txHeadroom ?? NET_SKB_PAD;
    this.txGrantCopy = opts.txGrantCopy ?? false;
    const fatal = opts.fatalSkbSlots ?? FATAL_SKB_SLOTS_DEFAULT;
    // netback_init: "fatal_skb_slots too small, bump it to XEN_NETBK_LEGACY_SLOTS_MAX".
    this.fatalSkbSlots = fatal < XEN_NETBK_LEGACY_SLOTS_MAX ? XEN_NETBK_LEGACY_SLOTS_MAX : fatal;
    this.allocFn = opts.allocSkb ?? ((ctx, size) => allocSkb(ctx, size));
  }

  /** NETIF_F_SG / NETIF_F_TSO as xenvif_fix_features leaves them for this frontend. */
  get features(): NetdevFeatures {
    return this.netdevFeatures;
  }

  /** The vif's data-path state. */
  get state(): XenvifState {
    return this.vifState;
  }

  /** vif->gso_mask. */
  get gsoMask(): number {
    return this.feat.gsoMask;
  }

  /** Plugs the vif into the stack: a bridge port, and its RX queue among the holders the oracle walks. */
  attach(host: VifStackHost): void {
    if (this.host !== null) throw new Error(`${this.name} is already attached`);
    this.host = host;
    this.input = host.attachPort(this);
    host.addHolder(this);
  }

  /** Takes the vif off the stack. */
  detach(): void {
    const host = this.host;
    if (host === null) return;
    host.detachPort(this);
    host.removeHolder(this);
    this.host = null;
    this.input = null;
  }

  /** Where TX frames go when the vif is not attached to a stack (tests, or a custom loop). */
  setInput(fn: ((skb: SkBuff) => void) | null): void {
    this.input = fn;
  }

  /**
   * xenvif_connect_data + xenvif_carrier_on: sets up both queues on the mapped rings. Throws if a previous
   * connection is still draining (our caller's bug: teardown must finish first).
   */
  connect(c: XenvifConnection): void {
    if (this.vifState !== 'idle') throw new Error(`${this.name}: connect while ${this.vifState}`);
    const feat: XenvifFeatures = { ...DEFAULT_XENVIF_FEATURES, ...c.features };
    this.feat = feat;
    this.netdevFeatures = { sg: feat.canSg, tso: feat.canSg && (feat.gsoMask & ((1 << XEN_NETIF_GSO_TYPE_TCPV4) | (1 << XEN_NETIF_GSO_TYPE_TCPV6))) !== 0 };
    const o = this.opts;
    const drain = feat.rxNotify ? (o.rxDrainTimeoutMs ?? RX_DRAIN_TIMEOUT_MS) : RX_DRAIN_TIMEOUT_NO_NOTIFY_MS;
    const stall = feat.rxNotify ? (o.rxStallTimeoutMs ?? RX_STALL_TIMEOUT_MS) : 0;
    this.tx = new XenvifTxQueue(this, c.txRing, c.txPort);
    this.rx = new XenvifRxQueue(this, c.rxRing, c.rxPort, {
      maxBytes: o.rxQueueMaxBytes ?? XENVIF_RX_QUEUE_BYTES,
      drainTimeoutMs: drain,
      stallTimeoutMs: stall,
      policy: o.rxDrainPolicy ?? 'drop',
    });
    this.grantPort = c.grantReturnPort ?? null;
    this.grantSeq = 0;
    this.mcast.length = 0;
    this.disabled = false;
    this.fatalError = null;
    this.guestDead = false;
    this.vifState = 'connected';
    this.carrier = true;
  }

  /** The event channel fired (xenvif_interrupt): the loop should run the actions. */
  interrupt(): void {
    this.pendingWork = true;
  }

  /** Whether a TX or RX action or a dealloc flush has something to do. */
  hasWork(): boolean {
    const tx = this.tx;
    const rx = this.rx;
    if (tx !== null && tx.deallocPending > 0) return true;
    if (this.vifState !== 'connected' || this.disabled) return false;
    if (this.pendingWork) return true;
    return (tx !== null && tx.hasWork()) || (rx !== null && rx.hasWork());
  }

  /** One TX action (netback.c xenvif_tx_action); returns the packets handed to the stack. */
  txAction(budget: number = NAPI_POLL_WEIGHT): number {
    this.pendingWork = false;
    if (this.vifState !== 'connected' || this.disabled || this.tx === null) return 0;
    const host = this.host;
    if (host === null || host.enterSoftirq === undefined) return this.tx.txAction(budget);
    host.enterSoftirq();
    try {
      return this.tx.txAction(budget);
    } finally {
      host.exitSoftirq!();
    }
  }

  /** One RX action (rx.c xenvif_rx_action with the kthread's stall and drain checks); returns frames delivered. */
  rxAction(budget: number = RX_BATCH_SIZE): number {
    if (this.vifState !== 'connected' || this.disabled || this.rx === null) return 0;
    return this.rx.rxAction(budget);
  }

  /** The dealloc action: unmaps and answers every released grant; runs while disconnecting too. */
  flushDealloc(): number {
    const tx = this.tx;
    if (tx === null) return 0;
    const n = tx.flushDealloc();
    if (this.vifState === 'disconnecting' && this.isDrained()) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
    return n;
  }

  /** The earliest RX drain deadline, or Infinity (for a loop that sleeps). */
  nextDeadline(): number {
    return this.rx === null ? Infinity : this.rx.nextDeadline();
  }

  /** ndo_start_xmit (xenvif_start_xmit): queues the frame for the guest or drops and counts it. */
  startXmit(skb: SkBuff): void {
    const rx = this.rx;
    if (this.vifState !== 'connected' || this.disabled || !this.carrier || rx === null) {
      this.drop(skb);
      return;
    }
    if (this.feat.multicastControl && skb.len >= ETH_HLEN) {
      const dest = readMac(skb.head, skb.data);
      if (isMulticastMac(dest) && dest !== ETH_BROADCAST && !this.mcastMatch(dest)) {
        this.drop(skb);
        return;
      }
    }
    const s = skb.shinfo;
    if (s.gsoSize !== 0) {
      const t = (s.gsoType & SKB_GSO_TCPV4) !== 0 ? XEN_NETIF_GSO_TYPE_TCPV4 : XEN_NETIF_GSO_TYPE_TCPV6;
      if ((this.feat.gsoMask & (1 << t)) === 0 || !this.feat.canSg) {
        // validate_xmit_skb: the frontend does not take this GSO type, so segment in software first.
        this.xmitSegmented(skb);
        return;
      }
    } else if (skb.len > this.mtu + ETH_HLEN) {
      this.drop(skb);
      return;
    }
    if (!rx.queueTail(skb)) {
      this.stats.rxQueueFull++;
      this.drop(skb);
    }
  }

  private xmitSegmented(skb: SkBuff): void {
    const rx = this.rx!;
    const h = tcpGsoCheck(skb);
    const segs = h.ok ? tcpGsoSegment(skb, h.value, this.feat.canSg) : null;
    kfreeSkb(skb);
    if (segs === null) {
      this.stats.txDropped++;
      return;
    }
    this.stats.rxGsoSegmented++;
    for (const seg of segs) {
      if (!rx.queueTail(seg)) {
        this.stats.rxQueueFull++;
        this.drop(seg);
      }
    }
  }

  private drop(skb: SkBuff): void {
    this.stats.txDropped++;
    kfreeSkb(skb);
  }

  /** xenvif_fatal_tx_err: disables the vif (carrier off at once, the RX queue binned); nothing new is answered. */
  fatal(message: string): void {
    this.log('err', message);
    this.log('err', 'fatal error; disabling device');
    this.stats.fatalErrors++;
    if (this.disabled) return;
    this.disabled = true;
    this.fatalError = message;
    this.carrier = false;
    this.rx?.purge();
  }

  /** A TX packet was answered ERROR or dropped (netdev_dbg). */
  txError(message: string): void {
    this.lastTxError = message;
    this.log('debug', message);
  }

  /** netdev_* logging. */
  log(level: NetbackLogLevel, message: string): void {
    this.logFn?.(level, `${this.name}: ${message}`);
  }

  /** Carrier off/on from RX stall detection. */
  setStalled(stalled: boolean): void {
    if (this.vifState !== 'connected' || this.disabled) return;
    this.carrier = !stalled;
  }

  /** xenvif_mcast_add: 0, or -ENOSPC once XEN_NETBK_MCAST_MAX addresses are held. */
  mcastAdd(addr: Uint8Array): number {
    if (this.mcast.length === XEN_NETBK_MCAST_MAX) return -ENOSPC;
    this.mcast.push(readMac(addr, 0));
    return 0;
  }

  /** xenvif_mcast_del: forgets one entry of the address (absent: nothing). */
  mcastDel(addr: Uint8Array): void {
    const i = this.mcast.indexOf(readMac(addr, 0));
    if (i >= 0) this.mcast.splice(i, 1);
  }

  /** xenvif_mcast_match. */
  mcastMatch(mac: number): boolean {
    return this.mcast.includes(mac);
  }

  /** Multicast addresses the guest added. */
  get mcastCount(): number {
    return this.mcast.length;
  }

  /** alloc_skb through the fault hook. */
  allocSkb(size: number): SkBuff | null {
    return this.allocFn(this.ctx, size);
  }

  /** netif_receive_skb: the frame goes to the bridge (or the input set by setInput); without one it is dropped. */
  receive(skb: SkBuff): void {
    const input = this.input;
    if (input === null) {
      kfreeSkb(skb);
      return;
    }
    input(skb);
  }

  /** Posts one grant-return notice for grefs[0..n) (TX grants netback is done with) on the guest's port (never to a dead guest). */
  grantsReturned(grefs: Uint32Array, n: number): void {
    const port = this.grantPort;
    if (port === null || this.guestDead) return;
    postGrantReturn(port, makeGrantReturnMessage(this.mapper.domid, this.grantSeq, grefs, n));
    this.grantSeq = (this.grantSeq + 1) >>> 0;
    this.stats.grantReturnNotices++;
    this.stats.grantsReturned += n;
  }

  /**
   * Starts teardown (xenvif_disconnect_data): stops both directions and bins the RX queue. Grants the stack
   * still holds come back later through flushDealloc. `guestDead`: the guest is gone, so it is never notified.
   */
  beginDisconnect(guestDead = false): void {
    if (guestDead) this.guestDead = true;
    if (this.vifState !== 'connected') return;
    this.vifState = 'disconnecting';
    this.carrier = false;
    this.rx?.purge();
  }

  /** No grant of the guest is mapped any more (inflight_packets == 0 and the dealloc ring is empty). */
  isDrained(): boolean {
    const tx = this.tx;
    return tx === null || (tx.inflightPackets === 0 && tx.deallocPending === 0 && tx.heldGrants().length === 0);
  }

  /** Resolves once the vif is drained (at once if it is); flushDealloc settles it. */
  whenDrained(): Promise<void> {
    if (this.isDrained()) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** The grants still mapped, for "Page still granted!" reports. */
  heldGrants(): HeldGrant[] {
    return this.tx === null ? [] : this.tx.heldGrants();
  }

  /** Ends teardown once drained: the queues go and the vif may connect again. Throws if grants are still held. */
  finishDisconnect(): void {
    if (this.vifState === 'idle') return;
    if (!this.isDrained()) throw new Error(`${this.name}: ${this.heldGrants().length} grants are still mapped`);
    this.rx?.purge();
    this.tx = null;
    this.rx = null;
    this.grantPort = null;
    this.vifState = 'idle';
    this.carrier = false;
  }

  /** Visits the frames waiting on the RX queue. */
  forEachSkb(fn: (skb: SkBuff) => void): void {
    this.rx?.forEachSkb(fn);
  }
}
