// The uplink NIC: the transmit half of a physical Ethernet device. startXmit follows __dev_queue_xmit and
// validate_xmit_skb (net/core/dev.c): a GSO skb the device cannot offload (no TSO, or a frag_list without
// NETIF_F_FRAGLIST) is segmented in software, a nonlinear skb the device cannot gather is linearized, an
// oversize frame is dropped. Frames wait in a pfifo qdisc (txqueuelen) when the TX ring of `ringSize`
// descriptors is full and are tail-dropped when that is full too. A frame completes `completionDelayMs` after
// it entered the ring: poll(now) is the TX-completion interrupt that hands it to the wire and frees it.
// Every skb in the ring or the qdisc pins its pages: this is one of the stack's real ways of holding them.
// Departures: one descriptor per skb (not per frag); TSO frames go to the wire whole (the wire model reads what
// the driver hands the hardware); no checksum is completed on the wire (CHECKSUM_PARTIAL frames stay partial).
import type { Clock } from '../shared/clock.js';
import { ETH_HLEN } from '../shared/ether.js';
import type { Random } from '../shared/random.js';
import { tcpGsoCheck, tcpGsoSegment } from './gso.js';
import { DEFAULT_MTU, DEFAULT_TX_QUEUE_LEN, fixFeatures, type NetDevice, type NetdevFeatures, type PacketTap, type SkbHolder } from './netdev.js';
import { type SkBuff, consumeSkb, kfreeSkb, skbClone, skbIsNonlinear, skbLinearize, skbShared } from './skbuff.js';

/** The frames the NIC puts on the wire: read the bytes (skbCopyBits) during the call; the NIC frees the skb after. */
export type Wire = (skb: SkBuff) => void;

/** Default TX ring size (e1000e and many others default to 256 TX descriptors). */
export const NIC_DEFAULT_RING_SIZE = 256;
/** Default time from a frame entering the TX ring to its completion, ms. */
export const NIC_DEFAULT_COMPLETION_DELAY_MS = 0.05;

/** Options of a Nic. */
export interface NicOptions {
  readonly clock: Clock;
  /** Needed when `loss` > 0. */
  readonly random?: Random;
  readonly name?: string;
  /** Default 1500. */
  readonly mtu?: number;
  /** NETIF_F_SG / NETIF_F_TSO; TSO without SG is turned off (netdev_fix_features). */
  readonly features: NetdevFeatures;
  /** TX descriptors. Default 256. */
  readonly ringSize?: number;
  /** pfifo qdisc limit in packets (txqueuelen); 0: no qdisc, a full ring drops. Default 1000. */
  readonly txQueueLen?: number;
  /** Time from entering the ring to completion, ms. Default 0.05. */
  readonly completionDelayMs?: number;
  /** Probability that a completed frame is lost on the wire (the wire callback never sees it). Default 0. */
  readonly loss?: number;
  /** Where transmitted frames go. Default none (frames vanish after completion). */
  readonly wire?: Wire | null;
}

/** NIC counters. */
export interface NicStats {
  /** startXmit calls. */
  xmits: number;
  /** Frames completed by the hardware (before wire loss). */
  frames: number;
  /** Bytes of those frames. */
  bytes: number;
  /** Frames handed to the wire callback. */
  wireFrames: number;
  /** Frames lost on the wire. */
  lost: number;
  /** GSO skbs segmented in software. */
  segmented: number;
  /** Segments those produced. */
  segments: number;
  /** GSO skbs passed to the hardware whole (TSO). */
  tsoFrames: number;
  /** Nonlinear skbs linearized because the device cannot gather them. */
  linearized: number;
  /** skb_share_check clones (an skb handed over while someone else still held it). */
  shareClones: number;
  /** Every frame dropped, whatever the reason (the reasons below add up to it). */
  dropped: number;
  /** Non-GSO frames over MTU + ETH_HLEN, and GSO skbs whose segments would be. */
  droppedMtu: number;
  /** Frames shorter than an Ethernet header, or GSO skbs with broken headers. */
  droppedBad: number;
  /** Linearize or segmentation failures. */
  droppedNoMem: number;
  /** Tail drops: ring and qdisc both full. */
  droppedQueue: number;
  /** Frames freed unsent by purge(). */
  purged: number;
}

/** The uplink NIC: qdisc + TX ring + completion, with software GSO/linearize fallbacks and fault hooks. */
export class Nic implements NetDevice, SkbHolder {
  readonly name: string;
  readonly mtu: number;
  readonly features: NetdevFeatures;
  readonly ringSize: number;
  readonly txQueueLen: number;
  readonly completionDelayMs: number;
  readonly loss: number;
  readonly stats: NicStats = {
    xmits: 0,
    frames: 0,
    bytes: 0,
    wireFrames: 0,
    lost: 0,
    segmented: 0,
    segments: 0,
    tsoFrames: 0,
    linearized: 0,
    shareClones: 0,
    dropped: 0,
    droppedMtu: 0,
    droppedBad: 0,
    droppedNoMem: 0,
    droppedQueue: 0,
    purged: 0,
  };
  /** The first reason a frame was dropped as bad, for diagnostics. */
  lastError: string | null = null;
  /** Where completed frames go. */
  wire: Wire | null;
  /** ptype_all: sees each frame as it enters the ring (after software GSO), as dev_queue_xmit_nit in xmit_one. */
  tap: PacketTap | null = null;

