// The guest's driving loop and its shared statistics block. The loop is the only guest code that knows about
// real threads: it runs netfront's bounded work functions (transmit, TX responses, RX, grant returns), yields to
// the event loop so other guests sharing the thread (piscina concurrentTasksPerWorker) and MessagePort messages
// get their turn, and sleeps on the guest's event channel with Atomics.waitAsync when there is nothing to do.
//
// The statistics block is one SharedArrayBuffer per guest: the toolstack writes the phase word, the guest writes
// its state word and publishes its counters and grant-return latency histogram under a sequence lock, so the
// toolstack reads progress once a second without a message.
import { threadId, type MessagePort } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { RealClock, type Clock } from '../shared/clock.js';
import { ETH_HLEN } from '../shared/ether.js';
import { EvtchnHost, type WaitResult } from '../shared/evtchn.js';
import { GrantTable, type GrantTableOptions } from '../shared/gnttab.js';
import { parseGrantReturnMessage } from '../shared/grant-return.js';
import { IPV4_HLEN, TCPHDR_ACK, TCP_HLEN, UDP_HLEN } from '../shared/inet.js';
import { GuestMemory } from '../shared/memory.js';
import { XEN_NETIF_MAX_TX_SIZE } from '../shared/netif.js';
import { PAYLOAD_TAG_LEN } from '../shared/payload.js';
import { Random } from '../shared/random.js';
import { XenbusStateClosed, vifFrontendPath } from '../shared/xenbus.js';
import { XenstoreClient } from '../shared/xenstore-client.js';
import type { XsWorkerPorts } from '../shared/xenstore-protocol.js';
import { LatencyHistogram, Netfront, type TxPacket, type TxSource } from './netfront.js';
import { NetfrontXenbus } from './netfront-xenbus.js';
import { TrafficMix, TxFrame, type MixSettings } from './traffic.js';

/** Toolstack → guest (kPhase): connect and wait. */
export const PHASE_CONNECT = 0;
/** Toolstack → guest: transmit traffic. */
export const PHASE_RUN = 1;
/** Toolstack → guest: stop transmitting, keep receiving and taking grants back. */
export const PHASE_STOP = 2;
/** Toolstack → guest: disconnect, end every access and finish the task. */
export const PHASE_CLOSE = 3;

/** Guest → toolstack (kState): building and connecting. */
export const GUEST_BOOTING = 0;
/** The vif is Connected. */
export const GUEST_CONNECTED = 1;
/** The guest finished (its task result carries the report). */
export const GUEST_DONE = 2;
/** The guest failed (its task result or rejection carries why). */
export const GUEST_FAILED = 3;
/** The guest was killed (kKill): it stopped where it stood, dropping its state; the toolstack destroys the domain. */
export const GUEST_KILLED = 4;

/** Int32 word: the phase the toolstack asks for (PHASE_*). */
export const kPhase = 0;
/** Int32 word: the guest's state (GUEST_*). */
export const kState = 1;
/** Int32 word: the sequence lock over the counters and histogram (odd while the guest writes). */
export const kSeq = 2;
/** Int32 word, toolstack → guest: nonzero kills the guest where it stands (a fault: no teardown, no end access). */
export const kKill = 3;
/** Int32 word, toolstack → guest: how the guest consumes its RX ring (RX_NORMAL, RX_SLOW, RX_STALLED). */
export const kRxMode = 4;
/** Int32 word, toolstack → guest: bumped to make the guest revoke TX grants the backend still maps (a fault). */
export const kRevoke = 5;
/** Int32 word, toolstack → guest: notifications per ms while the guest floods its event channel (0: no storm). */
export const kStorm = 6;
/** Int32 word, guest → toolstack: the threadId of the worker the guest runs on. */
export const kThreadId = 7;
/** Int32 word, toolstack → guest: a slow receiver takes one RX response every this many ms. */
export const kRxEveryMs = 8;
/** Int32 word, toolstack → guest: at most this many grants per revoke (0: every mapped TX grant). */
export const kRevokeMax = 9;
/** Int32 word, guest -> toolstack: the phase whose counters the guest has published after seeing it. */
export const kPhaseSeen = 10;

/** kRxMode: take every RX response as it comes. */
export const RX_NORMAL = 0;
/** kRxMode: a slow receiver, one RX response per kRxEveryMs (buffers are re-posted as slowly). */
export const RX_SLOW = 1;
/** kRxMode: a stalled receiver (a process stopped with ctrl-Z): no RX response taken, no buffer re-posted. */
export const RX_STALLED = 2;
/** How often a slow receiver takes one RX response when kRxEveryMs is 0, ms. */
export const SLOW_RX_INTERVAL_MS = 5;
/** Most notifications an event storm sends in one loop round (a round late by seconds must not flood for seconds). */
export const STORM_MAX_PER_ROUND = 4096;
/** How long a revoke keeps looking for a TX grant the backend maps, ms. */
export const REVOKE_SEARCH_MS = 2000;
/** Bytes before the Float64 counters (one cache line of control words). */
export const STATS_HEADER_BYTES = 64;

