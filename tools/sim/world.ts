// The simulator's one-thread world: the toolstack (an in-process xenstore and libxl's domain and device helpers,
// shared/xenbus.ts), the "hypervisor" (event channels and the grant tables' release on domain death), the guests and
// the backend as actors of the seeded scheduler, and the faults of a schedule applied to them. Every vif connects
// through the real handshake: the guest's netfront xenbus driver and netback's xenbus driver talk through the
// xenstore, as in the running system (tools/toolstack.ts), not by hand as in the one-thread rig.
//
// Recovery, as issue 5 asks:
// - A killed guest: its actor stops, its timers die, its xenstore connection closes; the toolstack destroys the domain
//   (home removed, @releaseDomain) and the hypervisor refuses new maps of its grants (mapper.removeDomain) while the
//   backend's existing mappings stay valid. Netback sees the frontend vanish, never notifies it again, and unmaps
//   each grant once the stack has freed the page. The slot boots a new domain later.
// - A killed backend: its actor stops, its timers die, its xenstore connection closes; the toolstack marks every
//   vif's backend Closing (libxl's forced device removal) so guests tear down and take back what nothing maps. The
//   hypervisor then kills the domain: every grant the dead backend had mapped loses GTF_reading/GTF_writing
//   (xen/common/grant_table.c gnttab_release_mappings, from domain_kill) and its event channels close
//   (xen/common/event_channel.c evtchn_destroy). A new backend starts, the toolstack writes fresh backend
//   directories, and each guest goes Closed -> Initialising -> Connected again; grants left stuck at the teardown
//   end on netfront's deferred retry once released.
//
// Departures: the restarted backend keeps domid 0 (Xen would give a new driver domain a new id; guests grant to
// domid 0 throughout); a killed guest's event channels are left as they were (Xen's evtchn_destroy would close them),
// so any notification a backend still sent it is counted; grant-return notices are delivered to the guest's next
// step instead of over a MessagePort.

import { ADVERSARY_CASES, honestExchange, honestHealthOf, vifStatusOf, type AdversaryHost, type DeviceStatus, type HonestHealth, type HostAudit, type HostGuest, type VifStatus } from '../../frontend/adversary.js';
import type { MixSettings } from '../../frontend/traffic.js';
import { GTF_reading, GTF_writing, GrantTable } from '../../shared/gnttab.js';
import type { GrantReturnMessage } from '../../shared/grant-return.js';
import type { BackendConfig } from '../../backend/loop.js';
import { guestMac, macToString } from '../../shared/ether.js';
import { EvtchnHost, kRaised } from '../../shared/evtchn.js';
import { guestIp } from '../../shared/inet.js';
import { GuestMemory } from '../../shared/memory.js';
import { Random } from '../../shared/random.js';
import { err, type Result } from '../../shared/result.js';
import {
  VifKey,
  XenbusStateClosing,
  XenbusStateInitWait,
  XenbusStateInitialising,
  toolstackAddVif,
  toolstackCreateDomain,
  toolstackDestroyDomain,
  vifBackendPath,
  vifFrontendPath,
  xenbusStateName,
} from '../../shared/xenbus.js';
import { XenstoreClient, withTransaction } from '../../shared/xenstore-client.js';
import type { XsClient, XsResult } from '../../shared/xenstore-protocol.js';
import { XenStore } from '../../shared/xenstore.js';
import { ENDPOINT, REMOTE, closeDomainPorts, toolstackReAddVifBackend } from '../toolstack.js';
import type { BackendTally, GuestTally } from './audit.js';
import { SimBackend } from './backend.js';
import { EventLog, type LogValue } from './eventlog.js';
import { countFaults, formatFaultEvent, type FaultEvent, type FaultType } from './faults.js';
import { SimGuest } from './guest.js';
import { ActorScheduler, DomainClock, SimClock, type SimActor } from './scheduler.js';
import { StateLoggingClient } from './xenbus-log.js';

/** The backend domain's id. */
export const SIM_BACKEND_DOMID = 0;
/** Mix frames per second of all guests together by default (60 virtual seconds take a few seconds of wall time). */
export const SIM_AGGREGATE_RATE = 1600;
/** Most mix frames per second of one guest by default. */
export const SIM_MAX_GUEST_RATE = 400;
/** Other guests one guest sends unicast UDP to (the next ones by slot): the mix keeps one pattern stream per peer. */
export const SIM_UNICAST_PEERS = 5;

/** The default rate of each guest for `guests` guests: SIM_AGGREGATE_RATE shared, at most SIM_MAX_GUEST_RATE each. */
export function simDefaultRate(guests: number): number {
  return Math.min(SIM_MAX_GUEST_RATE, Math.round(SIM_AGGREGATE_RATE / guests));
}
/** Memory frames and grant entries of a guest (the toolstack's defaults). */
export const SIM_GUEST_FRAMES = 1024;
export const SIM_GRANT_ENTRIES = 2048;
/** Memory frames and grant entries of an adversary domain (the adversary rig's). */
export const SIM_ADVERSARY_FRAMES = 512;
export const SIM_ADVERSARY_GRANTS = 1024;
/** Event-channel ports per domain. */
export const SIM_NR_PORTS = 128;
/** How long a crashed backend stays down before the toolstack restarts it, ms. */
export const CRASH_RESTART_MS = 1000;
/** How long the backend may drain at shutdown before what is left is aborted, ms (the toolstack's default). */
export const SIM_DRAIN_MS = 5000;
/** How long to wait for aborted holders' grants, ms (backend/loop.ts DRAIN_ABORT_GRACE_MS). */
export const SIM_DRAIN_GRACE_MS = 1000;
/** How long guests may take to connect at boot or after a restart, ms. */
export const SIM_CONNECT_MS = 30_000;