  private readonly clock: Clock;
  private readonly random: Random | null;
  private readonly ring: (SkBuff | null)[];
  private readonly doneAt: Float64Array;
  private ringHead = 0;
  private ringCount = 0;
  private readonly qdisc: (SkBuff | null)[];
  private qHead = 0;
  private qCount = 0;
  private stalledUntil = -Infinity;

  constructor(opts: NicOptions) {
    this.clock = opts.clock;
    this.name = opts.name ?? 'eth0';
    this.mtu = checkInt('mtu', opts.mtu ?? DEFAULT_MTU, 68, 65535);
    this.features = fixFeatures(opts.features);
    this.ringSize = checkInt('ringSize', opts.ringSize ?? NIC_DEFAULT_RING_SIZE, 1, 1 << 16);
    this.txQueueLen = checkInt('txQueueLen', opts.txQueueLen ?? DEFAULT_TX_QUEUE_LEN, 0, 1 << 20);
    const delay = opts.completionDelayMs ?? NIC_DEFAULT_COMPLETION_DELAY_MS;
    if (!(delay >= 0) || !Number.isFinite(delay)) throw new RangeError(`nic completionDelayMs must be finite and >= 0, got ${delay}`);
    this.completionDelayMs = delay;
    const loss = opts.loss ?? 0;
    if (!(loss >= 0 && loss <= 1)) throw new RangeError(`nic loss must be in [0, 1], got ${loss}`);
    if (loss > 0 && opts.random === undefined) throw new RangeError('nic loss > 0 needs a Random');
    this.loss = loss;
    this.random = opts.random ?? null;
    this.wire = opts.wire ?? null;
    this.ring = new Array<SkBuff | null>(this.ringSize).fill(null);
    this.doneAt = new Float64Array(this.ringSize);
    this.qdisc = new Array<SkBuff | null>(this.txQueueLen).fill(null);
  }

  /** Skbs in the TX ring (handed to the hardware, not completed). */
  get inFlight(): number {
    return this.ringCount;
  }

  /** Skbs waiting in the qdisc. */
  get queued(): number {
    return this.qCount;
  }

  /** True while completions are stopped by stall(). */
  isStalled(now: number = this.clock.now()): boolean {
    return now < this.stalledUntil;
  }

  /** Fault hook: the hardware completes nothing before `untilMs` (a hung TX queue); frames keep their pages. */
  stall(untilMs: number): void {
    if (untilMs > this.stalledUntil) this.stalledUntil = untilMs;
  }

  /** When poll() next has work: the oldest ring entry's completion (or the stall's end), Infinity when idle. */
  nextDeadline(): number {
    if (this.ringCount === 0) return Infinity;
    const t = this.doneAt[this.ringHead]!;
    return t > this.stalledUntil ? t : this.stalledUntil;
  }

  /** ndo_start_xmit via __dev_queue_xmit/validate_xmit_skb: takes one reference to `skb` (data at the Ethernet header). */
  startXmit(skb: SkBuff): void {
    const st = this.stats;
    st.xmits++;
    if (skbShared(skb)) {
      // skb_share_check: we are about to change data/len (pull, linearize); work on our own clone.
      const c = skbClone(skb);
      kfreeSkb(skb);
      skb = c;
      st.shareClones++;
    }
    if (skb.len < ETH_HLEN) {
      this.drop(skb, 'bad', `frame is too short: expected >= ${ETH_HLEN} bytes but got ${skb.len}`);
      return;
    }
    skb.macHeader = skb.data; // skb_reset_mac_header in __dev_queue_xmit
    const s = skb.shinfo;
    if (s.gsoSize > 0) {
      this.xmitGso(skb);
      return;
    }
    if (skb.len > this.mtu + ETH_HLEN) {
      this.drop(skb, 'mtu', null);
      return;
    }
    // skb_needs_linearize: a frag_list needs NETIF_F_FRAGLIST (never here), frags need NETIF_F_SG.
    if (skbIsNonlinear(skb) && (s.fragList !== null || (s.nrFrags > 0 && !this.features.sg))) {
      if (skbLinearize(skb) !== 0) {
        this.drop(skb, 'nomem', null);
        return;
      }
      st.linearized++;
    }
    this.enqueue(skb);
  }

