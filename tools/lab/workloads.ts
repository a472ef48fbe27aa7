// The lab's workloads: what the guests send (and who stalls) in the whole-system runs, plus the fuzzer's operation
// sequences. Every design meets the same workloads with the same seed, so their figures compare.
import type { BackendConfig } from '../../backend/loop.js';
import { MixSource, type GuestSource } from '../../frontend/loop.js';
import type { TxPacket } from '../../frontend/netfront.js';
import { TCP_MAX_FRAME_PAYLOAD, TrafficMix, TxFrame, type Flow, type TrafficHost, type TrafficWeights } from '../../frontend/traffic.js';
import type { Clock } from '../../shared/clock.js';
import { ETH_HLEN, guestMac } from '../../shared/ether.js';
import { IPV4_HLEN, TCPHDR_ACK, TCP_HLEN, guestIp, ipv4 } from '../../shared/inet.js';
import type { Random } from '../../shared/random.js';

/** The host beyond the uplink (the TCP peer). */
export const REMOTE = { mac: 0x02_00_00_00_00_01, ip: ipv4(192, 0, 2, 1), port: 5001 } as const;
/** The backend's local TCP endpoint. */
export const ENDPOINT = { mac: 0x02_00_00_00_00_fe, ip: ipv4(10, 0, 255, 254), port: 5001 } as const;
/** A host beyond the uplink that is not the TCP peer: frames to it leave through the NIC and vanish. */
export const SINK_IP = ipv4(192, 0, 2, 99);
/** The MTU of every link. */
export const LAB_MTU = 1500;

/** What a workload's source factory gets. */
export interface SourceEnv {
  readonly domid: number;
  /** Guests in the run (domids 1..guests). */
  readonly guests: number;
  readonly clock: Clock;
  readonly random: Random;
}

/** A guest's traffic, which may have timed work of its own (a pacing credit, a TCP resend). */
export interface LabSource extends GuestSource {
  /** The earliest time next() may return a frame when it returns null now (ms), Infinity when unknown. */
  nextDeadline(): number;
}

/** A whole-system workload: guests, backend settings, traffic, stalls. */
export interface SystemWorkload {
  readonly kind: 'system';
  readonly name: string;
  readonly title: string;
  readonly guests: number;
  /** Backend settings besides the defaults (loss, tap). */
  readonly backend: Partial<Pick<BackendConfig, 'loss' | 'tap' | 'tapHoldMs'>>;
  /** The uplink NIC offers TSO (false: GSO skbs are segmented in software, validate_xmit_skb). */
  readonly nicTso: boolean;
  /** Guests that stop stepping (no RX, no grant returns taken) after `stallAfterMs` until the drain. */
  readonly stalled: readonly number[];
  readonly stallAfterMs: number;
  readonly source: (env: SourceEnv) => LabSource;
}

/** The fuzzer's operation sequences as a workload: `runsPerSecond` seeded runs per lab second. */
export interface OpsWorkload {
  readonly kind: 'ops';
  readonly name: string;
  readonly title: string;
  readonly runsPerSecond: number;
}

/** One workload. */
export type Workload = SystemWorkload | OpsWorkload;

/**
 * A token bucket in front of a source: at most `pps` frames per second of the source's clock, bursts of `burst`.
 * Credits only: the inner source is asked for a frame only when one may go, so its random draws stay the same.
 */
export class PacedSource implements LabSource {
  private credits: number;
  private last: number;

  constructor(
    private readonly inner: GuestSource & { nextDeadline?(): number },
    private readonly clock: Clock,
    readonly pps: number,
    private readonly burst = 16,
  ) {
    if (!(pps > 0) || !Number.isFinite(pps)) throw new RangeError(`pps must be positive and finite but got ${pps}`);
    if (!Number.isInteger(burst) || burst < 1) throw new RangeError(`burst must be a positive integer but got ${burst}`);
    this.credits = burst;
    this.last = clock.now();
  }

  get maxFrameLen(): number {
    return this.inner.maxFrameLen;
  }

  next(now: number): TxPacket | null {
    if (now > this.last) {
      this.credits = Math.min(this.burst, this.credits + ((now - this.last) * this.pps) / 1000);
      this.last = now;
    }
    if (this.credits < 1) return null;
    const p = this.inner.next(now);
    if (p !== null) this.credits -= 1;
    return p;
  }

  receive(buf: Uint8Array, off: number, len: number): boolean {
    return this.inner.receive?.(buf, off, len) ?? false;
  }

  connected(gso: boolean): void {
    this.inner.connected?.(gso);
  }

  start(): void {
    this.inner.start?.();
  }

  nextDeadline(): number {
    const credit = this.credits >= 1 ? this.clock.now() : this.last + ((1 - this.credits) * 1000) / this.pps;
    return Math.min(credit, this.inner.nextDeadline?.() ?? Infinity);
  }
}

/** The demo's traffic mix (frontend/traffic.ts) with the given weights, as a LabSource. */
export class LabMix implements LabSource {
  private readonly src: MixSource;

  constructor(readonly mix: TrafficMix) {
    this.src = new MixSource(mix);
  }

  get maxFrameLen(): number {
    return this.src.maxFrameLen;
  }

  next(now: number): TxPacket | null {
    return this.src.next(now);
  }

  receive(buf: Uint8Array, off: number, len: number): boolean {
    return this.src.receive(buf, off, len);
  }

  connected(gso: boolean): void {
    this.src.connected(gso);
  }

  start(): void {
    this.src.start();
  }

  nextDeadline(): number {
    return this.mix.nextDeadline();
  }
}

