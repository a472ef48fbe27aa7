// One guest of the simulator as an actor: the real netfront and its xenbus driver (frontend/netfront.ts,
// frontend/netfront-xenbus.ts), the demo's traffic mix held to a rate, and the guest-side faults (slow and stalled
// receiver, event storm, revoking mapped grants). A step is what the guest's loop does in one round (frontend/loop.ts
// NetfrontDriver): grant returns, the upcall, TX responses, RX, transmit. Killing it drops its state on the floor:
// no more steps, its timers never fire, its xenstore connection is gone; its memory and grant table stay for the
// backend (and the audit) to look at.

import { GNTTAB_DEFERRED_RETRY_MS, GrantTable, type GrantTableOptions } from '../../shared/gnttab.js';
import type { GrantReturnMessage } from '../../shared/grant-return.js';
import type { EvtchnDomain } from '../../shared/evtchn.js';
import { GuestMemory } from '../../shared/memory.js';
import type { Random } from '../../shared/random.js';
import { XenbusStateClosed, XenbusStateConnected, vifFrontendPath } from '../../shared/xenbus.js';
import { XenstoreClient } from '../../shared/xenstore-client.js';
import type { XsConnection } from '../../shared/xenstore.js';
import { GUEST_RX_BUDGET, GUEST_TX_BUDGET, MixSource, type GuestSource } from '../../frontend/loop.js';
import { Netfront, type NetbackFeatures, type TxPacket } from '../../frontend/netfront.js';
import { NetfrontXenbus } from '../../frontend/netfront-xenbus.js';
import { TrafficMix, TxFrame, type Flow, type MixSettings, type TrafficHost } from '../../frontend/traffic.js';
import type { LogValue } from './eventlog.js';
import type { DomainClock, SimActor } from './scheduler.js';
import { StateLoggingClient } from './xenbus-log.js';

/** Shortest and longest interval at which a transmitting guest wakes to send what its rate allows, ms. */
export const GUEST_TICK_MIN_MS = 1;
export const GUEST_TICK_MAX_MS = 20;
/**
 * The TCP source port of a domain's stream: unique per domain (the remote peer names streams by it, so a replacement
 * never continues its predecessor's stream) and a multiple of 256, so every stream shares UDP stream 0's pattern table
 * (frontend/traffic.ts keeps 8 per thread, keyed by the stream mod 256).
 */
export function simTcpSport(domid: number): number {
  return 256 * (8 + (domid % 240));
}
/** Most frames a guest's rate lets it save up while it cannot send (a burst after a stall). */
export const GUEST_BURST = 64;
/** Weight of TCP bulk frames in the mix (the demo's is 1, as UDP to guests and to the uplink). */
export const SIM_TCP_WEIGHT = 0.5;
/** RX packets a slow receiver takes each time it looks. */
export const SLOW_RX_BUDGET = 1;
/** How long a guest's orderly close waits at each step, ms (frontend/loop.ts GUEST_CLOSE_TIMEOUT_MS). */
export const SIM_CLOSE_TIMEOUT_MS = 2000;

/** A GrantTable that counts successful ends of access per ref, so a revoked-while-mapped grant is seen ending later. */
export class CountingGrantTable extends GrantTable {
  /** Successful endForeignAccessRef calls, per ref. */
  readonly ends: Uint32Array;

  constructor(opts: GrantTableOptions) {
    super(opts);
    this.ends = new Uint32Array(opts.nrEntries);
  }

  override endForeignAccessRef(ref: number): boolean {
    const r = super.endForeignAccessRef(ref);
    if (r) this.ends[ref]!++;
    return r;
  }
}

/** A guest's traffic: frames queued by the world first (as fast as the ring allows), then the mix, held to a rate. */
export class SimSource implements GuestSource {
  /** Frames per second the mix may send while transmitting. */
  readonly rate: number;
  transmitting = false;
  private tokens = 0;
  private lastRefill = 0;
  private readonly queue: { flow: Flow; len: number }[] = [];
  private readonly frame = new TxFrame();
  private pos = 0;

