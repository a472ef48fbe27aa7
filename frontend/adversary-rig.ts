// The adversary's one-thread world: the real backend domain (backend/loop.ts Dom0Backend: bridge, uplink NIC with
// the remote host, netback's vifs, the grant mapper, the oracle), an in-process xenstore with the toolstack's
// helpers, event channels, honest guests running the real netfront on the same bridge, and adversary domains whose
// vif device is probed by the real netback xenbus driver (backend/netback-xenbus.ts), exactly as the backend worker
// does it. Time is virtual: run() steps everyone and advances the clock, jumping to the next deadline when idle.
// It implements AdversaryHost, so every case of adversary.ts runs here deterministically.
//
// Departures from the running system: the honest guests are connected by hand (rings mapped and the event channel
// bound as netback's connect would), not through xenstore; grant-return notices are delivered in the guest's next
// step instead of over a MessagePort.

import { Dom0Backend, type BackendConfig } from '../backend/loop.js';
import { NetbackXenbus } from '../backend/netback-xenbus.js';
import { VirtualClock } from '../shared/clock.js';
import { guestMac, macToString } from '../shared/ether.js';
import { EvtchnHost } from '../shared/evtchn.js';
import { GrantTable } from '../shared/gnttab.js';
import { guestIp, ipv4 } from '../shared/inet.js';
import { GuestMemory } from '../shared/memory.js';
import { err, ok, type Result } from '../shared/result.js';
import {
  XenbusStateInitWait,
  toolstackAddVif,
  toolstackCreateDomain,
  toolstackDestroyDomain,
  vifBackendPath,
  vifFrontendPath,
} from '../shared/xenbus.js';
import { XenstoreClient } from '../shared/xenstore-client.js';
import { XenStore } from '../shared/xenstore.js';
import { vifStatusOf, type AdversaryHost, type DeviceStatus, type HonestHealth, type HostAudit, type HostGuest, type VifStatus } from './adversary.js';
import { connectHonestGuest, exchangeHonest, honestGuestsHealth, type HonestGuest } from './honest-guest.js';

/** The remote host beyond the uplink. */
export const RIG_REMOTE = { mac: 0x02_00_00_00_00_01, ip: ipv4(192, 0, 2, 1), port: 5001 };
/** First domid given to an adversary (the honest guests are 1..n). */
export const ADVERSARY_FIRST_DOMID = 16;
/** Virtual time one busy round takes, ms. */
const BUSY_STEP_MS = 0.02;
/** Idle rounds before the clock jumps to the next deadline. */
const IDLE_ROUNDS = 2;

/** The backend configuration of the rig (Linux's timeouts, the rusty design, zero-copy netback). */
export function rigConfig(over: Partial<BackendConfig> = {}): BackendConfig {
  return {
    domid: 0,
    seed: 7,
    mtu: 1500,
    loss: 0,
    tap: false,
    tapHoldMs: 20,
    pcapPath: null,
    design: 'rusty',
    grantCopy: false,
    endpoint: { mac: 0x02_00_00_00_00_fe, ip: ipv4(10, 0, 255, 254), port: 5001 },
    remote: RIG_REMOTE,
    remoteRttMs: 1,
    nicCompletionDelayMs: 0.05,
    rxDrainTimeoutMs: 10_000,
    uplinkVerify: true,
    ...over,
  };
}

// An adversary domain as the rig keeps it: what the host handed out, and the backend's device for it.
interface AdversaryDomain {
  readonly guest: HostGuest;
  device: NetbackXenbus | null;
  dead: boolean;
}

/** Options of an AdversaryRig. */
export interface AdversaryRigOptions {
  /** Honest guests on the bridge (domids 1..n). Default 2. */
  readonly honestGuests?: number;
  /** Adversary domains the event-channel host has room for. Default 64. */
  readonly maxAdversaries?: number;
  readonly config?: Partial<BackendConfig>;
}

/** Backend, honest guests and adversaries in one thread on virtual time: an AdversaryHost. */
export class AdversaryRig implements AdversaryHost {
  readonly clock = new VirtualClock();
  readonly dom0: Dom0Backend;
  readonly store = new XenStore();
  readonly evtchn: EvtchnHost;
  readonly honest: HonestGuest[] = [];
  readonly remote = RIG_REMOTE;
  readonly backendDomid: number;
  readonly rxDrainTimeoutMs: number;
  /** Rounds run so far. */
  rounds = 0;
  private readonly xs0: XenstoreClient;
  private readonly adversaries = new Map<number, AdversaryDomain>();
  private nextDomid = ADVERSARY_FIRST_DOMID;
  private readonly maxDomid: number;
  private backendError: string | null = null;

