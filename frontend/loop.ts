// The guest's driving loop and its shared statistics block. The loop is the only guest code that knows about
// real threads: it runs netfront's bounded work functions (transmit, TX responses, RX, grant returns), yields to
// the event loop so other guests sharing the thread (piscina concurrentTasksPerWorker) and MessagePort messages
// get their turn, and sleeps on the guest's event channel with Atomics.waitAsync when there is nothing to do.
//
// The statistics block is one SharedArrayBuffer per guest: the toolstack writes the phase word, the guest writes
// its state word and publishes its counters and grant-return latency histogram under a sequence lock, so the
// toolstack reads progress once a second without a message.
import type { MessagePort } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { RealClock, type Clock } from '../shared/clock.js';
import { ETH_HLEN } from '../shared/ether.js';
import { EvtchnHost, type WaitResult } from '../shared/evtchn.js';
import { GrantTable } from '../shared/gnttab.js';
import { parseGrantReturnMessage } from '../shared/grant-return.js';
import { IPV4_HLEN, TCPHDR_ACK, TCP_HLEN, UDP_HLEN } from '../shared/inet.js';
import { GuestMemory } from '../shared/memory.js';
import { XEN_NETIF_MAX_TX_SIZE } from '../shared/netif.js';
import { PAYLOAD_TAG_LEN } from '../shared/payload.js';
import { Random } from '../shared/random.js';
import { vifFrontendPath } from '../shared/xenbus.js';
import { XenstoreClient } from '../shared/xenstore-client.js';
import type { XsWorkerPorts } from '../shared/xenstore-protocol.js';
import { LatencyHistogram, Netfront, type TxPacket, type TxSource } from './netfront.js';
import { NetfrontXenbus } from './netfront-xenbus.js';
import { TrafficMix, TxFrame } from './traffic.js';

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

/** Int32 word: the phase the toolstack asks for (PHASE_*). */
export const kPhase = 0;
/** Int32 word: the guest's state (GUEST_*). */
export const kState = 1;
/** Int32 word: the sequence lock over the counters and histogram (odd while the guest writes). */
export const kSeq = 2;
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
/** Number of Float64 counters. */
export const STATS_COUNTERS = 16;

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

  /** Runs until the toolstack's phase reaches PHASE_CLOSE. */
  async run(): Promise<void> {
    await this.runWhile(() => this.block.phase < PHASE_CLOSE);
  }

  /** Runs rounds without transmitting until no grant is outstanding, or `deadline` (clock ms); true if none is. */
  async drainUntil(deadline: number): Promise<boolean> {
    await this.runWhile(() => this.driver.outstanding() > 0 && this.clock.now() < deadline, true);
    this.publishNow();
    return this.driver.outstanding() === 0;
  }

  private async runWhile(cond: () => boolean, noTransmit = false): Promise<void> {
    const clock = this.clock;
    let lastYield = clock.now();
    let idle = 0;
    while (cond()) {
      const now = clock.now();
      const transmit = !noTransmit && this.block.phase === PHASE_RUN;
      const did = this.driver.round(now, transmit);
      this.rounds++;
      if (now - this.lastPublish >= this.publishEveryMs) this.publishNow();
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
    }),
  );
}

/** Netfront and its traffic as the loop's GuestDriver: the upcall, TX responses, RX, then transmit. */
export class NetfrontDriver implements GuestDriver {
  private started = false;

  constructor(
    readonly nf: Netfront,
    private readonly events: { dispatch(): number },
    private readonly source: GuestSource,
  ) {}

