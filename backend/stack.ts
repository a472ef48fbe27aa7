// The backend's emulated network stack (dom0's side of xenbr0): a learning bridge whose ports are netback's
// vifs, local hosts (the TCP endpoint) and the uplink NIC, a tap with an optional pcap file, and every other
// holder of skbs registered with addHolder (netback's RX queues). One synchronous poll(now) does the timed
// work (fdb ageing, NIC completions, the tap window, hosts' timers), driven by the backend's softirq loop.
// forEachSkb visits every skb any part holds: that is what the grant oracle walks to know which skbs are live.
import type { Clock, TimerId } from '../shared/clock.js';
import type { Random } from '../shared/random.js';
import { Bridge, type BridgeStats } from './bridge.js';
import type { NetDevice, NetdevFeatures, SkbHolder } from './netdev.js';
import { Nic, type NicStats, type Wire } from './nic.js';
import type { PcapWriter } from './pcap.js';
import type { SkBuff, SkbContext } from './skbuff.js';
import { Tap, type TapStats } from './tap.js';

/**
 * The stack's time: the backend's clock, except that inside a softirq batch (enter..exit) now() answers the one
 * reading taken when the batch began, as jiffies stays put while a softirq runs. The bridge, the NIC and the tap
 * read the time per frame: inside a batch that is a field load instead of a performance.now() call (~50 ns).
 * Departure: Linux's jiffies tick on their own; here a batch's frames all carry its start time.
 */
export class SoftirqClock implements Clock {
  private depth = 0;
  private at = 0;

  constructor(private readonly base: Clock) {}

  now(): number {
    return this.depth > 0 ? this.at : this.base.now();
  }

  schedule(delayMs: number, fn: () => void): TimerId {
    return this.base.schedule(delayMs, fn);
  }

  cancel(id: TimerId): void {
    this.base.cancel(id);
  }

  /** Begins a batch at `now` (default: one reading of the clock); batches nest, the outermost one's time holds. */
  enter(now?: number): void {
    if (this.depth++ === 0) this.at = now ?? this.base.now();
  }

  /** Ends the innermost batch; throws without one (our bug). */
  exit(): void {
    if (this.depth === 0) throw new Error('SoftirqClock: exit without enter');
    this.depth--;
  }
}

/** A local host on the bridge (the TCP endpoint): a port device that also holds skbs and may have timers. */
export interface StackHost extends NetDevice, SkbHolder {
  poll?(now: number): void;
}

/** Which transmissions the tap sees. */
export type CaptureScope = 'uplink' | 'all';

/** Options of a Stack. */
export interface StackOptions {
  readonly ctx: SkbContext;
  readonly clock: Clock;
  /** The NIC's loss model draws from it. */
  readonly random: Random;
  readonly bridge?: { readonly ageingTimeMs?: number; readonly maxLearned?: number };
  readonly nic: {
    readonly name?: string;
    readonly mtu?: number;
    readonly features: NetdevFeatures;
    readonly ringSize?: number;
    readonly txQueueLen?: number;
    readonly completionDelayMs?: number;
    readonly loss?: number;
    readonly wire?: Wire | null;
    /** Is the NIC a bridge port (frames for unknown MACs flood out of it)? Default true. */
    readonly onBridge?: boolean;
  };
  /** A tap (ptype_all) capturing 'uplink' (the NIC only, default) or 'all' (every port's transmissions). */
  readonly tap?: {
    readonly holdMs?: number;
    readonly capacity?: number;
    readonly pcap?: PcapWriter | null;
    readonly scope?: CaptureScope;
  } | null;
}

/** Counters of every part. */
export interface StackStats {
  readonly bridge: Readonly<BridgeStats>;
  readonly nic: Readonly<NicStats>;
  readonly tap: Readonly<TapStats> | null;
}

/** The composed backend stack. */
export class Stack implements SkbHolder {
  readonly ctx: SkbContext;
  /** The time the bridge, the NIC and the tap read (pinned during enterSoftirq..exitSoftirq and poll). */
  readonly clock: SoftirqClock;
  readonly bridge: Bridge;
  readonly nic: Nic;
  readonly tap: Tap | null;

  private readonly scope: CaptureScope;
  private readonly pcap: PcapWriter | null;
  /** The device the bridge uses for each attached port (the tapped wrapper when scope is 'all'). */
  private readonly portDev = new Map<NetDevice, NetDevice>();
  private readonly hosts: StackHost[] = [];
  private readonly holders: SkbHolder[] = [];
  private closed = false;