/** Float64 counter: frames transmitted (pushed on the TX ring). */
export const sTxPackets = 0;
/** Float64 counter: bytes of those frames. */
export const sTxBytes = 1;
/** Float64 counter: frames received and handed to the verifier. */
export const sRxPackets = 2;
/** Float64 counter: bytes of those frames. */
export const sRxBytes = 3;
/** Float64 counter: TX grants given to the backend. */
export const sGranted = 4;
/** Float64 counter: TX grants the backend handed back on the port. */
export const sReturned = 5;
/** Float64 counter: TX grants still with the backend. */
export const sOutstanding = 6;
/** Float64 counter: received payloads that failed verification (poisoned or misplaced guest data). */
export const sCorruptPayloads = 7;
/** Float64 counter: TX responses with an error status. */
export const sTxErrors = 8;
/** Float64 counter: grants handed back that this guest did not have outstanding. */
export const sDoubleReturns = 9;
/** Float64 counter: end-access failures on a returned grant (the backend still mapped it: an early return). */
export const sEarlyReturns = 10;
/** Float64 counter: received frames with a bad checksum or header. */
export const sRxBad = 11;
/** Float64 counter: grant-return latency samples (the histogram's total). */
export const sLatencySamples = 12;
/** Float64 counter: TX grants ended at a disconnect without a return (the backend had let go, or died). */
export const sReclaimed = 13;
/** Float64 counter: times the vif connected (talk_to_netback succeeded). */
export const sConnects = 14;
/** Float64 counter: revokes of TX grants still mapped that end access refused (GTF_reading/GTF_writing set). */
export const sRevokeRefused = 15;
/** Float64 counter: those refused grants whose access ended later (after the backend let go). */
export const sRevokeEnded = 16;
/** Float64 counter: revokes that found the grant unmapped between the look and the end (re-granted at once). */
export const sRevokeRaced = 17;
/** Float64 counter: event-storm notifications sent. */
export const sStormNotifies = 18;
/** Float64 counter: disconnects seen (the backend closed or vanished). */
export const sDisconnects = 19;
/** Number of Float64 counters. */
export const STATS_COUNTERS = 24;

/** Latency histogram buckets: netfront's LatencyHistogram layout (so quantiles come from its quantileOf). */
export const LATENCY_BUCKETS = new LatencyHistogram().counts.length;

/** Bytes of one guest's statistics block. */
export const GUEST_STATS_BYTES = STATS_HEADER_BYTES + 8 * (STATS_COUNTERS + LATENCY_BUCKETS);

/** The q-quantile (0..1) of summed latency counts in microseconds; NaN when there is no sample. */
export function latencyQuantile(counts: ArrayLike<number>, q: number): number {
  let total = 0;
  for (let i = 0; i < counts.length; i++) total += counts[i]!;
  return total === 0 ? NaN : LatencyHistogram.quantileOf(counts, q);
}

/** One guest's statistics block: control words plus counters and a histogram under a sequence lock. */
export class GuestStatsBlock {
  readonly ctl: Int32Array;
  readonly counters: Float64Array;
  readonly histogram: Float64Array;

  constructor(readonly sab: SharedArrayBuffer) {
    if (sab.byteLength < GUEST_STATS_BYTES) {
      throw new RangeError(`guest stats block must be at least ${GUEST_STATS_BYTES} bytes but got ${sab.byteLength}`);
    }
    this.ctl = new Int32Array(sab, 0, STATS_HEADER_BYTES / 4);
    this.counters = new Float64Array(sab, STATS_HEADER_BYTES, STATS_COUNTERS);
    this.histogram = new Float64Array(sab, STATS_HEADER_BYTES + 8 * STATS_COUNTERS, LATENCY_BUCKETS);
  }

  /** A zeroed block (phase PHASE_CONNECT, state GUEST_BOOTING). */
  static create(): GuestStatsBlock {
    return new GuestStatsBlock(new SharedArrayBuffer(GUEST_STATS_BYTES));
  }

  /** The phase the toolstack asks for. Any thread. */
  get phase(): number {
    return Atomics.load(this.ctl, kPhase);
  }

  /** Sets the phase (toolstack); phases only move forward. */
  setPhase(phase: number): void {
    for (;;) {
      const cur = Atomics.load(this.ctl, kPhase);
      if (cur >= phase) return;
      if (Atomics.compareExchange(this.ctl, kPhase, cur, phase) === cur) return;
    }
  }

  /** The guest's state. Any thread. */
  get state(): number {
    return Atomics.load(this.ctl, kState);
  }

  /** Sets the guest's state (guest). */
  setState(state: number): void {
    Atomics.store(this.ctl, kState, state);
  }

  /** The phase the guest last acknowledged (after publishing the counters it had when it saw it). */
  get phaseSeen(): number {
    return Atomics.load(this.ctl, kPhaseSeen);
  }

  /** Acknowledges a phase (guest). */
  setPhaseSeen(phase: number): void {
    Atomics.store(this.ctl, kPhaseSeen, phase);
  }

  /** Whether the toolstack killed the guest. Any thread. */
  get killed(): boolean {
    return Atomics.load(this.ctl, kKill) !== 0;
  }

  /** Kills the guest (toolstack): its loop stops where it stands at its next round or wake-up. */
  kill(): void {
    Atomics.store(this.ctl, kKill, 1);
  }

  /** How the guest consumes its RX ring (RX_NORMAL, RX_SLOW, RX_STALLED). Any thread. */
  get rxMode(): number {
    return Atomics.load(this.ctl, kRxMode);
  }