  constructor(
    readonly mix: MixSource,
    private readonly self: TrafficHost,
    private readonly stream: number,
    rate: number,
  ) {
    this.rate = rate;
  }

  get maxFrameLen(): number {
    return this.mix.maxFrameLen;
  }

  /** Frames queued and not yet sent. */
  get pending(): number {
    return this.queue.length;
  }

  /** Queues `frames` UDP frames of `len` bytes (>= 60) to (mac, ip); they go out ahead of the mix. */
  add(mac: number, ip: number, frames: number, len: number): void {
    const flow: Flow = { srcMac: this.self.mac, dstMac: mac, saddr: this.self.ip, daddr: ip, sport: 40000, dport: 9 };
    for (let i = 0; i < frames; i++) this.queue.push({ flow, len });
  }

  /** Starts (or stops) the mix at `now`; the rate counts from there. */
  setTransmitting(on: boolean, now: number): void {
    this.transmitting = on;
    this.tokens = 0;
    this.lastRefill = now;
  }

  /** Adds the frames the rate allows since the last refill. */
  refill(now: number): void {
    if (!this.transmitting) return;
    const t = this.tokens + ((now - this.lastRefill) * this.rate) / 1000;
    this.tokens = t > GUEST_BURST ? GUEST_BURST : t;
    this.lastRefill = now;
  }

  next(now: number): TxPacket | null {
    const q = this.queue.shift();
    if (q !== undefined) {
      const p = this.frame.setUdp(q.flow, this.stream, this.pos, q.len - 42, false);
      this.pos = (this.pos + q.len) >>> 0;
      return p;
    }
    if (!this.transmitting || this.tokens < 1) return null;
    const p = this.mix.next(now);
    if (p !== null) this.tokens--;
    return p;
  }

  receive(buf: Uint8Array, off: number, len: number): boolean {
    return this.mix.receive(buf, off, len);
  }

  connected(gso: boolean): void {
    this.mix.connected(gso);
  }

  start(): void {
    this.mix.start();
  }
}

/** What a guest receives from the world that built it. */
export interface SimGuestOptions {
  /** The slot (1..guests): its MAC and IP; a replacement after a kill takes the same slot. */
  readonly slot: number;
  readonly domid: number;
  readonly backendDomid: number;
  readonly clock: DomainClock;
  readonly random: Random;
  readonly evtchn: EvtchnDomain;
  readonly self: TrafficHost;
  readonly peers: readonly TrafficHost[];
  readonly remote: TrafficHost;
  readonly endpoint: TrafficHost & { readonly port: number };
  readonly mtu: number;
  /** Mix frames per second while transmitting. */
  readonly rate: number;
  /** What the mix changes from the simulator's (weights, UDP sizes); default none. */
  readonly mix?: MixSettings;
  /** Guest memory frames and grant entries. */
  readonly frames: number;
  readonly grantEntries: number;
  /** Where the guest writes to the event log. */
  readonly log: (who: string, what: string, fields?: readonly (readonly [string, LogValue])[]) => void;
}

/** A grant revoked while mapped: refused, and waited on until its owner ends it. */
interface DeferredRevoke {
  readonly ref: number;
  readonly endsBefore: number;
  readonly at: number;
}

/** Counters of the guest-side faults. */
export interface GuestFaultStats {
  /** Revokes of mapped grants refused (as they must be), ended later, and (a bug) accepted. */
  revokesRefused: number;
  revokesEndedLater: number;
  revokesAccepted: number;
  /** Longest wait between a refused revoke and the grant's end, ms. */
  revokeMaxWaitMs: number;
  /** Notifications sent by event storms, and refused (port closed). */
  stormNotifies: number;
  stormRefused: number;
}