/** Options of a world. */
export interface WorldOptions {
  readonly seed: number;
  readonly guests: number;
  /** Release design of the backend (default 'rusty'). */
  readonly design?: string;
  /** Mix frames per second per guest while transmitting (default simDefaultRate(guests)). */
  readonly rate?: number;
  /** What the guests' mix changes (weights, UDP sizes); default none. */
  readonly mix?: MixSettings;
  readonly mtu?: number;
  /** The tap's hold window outside tap-hold faults, ms (default 20). */
  readonly tapHoldMs?: number;
  /** netback's RX drain timeout, ms (default Linux's 10000). */
  readonly rxDrainTimeoutMs?: number;
  /** Domains beyond the guests to make room for: replacements after kills, crashes, adversaries (default 64). */
  readonly extraDomains?: number;
  readonly log?: EventLog;
}

// An adversary domain (AdversaryHost.createGuest).
interface AdversaryDomain {
  readonly guest: HostGuest;
  dead: boolean;
}

// A killed guest: its counters at death and how many events its domain had been raised then.
interface DeadGuest {
  readonly guest: SimGuest;
  readonly raisedAtDeath: number;
}

/** The one-thread world of the simulator; also an AdversaryHost, so the malicious-guest catalogue plays in it. */
export class SimWorld implements AdversaryHost {
  readonly clock = new SimClock();
  readonly log: EventLog;
  readonly random: Random;
  readonly scheduler: ActorScheduler;
  readonly store = new XenStore();
  readonly xs0: XsClient;
  // The same connection unwrapped, for toolstack helpers typed on XenstoreClient (their state writes logged by hand).
  private readonly xs0raw: XenstoreClient;
  readonly evtchn: EvtchnHost;
  readonly backendDomid = SIM_BACKEND_DOMID;
  readonly remote = REMOTE;
  readonly rxDrainTimeoutMs: number;
  readonly nGuests: number;
  /** The current incarnation of each slot (null while it reboots). */
  readonly slots: (SimGuest | null)[];
  /** Every guest incarnation ever booted, in boot order. */
  readonly guests: SimGuest[] = [];
  /** The backend now (null while it is dead) and every incarnation ever started. */
  backend: SimBackend | null = null;
  readonly backends: SimBackend[] = [];
  /** Faults applied, by type. */
  readonly faultCounts: Record<FaultType, number> = countFaults([]);
  /** Things that went wrong that are not audit figures (crashes, posts to dead guests, timeouts). */
  readonly errors: string[] = [];
  /** Backend crashes that no fault injected. */
  backendCrashes = 0;
  trafficOn = false;
  private readonly opts: WorldOptions;
  private readonly config: BackendConfig;
  private readonly byDomid = new Map<number, SimGuest>();
  private readonly dead: DeadGuest[] = [];
  private readonly adversaries = new Map<number, AdversaryDomain>();
  private readonly adversaryIps = new Set<number>();
  private readonly backendTallies: BackendTally[] = [];
  private readonly deadBackendDirs = new Set<number>();
  private nextDomid: number;
  private readonly maxDomains: number;
  private lossP = 0;
  private lossUntil = -Infinity;
  private tapHold: number | null = null;
  private nicStallUntil = -Infinity;
  private lastBackendError: string | null = null;
  private killedBackend: SimBackend | null = null;
  private releasedBackend: SimBackend | null = null;
  private pendingRestarts = 0;

  private constructor(opts: WorldOptions) {
    this.opts = opts;
    this.nGuests = opts.guests;
    this.log = opts.log ?? new EventLog();
    this.random = new Random(opts.seed);
    this.scheduler = new ActorScheduler(this.clock, this.random.fork(), (a, e) => this.crashed(a, e));
    this.rxDrainTimeoutMs = opts.rxDrainTimeoutMs ?? 10_000;
    this.maxDomains = 1 + opts.guests + (opts.extraDomains ?? 64);
    this.evtchn = EvtchnHost.create({ maxDomains: this.maxDomains, nrPorts: SIM_NR_PORTS, waker: this.scheduler.waker });
    const conn = this.store.connect(0);
    if (!conn.ok) throw new Error(`sim: xenstore: ${conn.error}`);
    this.xs0raw = XenstoreClient.local(conn.value);
    this.xs0 = new StateLoggingClient(this.xs0raw, (vif, state) => this.note('toolstack', 'xenbus', [['vif', vif], ['state', state]]));
    this.slots = new Array<SimGuest | null>(opts.guests).fill(null);
    this.nextDomid = opts.guests + 1;
    this.config = {
      domid: SIM_BACKEND_DOMID,
      seed: opts.seed,
      mtu: opts.mtu ?? 1500,
      loss: 0,
      tap: true,
      tapHoldMs: opts.tapHoldMs ?? 20,
      pcapPath: null,
      design: opts.design ?? 'rusty',
      grantCopy: false,
      endpoint: ENDPOINT,
      remote: REMOTE,
      remoteRttMs: 1,
      nicCompletionDelayMs: 0.05,
      rxDrainTimeoutMs: this.rxDrainTimeoutMs,
      uplinkVerify: true,
    };
  }