  /** Sets the RX mode (toolstack); `everyMs` is a slow receiver's pace. */
  setRxMode(mode: number, everyMs = SLOW_RX_INTERVAL_MS): void {
    Atomics.store(this.ctl, kRxEveryMs, everyMs);
    Atomics.store(this.ctl, kRxMode, mode);
  }

  /** A slow receiver's pace, ms. Any thread. */
  get rxEveryMs(): number {
    return Atomics.load(this.ctl, kRxEveryMs) || SLOW_RX_INTERVAL_MS;
  }

  /** The revoke request counter (toolstack bumps it; the guest acts on each change). Any thread. */
  get revokeSeq(): number {
    return Atomics.load(this.ctl, kRevoke);
  }

  /** Asks the guest to revoke up to `max` TX grants the backend still maps (0: all of them) (toolstack). */
  requestRevoke(max = 0): void {
    Atomics.store(this.ctl, kRevokeMax, max);
    Atomics.add(this.ctl, kRevoke, 1);
  }

  /** At most this many grants per revoke (0: all). Any thread. */
  get revokeMax(): number {
    return Atomics.load(this.ctl, kRevokeMax);
  }

  /** Notifications per ms of the event storm (0: none). Any thread. */
  get storm(): number {
    return Atomics.load(this.ctl, kStorm);
  }

  /** Starts an event storm of `perMs` notifications per ms, or stops it with 0 (toolstack). */
  setStorm(perMs: number): void {
    Atomics.store(this.ctl, kStorm, perMs);
  }

  /** The threadId of the worker the guest runs on (0 before it started). Any thread. */
  get threadId(): number {
    return Atomics.load(this.ctl, kThreadId);
  }

  /** Records the guest's threadId (guest). */
  setThreadId(id: number): void {
    Atomics.store(this.ctl, kThreadId, id);
  }

  /**
   * Publishes counters and histogram (guest, the only writer): `fill` writes them between the two sequence bumps.
   * Readers that overlap retry.
   */
  publish(fill: (counters: Float64Array, histogram: Float64Array) => void): void {
    Atomics.add(this.ctl, kSeq, 1);
    fill(this.counters, this.histogram);
    Atomics.add(this.ctl, kSeq, 1);
  }

  /**
   * Copies a consistent snapshot of counters and histogram into the given arrays (any thread other than the
   * writer); false if the writer kept overlapping for `maxTries` attempts.
   */
  snapshot(counters: Float64Array, histogram: Float64Array, maxTries = 1000): boolean {
    for (let t = 0; t < maxTries; t++) {
      const s0 = Atomics.load(this.ctl, kSeq);
      if ((s0 & 1) !== 0) continue;
      counters.set(this.counters);
      histogram.set(this.histogram);
      if (Atomics.load(this.ctl, kSeq) === s0) return true;
    }
    return false;
  }
}

// ---- Protocol between the toolstack and a guest task (the toolstack imports these as types) ---------------

/** A host address on the emulated network. */
export interface GuestHostAddress {
  readonly mac: number;
  readonly ip: number;
}

/** What a guest's traffic is. */
export type GuestTrafficKind = 'mix' | 'fixed';

/** How the toolstack configures one guest. */
export interface GuestConfig {
  readonly domid: number;
  readonly backendDomid: number;
  readonly devid: number;
  readonly seed: number;
  readonly mtu: number;
  readonly self: GuestHostAddress;
  /** Other guests on the bridge. */
  readonly guests: readonly GuestHostAddress[];
  /** The host beyond the uplink. */
  readonly remote: GuestHostAddress;
  /** The backend's local TCP endpoint. */
  readonly endpoint: GuestHostAddress & { readonly port: number };
  /** 'mix': the demo's mixed traffic; 'fixed': UDP frames of fixedSize bytes to the remote host (the bench). */
  readonly traffic: GuestTrafficKind;
  readonly fixedSize: number;
  /** What 'mix' traffic changes from the demo's mix. */
  readonly mix: MixSettings;
  /** Grant-table entries and page-pool frames the guest may use. */
  readonly grantEntries: number;
  /** How long the guest waits for its last grants after the toolstack asks it to close, ms. */
  readonly returnDeadlineMs: number;
  /** Spin iterations before sleeping on the event channel (small when many guests share a thread). */
  readonly spin: number;
  /** How often the guest publishes its counters, ms. */
  readonly publishEveryMs: number;
  /** How long each step of the vif's orderly close waits for the backend, ms. */
  readonly closeTimeoutMs: number;
}

/** One piscina task: everything a guest needs (ports travel in the transferList). */
export interface GuestTask {
  readonly config: GuestConfig;
  /** The guest's memory (shared/memory.ts GuestMemory). */
  readonly memory: SharedArrayBuffer;
  /** The event-channel buffer of all domains. */
  readonly evtchn: SharedArrayBuffer;
  /** The guest's statistics block (GuestStatsBlock). */
  readonly stats: SharedArrayBuffer;
  /** The guest's xenstore connection. */
  readonly xenstore: XsWorkerPorts;
  /** Where the backend returns batches of grants (shared/grant-return.ts). */
  readonly grantPort: MessagePort;
  /** comlink to the toolstack (GuestHostApi). */
  readonly host: MessagePort;
}