  private constructor(opts: AdversaryRigOptions) {
    const config = rigConfig(opts.config);
    this.dom0 = new Dom0Backend(config, this.clock);
    this.backendDomid = config.domid;
    this.rxDrainTimeoutMs = config.rxDrainTimeoutMs;
    this.maxDomid = ADVERSARY_FIRST_DOMID + (opts.maxAdversaries ?? 64);
    this.evtchn = EvtchnHost.create({ maxDomains: this.maxDomid, nrPorts: 64 });
    const ev0 = this.evtchn.domain(config.domid);
    this.dom0.dispatchEvents = () => ev0.dispatch();
    const conn = this.store.connect(config.domid);
    if (!conn.ok) throw new Error(`rig: xenstore: ${conn.error}`);
    this.xs0 = XenstoreClient.local(conn.value);
  }

  /** Builds the rig: the backend, the honest guests connected, and the bridge taught everyone's MAC. */
  static async create(opts: AdversaryRigOptions = {}): Promise<AdversaryRig> {
    const rig = new AdversaryRig(opts);
    const n = opts.honestGuests ?? 2;
    if (n < 1 || n >= ADVERSARY_FIRST_DOMID) throw new RangeError(`honestGuests must be in [1, ${ADVERSARY_FIRST_DOMID - 1}] but got ${n}`);
    const dom0 = rig.dom0;
    for (let domid = 1; domid <= n; domid++) rig.honest.push(connectHonestGuest(dom0, rig.evtchn, domid, (d, table, memory) => dom0.mapper.addDomain(d, table, memory)));
    // Each honest guest speaks once, so the bridge forwards to it instead of flooding.
    const r = await rig.exchange(1);
    if (!r.ok) throw new Error(`rig: warm-up failed: ${r.error}`);
    return rig;
  }

  // ---- AdversaryHost ----

  async createGuest(): Promise<HostGuest> {
    const domid = this.nextDomid++;
    if (domid >= this.maxDomid) throw new Error(`rig: no room for another adversary (maxAdversaries ${this.maxDomid - ADVERSARY_FIRST_DOMID})`);
    const dom0 = this.dom0;
    const be = dom0.config.domid;
    must(await toolstackCreateDomain(this.store, this.xs0, domid));
    const mac = guestMac(domid);
    must(await toolstackAddVif(this.xs0, { frontendDomid: domid, backendDomid: be, devid: 0, mac: macToString(mac) }));
    const memory = GuestMemory.create(512);
    const gnttab = new GrantTable({ domid, nrEntries: 1024, clock: this.clock });
    dom0.mapper.addDomain(domid, gnttab.entries.sab, memory.sab);
    const conn = this.store.connect(domid);
    if (!conn.ok) throw new Error(`rig: xenstore: ${conn.error}`);
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
    const adv: AdversaryDomain = { guest, device: null, dead: false };
    this.adversaries.set(domid, adv);
    const dev = await NetbackXenbus.probe({
      client: this.xs0,
      nodename: vifBackendPath(be, domid, 0),
      mapper: dom0.mapper,
      evtchn: this.evtchn.domain(be),
      clock: this.clock,
      grantReturnPort: { postMessage: (m) => void guest.notices.push(m) },
      createVif: (fe, handle) => dom0.createVif(fe, handle),
      destroyVif: (vif) => dom0.destroyVif(vif),
      log: (level, m) => {
        if (level === 'err') dom0.note(m);
      },
    });
    if (!dev.ok) throw new Error(`rig: probe of d${domid} failed: ${dev.error}`);
    adv.device = dev.value;
    // The backend answers the frontend's Initialising with InitWait.
    await this.run(100, () => dev.value.state === XenbusStateInitWait);
    return guest;
  }

  async destroyGuest(domid: number): Promise<void> {
    const adv = this.adversaries.get(domid);
    if (adv === undefined || adv.dead) return;
    adv.dead = true;
    adv.guest.xs.close();
    must(await toolstackDestroyDomain(this.store, this.xs0, domid));
    this.dom0.mapper.removeDomain(domid);
    await this.step();
  }