  /** Builds the world: the backend, then every guest slot booted; call waitConnected() next. */
  static async create(opts: WorldOptions): Promise<SimWorld> {
    const w = new SimWorld(opts);
    await w.startBackend();
    for (let slot = 1; slot <= opts.guests; slot++) await w.bootGuest(slot, slot);
    return w;
  }

  /** Writes one line to the event log at the current virtual time. */
  note(who: string, what: string, fields: readonly (readonly [string, LogValue])[] = []): void {
    this.log.add(this.clock.now(), who, what, fields);
  }

  private readonly logFn = (who: string, what: string, fields?: readonly (readonly [string, LogValue])[]): void => this.note(who, what, fields);

  // ---- Running ---------------------------------------------------------------------------------------------

  /** One scheduler round (never past `horizon`; time stands still once `stop()` holds), with the toolstack's bookkeeping. */
  async round(horizon: number, stop?: () => boolean): Promise<number> {
    return this.scheduler.round(horizon, this.housekeeping, stop);
  }

  /** Runs until `until()` holds or `ms` of virtual time passed; true if `until` held (or none was given). */
  async run(ms: number, until?: () => boolean, each?: () => void): Promise<boolean> {
    const end = this.clock.now() + ms;
    for (;;) {
      if (until?.() === true) return true;
      if (this.clock.now() >= end) return until === undefined;
      each?.();
      await this.round(end, until);
    }
  }

  async step(): Promise<void> {
    await this.round(this.clock.now() + 1);
  }

  // Removes the backend directory of a dead guest once netback let go of it (libxl's device removal).
  private readonly housekeeping = (): void => {
    const b = this.backend;
    if (b !== null && this.deadBackendDirs.size > 0) {
      for (const d of [...this.deadBackendDirs]) {
        const dev = b.devices.get(`${d}/0`);
        if (dev !== undefined && !dev.removed) continue;
        this.deadBackendDirs.delete(d);
        void this.xs0.rm(vifBackendPath(SIM_BACKEND_DOMID, d, 0));
      }
    }
  };

  /** The live guests, in slot order. */
  liveGuests(): SimGuest[] {
    const out: SimGuest[] = [];
    for (const g of this.slots) if (g !== null) out.push(g);
    return out;
  }

  /** Whether every slot has a live guest whose vif is Connected at both ends and the backend is up. */
  allConnected(): boolean {
    if (this.backend === null || this.pendingRestarts > 0) return false;
    for (const g of this.slots) if (g === null || !g.isConnected) return false;
    return true;
  }

  /** Runs until every slot is connected (after boot or restarts); false after `ms`. */
  async waitConnected(ms = SIM_CONNECT_MS): Promise<boolean> {
    const okNow = await this.run(ms, () => this.allConnected());
    if (!okNow) {
      const late = this.slots.map((g, i) => (g === null ? `g${i + 1}:down` : g.isConnected ? '' : `${g.name}:${xenbusStateName(g.fx?.state ?? 0)}`)).filter((s) => s !== '');
      this.errors.push(`guests not connected after ${ms} ms: ${late.join(' ')}${this.backend === null ? ' (backend down)' : ''}`);
    }
    return okNow;
  }

  /** PHASE_RUN / PHASE_STOP for every live guest (replacements follow trafficOn). */
  setTraffic(on: boolean): void {
    this.trafficOn = on;
    const now = this.clock.now();
    for (const g of this.liveGuests()) g.setTransmitting(on, now);
    this.note('toolstack', on ? 'traffic-start' : 'traffic-stop');
  }

  // ---- Guests ----------------------------------------------------------------------------------------------

  private guestHost(slot: number): { mac: number; ip: number } {
    return { mac: guestMac(slot), ip: guestIp(slot) };
  }

  /** Boots a guest domain in `slot` (libxl: domain, vif directories, memory; then the guest opens its vif). */
  async bootGuest(slot: number, domid: number = this.allocDomid()): Promise<SimGuest> {
    const peers: { mac: number; ip: number }[] = [];
    for (let k = 1; k <= Math.min(SIM_UNICAST_PEERS, this.nGuests - 1); k++) peers.push(this.guestHost(((slot - 1 + k) % this.nGuests) + 1));
    const self = this.guestHost(slot);
    const g = new SimGuest({
      slot,
      domid,
      backendDomid: SIM_BACKEND_DOMID,
      clock: new DomainClock(this.clock),
      random: this.random.fork(),
      evtchn: this.evtchn.domain(domid),
      self,
      peers,
      remote: REMOTE,
      endpoint: ENDPOINT,
      mtu: this.config.mtu,
      rate: this.opts.rate ?? simDefaultRate(this.nGuests),
      ...(this.opts.mix !== undefined && { mix: this.opts.mix }),
      frames: SIM_GUEST_FRAMES,
      grantEntries: SIM_GRANT_ENTRIES,
      log: this.logFn,
    });
    this.slots[slot - 1] = g;
    this.guests.push(g);
    this.byDomid.set(domid, g);
    this.note(g.name, 'boot');
    must(await toolstackCreateDomain(this.store, this.xs0, domid), `create d${domid}`);
    must(await toolstackAddVif(this.xs0, { frontendDomid: domid, backendDomid: SIM_BACKEND_DOMID, devid: 0, mac: macToString(self.mac) }), `vif of d${domid}`);
    // registerGrantTable: the hypervisor learns the guest's table before the handshake, so the rings can be mapped.
    this.backend?.dom0.mapper.addDomain(domid, g.gnttab.entries.sab, g.memory.sab);
    const conn = this.store.connect(domid);
    if (!conn.ok) throw new Error(`sim: xenstore connection of d${domid}: ${conn.error}`);
    await g.open(conn.value);
    if (g.dead) return g;
    g.setTransmitting(this.trafficOn, this.clock.now());
    this.scheduler.add(g, domid);
    return g;
  }

