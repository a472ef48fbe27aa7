// The backend domain (dom0) as it runs in its worker: the composition of the emulated stack (bridge, uplink NIC,
// tap, the local TCP endpoint, the remote host beyond the uplink), netback's vifs, the grant mapper and the
// grant-lifetime oracle, plus the driving loop ("softirq"): poll event channels, netback TX, stack timers, netback
// RX, dealloc flush; a short spin, then Atomics.waitAsync on dom0's event channels, yielding to the event loop so
// comlink keeps answering. Names are from the frontend's point of view (TX = guest to backend), as Xen's.
//
// The loop is the only backend code that knows about real threads: everything it drives is synchronous and takes
// its time from a Clock, its randomness from a Random and its wake-ups from shared/evtchn.ts.
import type { MessagePort } from 'node:worker_threads';
import { RealClock, type Clock } from '../shared/clock.js';
import { ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_ZLEN, parseEthHeader, writeEthHeader } from '../shared/ether.js';
import type { EvtchnDomain, WaitResult } from '../shared/evtchn.js';
import { GrantMapper } from '../shared/gnttab-mapper.js';
import { IPPROTO_TCP, IPPROTO_UDP, UDP_HLEN, parseIpv4Header } from '../shared/inet.js';
import { checkTaggedPayload } from '../shared/payload.js';
import { Random } from '../shared/random.js';
import type { XsClient, XsWatchHandle, XsWorkerPorts } from '../shared/xenstore-protocol.js';
import type { GrantReturnPort } from '../shared/grant-return.js';
import { oracleGrantEvents, type GrantEvents } from './netback.js';
import { NetbackXenbus } from './netback-xenbus.js';
import { GrantOracle } from './oracle.js';
import { FilePcapSink, PcapWriter } from './pcap.js';
import { designByName } from './release.js';
import { SkbContext, allocSkb, skbCopyBits, skbPut, type SkBuff } from './skbuff.js';
import { Stack } from './stack.js';
import { TcpEndpoint } from './tcp.js';
import { TcpPeer } from './tcp-peer.js';
import { Xenvif } from './xenvif.js';

// ---- Protocol between the toolstack and the backend worker (the toolstack imports these as types) ----------

/** A host address on the emulated network. */
export interface HostAddress {
  readonly mac: number;
  readonly ip: number;
}

/** How the toolstack configures the backend domain. */
export interface BackendConfig {
  /** The backend's domain id (0). */
  readonly domid: number;
  readonly seed: number;
  /** MTU of the vifs, the bridge's local host and the uplink. */
  readonly mtu: number;
  /** Probability that the uplink loses a frame on the wire. */
  readonly loss: number;
  /** Attach a tap to every bridge port (holds each clone for tapHoldMs). */
  readonly tap: boolean;
  readonly tapHoldMs: number;
  /** Write the tap's frames to this pcap file, or null. */
  readonly pcapPath: string | null;
  /** The release design (backend/release.ts designByName). */
  readonly design: string;
  /** Netback grant-copies TX payloads instead of mapping them (xenvif txGrantCopy: the bench's comparison). */
  readonly grantCopy: boolean;
  /** The local TCP endpoint on the bridge. */
  readonly endpoint: HostAddress & { readonly port: number };
  /** The remote host beyond the uplink (the TCP peer, and the sink of guests' uplink UDP). */
  readonly remote: HostAddress & { readonly port: number };
  /** Round-trip time of the remote host, ms. */
  readonly remoteRttMs: number;
  /** Uplink NIC TX completion delay, ms. */
  readonly nicCompletionDelayMs: number;
  /** How long netback lets an RX queue sit before orphaning or dropping it, ms (Linux 10000). */
  readonly rxDrainTimeoutMs: number;
  /** Put the uplink host on the NIC's wire (TCP peer, UDP payload checks); false discards frames (the bench). */
  readonly uplinkVerify: boolean;
  /** Fault injection (tests): stall the uplink from boot for this long, and/or never abort holders when draining. */
  readonly faults?: BackendFaults;
  /** How long finish() waits for each vif's teardown, ms (default VIF_REMOVE_TIMEOUT_MS). */
  readonly vifRemoveTimeoutMs?: number;
}

/** Faults the backend can be started with. */
export interface BackendFaults {
  /** The uplink completes nothing for this long after boot, ms: every frame sent to it keeps its pages. */
  readonly nicStallMs?: number;
  /** drain() waits out its deadline but aborts nothing, so held grants stay held. */
  readonly noDrainAbort?: boolean;
}

/** What the backend worker receives as workerData (ports in the transferList). */
export interface BackendInit {
  readonly config: BackendConfig;
  /** The event-channel buffer of all domains (shared/evtchn.ts EvtchnHost). */
  readonly evtchn: SharedArrayBuffer;
  /** dom0's xenstore connection. */
  readonly xenstore: XsWorkerPorts;
  /** The comlink control channel (BackendApi is exposed on it). */
  readonly control: MessagePort;
  /** A channel to the toolstack for a backend worker that builds domains of its own (the stress tool), or none. */
  readonly host?: MessagePort;
}