/** What the toolstack offers a guest over comlink: the domain-builder calls a real guest makes to Xen. */
export interface GuestHostApi {
  /** Tells the "hypervisor" (the backend's grant mapper) where this guest's grant table is; resolves when known. */
  registerGrantTable(table: SharedArrayBuffer): Promise<void>;
  /**
   * After the backend domain died and a new one started: resolves once the new backend knows this guest, with the
   * port its grant returns now arrive on (null if no new backend took over).
   */
  reattach(): Promise<MessagePort | null>;
}

/** A guest's final report (the task's result). */
export interface GuestReport {
  readonly domid: number;
  readonly txPackets: number;
  readonly txBytes: number;
  readonly rxPackets: number;
  readonly rxBytes: number;
  readonly granted: number;
  readonly returned: number;
  /** TX grants ended at a disconnect without a return (the backend had let go, or died); absent means 0. */
  readonly reclaimed?: number;
  /** Grants still with the backend when the guest gave up waiting (or 0). */
  readonly outstanding: number;
  readonly corruptPayloads: number;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly txErrors: number;
  /** Why the guest failed, or null. */
  readonly error: string | null;
  /** Anything else worth printing. */
  readonly notes: readonly string[];
}

// ---- The loop ---------------------------------------------------------------------------------------------

/** What the loop drives: netfront plus the traffic source, as bounded synchronous work. */
export interface GuestDriver {
  /** One bounded round at `now`: transmit when `transmit`, reap TX responses, receive; returns the work done. */
  round(now: number, transmit: boolean): number;
  /** The earliest time a round has timed work (TCP resend, deferred revoke), Infinity when none. */
  nextDeadline(): number;
  /** TX grants still with the backend. */
  outstanding(): number;
  /** Writes the driver's counters and latency histogram into the stats block's arrays (sCounter indices). */
  publish(counters: Float64Array, histogram: Float64Array): void;
}

/** How a guest loop sleeps: its domain's event channels (shared/evtchn.ts EvtchnDomain). */
export interface GuestWaiter {
  waitAsync(timeoutMs: number, keepAlive: boolean): Promise<WaitResult>;
  /** Ends a pending wait early (Atomics.notify of the wake word if the domain sleeps). */
  kickIfSleeping(): void;
}

/** Options of a GuestLoop. */
export interface GuestLoopOptions {
  /** Longest sleep, ms (bounds how late a phase change is seen). Default 5. */
  readonly maxSleepMs?: number;
  /** Busy rounds yield to the event loop at least this often, ms (0: after every round). Default 0.5. */
  readonly yieldEveryMs?: number;
  /** Publish counters at most this often, ms. Default 50. */
  readonly publishEveryMs?: number;
  /** Empty rounds before sleeping. Default 2. */
  readonly idleRounds?: number;
}

const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Drives one guest through the toolstack's phases: rounds without transmitting until PHASE_RUN, with transmitting
 * during it, without again after PHASE_STOP (still receiving and taking grants back), and returns at PHASE_CLOSE.
 * Busy rounds yield to the event loop (other guests of the thread, grant-return messages); idle ones sleep on the
 * event channel until an event, a kick (a grant-return message arrived), the next deadline or maxSleepMs.
 */
export class GuestLoop {
  private kicked = false;
  private wake: (() => void) | null = null;
  private lastPublish = -Infinity;
  private readonly maxSleepMs: number;
  private readonly yieldEveryMs: number;
  private readonly publishEveryMs: number;
  private readonly idleRounds: number;
  rounds = 0;
  sleeps = 0;

  constructor(
    private readonly driver: GuestDriver,
    private readonly block: GuestStatsBlock,
    private readonly waiter: GuestWaiter,
    private readonly clock: Clock,
    opts: GuestLoopOptions = {},
  ) {
    this.maxSleepMs = opts.maxSleepMs ?? 5;
    this.yieldEveryMs = opts.yieldEveryMs ?? 0.5;
    this.publishEveryMs = opts.publishEveryMs ?? 50;
    this.idleRounds = opts.idleRounds ?? 2;
  }

  /** Wakes the loop if it sleeps (call after handling a grant-return message), or makes its next sleep a no-op. */
  kick(): void {
    const w = this.wake;
    if (w !== null) {
      this.wake = null;
      w();
    } else {
      this.kicked = true;
    }
  }

  /** Publishes the driver's counters now. */
  publishNow(): void {
    this.lastPublish = this.clock.now();
    this.block.publish((c, h) => this.driver.publish(c, h));
  }

  /** Runs until the toolstack's phase reaches PHASE_CLOSE, or the toolstack kills the guest. */
  async run(): Promise<void> {
    await this.runWhile(() => this.block.phase < PHASE_CLOSE && !this.block.killed);
  }

  /** Runs rounds without transmitting until no grant is outstanding, or `deadline` (clock ms); true if none is. */
  async drainUntil(deadline: number): Promise<boolean> {
    await this.runWhile(() => this.driver.outstanding() > 0 && this.clock.now() < deadline && !this.block.killed, true);
    this.publishNow();
    return this.driver.outstanding() === 0;
  }