  /** TX-completion interrupt: completes due frames in ring order (wire, then free) and refills the ring from the qdisc. */
  poll(now: number): void {
    if (now < this.stalledUntil) return;
    const st = this.stats;
    while (this.ringCount > 0 && this.doneAt[this.ringHead]! <= now) {
      const i = this.ringHead;
      const skb = this.ring[i]!;
      this.ring[i] = null;
      this.ringHead = i + 1 === this.ringSize ? 0 : i + 1;
      this.ringCount--;
      st.frames++;
      st.bytes += skb.len;
      if (this.loss > 0 && this.random!.chance(this.loss)) st.lost++;
      else if (this.wire !== null) {
        st.wireFrames++;
        this.wire(skb);
      }
      consumeSkb(skb);
    }
    // qdisc_run: move waiting frames into the freed descriptors.
    while (this.qCount > 0 && this.ringCount < this.ringSize) {
      const skb = this.qdisc[this.qHead]!;
      this.qdisc[this.qHead] = null;
      this.qHead = this.qHead + 1 === this.txQueueLen ? 0 : this.qHead + 1;
      this.qCount--;
      this.toRing(skb, now);
    }
  }

  /** Frees every queued and in-flight skb without transmitting it (device down / netif_tx_disable + ring cleanup). */
  purge(): void {
    while (this.ringCount > 0) {
      const skb = this.ring[this.ringHead]!;
      this.ring[this.ringHead] = null;
      this.ringHead = this.ringHead + 1 === this.ringSize ? 0 : this.ringHead + 1;
      this.ringCount--;
      this.stats.purged++;
      kfreeSkb(skb);
    }
    while (this.qCount > 0) {
      const skb = this.qdisc[this.qHead]!;
      this.qdisc[this.qHead] = null;
      this.qHead = this.qHead + 1 === this.txQueueLen ? 0 : this.qHead + 1;
      this.qCount--;
      this.stats.purged++;
      kfreeSkb(skb);
    }
  }

  /** Visits every skb in the ring and the qdisc once. */
  forEachSkb(fn: (skb: SkBuff) => void): void {
    for (let k = 0, i = this.ringHead; k < this.ringCount; k++, i = i + 1 === this.ringSize ? 0 : i + 1) fn(this.ring[i]!);
    for (let k = 0, i = this.qHead; k < this.qCount; k++, i = i + 1 === this.txQueueLen ? 0 : i + 1) fn(this.qdisc[i]!);
  }

  private xmitGso(skb: SkBuff): void {
    const s = skb.shinfo;
    // SKB_GSO_DODGY (guest) frames are checked even when the hardware segments them (tcp_gso_segment).
    const r = tcpGsoCheck(skb);
    if (!r.ok) {
      this.drop(skb, 'bad', r.error);
      return;
    }
    const h = r.value;
    // Departure: segments that would exceed the MTU are dropped here (Linux lets GSO skbs past is_skb_forwardable).
    if (h.hdrLen + s.gsoSize > this.mtu + ETH_HLEN) {
      this.drop(skb, 'mtu', null);
      return;
    }
    // skb_gso_ok: the hardware takes it when it has TSO and the skb has no frag_list (no NETIF_F_FRAGLIST).
    if (this.features.tso && s.fragList === null) {
      this.stats.tsoFrames++;
      this.enqueue(skb);
      return;
    }
    const segs = tcpGsoSegment(skb, h, this.features.sg);
    // validate_xmit_skb consumes the original once it is segmented.
    if (segs === null) {
      this.drop(skb, 'nomem', null);
      return;
    }
    consumeSkb(skb);
    this.stats.segmented++;
    this.stats.segments += segs.length;
    for (let i = 0; i < segs.length; i++) this.enqueue(segs[i]!);
  }

  private enqueue(skb: SkBuff): void {
    if (this.qCount === 0 && this.ringCount < this.ringSize) {
      this.toRing(skb, this.clock.now());
      return;
    }
    if (this.qCount < this.txQueueLen) {
      let i = this.qHead + this.qCount;
      if (i >= this.txQueueLen) i -= this.txQueueLen;
      this.qdisc[i] = skb;
      this.qCount++;
      return;
    }
    this.drop(skb, 'queue', null);
  }

  // xmit_one: taps see the frame, then the driver puts it in a descriptor.
  private toRing(skb: SkBuff, now: number): void {
    if (this.tap !== null) this.tap.capture(skb);
    let i = this.ringHead + this.ringCount;
    if (i >= this.ringSize) i -= this.ringSize;
    this.ring[i] = skb;
    this.doneAt[i] = now + this.completionDelayMs;
    this.ringCount++;
  }

  private drop(skb: SkBuff, why: 'bad' | 'mtu' | 'nomem' | 'queue', error: string | null): void {
    const st = this.stats;
    st.dropped++;
    if (why === 'bad') st.droppedBad++;
    else if (why === 'mtu') st.droppedMtu++;
    else if (why === 'nomem') st.droppedNoMem++;
    else st.droppedQueue++;
    if (error !== null) this.lastError ??= error;
    kfreeSkb(skb);
  }
}

function checkInt(what: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`nic ${what} must be an integer in [${lo}, ${hi}], got ${v}`);
  return v;
}