/** One guest: netfront, its xenbus driver, its traffic and its faults, stepped by the scheduler. */
export class SimGuest implements SimActor {
  readonly name: string;
  readonly slot: number;
  readonly domid: number;
  readonly memory: GuestMemory;
  readonly gnttab: CountingGrantTable;
  readonly evtchn: EvtchnDomain;
  readonly nf: Netfront;
  readonly source: SimSource;
  readonly clock: DomainClock;
  readonly faults: GuestFaultStats = { revokesRefused: 0, revokesEndedLater: 0, revokesAccepted: 0, revokeMaxWaitMs: 0, stormNotifies: 0, stormRefused: 0 };
  /** The xenbus driver, once opened. */
  fx: NetfrontXenbus | null = null;
  /** Grant-return notices delivered and not yet taken (the MessagePort's queue). */
  readonly returns: GrantReturnMessage[] = [];
  /** Set by kill(). */
  dead = false;
  /** The guest's xenstore connection (it dies with the guest). */
  private conn: XsConnection | null = null;
  /** After a backend restart: reconnect as soon as the frontend is Closed. */
  wantReconnect = false;
  /** RX mode: normal, slow (one packet every `slowEveryMs`), stalled (no RX buffer posted). */
  rxMode: 'normal' | 'slow' | 'stalled' = 'normal';
  private slowEveryMs = 0;
  private nextSlowPoll = 0;
  private stormUntil = -Infinity;
  private stormPerMs = 0;
  private nextStorm = 0;
  private tickAt = 0;
  private readonly tickMs: number;
  private reconnecting = false;
  private failure: unknown = null;
  private readonly deferred: DeferredRevoke[] = [];
  private revokeTimer: number | undefined;
  private readonly log: SimGuestOptions['log'];
  private readonly backendDomid: number;
  private readonly random: Random;

  constructor(opts: SimGuestOptions) {
    this.slot = opts.slot;
    this.domid = opts.domid;
    this.name = `g${opts.slot}.d${opts.domid}`;
    this.clock = opts.clock;
    this.log = opts.log;
    this.backendDomid = opts.backendDomid;
    this.random = opts.random;
    this.memory = GuestMemory.create(opts.frames);
    this.gnttab = new CountingGrantTable({ domid: opts.domid, nrEntries: opts.grantEntries, clock: opts.clock });
    this.evtchn = opts.evtchn;
    const mix = new MixSource(
      new TrafficMix({
        clock: opts.clock,
        random: opts.random.fork(),
        self: opts.self,
        guests: opts.peers,
        uplink: opts.remote,
        tcpEndpoint: opts.endpoint,
        tcpSport: simTcpSport(opts.domid),
        mtu: opts.mtu,
        streamBase: 0,
        // Half the demo's share of TCP bulk (its ~64 KiB GSO frames cost most of the wall time per virtual second).
        weights: { tcp: SIM_TCP_WEIGHT },
        ...opts.mix,
      }),
    );
    // Queued frames use pattern stream 0 too (receivers check each datagram against its own tag).
    this.source = new SimSource(mix, opts.self, 0, opts.rate);
    this.tickMs = Math.min(GUEST_TICK_MAX_MS, Math.max(GUEST_TICK_MIN_MS, Math.floor(1000 / opts.rate)));
    const frames: number[] = [];
    for (let f = 0; f < this.memory.nrFrames; f++) frames.push(f);
    this.nf = new Netfront({
      domid: opts.domid,
      backendDomid: opts.backendDomid,
      memory: this.memory,
      gnttab: this.gnttab,
      evtchn: opts.evtchn,
      frames,
      clock: opts.clock,
      onFrame: (buf, off, len) => {
        this.source.receive(buf, off, len);
      },
    });
  }

  /** Opens the vif's xenbus device over the guest's own xenstore connection and follows the backend. */
  async open(conn: XsConnection): Promise<void> {
    this.conn = conn;
    const fx = await NetfrontXenbus.open({
      client: new StateLoggingClient(XenstoreClient.local(conn), (vif, state) => this.log(this.name, 'xenbus', [['vif', vif], ['state', state]])),
      nodename: vifFrontendPath(this.domid, 0),
      netfront: this.nf,
      clock: this.clock,
      onConnected: (f) => this.connected(f),
      onDisconnected: () => {
        if (!this.dead) this.log(this.name, 'disconnected', [['outstanding', this.nf.grantsOutstanding], ['stuck', this.nf.audit().stuck]]);
      },
    });
    if (!fx.ok) throw new Error(`${this.name}: cannot open the vif: ${fx.error}`);
    this.fx = fx.value;
  }