  private async runWhile(cond: () => boolean, noTransmit = false): Promise<void> {
    const clock = this.clock;
    let lastYield = clock.now();
    let idle = 0;
    while (cond()) {
      const now = clock.now();
      const phase = this.block.phase;
      const transmit = !noTransmit && phase === PHASE_RUN;
      const did = this.driver.round(now, transmit);
      this.rounds++;
      if (phase !== this.block.phaseSeen) {
        // A new phase: the counters of everything done under the old one go out before it is acknowledged.
        this.publishNow();
        this.block.setPhaseSeen(phase);
      } else if (now - this.lastPublish >= this.publishEveryMs) this.publishNow();
      if (did > 0) {
        idle = 0;
        if (now - lastYield >= this.yieldEveryMs) {
          await yieldToEventLoop();
          lastYield = clock.now();
        }
        continue;
      }
      if (++idle <= this.idleRounds) continue;
      idle = 0;
      const wait = Math.min(this.maxSleepMs, Math.max(0, this.driver.nextDeadline() - clock.now()));
      await this.sleep(wait);
      lastYield = clock.now();
    }
  }

  // Sleeps on the event channel, racing a kick; a kicked wait is ended (and awaited) so it cannot clear the
  // sleeping flag of the next one.
  private async sleep(ms: number): Promise<void> {
    if (this.kicked) {
      this.kicked = false;
      await yieldToEventLoop();
      return;
    }
    if (ms <= 0) {
      await yieldToEventLoop();
      return;
    }
    this.sleeps++;
    const evt = this.waiter.waitAsync(ms, false);
    let kickedNow = false;
    const kick = new Promise<void>((resolve) => {
      this.wake = () => {
        kickedNow = true;
        resolve();
      };
    });
    await Promise.race([evt, kick]);
    this.wake = null;
    if (kickedNow) {
      this.waiter.kickIfSleeping();
      await evt;
    }
  }
}

// ---- The guest: netfront, its traffic, and the task a piscina worker runs -----------------------------------

/** RX packets handled per round, and TX frames queued per round (netfront's batch sizes). */
export const GUEST_RX_BUDGET = 64;
export const GUEST_TX_BUDGET = 32;

/** A TxSource that can also take received frames (the traffic mix's TCP sender) and open its streams. */
export interface GuestSource extends TxSource {
  receive?(buf: Uint8Array, off: number, len: number): boolean;
  /** The backend's features are known (the mix builds its TCP sender for GSO or not). */
  connected?(gso: boolean): void;
  /** Traffic starts (the mix opens its TCP stream). */
  start?(): void;
}

/**
 * The bench's traffic: the same frame of `size` bytes over and over to the remote host. Up to the MTU a UDP
 * datagram; bigger, a TCP segment with a GSO extra (MSS = mtu - 40), up to XEN_NETIF_MAX_TX_SIZE. Checksums are
 * left to the backend (csum_blank) either way.
 */
export class FixedSource implements GuestSource {
  readonly maxFrameLen: number;
  private readonly frame = new TxFrame();

  constructor(size: number, self: GuestHostAddress, remote: GuestHostAddress & { readonly port?: number }, mtu: number, stream: number) {
    const min = ETH_HLEN + IPV4_HLEN + UDP_HLEN + PAYLOAD_TAG_LEN;
    if (!Number.isInteger(size) || size < min || size > XEN_NETIF_MAX_TX_SIZE) {
      throw new RangeError(`fixed frame size must be an integer in [${min}, ${XEN_NETIF_MAX_TX_SIZE}] but got ${size}`);
    }
    const flow = { srcMac: self.mac, dstMac: remote.mac, saddr: self.ip, daddr: remote.ip, sport: 40000 + (stream & 0xfff), dport: remote.port ?? 9 };
    if (size <= ETH_HLEN + mtu) {
      // Checksum offloaded (NETTXF_csum_blank), as a Linux guest sends: the guest does not sum the payload.
      this.frame.setUdp(flow, stream, 0, size - ETH_HLEN - IPV4_HLEN - UDP_HLEN, true);
    } else {
      this.frame.setTcp(flow, 1, 0, TCPHDR_ACK, 0xffff, stream, 0, size - ETH_HLEN - IPV4_HLEN - TCP_HLEN, mtu - IPV4_HLEN - TCP_HLEN);
    }
    this.frame.pageOffset = 0;
    this.maxFrameLen = this.frame.len;
  }

  next(_now: number): TxPacket {
    return this.frame;
  }
}

/** The demo's mixed traffic (frontend/traffic.ts TrafficMix) as a GuestSource. */
export class MixSource implements GuestSource {
  constructor(readonly mix: TrafficMix) {}

  get maxFrameLen(): number {
    return this.mix.maxFrameLen;
  }

  next(now: number): TxPacket | null {
    return this.mix.next(now);
  }

  receive(buf: Uint8Array, off: number, len: number): boolean {
    return this.mix.receive(buf, off, len);
  }

  connected(gso: boolean): void {
    this.mix.setGso(gso);
  }

  start(): void {
    this.mix.tcp?.open();
  }
}

/** The source a guest config asks for. */
export function guestSource(cfg: GuestConfig, clock: Clock, random: Random): GuestSource {
  if (cfg.traffic === 'fixed') return new FixedSource(cfg.fixedSize, cfg.self, cfg.remote, cfg.mtu, cfg.domid);
  return new MixSource(
    new TrafficMix({
      clock,
      random: random.fork(),
      self: cfg.self,
      guests: cfg.guests,
      uplink: cfg.remote,
      tcpEndpoint: cfg.endpoint,
      // The stream id the remote peer checks is our source port: unique per guest.
      tcpSport: 10000 + cfg.domid,
      mtu: cfg.mtu,
      // Every guest numbers its UDP streams from 0: the thread-wide pattern cache then holds one table per stream
      // number instead of one per guest and stream (receivers check each datagram against its own tag either way).
      streamBase: 0,
      ...cfg.mix,
    }),
  );
}