  constructor(opts: StackOptions) {
    this.ctx = opts.ctx;
    const clock = new SoftirqClock(opts.clock);
    this.clock = clock;
    this.bridge = new Bridge({ clock, ...opts.bridge });
    const n = opts.nic;
    this.nic = new Nic({
      clock,
      random: opts.random,
      features: n.features,
      ...(n.name !== undefined && { name: n.name }),
      ...(n.mtu !== undefined && { mtu: n.mtu }),
      ...(n.ringSize !== undefined && { ringSize: n.ringSize }),
      ...(n.txQueueLen !== undefined && { txQueueLen: n.txQueueLen }),
      ...(n.completionDelayMs !== undefined && { completionDelayMs: n.completionDelayMs }),
      ...(n.loss !== undefined && { loss: n.loss }),
      wire: n.wire ?? null,
    });
    const t = opts.tap ?? null;
    this.scope = t?.scope ?? 'uplink';
    this.pcap = t?.pcap ?? null;
    this.tap =
      t === null
        ? null
        : new Tap({
            clock,
            pcap: this.pcap,
            ...(t.holdMs !== undefined && { holdMs: t.holdMs }),
            ...(t.capacity !== undefined && { capacity: t.capacity }),
          });
    // The NIC calls its tap itself, after software GSO (xmit_one), so it is never wrapped.
    this.nic.tap = this.tap;
    if (n.onBridge ?? true) {
      this.bridge.addPort(this.nic);
      this.portDev.set(this.nic, this.nic);
    }
  }

  /** br_add_if for a vif or a host: returns the function its received frames go to (bridge input from that port). */
  attachPort(dev: NetDevice): (skb: SkBuff) => void {
    if (this.portDev.has(dev)) throw new Error(`stack: ${dev.name} is already attached`);
    const onBridge = this.tap !== null && this.scope === 'all' ? this.tap.attach(dev) : dev;
    this.bridge.addPort(onBridge);
    this.portDev.set(dev, onBridge);
    const bridge = this.bridge;
    return (skb: SkBuff): void => bridge.input(skb, onBridge);
  }

  /** br_del_if: the port leaves the bridge (its fdb entries go); skbs it holds are its own business. */
  detachPort(dev: NetDevice): void {
    const onBridge = this.portDev.get(dev);
    if (onBridge === undefined) throw new Error(`stack: ${dev.name} is not attached`);
    this.bridge.removePort(onBridge);
    this.portDev.delete(dev);
  }

  /** Bridge input from an attached port (same as the function attachPort returned). */
  input(skb: SkBuff, from: NetDevice): void {
    const onBridge = this.portDev.get(from);
    if (onBridge === undefined) {
      // Not a port: the bridge counts and frees it.
      this.bridge.input(skb, from);
      return;
    }
    this.bridge.input(skb, onBridge);
  }

  /** A local host (the TCP endpoint): a bridge port whose skbs forEachSkb visits and whose poll(now) runs with ours. */
  addHost(host: StackHost): (skb: SkBuff) => void {
    const input = this.attachPort(host);
    this.hosts.push(host);
    return input;
  }

  /** Registers another holder of skbs (e.g. netback's RX queues) for forEachSkb. */
  addHolder(h: SkbHolder): void {
    if (this.holders.includes(h)) throw new Error('stack: holder already registered');
    this.holders.push(h);
  }

  /** Unregisters a holder. */
  removeHolder(h: SkbHolder): void {
    const i = this.holders.indexOf(h);
    if (i < 0) throw new Error('stack: holder is not registered');
    this.holders.splice(i, 1);
  }

  /**
   * Starts a batch of frames (a TX action): until exitSoftirq the stack's time stays at `now` (default: one clock
   * reading). Batches nest.
   */
  enterSoftirq(now?: number): void {
    this.clock.enter(now);
  }

  /** Ends the batch enterSoftirq began. */
  exitSoftirq(): void {
    this.clock.exit();
  }

  /** The timed work of one softirq round: fdb ageing, NIC completions, hosts' timers, then the tap window. */
  poll(now: number): void {
    this.clock.enter(now);
    try {
      this.bridge.poll(now);
      this.nic.poll(now);
      for (let i = 0; i < this.hosts.length; i++) this.hosts[i]!.poll?.(now);
      this.tap?.poll(now);
    } finally {
      this.clock.exit();
    }
  }

  /** The earliest time poll() has NIC or tap work (hosts' timers are theirs to report), Infinity when idle. */
  nextDeadline(): number {
    const a = this.nic.nextDeadline();
    const b = this.tap === null ? Infinity : this.tap.nextDeadline();
    return a < b ? a : b;
  }

  /** Visits every skb held by the NIC, the tap, the hosts and every registered holder. */
  forEachSkb(fn: (skb: SkBuff) => void): void {
    this.nic.forEachSkb(fn);
    this.tap?.forEachSkb(fn);
    for (let i = 0; i < this.hosts.length; i++) this.hosts[i]!.forEachSkb(fn);
    for (let i = 0; i < this.holders.length; i++) this.holders[i]!.forEachSkb(fn);
  }

  /** Counters of every part (live objects, not copies). */
  get stats(): StackStats {
    return { bridge: this.bridge.stats, nic: this.nic.stats, tap: this.tap?.stats ?? null };
  }

  /** Shutdown: frees what the NIC still holds, writes out the tap's clones and closes the pcap file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.nic.purge();
    this.tap?.flush();
    this.pcap?.close();
  }
}