  private connected(f: NetbackFeatures): void {
    if (this.dead) return;
    this.source.connected(f.gsoTcpv4);
    if (this.source.transmitting) this.source.start();
    this.log(this.name, 'connected', [['connects', this.fx?.connects ?? 1]]);
  }

  /** Both ends of the vif are Connected. */
  get isConnected(): boolean {
    const fx = this.fx;
    return fx !== null && fx.state === XenbusStateConnected && fx.device.otherendState === XenbusStateConnected && this.nf.connected;
  }

  /** Starts or stops the mix (the toolstack's PHASE_RUN / PHASE_STOP). */
  setTransmitting(on: boolean, now: number): void {
    this.source.setTransmitting(on, now);
    if (on && this.nf.connected) this.source.start();
  }

  /** A grant-return notice arrived on the guest's port. */
  deliver(m: GrantReturnMessage): void {
    this.returns.push(m);
  }

  step(now: number): number {
    if (this.failure !== null) throw this.failure;
    const nf = this.nf;
    let did = 0;
    const q = this.returns;
    for (let i = 0; i < q.length; i++) did += nf.handleGrantReturns(q[i]!.grefs);
    q.length = 0;
    did += this.evtchn.dispatch();
    nf.takeEvent();
    did += nf.pollTx();
    if (this.rxMode === 'normal') {
      did += nf.pollRx(GUEST_RX_BUDGET);
    } else if (this.rxMode === 'slow' && now >= this.nextSlowPoll) {
      did += nf.pollRx(SLOW_RX_BUDGET);
      this.nextSlowPoll = now + this.slowEveryMs;
    }
    if (now < this.stormUntil && now >= this.nextStorm) {
      this.storm();
      this.nextStorm = now + 1;
    }
    this.source.refill(now);
    did += nf.transmit(GUEST_TX_BUDGET, this.source);
    if (this.wantReconnect && !this.reconnecting && this.fx !== null && this.fx.state === XenbusStateClosed) this.reconnect();
    this.tickAt = (Math.floor(now / this.tickMs) + 1) * this.tickMs;
    return did;
  }

  nextDeadline(): number {
    let t = Infinity;
    if ((this.source.transmitting && this.nf.connected) || this.source.pending > 0 || this.wantReconnect) t = this.tickAt;
    if (this.rxMode === 'slow' && this.nextSlowPoll < t) t = this.nextSlowPoll;
    if (this.nextStorm < this.stormUntil && this.nextStorm < t) t = this.nextStorm;
    return t;
  }

  private reconnect(): void {
    const fx = this.fx!;
    this.reconnecting = true;
    void fx.reconnect().then(
      (r) => {
        this.reconnecting = false;
        if (this.dead) return;
        if (r.ok) {
          this.wantReconnect = false;
          this.log(this.name, 'reconnect', [['stuck', this.nf.audit().stuck]]);
        }
      },
      (e: unknown) => {
        // The frontend's xenbus code threw: a crash of this guest, reported as its next step's exception.
        this.reconnecting = false;
        this.failure ??= e;
      },
    );
  }

  // ---- Faults --------------------------------------------------------------------------------------------

  /** Slow receiver: one RX packet every `everyMs` ms. */
  setSlow(everyMs: number, now: number): void {
    this.rxMode = 'slow';
    this.slowEveryMs = everyMs;
    this.nextSlowPoll = now + everyMs;
  }

  /** Stalled receiver (ctrl-Z): no RX buffer is posted until resumed. */
  setStalled(): void {
    this.rxMode = 'stalled';
  }

  /** Back to a normal receiver. */
  resumeRx(): void {
    this.rxMode = 'normal';
  }

  /** Event storm: `perMs` notifications of the backend port every ms until `untilMs`. */
  setStorm(perMs: number, now: number, untilMs: number): void {
    this.stormPerMs = perMs;
    this.stormUntil = untilMs;
    this.nextStorm = now;
  }