/** A guest grant table that tells who asked when an end of access succeeds (the revoke fault's completions). */
export class ObservedGrantTable extends GrantTable {
  /** Called after each successful endForeignAccessRef, with the ref. */
  onEnded: ((ref: number) => void) | null = null;

  constructor(opts: GrantTableOptions) {
    super(opts);
  }

  override endForeignAccessRef(ref: number): boolean {
    const ended = super.endForeignAccessRef(ref);
    if (ended) this.onEnded?.(ref);
    return ended;
  }
}

/** What the guest's faults did (published with the driver's counters). */
export interface GuestFaultCounters {
  revokeRefused: number;
  revokeEnded: number;
  revokeRaced: number;
  stormNotifies: number;
  connects: number;
  disconnects: number;
}

/**
 * The guest's side of the stress faults, driven by the toolstack's words in the statistics block: a slow or
 * stalled receiver (kRxMode), an event storm on the vif's channel (kStorm), and a revoke of TX grants the backend
 * still maps (kRevoke): end access is called on them as Linux's gnttab_end_foreign_access_ref does, is refused
 * while GTF_reading/GTF_writing is set, and the grant is counted ended once netfront ends it after the backend let
 * go. Departure: a revoke that finds the grant unmapped between the look and the end re-grants it at once (the
 * guest's netfront still owns it), and counts it as raced.
 */
export class GuestFaults {
  readonly counters: GuestFaultCounters = { revokeRefused: 0, revokeEnded: 0, revokeRaced: 0, stormNotifies: 0, connects: 0, disconnects: 0 };
  private revokeSeen: number;
  private revokeUntil = -Infinity;
  private nextRevokeScan = -Infinity;
  private revoking = false;
  private readonly pending = new Set<number>();
  private lastSlowRx = -Infinity;
  private lastStorm = -Infinity;

  constructor(
    private readonly block: GuestStatsBlock,
    private readonly gnttab: ObservedGrantTable,
    private readonly evtchn: { notify(port: number): number },
    private readonly backendDomid: number,
  ) {
    this.revokeSeen = block.revokeSeq;
    gnttab.onEnded = (ref) => {
      if (!this.revoking && this.pending.delete(ref)) this.counters.revokeEnded++;
    };
  }

  /** Refused revokes whose grant has not ended yet. */
  get revokesPending(): number {
    return this.pending.size;
  }

  /** How many RX responses the driver may take this round. */
  rxBudget(now: number): number {
    switch (this.block.rxMode) {
      case RX_STALLED:
        return 0;
      case RX_SLOW:
        if (now - this.lastSlowRx < this.block.rxEveryMs) return 0;
        this.lastSlowRx = now;
        return 1;
      default:
        return GUEST_RX_BUDGET;
    }
  }

  /** The storm and the revoke, once per round; returns the work done. */
  round(now: number, nf: Netfront): number {
    let did = 0;
    const port = nf.eventChannel;
    const perMs = this.block.storm;
    if (perMs > 0 && port >= 0) {
      // n per ms of the time since the last round (at least one round's worth at once, at most the cap).
      const since = this.lastStorm === -Infinity ? 1 : now - this.lastStorm;
      const n = Math.min(STORM_MAX_PER_ROUND, Math.max(1, Math.round(perMs * since)));
      for (let i = 0; i < n; i++) this.evtchn.notify(port);
      this.counters.stormNotifies += n;
      did += n;
      this.lastStorm = now;
    } else {
      this.lastStorm = -Infinity;
    }
    const seq = this.block.revokeSeq;
    if (seq !== this.revokeSeen) {
      this.revokeSeen = seq;
      this.revokeUntil = now + REVOKE_SEARCH_MS;
      this.nextRevokeScan = now;
    }
    if (now < this.revokeUntil && now >= this.nextRevokeScan) {
      this.nextRevokeScan = now + 10;
      if (this.revokeMapped() > 0) this.revokeUntil = -Infinity;
    }
    return did;
  }

  /**
   * Ends access to TX grants (read-only, to the backend) the backend maps right now, at most `max` (0: all); returns
   * how many were refused.
   */
  revokeMapped(max = this.block.revokeMax): number {
    let refused = 0;
    this.revoking = true;
    try {
      for (const g of this.gnttab.query().outstanding) {
        if (max > 0 && refused >= max) break;
        if (!g.readonly || !g.inUse || g.domid !== this.backendDomid || this.pending.has(g.ref)) continue;
        if (this.gnttab.endForeignAccessRef(g.ref)) {
          this.gnttab.grantForeignAccessRef(g.ref, g.domid, g.frame, true);
          this.counters.revokeRaced++;
        } else {
          this.pending.add(g.ref);
          this.counters.revokeRefused++;
          refused++;
        }
      }
    } finally {
      this.revoking = false;
    }
    return refused;
  }

  /** When a slow receiver next takes a response (Infinity otherwise). */
  nextDeadline(): number {
    return this.block.rxMode === RX_SLOW ? this.lastSlowRx + this.block.rxEveryMs : Infinity;
  }

  /** Writes the counters into the stats block's array. */
  publish(c: Float64Array): void {
    const f = this.counters;
    c[sRevokeRefused] = f.revokeRefused;
    c[sRevokeEnded] = f.revokeEnded;
    c[sRevokeRaced] = f.revokeRaced;
    c[sStormNotifies] = f.stormNotifies;
    c[sConnects] = f.connects;
    c[sDisconnects] = f.disconnects;
  }
}