  private allocDomid(): number {
    const d = this.nextDomid++;
    if (d >= this.maxDomains) throw new Error(`sim: out of domain ids (${this.maxDomains}): raise extraDomains`);
    return d;
  }

  /** A grant-return notice from netback for `domid` (the guest's MessagePort). */
  private notice(domid: number, m: GrantReturnMessage): void {
    const adv = this.adversaries.get(domid);
    if (adv !== undefined) {
      adv.guest.notices.push(m);
      return;
    }
    const g = this.byDomid.get(domid);
    if (g === undefined) return;
    if (g.dead) {
      this.errors.push(`backend posted a grant-return notice (${m.grefs.length} grefs) to dead ${g.name}`);
      return;
    }
    g.deliver(m);
    this.scheduler.wake(g);
  }

  /** Kills the guest in `slot` (its worker dies); the toolstack destroys the domain and reboots the slot later. */
  killGuest(slot: number, restartMs: number, why: string): boolean {
    const g = this.slots[slot - 1] ?? null;
    if (g === null || g.dead) return false;
    this.scheduler.kill(g);
    g.kill();
    this.slots[slot - 1] = null;
    const raised = this.evtchn.domain(g.domid).counter(kRaised);
    this.dead.push({ guest: g, raisedAtDeath: raised });
    const s = g.nf.stats;
    this.note(g.name, 'killed', [['why', why], ['granted', s.grantsGranted], ['returned', s.grantsReturned], ['outstanding', g.nf.grantsOutstanding]]);
    // The thread's xenstore connection died with it (g.kill); the toolstack destroys the domain, and the hypervisor
    // refuses new maps of its grants while the backend's mappings stay valid until unmapped.
    const domid = g.domid;
    if (this.backend !== null) {
      try {
        this.backend.dom0.mapper.removeDomain(domid);
      } catch {
        // Booted while the backend was down and not yet known to it.
      }
    }
    this.deadBackendDirs.add(domid);
    this.pendingRestarts++;
    void toolstackDestroyDomain(this.store, this.xs0, domid).then(
      (r) => {
        if (!r.ok) this.errors.push(`destroying d${domid}: ${r.error}`);
      },
      (e: unknown) => this.errors.push(`destroying d${domid}: ${message(e)}`),
    );
    this.clock.schedule(restartMs, () => {
      this.pendingRestarts--;
      void this.bootGuest(slot).catch((e: unknown) => this.errors.push(`rebooting g${slot}: ${message(e)}`));
    });
    return true;
  }

  // ---- The backend -----------------------------------------------------------------------------------------

  private async startBackend(): Promise<SimBackend> {
    const n = this.backends.length + 1;
    const conn = this.store.connect(SIM_BACKEND_DOMID);
    if (!conn.ok) throw new Error(`sim: xenstore connection of the backend: ${conn.error}`);
    const b = new SimBackend({
      incarnation: n,
      config: { ...this.config, seed: (this.opts.seed + Math.imul(n - 1, 0x9e3779b1)) >>> 0 },
      clock: new DomainClock(this.clock),
      evtchn: this.evtchn.domain(SIM_BACKEND_DOMID),
      conn: conn.value,
      notice: (d, m) => this.notice(d, m),
      log: this.logFn,
      crash: (e) => {
        if (!b.dead && this.backend === b) this.crashed(b, e);
      },
    });
    for (const ip of this.adversaryIps) b.dom0.uplink.hostileSources.add(ip);
    this.backends.push(b);
    this.backend = b;
    // What a fault window still in force means for a new backend.
    const now = this.clock.now();
    if (this.lossUntil > now) b.dom0.fault({ kind: 'loss', p: this.lossP, ms: this.lossUntil - now });
    if (this.nicStallUntil > now) b.dom0.fault({ kind: 'nic-stall', ms: this.nicStallUntil - now });
    if (this.tapHold !== null) b.dom0.fault({ kind: 'tap-hold', holdMs: this.tapHold });
    for (const g of this.slots) if (g !== null) b.dom0.mapper.addDomain(g.domid, g.gnttab.entries.sab, g.memory.sab);
    this.note(b.name, 'start');
    await b.start();
    this.scheduler.add(b, SIM_BACKEND_DOMID);
    return b;
  }

  private crashed(actor: SimActor, e: unknown): void {
    const text = message(e);
    if (actor instanceof SimBackend) {
      this.backendCrashes++;
      this.lastBackendError = `${actor.name}: ${text}`;
      this.errors.push(`${actor.name} crashed: ${text}`);
      this.note(actor.name, 'crashed', [['error', oneWord(text)]]);
      this.killBackend(0, CRASH_RESTART_MS, 'crash');
      return;
    }
    if (actor instanceof SimGuest) {
      this.errors.push(`${actor.name} crashed: ${text}`);
      this.killGuest(actor.slot, CRASH_RESTART_MS, 'crash');
    }
  }