/** What the oracle and the uplink checks saw so far: the audit figures that survive the backend's death. */
export interface BackendAuditSnapshot {
  readonly mapped: number;
  readonly returned: number;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly leaks: number;
  /** Payloads found corrupt beyond the uplink so far. */
  readonly corruptPayloads: number;
  /** The first violations' messages. */
  readonly violations: readonly string[];
}

/** A fault the toolstack injects into the running backend (the stress tool). */
export type BackendFault =
  /** Frames completed by the uplink are lost on the wire with probability `p` until `ms` from now. */
  | { readonly kind: 'loss'; readonly p: number; readonly ms: number }
  /** The uplink completes nothing for `ms` (a hung TX queue): frames keep their pages. */
  | { readonly kind: 'nic-stall'; readonly ms: number }
  /** The tap holds its clones `holdMs` (applies to clones already held too); needs the tap. */
  | { readonly kind: 'tap-hold'; readonly holdMs: number };

/** Counters the toolstack samples once a second (comlink). */
export interface BackendStats {
  readonly vifs: number;
  /** Grants mapped right now. */
  readonly mapped: number;
  readonly txPackets: number;
  readonly rxPackets: number;
  /** Frames the uplink put on the wire. */
  readonly wireFrames: number;
  /** Loop rounds and sleeps (how busy the softirq is). */
  readonly rounds: number;
  readonly sleeps: number;
  /** The audit figures so far. */
  readonly audit: BackendAuditSnapshot;
  /** Frames lost on the wire by loss faults. */
  readonly wireLost: number;
  /** Why the softirq loop died, or null (the worker lives on, but the backend is dead: a crash). */
  readonly loopError: string | null;
}

/** What draining found. */
export interface DrainReport {
  /** True when every holder emptied and dealloc was flushed before the deadline. */
  readonly quiescent: boolean;
  readonly ms: number;
  /** What had to be aborted at the deadline (TCP connections, RX queues, NIC ring, tap). */
  readonly aborted: readonly string[];
  /** Live skbs left when the drain ended. */
  readonly liveSkbs: number;
}

/** The backend's final audit. */
export interface BackendReport {
  readonly oracle: {
    readonly mapped: number;
    readonly returned: number;
    readonly earlyReturns: number;
    readonly doubleReturns: number;
    readonly leaks: number;
    readonly violations: readonly string[];
  };
  /** Grants netback still had mapped at the end. */
  readonly stillMapped: number;
  /** Payloads found corrupt beyond the uplink (TCP peer segments and UDP datagrams). */
  readonly corruptPayloads: number;
  readonly uplink: UplinkHostStats;
  readonly peer: { readonly frames: number; readonly dataBytes: number; readonly corruptSegments: number; readonly badFrames: number };
  readonly notes: readonly string[];
  /** Failures outside the oracle's figures: vif teardowns that never finished (a hung xenwatch in Linux). */
  readonly errors: readonly string[];
}

/** The control plane of the backend worker (comlink). */
export interface BackendApi {
  /** The "hypervisor" learns a guest: its grant table and memory, and the port its grant returns go to. */
  addDomain(domid: number, table: SharedArrayBuffer, memory: SharedArrayBuffer, grantPort: MessagePort): void;
  stats(): BackendStats;
  /**
   * The hypervisor forgets a dead guest (domain_kill): new maps of its grants fail, mappings already held stay until
   * netback unmaps them, and its grant-return port is closed so nothing more is posted to it. Returns how many of
   * its refs are still mapped.
   */
  removeDomain(domid: number): number;
  /** Injects a fault (the stress tool). */
  fault(f: BackendFault): void;
  /** Runs until the stack holds no skb and dealloc is flushed, aborting what is left at the deadline. */
  drain(deadlineMs: number): Promise<DrainReport>;
  /** Stops the loop, runs the oracle's quiescence check, closes the stack (pcap) and reports. */
  finish(): Promise<BackendReport>;
}

// ---- The host beyond the uplink ---------------------------------------------------------------------------

/** The longest IPv4 header (ihl 15). */
const IPV4_MAX_HLEN = 60;

/** Counters of the uplink host. */
export interface UplinkHostStats {
  frames: number;
  /** Frames handed to the TCP peer. */
  tcp: number;
  /** UDP datagrams whose tagged payload checked out. */
  udpVerified: number;
  /** UDP datagrams whose payload did not (poisoned or misplaced guest data). */
  udpCorrupt: number;
  /** Corrupt UDP datagrams from a hostile source (an adversary rewriting its own pages): not grantwire's fault. */
  udpCorruptHostile: number;
  /** Frames that are neither (ARP, short, other protocols, bad headers). */
  other: number;
  /** The first corruption message seen. */
  firstError: string | null;
}

/**
 * The host beyond the uplink NIC: the NIC's wire callback. TCP segments to the remote address go to the TCP peer;
 * UDP datagrams have their tagged payload verified (shared/payload.ts), so a guest page returned early and
 * poisoned shows up here too. It reads the bytes during the call and never keeps the skb.
 */