  round(_now: number, transmit: boolean): number {
    const nf = this.nf;
    let did = this.events.dispatch();
    nf.takeEvent();
    did += nf.pollTx();
    did += nf.pollRx(GUEST_RX_BUDGET);
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
    return Infinity;
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

/**
 * One guest, start to finish (the piscina task): attaches its memory and event channels, builds its grant table
 * (registered with the toolstack before the handshake, so the backend can map the rings), netfront and its
 * traffic; connects through the xenstore; runs the toolstack's phases; waits for its last grants; closes the vif;
 * reports. Never throws: a failure is the report's `error`, and every port and handle is released.
 */
export async function runGuestTask(task: GuestTask): Promise<GuestReport> {
  const cfg = task.config;
  const block = new GuestStatsBlock(task.stats);
  const clock = new RealClock();
  const notes: string[] = [];
  let error: string | null = null;
  let driver: NetfrontDriver | null = null;
  let loop: GuestLoop | null = null;
  let outstanding = 0;
  let badNotices = 0;
  const host = Comlink.wrap<GuestHostApi>(nodeEndpoint(task.host));
  const client = XenstoreClient.remote(task.xenstore);
  let gnttab: GrantTable | null = null;
  const onGrantReturn = (data: unknown): void => {
    const m = parseGrantReturnMessage(data);
    if (!m.ok) {
      if (badNotices++ === 0) notes.push(m.error);
      return;
    }
    driver?.nf.handleGrantReturns(m.value.grefs);
    loop?.kick();
  };
  task.grantPort.on('message', onGrantReturn);
  try {
    const memory = GuestMemory.fromBuffer(task.memory);
    const evh = EvtchnHost.attach(task.evtchn);
    if (!evh.ok) throw new Error(`event channels: ${evh.error}`);
    const dom = evh.value.domain(cfg.domid);
    dom.spin = cfg.spin;
    gnttab = new GrantTable({ domid: cfg.domid, nrEntries: cfg.grantEntries, clock });
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
    driver = new NetfrontDriver(nf, dom, source);
    await host.registerGrantTable(gnttab.entries.sab);
    const fx = await NetfrontXenbus.open({
      client,
      nodename: vifFrontendPath(cfg.domid, cfg.devid),
      netfront: nf,
      clock,
      onConnected: (f) => source.connected?.(f.gsoTcpv4),
    });
    if (!fx.ok) throw new Error(`xenbus: ${fx.error}`);
    if (!(await fx.value.waitConnected(GUEST_CONNECT_TIMEOUT_MS))) {
      throw new Error(`vif did not connect within ${GUEST_CONNECT_TIMEOUT_MS} ms${fx.value.lastError === null ? '' : `: ${fx.value.lastError}`}`);
    }
    block.setState(GUEST_CONNECTED);
    loop = new GuestLoop(driver, block, dom, clock, { publishEveryMs: cfg.publishEveryMs });
    await loop.run();
    const drained = await loop.drainUntil(clock.now() + cfg.returnDeadlineMs);
    outstanding = nf.grantsOutstanding;
    if (!drained) notes.push(`${outstanding} grants not returned within ${cfg.returnDeadlineMs} ms`);
    const closed = await fx.value.close(cfg.closeTimeoutMs);
    if (!closed.ok) notes.push(`close: ${closed.error}`);
    if (nf.stats.grantsReclaimed > 0) notes.push(`${nf.stats.grantsReclaimed} grants reclaimed at disconnect`);
    if (nf.broken) error = `device broken: ${nf.brokenReason ?? 'unknown'}`;
    loop.publishNow();
  } catch (e) {
    error = errorText(e);
  } finally {
    task.grantPort.off('message', onGrantReturn);
    task.grantPort.close();
    host[Comlink.releaseProxy]();
    task.host.close();
    client.close();
    gnttab?.dispose();
  }
  if (badNotices > 0) notes.push(`${badNotices} malformed grant-return notices`);
  block.setState(error === null ? GUEST_DONE : GUEST_FAILED);
  if (driver === null) {
    return { domid: cfg.domid, txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, granted: 0, returned: 0, outstanding: 0, corruptPayloads: 0, earlyReturns: 0, doubleReturns: 0, txErrors: 0, error, notes };
  }
  return driver.report(cfg.domid, outstanding, error, notes);
}