  async run(ms: number, until?: () => boolean, each?: () => void): Promise<boolean> {
    const end = this.clock.now() + ms;
    let idle = 0;
    for (;;) {
      if (until?.() === true) return true;
      if (this.clock.now() >= end) return until === undefined;
      each?.();
      const did = await this.round();
      if (did > 0) {
        idle = 0;
        this.clock.advance(Math.min(BUSY_STEP_MS, end - this.clock.now()));
      } else if (++idle < IDLE_ROUNDS) {
        this.clock.advance(Math.min(BUSY_STEP_MS, end - this.clock.now()));
      } else {
        idle = 0;
        const next = Math.min(this.dom0.nextDeadline(), this.clock.nextDeadline(), end);
        this.clock.advance(Math.max(BUSY_STEP_MS, next - this.clock.now()));
      }
    }
  }

  async step(): Promise<void> {
    await this.round();
  }

  interleave(domid: number, fn: () => void): void {
    const list = this.dom0.txHooks.get(domid);
    if (list === undefined) this.dom0.txHooks.set(domid, [fn]);
    else list.push(fn);
  }

  vifStatus(domid: number): VifStatus | null {
    return vifStatusOf(this.dom0.vifs.find((x) => x.domid === domid)?.vif);
  }

  deviceStatus(domid: number): DeviceStatus | null {
    const d = this.adversaries.get(domid)?.device;
    if (d === null || d === undefined) return null;
    return { state: d.state, lastError: d.lastError, connects: d.connects, removed: d.removed };
  }

  honestSendTo(mac: number, ip: number, frames: number, len: number): void {
    this.honest[0]!.source.add(mac, ip, frames, len);
  }

  honestHealth(): HonestHealth {
    return honestGuestsHealth(this.honest);
  }

  exchange(frames: number, each?: () => void): Promise<Result<void>> {
    return exchangeHonest(this.dom0, this.honest, { remote: RIG_REMOTE, run: (ms, until, e) => this.run(ms, until, e) }, frames, each);
  }

  uplink(): { readonly udpVerified: number; readonly udpCorrupt: number; readonly other: number } {
    const s = this.dom0.uplink.stats;
    return { udpVerified: s.udpVerified, udpCorrupt: s.udpCorrupt, other: s.other };
  }

  stallUplink(ms: number): void {
    this.dom0.fault({ kind: 'nic-stall', ms });
  }

  audit(): HostAudit {
    const o = this.dom0.oracle.report;
    return {
      earlyReturns: o.earlyReturns,
      doubleReturns: o.doubleReturns,
      leaks: o.leaks,
      violations: o.violations.map((v) => v.message),
      backendError: this.backendError,
    };
  }

  /**
   * Runs until nothing holds an skb and every honest grant is back, then runs the oracle's leak check (every mapped
   * grant unreachable and not returned is a leak). Returns the leaks found, or an error if it never got quiet.
   */
  async quiesce(ms = 20_000): Promise<Result<number>> {
    const quiet = await this.run(ms, () => this.dom0.quiescent() && this.honest.every((g) => g.nf.grantsOutstanding === 0 && g.returns.length === 0));
    if (!quiet) return err(`not quiescent after ${ms} ms: ${this.dom0.liveSkbs()} skbs live`);
    return ok(this.dom0.oracle.checkQuiescent());
  }

  /** The adversaries' domids, in creation order. */
  get adversaryDomids(): number[] {
    return [...this.adversaries.keys()];
  }

  // One round: the honest guests, then the backend (its exceptions recorded as crashes), then xenstore's microtasks.
  private async round(): Promise<number> {
    const now = this.clock.now();
    let did = 0;
    for (const g of this.honest) did += g.step(now);
    try {
      did += this.dom0.round(now);
    } catch (e) {
      this.backendError ??= e instanceof Error ? (e.stack ?? e.message) : String(e);
    }
    this.rounds++;
    await new Promise<void>((resolve) => setImmediate(resolve));
    return did;
  }
}

function must<T>(r: { ok: true; value: T } | { ok: false; error: string }): T {
  if (!r.ok) throw new Error(`rig: ${r.error}`);
  return r.value;
}