  /**
   * Kills the backend (its worker dies). The toolstack marks every vif's backend Closing at once; `releaseMs` later
   * the hypervisor kills the domain (mappings released, ports closed); `restartMs` later a new backend starts.
   */
  killBackend(releaseMs: number, restartMs: number, why: string): boolean {
    const b = this.backend;
    if (b === null) return false;
    this.scheduler.kill(b);
    const o = b.dom0.oracle.report;
    const up = b.dom0.uplink.stats;
    const peer = b.dom0.peer.stats;
    this.backendTallies.push({ earlyReturns: o.earlyReturns, doubleReturns: o.doubleReturns, leaks: 0, corruptPayloads: up.udpCorrupt + peer.corruptSegments });
    b.kill();
    this.backend = null;
    this.killedBackend = b;
    this.pendingRestarts++;
    this.note(b.name, 'killed', [['why', why], ['mapped', b.dom0.mapper.stats().liveHandles], ['vifs', b.dom0.vifs.length]]);
    void this.markBackendsClosing().catch((e: unknown) => this.errors.push(`marking backends Closing: ${message(e)}`));
    const release = Math.min(releaseMs, restartMs);
    this.clock.schedule(release, () => this.domainKill(b));
    this.clock.schedule(restartMs, () => {
      void this.restartBackend().catch((e: unknown) => this.errors.push(`restarting the backend: ${message(e)}`));
    });
    return true;
  }

  // libxl's forced removal of a dead driver domain's devices: each vif's backend goes Closing (the backend will never
  // say so itself), so the frontends tear down.
  private async markBackendsClosing(): Promise<void> {
    for (const path of await this.backendVifDirs()) {
      const r = await withTransaction(this.xs0, async (tx): Promise<XsResult<void>> => {
        const cur = await this.xs0.read(`${path}/${VifKey.state}`, tx);
        if (!cur.ok) return cur.error === 'ENOENT' ? { ok: true, value: undefined } : cur;
        return this.xs0.write(`${path}/${VifKey.state}`, String(XenbusStateClosing), tx);
      });
      if (!r.ok) this.errors.push(`marking ${path} Closing: ${r.error}`);
    }
  }

  private async backendVifDirs(): Promise<string[]> {
    const root = `/local/domain/${SIM_BACKEND_DOMID}/backend/vif`;
    const out: string[] = [];
    const fes = await this.xs0.directory(root);
    if (!fes.ok) return out;
    for (const fe of fes.value) {
      const devs = await this.xs0.directory(`${root}/${fe}`);
      if (devs.ok) for (const d of devs.value) out.push(`${root}/${fe}/${d}`);
    }
    return out;
  }

  /**
   * domain_kill of the dead backend: gnttab_release_mappings clears GTF_reading/GTF_writing of every grant it still
   * mapped (xen/common/grant_table.c), and evtchn_destroy closes its ports (xen/common/event_channel.c).
   */
  private domainKill(b: SimBackend): void {
    if (this.releasedBackend === b) return;
    this.releasedBackend = b;
    let released = 0;
    const release = (domid: number, table: GrantTable): void => {
      for (const ref of b.dom0.mapper.mappedRefs(domid)) {
        table.entries.clearFlags(ref, GTF_reading | GTF_writing);
        released++;
      }
    };
    for (const g of this.guests) release(g.domid, g.gnttab);
    for (const [d, a] of this.adversaries) release(d, a.guest.gnttab);
    const closed = closeDomainPorts(this.evtchn, SIM_BACKEND_DOMID);
    this.note('hypervisor', 'domain-kill', [['dom', SIM_BACKEND_DOMID], ['released', released], ['ports', closed]]);
  }

  private async restartBackend(): Promise<void> {
    const dead = this.killedBackend;
    if (dead !== null) this.domainKill(dead);
    this.killedBackend = null;
    // The toolstack recreates the vif devices for the new backend: old directories go, live guests get fresh ones.
    for (const path of await this.backendVifDirs()) {
      const r = await this.xs0.rm(path);
      if (!r.ok) this.errors.push(`removing ${path}: ${r.error}`);
    }
    this.deadBackendDirs.clear();
    for (const g of this.liveGuests()) {
      const r = await toolstackReAddVifBackend(this.xs0raw, { frontendDomid: g.domid, backendDomid: SIM_BACKEND_DOMID, devid: 0, mac: macToString(guestMac(g.slot)) });
      if (!r.ok) this.errors.push(`writing the backend vif of ${g.name}: ${r.error}`);
      else this.note('toolstack', 'xenbus', [['vif', `vif${g.domid}.0`], ['state', xenbusStateName(XenbusStateInitialising)]]);
    }
    await this.startBackend();
    this.pendingRestarts--;
    for (const g of this.liveGuests()) g.wantReconnect = true;
  }

  // ---- Faults ----------------------------------------------------------------------------------------------