export class UplinkHost {
  readonly stats: UplinkHostStats = { frames: 0, tcp: 0, udpVerified: 0, udpCorrupt: 0, udpCorruptHostile: 0, other: 0, firstError: null };
  /** Source addresses of hostile guests (the stress tool's adversaries), whose corrupt payloads are counted apart. */
  readonly hostileSources = new Set<number>();
  private readonly buf = new Uint8Array(ETH_HLEN + 0xffff);

  constructor(
    private readonly peer: Pick<TcpPeer, 'wire'> | null,
    private readonly remote: HostAddress,
  ) {}

  /** The NIC's Wire. */
  readonly wire = (skb: SkBuff): void => {
    const st = this.stats;
    st.frames++;
    const len = skb.len;
    if (len > this.buf.length || skbCopyBits(skb, 0, this.buf, 0, Math.min(len, ETH_HLEN + IPV4_MAX_HLEN)) !== 0) {
      st.other++;
      return;
    }
    const eth = parseEthHeader(this.buf, 0, len);
    if (!eth.ok || eth.value.proto !== ETH_P_IP) {
      st.other++;
      return;
    }
    const ip = parseIpv4Header(this.buf, ETH_HLEN, len - ETH_HLEN);
    if (!ip.ok) {
      st.other++;
      return;
    }
    const h = ip.value;
    if (h.proto === IPPROTO_TCP && h.daddr === this.remote.ip && this.peer !== null) {
      st.tcp++;
      this.peer.wire(skb);
      return;
    }
    if (h.proto !== IPPROTO_UDP || h.totalLen < h.ihl + UDP_HLEN || ETH_HLEN + h.totalLen > len) {
      st.other++;
      return;
    }
    if (skbCopyBits(skb, 0, this.buf, 0, ETH_HLEN + h.totalLen) !== 0) {
      st.other++;
      return;
    }
    const off = ETH_HLEN + h.ihl + UDP_HLEN;
    const r = checkTaggedPayload(this.buf, off, h.totalLen - h.ihl - UDP_HLEN);
    if (r.ok) {
      st.udpVerified++;
    } else if (this.hostileSources.size > 0 && this.hostileSources.has(h.saddr)) {
      st.udpCorruptHostile++;
    } else {
      st.udpCorrupt++;
      st.firstError ??= r.error;
    }
  };
}

// ---- The softirq loop -------------------------------------------------------------------------------------

/** One round of bounded, synchronous work and when the next timed work is due. */
export interface SoftirqWork {
  /** Does one bounded round at time `now`; returns how much it did (0: nothing to do). */
  round(now: number): number;
  /** The earliest time a round has timed work (ms on the work's clock), Infinity when none. */
  nextDeadline(): number;
}

/** How the loop sleeps: a domain's event channels (shared/evtchn.ts EvtchnDomain). */
export interface SoftirqWaiter {
  waitAsync(timeoutMs: number, keepAlive: boolean): Promise<WaitResult>;
}

/** Options of a SoftirqLoop. */
export interface SoftirqLoopOptions {
  /** Longest sleep, ms, even with no timed work (bounds how late a stop or a missed wake-up is seen). Default 10. */
  readonly maxSleepMs?: number;
  /** Busy rounds before yielding to the event loop, at most this many ms apart. Default 1. */
  readonly yieldEveryMs?: number;
  /** Empty rounds to spin through before sleeping. Default 8. */
  readonly idleRounds?: number;
}

/** Counters of a loop. */
export interface SoftirqLoopStats {
  rounds: number;
  busyRounds: number;
  yields: number;
  sleeps: number;
  wakeups: number;
}

const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Drives SoftirqWork until stopped: rounds while there is work, yielding to the event loop at least every
 * `yieldEveryMs` (comlink and MessagePorts keep being served), a few empty rounds, then a sleep on the event
 * channels until an event, the next deadline or `maxSleepMs`.
 */
export class SoftirqLoop {
  readonly stats: SoftirqLoopStats = { rounds: 0, busyRounds: 0, yields: 0, sleeps: 0, wakeups: 0 };
  private stopping = false;
  private running: Promise<void> | null = null;
  private readonly maxSleepMs: number;
  private readonly yieldEveryMs: number;
  private readonly idleRounds: number;

  constructor(
    private readonly work: SoftirqWork,
    private readonly waiter: SoftirqWaiter,
    private readonly clock: Clock,
    opts: SoftirqLoopOptions = {},
  ) {
    this.maxSleepMs = opts.maxSleepMs ?? 10;
    this.yieldEveryMs = opts.yieldEveryMs ?? 1;
    this.idleRounds = opts.idleRounds ?? 8;
  }

  /** Starts the loop (once); the promise settles when it stops, or rejects with the work's exception. */
  start(): Promise<void> {
    this.running ??= this.run();
    return this.running;
  }