/** A mix from guest `env.domid` to `peers` (domids), the uplink host and the endpoint, weighted. */
export function mixSource(env: SourceEnv, weights: Partial<TrafficWeights>, peers: readonly number[]): LabMix {
  const hosts: TrafficHost[] = peers.map((d) => ({ mac: guestMac(d), ip: guestIp(d) }));
  const w = { guest: 0, uplink: 0, broadcast: 0, tcp: 0, ...weights };
  return new LabMix(
    new TrafficMix({
      clock: env.clock,
      random: env.random,
      self: { mac: guestMac(env.domid), ip: guestIp(env.domid) },
      guests: hosts,
      uplink: REMOTE,
      // No TCP stream at all (not even its handshake) when the mix sends none.
      tcpEndpoint: w.tcp > 0 ? ENDPOINT : null,
      tcpSport: 10000 + env.domid,
      mtu: LAB_MTU,
      weights: w,
    }),
  );
}

/**
 * TCP segments with a GSO extra (gso_size = MSS) of random sizes from 2 MSS up to a whole 64 KiB frame, sent past
 * the uplink to a host that is not the TCP peer: each leaves through the NIC, which segments it when it has no TSO.
 */
export class GsoSource implements LabSource {
  readonly maxFrameLen = ETH_HLEN + IPV4_HLEN + TCP_HLEN + TCP_MAX_FRAME_PAYLOAD;
  private readonly frame = new TxFrame();
  private readonly flow: Flow;
  private readonly mss = LAB_MTU - IPV4_HLEN - TCP_HLEN;
  private seq = 1;
  private pos = 0;
  private ipId = 0;

  constructor(
    domid: number,
    private readonly random: Random,
  ) {
    this.flow = { srcMac: guestMac(domid), dstMac: REMOTE.mac, saddr: guestIp(domid), daddr: SINK_IP, sport: 20000 + domid, dport: 9 };
  }

  next(_now: number): TxPacket {
    const len = this.random.int(2 * this.mss, TCP_MAX_FRAME_PAYLOAD);
    const f = this.frame.setTcp(this.flow, this.seq, 0, TCPHDR_ACK, 0xffff, this.flow.sport, this.pos, len, this.mss);
    f.ipId = this.ipId;
    this.ipId = (this.ipId + 1) & 0xffff;
    f.pageOffset = 0;
    this.seq = (this.seq + len) >>> 0;
    this.pos = (this.pos + len) >>> 0;
    return f;
  }

  nextDeadline(): number {
    return Infinity;
  }
}

/** All guests but `domid`. */
function othersOf(env: SourceEnv): number[] {
  const out: number[] = [];
  for (let d = 1; d <= env.guests; d++) if (d !== env.domid) out.push(d);
  return out;
}

const ALL_TRAFFIC: Partial<TrafficWeights> = { guest: 1, uplink: 1, broadcast: 0.1, tcp: 1 };

/** The workloads, in table order. */
export const WORKLOADS: readonly Workload[] = [
  {
    kind: 'system',
    name: 'tcp-loss',
    title:
      'bulk TCP (GSO) from 2 guests relayed by the local endpoint to the remote peer, 2% loss on the uplink; the uplink segments ' +
      'in software, so the peer ACKs parts of queued skbs (retransmits, partial ACKs)',
    guests: 2,
    backend: { loss: 0.02 },
    nicTso: false,
    stalled: [],
    stallAfterMs: 0,
    source: (env) => mixSource(env, { tcp: 1 }, []),
  },
  {
    kind: 'system',
    name: 'flood',
    title: '8 guests broadcasting (every frame flooded to every other port), 1500 pps each',
    guests: 8,
    backend: {},
    nicTso: true,
    stalled: [],
    stallAfterMs: 0,
    source: (env) => new PacedSource(mixSource(env, { broadcast: 1 }, []), env.clock, 1500),
  },
  {
    kind: 'system',
    name: 'tap',
    title: '4 guests of mixed traffic (guest, uplink, broadcast, TCP) with a tap on every port holding clones 20 ms',
    guests: 4,
    backend: { tap: true, tapHoldMs: 20 },
    nicTso: true,
    stalled: [],
    stallAfterMs: 0,
    source: (env) => new PacedSource(mixSource(env, ALL_TRAFFIC, othersOf(env)), env.clock, 3000),
  },
  {
    kind: 'system',
    name: 'gso-no-tso',
    title: 'GSO frames on a NIC without TSO: 2 guests sending TCP frames of up to 64 KiB with a GSO extra past the uplink, 1500 pps each',
    guests: 2,
    backend: {},
    nicTso: false,
    stalled: [],
    stallAfterMs: 0,
    source: (env) => new PacedSource(new GsoSource(env.domid, env.random), env.clock, 1500),
  },
  {
    kind: 'system',
    name: 'stalled',
    title: 'a stalled receiver: guest 1 stops taking frames after 5 ms while 3 guests keep sending to it',
    guests: 4,
    backend: {},
    nicTso: true,
    stalled: [1],
    stallAfterMs: 5,
    source: (env) =>
      env.domid === 1
        ? new PacedSource(mixSource(env, { guest: 1 }, othersOf(env)), env.clock, 1000)
        : new PacedSource(mixSource(env, { guest: 4, uplink: 1 }, [1]), env.clock, 3000),
  },
  { kind: 'ops', name: 'fuzz', title: "the fuzzer's seeded sk_buff operation sequences (tools/fuzz), checked by the oracle", runsPerSecond: 600 },
];

/** The workload called `name`, or undefined. */
export function workloadByName(name: string): Workload | undefined {
  return WORKLOADS.find((w) => w.name === name);
}