  private storm(): void {
    const port = this.nf.eventChannel;
    for (let i = 0; i < this.stormPerMs; i++) {
      if (port >= 0 && this.evtchn.notify(port) === 0) this.faults.stormNotifies++;
      else this.faults.stormRefused++;
    }
  }

  /**
   * Ends access to up to `n` grants the backend maps right now (gnttab_end_foreign_access_ref on an entry with
   * GTF_reading/GTF_writing set): each must be refused; they are then watched, as Linux's deferred list retries
   * every second, until their owner ends them. Returns [tried, refused].
   */
  revokeMapped(n: number, now: number): [number, number] {
    const mapped = this.gnttab.query().outstanding.filter((o) => o.inUse && o.domid === this.backendDomid);
    // TX pages (granted read-only) come back as the stack frees them; ring pages only at the next disconnect.
    const tx = mapped.filter((o) => o.readonly);
    const inUse = (tx.length > 0 ? tx : mapped).map((o) => o.ref);
    // A seeded pick among them.
    for (let i = inUse.length - 1; i > 0; i--) {
      const j = this.random.int(0, i);
      [inUse[i], inUse[j]] = [inUse[j]!, inUse[i]!];
    }
    const picked = inUse.slice(0, n);
    let refused = 0;
    for (const ref of picked) {
      const before = this.gnttab.ends[ref]!;
      if (this.gnttab.endForeignAccessRef(ref)) {
        // The grant table let a mapped grant go: the backend may now read a page the guest reuses.
        this.faults.revokesAccepted++;
        this.log(this.name, 'revoke-accepted', [['ref', ref]]);
        continue;
      }
      refused++;
      this.faults.revokesRefused++;
      this.deferred.push({ ref, endsBefore: before, at: now });
    }
    if (this.deferred.length > 0 && this.revokeTimer === undefined) this.revokeTimer = this.clock.schedule(GNTTAB_DEFERRED_RETRY_MS, this.onRevokeTimer);
    return [picked.length, refused];
  }

  /** Refused revokes whose grant has not ended yet. */
  get revokesPending(): number {
    return this.deferred.length;
  }

  // Linux's deferred-revoke tick: a refused grant is done once its owner managed to end it.
  private readonly onRevokeTimer = (): void => {
    this.revokeTimer = undefined;
    this.settleRevokes();
    if (this.deferred.length > 0) this.revokeTimer = this.clock.schedule(GNTTAB_DEFERRED_RETRY_MS, this.onRevokeTimer);
  };

  /** Looks at the refused revokes now: those whose grant has ended since are done. Returns how many are left. */
  settleRevokes(): number {
    const now = this.clock.now();
    const before = this.deferred.length;
    for (let i = this.deferred.length - 1; i >= 0; i--) {
      const d = this.deferred[i]!;
      if (this.gnttab.ends[d.ref]! === d.endsBefore) continue;
      this.deferred.splice(i, 1);
      this.faults.revokesEndedLater++;
      if (now - d.at > this.faults.revokeMaxWaitMs) this.faults.revokeMaxWaitMs = now - d.at;
    }
    if (before > 0 && this.deferred.length === 0) {
      this.log(this.name, 'revokes-ended', [['refused', this.faults.revokesRefused], ['endedLater', this.faults.revokesEndedLater], ['maxWaitMs', this.faults.revokeMaxWaitMs]]);
    }
    return this.deferred.length;
  }

  /** The guest's thread dies: never stepped again, its timers dropped; memory and grant table stay as they are. */
  kill(): void {
    this.dead = true;
    this.clock.kill();
    this.conn?.close();
    this.deferred.length = 0;
  }

  /** The orderly close (xennet_remove): Closing, Closed, every grant taken back. */
  async close(): Promise<string | null> {
    const fx = this.fx;
    if (fx === null) return null;
    const r = await fx.close(SIM_CLOSE_TIMEOUT_MS);
    return r.ok ? null : r.error;
  }
}