  /** Asks the loop to stop after its current round or sleep; returns the loop's promise. */
  stop(): Promise<void> {
    this.stopping = true;
    return this.running ?? Promise.resolve();
  }

  /** Whether stop() was called. */
  get stopped(): boolean {
    return this.stopping;
  }

  private async run(): Promise<void> {
    const clock = this.clock;
    let lastYield = clock.now();
    let idle = 0;
    while (!this.stopping) {
      const now = clock.now();
      const did = this.work.round(now);
      this.stats.rounds++;
      if (did > 0) {
        this.stats.busyRounds++;
        idle = 0;
        if (now - lastYield >= this.yieldEveryMs) {
          await yieldToEventLoop();
          this.stats.yields++;
          lastYield = clock.now();
        }
        continue;
      }
      if (++idle <= this.idleRounds) continue;
      idle = 0;
      const deadline = this.work.nextDeadline();
      const wait = Math.min(this.maxSleepMs, Math.max(0, deadline - clock.now()));
      if (wait > 0) {
        this.stats.sleeps++;
        if ((await this.waiter.waitAsync(wait, false)) === 'woken') this.stats.wakeups++;
      } else {
        await yieldToEventLoop();
        this.stats.yields++;
      }
      lastYield = clock.now();
    }
  }
}

// ---- The backend domain -----------------------------------------------------------------------------------

/** Distinct messages the backend keeps for its report. */
export const MAX_NOTES = 20;
/** Grefs a "Page still granted!" summary names before it says "…". */
const STILL_GRANTED_SHOWN = 8;
// netback's teardown warning, one line per gref per second (NETBACK_UNMAP_WARN_MS): summarized per vif in the report.
const STILL_GRANTED = /^(.*): Page still granted! Index: [0-9a-f]+ gref (\d+)$/;
/** How often the remote host's presence is re-announced to the bridge (well inside the 300 s fdb ageing), ms. */
export const REMOTE_ANNOUNCE_MS = 60_000;
/** Most vifs' TX requests per action, and RX frames per action (netback's NAPI weight and RX batch). */
export const VIF_TX_BUDGET = 64;
export const VIF_RX_BUDGET = 64;

/** A vif with the xenbus side that connected it. */
export interface Dom0Vif {
  readonly domid: number;
  readonly vif: Xenvif;
  /** Disconnects and forgets the vif (the frontend closed or vanished). */
  close(): Promise<void>;
}

/**
 * The backend domain: the stack (bridge, uplink NIC with the remote host on its wire, tap and pcap, the local TCP
 * endpoint), the grant mapper (the hypervisor's grant operations on dom0's behalf), netback's vifs, the oracle, and
 * one softirq round over all of it. Single-threaded.
 */
export class Dom0Backend implements SoftirqWork {
  readonly clock: Clock;
  readonly random: Random;
  readonly ctx: SkbContext;
  readonly stack: Stack;
  readonly endpoint: TcpEndpoint;
  readonly peer: TcpPeer;
  readonly uplink: UplinkHost;
  readonly mapper: GrantMapper;
  readonly oracle: GrantOracle;
  readonly events: GrantEvents;
  readonly vifs: Dom0Vif[] = [];
  /** The first MAX_NOTES distinct things worth reporting (vif errors, probe failures); see note(). */
  readonly notes: string[] = [];
  private notesDropped = 0;
  private readonly stillGranted = new Map<string, { reports: number; grefs: Set<number> }>();
  /** Grant-return ports of the guests the toolstack introduced, by domid (a MessagePort, or an in-thread sink). */
  readonly grantPorts = new Map<number, GrantReturnPort & { close(): void }>();
  /** Work run in every round before the backend's own (in-thread guests of the stress tool's adversary host). */
  readonly roundHooks: ((now: number) => number)[] = [];
  /** Functions to run once inside the next TX action of a domain's vif, after it read the requests (see interleave). */
  readonly txHooks = new Map<number, (() => void)[]>();
  private readonly roots: SkBuff[] = [];
  private nextAnnounce = 0;
  private readonly announceFrame: Uint8Array;
  // Loss faults on the uplink's wire (their own Random, so the other streams of the seed are unchanged).
  private lossP = 0;
  private lossUntil = -Infinity;
  private lossRandom: Random | null = null;
  /** Frames lost on the wire by loss faults. */
  wireLost = 0;