/** Netfront and its traffic as the loop's GuestDriver: the upcall, TX responses, RX, then transmit. */
export class NetfrontDriver implements GuestDriver {
  private started = false;

  constructor(
    readonly nf: Netfront,
    private readonly events: { dispatch(): number },
    private readonly source: GuestSource,
    /** The stress faults this guest obeys, or null. */
    readonly faults: GuestFaults | null = null,
  ) {}

  /** Whether traffic has started (the source was opened). */
  get trafficStarted(): boolean {
    return this.started;
  }

  round(now: number, transmit: boolean): number {
    const nf = this.nf;
    const faults = this.faults;
    let did = this.events.dispatch();
    nf.takeEvent();
    did += nf.pollTx();
    const budget = faults === null ? GUEST_RX_BUDGET : faults.rxBudget(now);
    if (budget > 0) did += nf.pollRx(budget);
    if (faults !== null) did += faults.round(now, nf);
    if (transmit) {
      if (!this.started) {
        this.started = true;
        this.source.start?.();
      }
      did += nf.transmit(GUEST_TX_BUDGET, this.source);
    }
    return did;
  }

  nextDeadline(): number {
    return this.faults === null ? Infinity : this.faults.nextDeadline();
  }

  outstanding(): number {
    return this.nf.grantsOutstanding;
  }

  publish(c: Float64Array, h: Float64Array): void {
    const nf = this.nf;
    const s = nf.stats;
    c[sTxPackets] = s.txPackets;
    c[sTxBytes] = s.txBytes;
    c[sRxPackets] = s.rxPackets;
    c[sRxBytes] = s.rxBytes;
    c[sGranted] = s.grantsGranted;
    c[sReturned] = s.grantsReturned;
    c[sOutstanding] = nf.grantsOutstanding;
    c[sCorruptPayloads] = s.rxCorruptPayloads;
    c[sTxErrors] = s.txErrors;
    c[sDoubleReturns] = s.badGrantReturns;
    c[sEarlyReturns] = s.endAccessFailures;
    c[sRxBad] = s.rxBadFrames + s.rxChecksumErrors;
    c[sLatencySamples] = nf.latency.count;
    c[sReclaimed] = s.grantsReclaimed;
    this.faults?.publish(c);
    h.set(nf.latency.counts);
  }

  /** The guest's report from netfront's counters. */
  report(domid: number, outstanding: number, error: string | null, notes: readonly string[]): GuestReport {
    const s = this.nf.stats;
    return {
      domid,
      txPackets: s.txPackets,
      txBytes: s.txBytes,
      rxPackets: s.rxPackets,
      rxBytes: s.rxBytes,
      granted: s.grantsGranted,
      returned: s.grantsReturned,
      reclaimed: s.grantsReclaimed,
      outstanding,
      corruptPayloads: s.rxCorruptPayloads,
      earlyReturns: s.endAccessFailures,
      doubleReturns: s.badGrantReturns,
      txErrors: s.txErrors,
      error,
      notes,
    };
  }
}

/** How long a guest waits for its vif to connect, ms. */
export const GUEST_CONNECT_TIMEOUT_MS = 20_000;
/** How long a guest's orderly close waits at each step by default, ms. */
export const GUEST_CLOSE_TIMEOUT_MS = 2000;

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The error a killed guest's report carries. */
export const GUEST_KILLED_ERROR = 'killed by the toolstack';

/**
 * One guest, start to finish (the piscina task): attaches its memory and event channels, builds its grant table
 * (registered with the toolstack before the handshake, so the backend can map the rings), netfront and its
 * traffic; connects through the xenstore; runs the toolstack's phases; waits for its last grants; closes the vif;
 * reports. When its backend vanishes (the backend domain died) it tears down, reclaims its grants, and once a new
 * backend shows up takes the new grant-return port and reconnects (Closed -> Initialising). Killed (kKill), it
 * stops where it stands: no drain, no close, no end access; its timers stop and its ports close, as a dead
 * domain's would. Never throws: a failure is the report's `error`, and every port and handle is released.
 */