  /** Applies one fault now (its window's end is scheduled on the clock); logs it, or why it was skipped. */
  applyFault(e: FaultEvent): void {
    const skip = (why: string): void => this.note('fault-skipped', e.type, [['why', why]]);
    const now = this.clock.now();
    const params = formatFaultEvent(e).split(' ').slice(2);
    const target = 'g' in e ? (e.g <= this.nGuests ? this.slots[e.g - 1] ?? null : null) : null;
    if ('g' in e && target === null) return skip(e.g > this.nGuests ? `no-slot-g${e.g}` : `g${e.g}-down`);
    const b = this.backend;
    const needsBackend = e.type === 'nic-stall' || e.type === 'tap-hold' || e.type === 'backend-kill';
    if (needsBackend && b === null) return skip('backend-down');
    this.faultCounts[e.type]++;
    this.log.add(now, 'fault', e.type, params.map((p) => p.split('=') as [string, string]));
    const end = (dur: number, fn: () => void): void => void this.clock.schedule(dur, fn);
    switch (e.type) {
      case 'loss':
        // The same fault hooks the thread-mode toolstack calls over comlink (backend/loop.ts Dom0Backend.fault).
        this.lossP = e.p;
        this.lossUntil = now + e.dur;
        b?.dom0.fault({ kind: 'loss', p: e.p, ms: e.dur });
        end(e.dur, () => this.note('fault-end', e.type, [['lost', this.backends.reduce((n, x) => n + x.dom0.wireLost, 0)]]));
        return;
      case 'nic-stall':
        this.nicStallUntil = now + e.dur;
        b!.dom0.fault({ kind: 'nic-stall', ms: e.dur });
        end(e.dur, () => this.note('fault-end', e.type, [['inflight', this.backend?.dom0.stack.nic.inFlight ?? 0], ['queued', this.backend?.dom0.stack.nic.queued ?? 0]]));
        return;
      case 'tap-hold':
        this.tapHold = e.hold;
        b!.dom0.fault({ kind: 'tap-hold', holdMs: e.hold });
        end(e.dur, () => {
          const held = this.tapCount();
          this.tapHold = null;
          this.backend?.dom0.fault({ kind: 'tap-hold', holdMs: this.config.tapHoldMs });
          this.note('fault-end', e.type, [['held', held]]);
        });
        return;
      case 'slow-receiver': {
        const g = target!;
        g.setSlow(e.every, now);
        end(e.dur, () => {
          this.note('fault-end', e.type, this.rxFields(g));
          g.resumeRx();
          this.scheduler.wake(g);
        });
        return;
      }
      case 'stalled-receiver': {
        const g = target!;
        g.setStalled();
        end(e.dur, () => {
          this.note('fault-end', e.type, this.rxFields(g));
          g.resumeRx();
          this.scheduler.wake(g);
        });
        return;
      }
      case 'guest-kill':
        this.killGuest(e.g, e.restart, 'fault');
        return;
      case 'backend-kill':
        this.killBackend(e.release, e.restart, 'fault');
        return;
      case 'revoke-mapped': {
        const [tried, refused] = target!.revokeMapped(e.n, now);
        this.note(target!.name, 'revoke-mapped', [['tried', tried], ['refused', refused]]);
        return;
      }
      case 'event-storm': {
        const g = target!;
        g.setStorm(e.n, now, now + e.dur);
        this.scheduler.wake(g);
        end(e.dur, () => this.note('fault-end', e.type, [['notifies', g.faults.stormNotifies], ['refused', g.faults.stormRefused]]));
        return;
      }
    }
  }

  private tapCount(): number {
    let n = 0;
    this.backend?.dom0.stack.tap?.forEachSkb(() => void n++);
    return n;
  }

  // What a receiver fault did: the vif's queue, what the drain timeout dropped, and other guests' pages it pins.
  private rxFields(g: SimGuest): [string, LogValue][] {
    const v = this.backend?.dom0.vifs.find((x) => x.domid === g.domid)?.vif;
    if (v === undefined) return [['vif', 'none']];
    let pinned = 0;
    v.forEachSkb((skb) => {
      const sh = skb.shinfo;
      for (let i = 0; i < sh.nrFrags; i++) {
        const f = sh.frags[i]!.page.foreign;
        if (f !== null && f.domid !== g.domid) pinned++;
      }
    });
    return [['rxq', v.rx?.queuedPackets ?? 0], ['drainDropped', v.stats.rxDropped], ['queueFull', v.stats.rxQueueFull], ['pinned', pinned]];
  }

  /** Ends every fault window still open (the traffic stopped): receivers resume, loss and holds end. */
  endFaultWindows(): void {
    if (this.lossUntil > this.clock.now()) this.backend?.dom0.fault({ kind: 'loss', p: 0, ms: 0 });
    this.lossP = 0;
    this.lossUntil = -Infinity;
    if (this.tapHold !== null) {
      this.tapHold = null;
      this.backend?.dom0.fault({ kind: 'tap-hold', holdMs: this.config.tapHoldMs });
    }
    const now = this.clock.now();
    for (const g of this.liveGuests()) {
      g.resumeRx();
      g.setStorm(0, now, now);
    }
  }

  // ---- Shutdown and audit ----------------------------------------------------------------------------------