  constructor(readonly config: BackendConfig, clock: Clock = new RealClock()) {
    this.clock = clock;
    this.random = new Random(config.seed);
    const design = designByName(config.design);
    if (design === undefined) throw new Error(`unknown release design: ${config.design}`);
    this.ctx = new SkbContext({ design });
    const pcap = config.pcapPath === null ? null : new PcapWriter(new FilePcapSink(config.pcapPath));
    const remote = config.remote;
    // The peer's ACKs go straight to the endpoint's uplink receive path (the NIC model has no receive side).
    let endpointRef: TcpEndpoint | null = null;
    this.peer = new TcpPeer({
      clock,
      random: this.random.fork(),
      mac: remote.mac,
      ip: remote.ip,
      port: remote.port,
      rttMs: config.remoteRttMs,
      deliver: (frame) => endpointRef?.uplinkReceive(frame),
    });
    this.uplink = new UplinkHost(this.peer, remote);
    this.stack = new Stack({
      ctx: this.ctx,
      clock,
      random: this.random.fork(),
      nic: {
        mtu: config.mtu,
        features: { sg: true, tso: true },
        completionDelayMs: config.nicCompletionDelayMs,
        loss: config.loss,
        wire: config.uplinkVerify ? this.faultyWire : null,
      },
      tap: config.tap ? { holdMs: config.tapHoldMs, pcap, scope: 'all' } : null,
    });
    const ep = config.endpoint;
    this.endpoint = new TcpEndpoint({
      ctx: this.ctx,
      clock,
      random: this.random.fork(),
      mac: ep.mac,
      ip: ep.ip,
      port: ep.port,
      mtu: config.mtu,
      uplink: this.stack.nic,
      peerMac: remote.mac,
      peerIp: remote.ip,
      peerPort: remote.port,
    });
    endpointRef = this.endpoint;
    this.endpoint.connectLan(this.stack.addHost(this.endpoint));
    const roots = this.roots;
    const collect = (skb: SkBuff): void => void roots.push(skb);
    this.oracle = new GrantOracle(() => {
      roots.length = 0;
      this.stack.forEachSkb(collect);
      return roots;
    });
    this.events = oracleGrantEvents(this.oracle);
    this.mapper = new GrantMapper({ domid: config.domid });
    const stall = config.faults?.nicStallMs ?? 0;
    if (stall > 0) this.stack.nic.stall(clock.now() + stall);
    this.announceFrame = new Uint8Array(ETH_ZLEN);
    writeEthHeader(this.announceFrame, 0, remote.mac, remote.mac, ETH_P_ARP);
  }

  // The uplink host's wire behind the loss fault: a lost frame completed on the NIC but never reached the far end.
  private readonly faultyWire = (skb: SkBuff): void => {
    if (this.lossP > 0 && this.clock.now() < this.lossUntil && this.lossRandom!.chance(this.lossP)) {
      this.wireLost++;
      return;
    }
    this.uplink.wire(skb);
  };

  /** Injects a fault: wire loss for a while, a NIC stall, or the tap's hold window. */
  fault(f: BackendFault): void {
    const now = this.clock.now();
    switch (f.kind) {
      case 'loss':
        if (!(f.p >= 0 && f.p <= 1) || !(f.ms >= 0)) throw new RangeError(`loss fault needs p in [0, 1] and ms >= 0 but got ${f.p}, ${f.ms}`);
        this.lossRandom ??= new Random((this.config.seed ^ 0x5eed1055) >>> 0);
        this.lossP = f.p;
        this.lossUntil = now + f.ms;
        break;
      case 'nic-stall':
        this.stack.nic.stall(now + f.ms);
        break;
      case 'tap-hold':
        this.stack.tap?.setHoldMs(f.holdMs);
        break;
    }
  }

  /** The hypervisor forgets a dead guest; returns how many of its refs are still mapped (see BackendApi.removeDomain). */
  removeDomain(domid: number): number {
    const port = this.grantPorts.get(domid);
    this.grantPorts.delete(domid);
    port?.close();
    try {
      return this.mapper.removeDomain(domid);
    } catch {
      return 0;
    }
  }

  /** The audit figures so far (they survive the backend's death in the toolstack's samples). */
  auditSnapshot(): BackendAuditSnapshot {
    const o = this.oracle.report;
    return {
      mapped: o.mapped,
      returned: o.returned,
      earlyReturns: o.earlyReturns,
      doubleReturns: o.doubleReturns,
      leaks: o.leaks,
      corruptPayloads: this.peer.stats.corruptSegments + this.uplink.stats.udpCorrupt,
      violations: o.violations.map((v) => v.message),
    };
  }

  /**
   * Records something for the report: distinct messages, at most MAX_NOTES of them (the rest are only counted);
   * netback's per-gref teardown warnings become one summary per vif.
   */
  note(message: string): void {
    const g = STILL_GRANTED.exec(message);
    if (g !== null) {
      let s = this.stillGranted.get(g[1]!);
      if (s === undefined) this.stillGranted.set(g[1]!, (s = { reports: 0, grefs: new Set() }));
      s.reports++;
      s.grefs.add(Number(g[2]));
      return;
    }
    if (this.notes.includes(message)) return;
    if (this.notes.length < MAX_NOTES) this.notes.push(message);
    else this.notesDropped++;
  }

  /** The toolstack introduced a guest: its grant table and memory become mappable, and its grant-return port known. */
  addDomain(domid: number, table: SharedArrayBuffer, memory: SharedArrayBuffer, grantPort: GrantReturnPort & { close(): void }): void {
    this.mapper.addDomain(domid, table, memory);
    this.grantPorts.set(domid, grantPort);
  }