export async function runGuestTask(task: GuestTask): Promise<GuestReport> {
  const cfg = task.config;
  const block = new GuestStatsBlock(task.stats);
  block.setThreadId(threadId);
  const clock = new RealClock();
  const notes: string[] = [];
  let error: string | null = null;
  let driver: NetfrontDriver | null = null;
  let loop: GuestLoop | null = null;
  let nfRef: Netfront | null = null;
  let outstanding = 0;
  let badNotices = 0;
  let killed = false;
  const host = Comlink.wrap<GuestHostApi>(nodeEndpoint(task.host));
  const client = XenstoreClient.remote(task.xenstore);
  let gnttab: ObservedGrantTable | null = null;
  let grantPort = task.grantPort;
  const onGrantReturn = (data: unknown): void => {
    if (killed) return;
    const m = parseGrantReturnMessage(data);
    if (!m.ok) {
      if (badNotices++ === 0) notes.push(m.error);
      return;
    }
    driver?.nf.handleGrantReturns(m.value.grefs);
    loop?.kick();
  };
  grantPort.on('message', onGrantReturn);
  let fxRef: NetfrontXenbus | null = null;
  let faults: GuestFaults | null = null;
  let reconnecting = false;
  // The backend vanished (its domain died): once a new backend's directory appears, take its grant-return port
  // and start over from Closed (netfront_resume's path: Closed -> Initialising, then the usual handshake).
  const supervise = async (): Promise<void> => {
    const fx = fxRef;
    if (fx === null || reconnecting) return;
    reconnecting = true;
    try {
      await fx.device.waitForState(XenbusStateClosed);
      await fx.device.waitForOtherend((_, vanished) => !vanished);
      if (killed || block.phase >= PHASE_CLOSE) return;
      const port = await host.reattach();
      if (port !== null) {
        grantPort.off('message', onGrantReturn);
        grantPort.close();
        grantPort = port;
        grantPort.on('message', onGrantReturn);
      }
      if (killed || block.phase >= PHASE_CLOSE) return;
      nfRef?.retryRevokes();
      const r = await fx.reconnect();
      if (!r.ok) notes.push(`reconnect: ${r.error}`);
    } catch (e) {
      notes.push(`reconnect: ${errorText(e)}`);
    } finally {
      reconnecting = false;
    }
  };
  try {
    const memory = GuestMemory.fromBuffer(task.memory);
    const evh = EvtchnHost.attach(task.evtchn);
    if (!evh.ok) throw new Error(`event channels: ${evh.error}`);
    const dom = evh.value.domain(cfg.domid);
    dom.spin = cfg.spin;
    gnttab = new ObservedGrantTable({ domid: cfg.domid, nrEntries: cfg.grantEntries, clock });
    const source = guestSource(cfg, clock, new Random(cfg.seed));
    const frames: number[] = [];
    for (let f = 0; f < memory.nrFrames; f++) frames.push(f);
    const nf = new Netfront({
      domid: cfg.domid,
      backendDomid: cfg.backendDomid,
      memory,
      gnttab,
      evtchn: dom,
      frames,
      clock,
      onFrame: (buf, off, len) => {
        source.receive?.(buf, off, len);
      },
    });
    nfRef = nf;
    faults = new GuestFaults(block, gnttab, dom, cfg.backendDomid);
    const f = faults;
    const drv = new NetfrontDriver(nf, dom, source, f);
    driver = drv;
    await host.registerGrantTable(gnttab.entries.sab);
    const fx = await NetfrontXenbus.open({
      client,
      nodename: vifFrontendPath(cfg.domid, cfg.devid),
      netfront: nf,
      clock,
      onConnected: (features) => {
        f.counters.connects++;
        source.connected?.(features.gsoTcpv4);
        // A new backend knows nothing of our old TCP stream: open a new one (the old one was reset).
        if (f.counters.connects > 1 && drv.trafficStarted) source.start?.();
      },
      onDisconnected: () => {
        f.counters.disconnects++;
        if (!killed && block.phase < PHASE_CLOSE) void supervise();
      },
    });
    if (!fx.ok) throw new Error(`xenbus: ${fx.error}`);
    fxRef = fx.value;
    if (!(await fx.value.waitConnected(GUEST_CONNECT_TIMEOUT_MS))) {
      throw new Error(`vif did not connect within ${GUEST_CONNECT_TIMEOUT_MS} ms${fx.value.lastError === null ? '' : `: ${fx.value.lastError}`}`);
    }
    block.setState(GUEST_CONNECTED);
    loop = new GuestLoop(driver, block, dom, clock, { publishEveryMs: cfg.publishEveryMs });
    await loop.run();
    if (block.killed) {
      killed = true;
    } else {
      const drained = await loop.drainUntil(clock.now() + cfg.returnDeadlineMs);
      killed = block.killed;
      if (!killed) {
        outstanding = nf.grantsOutstanding;
        if (!drained) notes.push(`${outstanding} grants not returned within ${cfg.returnDeadlineMs} ms`);
        const closed = await fx.value.close(cfg.closeTimeoutMs);
        if (!closed.ok) notes.push(`close: ${closed.error}`);
        if (nf.stats.grantsReclaimed > 0) notes.push(`${nf.stats.grantsReclaimed} grants reclaimed at disconnect`);
        if (f.revokesPending > 0) notes.push(`${f.revokesPending} revoked grants never ended`);
        if (nf.broken) error = `device broken: ${nf.brokenReason ?? 'unknown'}`;
      }
    }
    if (killed) {
      // Dead where it stood: what it had outstanding stays granted (the toolstack releases the domain).
      outstanding = nf.grantsOutstanding;
      error = GUEST_KILLED_ERROR;
      nf.dispose();
    }
    loop.publishNow();
  } catch (e) {
    error = errorText(e);
  } finally {
    grantPort.off('message', onGrantReturn);
    grantPort.close();
    host[Comlink.releaseProxy]();
    task.host.close();
    client.close();
    gnttab?.dispose();
  }
  if (badNotices > 0) notes.push(`${badNotices} malformed grant-return notices`);
  block.setState(killed ? GUEST_KILLED : error === null ? GUEST_DONE : GUEST_FAILED);
  if (driver === null) {
    return { domid: cfg.domid, txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, granted: 0, returned: 0, reclaimed: 0, outstanding: 0, corruptPayloads: 0, earlyReturns: 0, doubleReturns: 0, txErrors: 0, error, notes };
  }
  return driver.report(cfg.domid, outstanding, error, notes);
}