  /**
   * The orderly end (tools/toolstack.ts shutdown): waits for restarts still pending, lets the backend drain (aborting
   * what is left at the deadline), closes every guest's vif, removes netback's devices, runs the oracle's quiescence
   * check. Returns the tallies the audit sums.
   */
  async shutdown(): Promise<{ guests: GuestTally[]; backends: BackendTally[] }> {
    this.endFaultWindows();
    if (!this.allConnected()) await this.waitConnected();
    const quiet = (): boolean => {
      const b = this.backend;
      if (b === null || !b.dom0.quiescent()) return false;
      for (const g of this.liveGuests()) if (g.nf.grantsOutstanding !== 0 || g.returns.length !== 0) return false;
      return true;
    };
    if (!(await this.run(SIM_DRAIN_MS, quiet))) {
      const aborted = this.backend?.dom0.abortHolders() ?? [];
      this.note('toolstack', 'drain-aborted', [['what', oneWord(aborted.join(', ') || 'nothing')]]);
      if (!(await this.run(SIM_DRAIN_GRACE_MS, quiet))) this.errors.push(`not quiescent after the drain: ${this.backend?.dom0.liveSkbs() ?? 0} skbs live`);
    }
    this.note('toolstack', 'drained');
    let closing = 0;
    for (const g of this.liveGuests()) {
      closing++;
      void g.close().then(
        (e) => {
          closing--;
          if (e !== null) this.errors.push(`${g.name} close: ${e}`);
        },
        (e: unknown) => {
          closing--;
          this.errors.push(`${g.name} close threw: ${message(e)}`);
        },
      );
    }
    if (!(await this.run(3 * 2000 + 1000, () => closing === 0))) this.errors.push(`${closing} guests did not close`);
    for (const g of this.liveGuests()) {
      const left = g.settleRevokes();
      if (left > 0) this.errors.push(`${g.name}: ${left} grants revoked while mapped never ended`);
      if (g.faults.revokesAccepted > 0) this.errors.push(`${g.name}: ${g.faults.revokesAccepted} revokes of mapped grants were accepted`);
    }
    const b = this.backend;
    if (b !== null) {
      await b.unwatch();
      let removing = 0;
      for (const dev of b.devices.values()) {
        removing++;
        void dev.remove().then(
          () => removing--,
          (e: unknown) => {
            removing--;
            this.errors.push(`${b.name} removing a vif threw: ${message(e)}`);
          },
        );
      }
      if (!(await this.run(SIM_DRAIN_MS, () => removing === 0))) {
        // backend_disconnect waits for inflight_packets and the dealloc ring, not only for mapped grants.
        const stuck = [...b.devices.values()].filter((d) => !d.removed).map((d) => `${d.vif?.name ?? '?'} (${d.stillMapped().length} grants still mapped, ${d.vif?.tx?.inflightPackets ?? 0} packets in flight)`);
        this.errors.push(`${removing} vif teardowns did not finish within ${SIM_DRAIN_MS} ms: ${stuck.join(', ')}`);
      }
      const rep = b.dom0.report();
      b.dom0.close();
      this.backendTallies.push({ earlyReturns: rep.oracle.earlyReturns, doubleReturns: rep.oracle.doubleReturns, leaks: rep.oracle.leaks, corruptPayloads: rep.corruptPayloads });
      for (const v of rep.oracle.violations.slice(0, 5)) this.errors.push(`oracle: ${v}`);
      this.note(b.name, 'report', [['mapped', rep.oracle.mapped], ['returned', rep.oracle.returned], ['leaks', rep.oracle.leaks], ['stillMapped', rep.stillMapped]]);
    }
    for (const d of this.dead) {
      const raised = this.evtchn.domain(d.guest.domid).counter(kRaised) - d.raisedAtDeath;
      if (raised !== 0) this.errors.push(`backend notified dead ${d.guest.name} ${raised} times`);
    }
    return { guests: this.guests.map((g) => this.tally(g)), backends: [...this.backendTallies] };
  }

  private tally(g: SimGuest): GuestTally {
    const s = g.nf.stats;
    let stillMapped = 0;
    if (g.dead) {
      const e = g.gnttab.entries;
      for (let ref = 0; ref < e.nrEntries; ref++) if ((e.flags(ref) & (GTF_reading | GTF_writing)) !== 0) stillMapped++;
    }
    return {
      dead: g.dead,
      granted: s.grantsGranted,
      returned: s.grantsReturned,
      reclaimed: s.grantsReclaimed,
      outstanding: g.nf.grantsOutstanding,
      stuck: g.dead ? 0 : g.nf.audit().stuck,
      stillMapped,
      endAccessFailures: s.endAccessFailures,
      badGrantReturns: s.badGrantReturns,
      corruptPayloads: s.rxCorruptPayloads,
    };
  }

  /** Frames and bytes every guest incarnation transmitted so far. */
  txTotals(): { packets: number; bytes: number } {
    let packets = 0;
    let bytes = 0;
    for (const g of this.guests) {
      packets += g.nf.stats.txPackets;
      bytes += g.nf.stats.txBytes;
    }
    return { packets, bytes };
  }

  /** TX grants out right now, over live guests. */
  outstanding(): number {
    let n = 0;
    for (const g of this.liveGuests()) n += g.nf.grantsOutstanding;
    return n;
  }

  // ---- AdversaryHost ---------------------------------------------------------------------------------------