  /**
   * The remote host makes itself known on the uplink port, as any host's traffic would: a frame from its MAC to its
   * own MAC teaches the bridge where it is and goes nowhere (never back out of the port it came in on).
   */
  announceRemote(): void {
    const skb = allocSkb(this.ctx, this.announceFrame.length);
    const off = skbPut(skb, this.announceFrame.length);
    skb.head.set(this.announceFrame, off);
    skb.macHeader = skb.data;
    this.stack.input(skb, this.stack.nic);
  }

  /** One softirq round: events, TX, stack timers, RX, dealloc. */
  round(now: number): number {
    const vifs = this.vifs;
    let did = 0;
    const hooks = this.roundHooks;
    for (let i = 0; i < hooks.length; i++) did += hooks[i]!(now);
    did += this.dispatchEvents();
    for (let i = 0; i < vifs.length; i++) did += vifs[i]!.vif.txAction(VIF_TX_BUDGET);
    this.stack.poll(now);
    this.peer.poll(now);
    for (let i = 0; i < vifs.length; i++) did += vifs[i]!.vif.rxAction(VIF_RX_BUDGET);
    for (let i = 0; i < vifs.length; i++) did += vifs[i]!.vif.flushDealloc();
    if (now >= this.nextAnnounce) {
      this.nextAnnounce = now + REMOTE_ANNOUNCE_MS;
      this.announceRemote();
    }
    return did;
  }

  /**
   * backend_create_xenvif: a vif for `domid` on the bridge, listed in `vifs`, reporting through vifEvents and noting
   * its errors (the data path connects later, at the handshake).
   */
  createVif(domid: number, handle: number): Xenvif {
    const vif = new Xenvif({
      domid,
      handle,
      ctx: this.ctx,
      mapper: this.mapper,
      clock: this.clock,
      events: this.vifEvents(domid),
      mtu: this.config.mtu,
      rxDrainTimeoutMs: this.config.rxDrainTimeoutMs,
      txGrantCopy: this.config.grantCopy,
      log: (level, m) => {
        if (level === 'err') this.note(m);
      },
    });
    vif.attach(this.stack);
    this.vifs.push({ domid, vif, close: async () => {} });
    return vif;
  }

  /** netback_remove's xenvif_free: the vif leaves the bridge and the list. */
  destroyVif(vif: Xenvif): void {
    vif.detach();
    const i = this.vifs.findIndex((v) => v.vif === vif);
    if (i >= 0) this.vifs.splice(i, 1);
  }

  /**
   * The grant events a new vif of `domid` reports: the oracle's, plus the domain's TX hooks fired once at its next
   * map or copy (the moment netback has read the requests: a double-fetch adversary rewrites them then).
   */
  vifEvents(domid: number): GrantEvents {
    const base = this.events;
    const hooks = this.txHooks;
    const fire = (): void => {
      if (hooks.size === 0) return;
      const list = hooks.get(domid);
      if (list === undefined) return;
      hooks.delete(domid);
      for (const fn of list) fn();
    };
    return {
      mapped(page): void {
        base.mapped(page);
        fire();
      },
      returned(pages, n): void {
        base.returned(pages, n);
      },
      copied(d, gref, len): void {
        base.copied(d, gref, len);
        fire();
      },
    };
  }

  /** Runs dom0's event-channel upcall (the vifs' interrupt handlers); the worker sets it. */
  dispatchEvents: () => number = () => 0;

  /** The earliest timed work: NIC completions, the tap window, TCP timers, the peer's ACKs, RX drain deadlines. */
  nextDeadline(): number {
    let t = Math.min(this.stack.nextDeadline(), this.endpoint.nextDeadline(), this.peer.nextDeadline(), this.nextAnnounce);
    for (const v of this.vifs) {
      if (v.vif.hasWork()) return this.clock.now();
      t = Math.min(t, v.vif.nextDeadline());
    }
    return t;
  }

  /** Live skbs in every holder (what the oracle walks). */
  liveSkbs(): number {
    let n = 0;
    this.stack.forEachSkb(() => void n++);
    return n;
  }

  /** Whether every holder is empty and no vif has a grant mapped or a release waiting for dealloc. */
  quiescent(): boolean {
    if (this.liveSkbs() !== 0) return false;
    for (const v of this.vifs) {
      const tx = v.vif.tx;
      if (tx !== null && (tx.inflightPackets !== 0 || tx.deallocPending !== 0)) return false;
    }
    return true;
  }

  /**
   * What is left at the drain deadline is aborted: TCP connections (their queues freed), the NIC ring purged, the
   * tap flushed, the vifs' RX queues purged. Their grants then come back through the release design as usual.
   */
  abortHolders(): string[] {
    const aborted: string[] = [];
    let tcp = 0;
    this.endpoint.forEachSkb(() => void tcp++);
    if (tcp > 0 || this.endpoint.connections > 0) {
      aborted.push(`${this.endpoint.connections} TCP connections (${tcp} skbs)`);
      this.endpoint.close();
    }
    let nic = 0;
    this.stack.nic.forEachSkb(() => void nic++);
    if (nic > 0) {
      aborted.push(`NIC ring (${nic} skbs)`);
      this.stack.nic.purge();
    }
    let tap = 0;
    this.stack.tap?.forEachSkb(() => void tap++);
    if (tap > 0) {
      aborted.push(`tap window (${tap} skbs)`);
      this.stack.tap!.flush();
    }
    for (const v of this.vifs) {
      let rx = 0;
      v.vif.forEachSkb(() => void rx++);
      if (rx > 0) {
        aborted.push(`${v.vif.name} RX queue (${rx} skbs)`);
        v.vif.rx?.purge();
      }
    }
    return aborted;
  }

