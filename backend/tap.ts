// A packet tap (a ptype_all handler fed by dev_queue_xmit_nit, net/core/dev.c): it gets a clone of every frame
// the devices it is attached to transmit, holds each clone for a window (an AF_PACKET reader that is slow to
// drain its ring), then writes it to a pcap file and frees it. Each held clone shares its frame's shinfo, so a
// long hold keeps guest pages (grants) alive: this is one of the stack's real ways of holding pages.
// A full tap ring drops the capture (packet_rcv's tp_drops), never the frame.
import type { Clock } from '../shared/clock.js';
import type { NetDevice, NetdevFeatures, PacketTap, SkbHolder } from './netdev.js';
import type { PcapFill, PcapWriter } from './pcap.js';
import { type SkBuff, consumeSkb, skbClone, skbCopyBits } from './skbuff.js';

/** Default number of clones a tap can hold. */
export const TAP_DEFAULT_CAPACITY = 4096;

/** Options of a Tap. */
export interface TapOptions {
  readonly clock: Clock;
  /** How long each clone is held before it is written and freed, ms (a fault hook: make it long). Default 0. */
  readonly holdMs?: number;
  /** Clones held at most; beyond it captures are dropped. Default 4096. */
  readonly capacity?: number;
  /** Where the frames are written; null: held and freed only. */
  readonly pcap?: PcapWriter | null;
}

/** Tap counters. */
export interface TapStats {
  /** Clones taken. */
  captured: number;
  /** Records written to the pcap. */
  written: number;
  /** Clones freed (written or not). */
  released: number;
  /** Captures dropped because the tap was full. */
  dropped: number;
}

/** A ptype_all tap holding clones for a window and writing them to pcap. */
export class Tap implements PacketTap, SkbHolder, PcapFill {
  readonly capacity: number;
  readonly stats: TapStats = { captured: 0, written: 0, released: 0, dropped: 0 };

  private readonly clock: Clock;
  private readonly pcap: PcapWriter | null;
  private holdMs: number;
  private readonly held: (SkBuff | null)[];
  private readonly capturedAt: Float64Array;
  private head = 0;
  private count = 0;
  private filling: SkBuff | null = null;

  constructor(opts: TapOptions) {
    this.clock = opts.clock;
    this.holdMs = checkHold(opts.holdMs ?? 0);
    const cap = opts.capacity ?? TAP_DEFAULT_CAPACITY;
    if (!Number.isInteger(cap) || cap < 1) throw new RangeError(`tap capacity must be a positive integer, got ${cap}`);
    this.capacity = cap;
    this.pcap = opts.pcap ?? null;
    this.held = new Array<SkBuff | null>(cap).fill(null);
    this.capturedAt = new Float64Array(cap);
  }

  /** Clones currently held. */
  get holding(): number {
    return this.count;
  }

  /** The hold window, ms. */
  get hold(): number {
    return this.holdMs;
  }

  /** Fault hook: changes the hold window (applies to clones already held too). */
  setHoldMs(ms: number): void {
    this.holdMs = checkHold(ms);
  }

  /** dev_queue_xmit_nit: keeps a clone of `skb` (the caller keeps its own reference). */
  capture(skb: SkBuff): void {
    if (this.count === this.capacity) {
      this.stats.dropped++;
      return;
    }
    let i = this.head + this.count;
    if (i >= this.capacity) i -= this.capacity;
    this.held[i] = skbClone(skb);
    this.capturedAt[i] = this.clock.now();
    this.count++;
    this.stats.captured++;
  }

  /** Wraps `dev` so that every frame it transmits is captured first (the tap attached to that device). */
  attach(dev: NetDevice): NetDevice {
    return new TappedDevice(dev, this);
  }

  /** Writes and frees every clone held for at least the window, in capture order. */
  poll(now: number): void {
    while (this.count > 0 && this.capturedAt[this.head]! + this.holdMs <= now) this.releaseHead();
  }

  /** Writes and frees every held clone now (shutdown), and flushes the pcap buffer. */
  flush(): void {
    while (this.count > 0) this.releaseHead();
    this.pcap?.flush();
  }

  /** When poll() next has work (the oldest clone's release time), Infinity when empty. */
  nextDeadline(): number {
    return this.count === 0 ? Infinity : this.capturedAt[this.head]! + this.holdMs;
  }

  /** Visits every held clone once. */
  forEachSkb(fn: (skb: SkBuff) => void): void {
    for (let k = 0, i = this.head; k < this.count; k++, i = i + 1 === this.capacity ? 0 : i + 1) fn(this.held[i]!);
  }

  /** PcapFill: copies the frame being written straight out of the held clone (linear part, frags, frag_list). */
  fill(dst: Uint8Array, dstOff: number, len: number): void {
    if (skbCopyBits(this.filling!, 0, dst, dstOff, len) !== 0) throw new Error(`tap: skb_copy_bits of ${len} bytes failed`);
  }

  private releaseHead(): void {
    const i = this.head;
    const skb = this.held[i]!;
    this.held[i] = null;
    this.head = i + 1 === this.capacity ? 0 : i + 1;
    this.count--;
    if (this.pcap !== null) {
      this.filling = skb;
      this.pcap.writeRecord(this.capturedAt[i]!, skb.len, this);
      this.filling = null;
      this.stats.written++;
    }
    this.stats.released++;
    consumeSkb(skb);
  }
}

/** A device with a tap attached: capture, then the real device's xmit (xmit_one's order). */
class TappedDevice implements NetDevice {
  constructor(
    private readonly dev: NetDevice,
    private readonly tap: Tap,
  ) {}

  get name(): string {
    return this.dev.name;
  }

  get mtu(): number {
    return this.dev.mtu;
  }

  get features(): NetdevFeatures {
    return this.dev.features;
  }

  startXmit(skb: SkBuff): void {
    this.tap.capture(skb);
    this.dev.startXmit(skb);
  }
}

function checkHold(ms: number): number {
  if (!(ms >= 0) || !Number.isFinite(ms)) throw new RangeError(`tap holdMs must be finite and >= 0, got ${ms}`);
  return ms;
}