  async createGuest(): Promise<HostGuest> {
    const domid = this.allocDomid();
    const mac = guestMac(domid);
    must(await toolstackCreateDomain(this.store, this.xs0, domid), `create d${domid}`);
    must(await toolstackAddVif(this.xs0, { frontendDomid: domid, backendDomid: SIM_BACKEND_DOMID, devid: 0, mac: macToString(mac) }), `vif of d${domid}`);
    const memory = GuestMemory.create(SIM_ADVERSARY_FRAMES);
    const gnttab = new GrantTable({ domid, nrEntries: SIM_ADVERSARY_GRANTS, clock: this.clock });
    this.backend?.dom0.mapper.addDomain(domid, gnttab.entries.sab, memory.sab);
    const conn = this.store.connect(domid);
    if (!conn.ok) throw new Error(`sim: xenstore connection of d${domid}: ${conn.error}`);
    const guest: HostGuest = {
      domid,
      mac,
      ip: guestIp(domid),
      memory,
      gnttab,
      evtchn: this.evtchn.domain(domid),
      xs: XenstoreClient.local(conn.value),
      frontendPath: vifFrontendPath(domid, 0),
      notices: [],
    };
    this.adversaries.set(domid, { guest, dead: false });
    // Its corrupt payloads (a hostile guest rewriting its own pages) are its business, counted apart from the audit.
    this.adversaryIps.add(guest.ip);
    this.backend?.dom0.uplink.hostileSources.add(guest.ip);
    this.note(`adversary.d${domid}`, 'boot');
    await this.run(100, () => this.deviceStatus(domid)?.state === XenbusStateInitWait);
    return guest;
  }

  async destroyGuest(domid: number): Promise<void> {
    const adv = this.adversaries.get(domid);
    if (adv === undefined || adv.dead) return;
    adv.dead = true;
    adv.guest.xs.close();
    must(await toolstackDestroyDomain(this.store, this.xs0, domid), `destroy d${domid}`);
    const mapper = this.backend?.dom0.mapper;
    if (mapper !== undefined) {
      try {
        mapper.removeDomain(domid);
      } catch {
        // A backend started after the adversary never knew it.
      }
    }
    this.deadBackendDirs.add(domid);
    await this.step();
  }

  interleave(domid: number, fn: () => void): void {
    const hooks = this.backend?.dom0.txHooks;
    if (hooks === undefined) return;
    const list = hooks.get(domid);
    if (list === undefined) hooks.set(domid, [fn]);
    else list.push(fn);
  }

  vifStatus(domid: number): VifStatus | null {
    return vifStatusOf(this.backend?.dom0.vifs.find((x) => x.domid === domid)?.vif);
  }

  deviceStatus(domid: number): DeviceStatus | null {
    const d = this.backend?.devices.get(`${domid}/0`);
    if (d === undefined) return null;
    return { state: d.state, lastError: d.lastError, connects: d.connects, removed: d.removed };
  }

  honestSendTo(mac: number, ip: number, frames: number, len: number): void {
    const g = this.liveGuests()[0];
    if (g === undefined) return;
    g.source.add(mac, ip, frames, len);
    this.scheduler.wake(g);
  }

  honestHealth(): HonestHealth {
    return honestHealthOf(this.liveGuests(), (g) => {
      const vif = this.backend?.dom0.vifs.find((x) => x.domid === g.domid)?.vif;
      return vif === undefined || vif.disabled;
    });
  }

  exchange(frames: number, each?: () => void): Promise<Result<void>> {
    const b = this.backend;
    if (b === null) return Promise.resolve(err('the backend is down'));
    return honestExchange(
      {
        guests: this.liveGuests(),
        remote: REMOTE,
        macOf: (g) => guestMac(g.slot),
        ipOf: (g) => guestIp(g.slot),
        nameOf: (g) => g.name,
        uplinkVerified: () => b.dom0.uplink.stats.udpVerified,
        health: () => this.honestHealth(),
        run: (ms, until, e) => this.run(ms, until, e),
        queued: (g) => this.scheduler.wake(g),
      },
      frames,
      each,
    );
  }

  /** What the uplink host saw, hostile senders' corrupt payloads included (as the cases expect). */
  uplink(): { readonly udpVerified: number; readonly udpCorrupt: number; readonly other: number } {
    const s = this.backend?.dom0.uplink.stats;
    if (s === undefined) return { udpVerified: 0, udpCorrupt: 0, other: 0 };
    return { udpVerified: s.udpVerified, udpCorrupt: s.udpCorrupt + s.udpCorruptHostile, other: s.other };
  }

  stallUplink(ms: number): void {
    this.backend?.dom0.fault({ kind: 'nic-stall', ms });
  }

  audit(): HostAudit {
    const o = (this.backend ?? this.backends[this.backends.length - 1])?.dom0.oracle.report;
    return {
      earlyReturns: o?.earlyReturns ?? 0,
      doubleReturns: o?.doubleReturns ?? 0,
      leaks: o?.leaks ?? 0,
      violations: (o?.violations ?? []).map((v) => v.message),
      backendError: this.lastBackendError,
    };
  }
}

/** Domains the adversary catalogue needs (one per case). */
export const ADVERSARY_DOMAINS = ADVERSARY_CASES.length;

function must(r: { ok: true } | { ok: false; error: string }, what: string): void {
  if (!r.ok) throw new Error(`sim: ${what}: ${r.error}`);
}

function message(e: unknown): string {
  return e instanceof Error ? (e.stack ?? e.message) : String(e);
}

// A log value has no spaces: the first line of a message, spaces as underscores.
function oneWord(s: string): string {
  return (s.split('\n')[0] ?? '').replace(/\s+/g, '_');
}