  /** Counters for the toolstack. */
  stats(loop: SoftirqLoopStats): BackendStats {
    let tx = 0;
    let rx = 0;
    for (const v of this.vifs) {
      tx += v.vif.stats.rxPackets;
      rx += v.vif.stats.txPackets;
    }
    return {
      vifs: this.vifs.length,
      mapped: this.mapper.stats().liveHandles,
      txPackets: tx,
      rxPackets: rx,
      wireFrames: this.stack.nic.stats.wireFrames,
      rounds: loop.rounds,
      sleeps: loop.sleeps,
      audit: this.auditSnapshot(),
      wireLost: this.wireLost,
      loopError: null,
    };
  }

  /** The final audit: the oracle's quiescence check (run after every vif is gone), then the report. */
  report(): BackendReport {
    this.oracle.checkQuiescent();
    const o = this.oracle.report;
    let stillMapped = 0;
    for (const v of this.vifs) stillMapped += v.vif.heldGrants().length;
    const ps = this.peer.stats;
    const us = this.uplink.stats;
    const notes = [...this.notes];
    for (const [vif, s] of this.stillGranted) {
      const grefs = [...s.grefs];
      const shown = grefs.slice(0, STILL_GRANTED_SHOWN).join(', ') + (grefs.length > STILL_GRANTED_SHOWN ? ', …' : '');
      notes.push(`${vif}: teardown waited for ${grefs.length} grants the stack still held ("Page still granted!" ${s.reports} times; grefs ${shown})`);
    }
    if (this.notesDropped > 0) notes.push(`(${this.notesDropped} more messages not kept)`);
    if (us.firstError !== null) notes.push(`uplink: ${us.firstError}`);
    if (this.peer.firstError !== null && ps.corruptSegments > 0) notes.push(`peer: ${this.peer.firstError}`);
    return {
      oracle: {
        mapped: o.mapped,
        returned: o.returned,
        earlyReturns: o.earlyReturns,
        doubleReturns: o.doubleReturns,
        leaks: o.leaks,
        violations: o.violations.map((v) => v.message),
      },
      stillMapped,
      corruptPayloads: ps.corruptSegments + us.udpCorrupt,
      uplink: { ...us },
      peer: { frames: ps.frames, dataBytes: ps.dataBytes, corruptSegments: ps.corruptSegments, badFrames: ps.badFrames },
      notes,
      errors: [],
    };
  }

  /** Closes the stack: frees what the NIC holds, writes out the tap and closes the pcap file. */
  close(): void {
    this.endpoint.close();
    this.stack.close();
  }
}

// ---- The backend worker's runtime: xenbus probing, the loop, the control plane --------------------------------

/** How long finish() waits for each vif's teardown (every grant back) before reporting what is still mapped, ms. */
export const VIF_REMOVE_TIMEOUT_MS = 3000;
/** How long drain() keeps waiting after aborting what was left, for the aborted grants to come back, ms. */
export const DRAIN_ABORT_GRACE_MS = 1000;

const sleepMs = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Settles with the promise's value, or `fallback` after `ms`. */
async function within<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([p, new Promise<T>((resolve) => (timer = setTimeout(() => resolve(fallback), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The backend domain at run time: netback's xenbus driver probes every vif directory that appears under
 * backend/vif (a xenstore watch, as xenbus_probe does), the softirq loop runs, and the control plane answers the
 * toolstack (BackendApi). The worker entry builds one and exposes `api`.
 */
export class BackendRuntime {
  readonly loop: SoftirqLoop;
  readonly devices = new Map<string, NetbackXenbus>();
  private readonly probing = new Set<string>();
  private watch: XsWatchHandle | null = null;
  private loopDone: Promise<void> | null = null;
  private loopError: string | null = null;
  private readonly vifRoot: string;

  constructor(
    readonly dom0: Dom0Backend,
    readonly evtchn: EvtchnDomain,
    readonly xs: XsClient,
  ) {
    dom0.dispatchEvents = () => evtchn.dispatch();
    this.loop = new SoftirqLoop(dom0, evtchn, dom0.clock);
    this.vifRoot = `/local/domain/${dom0.config.domid}/backend/vif`;
  }

  /** Why the softirq loop died (an exception in netback or the stack: a Linux BUG), or null while it runs. */
  get failure(): string | null {
    return this.loopError;
  }

  /** Starts the loop and follows backend/vif (existing devices are probed at once by the watch's first event). */
  async start(): Promise<void> {
    this.loopDone = this.loop.start().catch((e: unknown) => {
      this.loopError = e instanceof Error ? (e.stack ?? e.message) : String(e);
    });
    const w = await this.xs.watch(this.vifRoot, () => void this.scan());
    if (!w.ok) throw new Error(`cannot watch ${this.vifRoot}: ${w.error}`);
    this.watch = w.value;
  }

  // Probes every <fe>/<devid> directory not probed yet.
  private async scan(): Promise<void> {
    const fes = await this.xs.directory(this.vifRoot);
    if (!fes.ok) return;
    for (const fe of fes.value) {
      const devs = await this.xs.directory(`${this.vifRoot}/${fe}`);
      if (!devs.ok) continue;
      for (const devid of devs.value) void this.probe(Number(fe), devid);
    }
  }

  private async probe(fe: number, devid: string): Promise<void> {
    const key = `${fe}/${devid}`;
    if (this.devices.has(key) || this.probing.has(key) || !Number.isInteger(fe)) return;
    this.probing.add(key);
    const dom0 = this.dom0;
    const r = await NetbackXenbus.probe({
      client: this.xs,
      nodename: `${this.vifRoot}/${key}`,
      mapper: dom0.mapper,
      evtchn: this.evtchn,
      clock: dom0.clock,
      // The port arrives with addDomain, before the guest starts its handshake; look it up at each notice.
      grantReturnPort: { postMessage: (m, t) => dom0.grantPorts.get(fe)?.postMessage(m, t) },
      createVif: (domid, handle) => dom0.createVif(domid, handle),
      destroyVif: (vif) => dom0.destroyVif(vif),
      log: (level, m) => {
        if (level === 'err') dom0.note(m);
      },
    });
    this.probing.delete(key);
    if (r.ok) this.devices.set(key, r.value);
    else dom0.note(`probe of vif ${key} failed: ${r.error}`);
  }

  /** The control plane the toolstack calls over comlink. */
  readonly api: BackendApi = {
    addDomain: (domid, table, memory, grantPort) => this.dom0.addDomain(domid, table, memory, grantPort),
    stats: () => ({ ...this.dom0.stats(this.loop.stats), loopError: this.loopError }),
    removeDomain: (domid) => this.dom0.removeDomain(domid),
    fault: (f) => this.dom0.fault(f),
    drain: (deadlineMs) => this.drain(deadlineMs),
    finish: () => this.finish(),
  };

  /** Waits until the stack holds nothing and every release was flushed; aborts what is left at the deadline. */
  async drain(deadlineMs: number): Promise<DrainReport> {
    const clock = this.dom0.clock;
    const t0 = clock.now();
    const end = t0 + deadlineMs;
    while (!this.dom0.quiescent() && clock.now() < end && this.loopError === null) await sleepMs(2);
    let aborted: string[] = [];
    if (!this.dom0.quiescent() && this.dom0.config.faults?.noDrainAbort === true) {
      return { quiescent: false, ms: clock.now() - t0, aborted: ['nothing (fault: noDrainAbort)'], liveSkbs: this.dom0.liveSkbs() };
    }
    if (!this.dom0.quiescent()) {
      aborted = this.dom0.abortHolders();
      const grace = clock.now() + DRAIN_ABORT_GRACE_MS;
      while (!this.dom0.quiescent() && clock.now() < grace && this.loopError === null) await sleepMs(2);
    }
    if (this.loopError !== null) throw new Error(`backend loop failed: ${this.loopError}`);
    return { quiescent: aborted.length === 0, ms: clock.now() - t0, aborted, liveSkbs: this.dom0.liveSkbs() };
  }

  /**
   * Removes every vif (each waits for its grants, bounded), stops the loop, runs the oracle's quiescence check,
   * closes the stack and the xenstore connection. The worker exits once the control port closes.
   */
  async finish(): Promise<BackendReport> {
    const dom0 = this.dom0;
    if (this.watch !== null) {
      await this.xs.unwatch(this.watch);
      this.watch = null;
    }
    const limit = dom0.config.vifRemoveTimeoutMs ?? VIF_REMOVE_TIMEOUT_MS;
    const errors: string[] = [];
    for (const [key, dev] of this.devices) {
      const done = await within(dev.remove().then(() => true), limit, false);
      // backend_disconnect waits for inflight_packets and the dealloc ring, not only for mapped grants.
      const tx = dev.vif?.tx;
      if (!done) errors.push(`vif ${key}: teardown did not finish within ${limit} ms (${dev.stillMapped().length} grants still mapped, ${tx?.inflightPackets ?? 0} packets in flight)`);
    }
    await this.loop.stop();
    await this.loopDone;
    if (this.loopError !== null) throw new Error(`backend loop failed: ${this.loopError}`);
    const report: BackendReport = { ...dom0.report(), errors };
    dom0.close();
    return report;
  }

  /** Releases the xenstore connection (after finish, or on a failed start). */
  close(): void {
    this.xs.close();
  }
}
