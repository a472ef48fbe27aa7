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
import type { GrantEvents } from '../backend/netback.js';
import type { Page } from '../backend/page.js';
import { Xenvif } from '../backend/xenvif.js';
import { VirtualClock } from '../shared/clock.js';
import { macToString } from '../shared/ether.js';
import { EvtchnHost } from '../shared/evtchn.js';
import { GNTMAP_host_map, GNTST_okay, GrantTable } from '../shared/gnttab.js';
import type { GrantReturnMessage } from '../shared/grant-return.js';
import { ipv4 } from '../shared/inet.js';
import { GuestMemory } from '../shared/memory.js';
import { XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_RX_SLOT_SIZE, XEN_NETIF_TX_SLOT_SIZE } from '../shared/netif.js';
import { err, ok, type Result } from '../shared/result.js';
import { attachBackRing, type BackRing } from '../shared/ring.js';
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
import { honestExchange, honestHealthOf, vifStatusOf, type AdversaryHost, type DeviceStatus, type HonestHealth, type HostAudit, type HostGuest, type VifStatus } from './adversary.js';
import { NetfrontDriver, type GuestSource } from './loop.js';
import { Netfront, type TxPacket } from './netfront.js';
import { TxFrame, type Flow } from './traffic.js';

/** The remote host beyond the uplink. */
export const RIG_REMOTE = { mac: 0x02_00_00_00_00_01, ip: ipv4(192, 0, 2, 1), port: 5001 };
/** First domid given to an adversary (the honest guests are 1..n). */
export const ADVERSARY_FIRST_DOMID = 16;
/** Virtual time one busy round takes, ms. */
const BUSY_STEP_MS = 0.02;
/** Idle rounds before the clock jumps to the next deadline. */
const IDLE_ROUNDS = 2;

/** A guest's MAC: the Xen OUI and the domid. */
export function guestMac(domid: number): number {
  return 0x00_16_3e_00_00_00 + domid;
}

/** A guest's IPv4 address. */
export function guestIp(domid: number): number {
  return ipv4(10, 0, domid >>> 8, domid & 0xff);
}

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

/** An honest guest's traffic: UDP frames queued by the rig, sent by netfront as fast as the ring allows. */
class HonestSource implements GuestSource {
  readonly maxFrameLen = 1514;
  private readonly queue: { flow: Flow; len: number }[] = [];
  private readonly frame = new TxFrame();
  private pos = 0;

  constructor(private readonly domid: number) {}

  /** Queues `frames` frames of `len` bytes (>= 50) to (mac, ip). */
  add(mac: number, ip: number, frames: number, len: number): void {
    const flow: Flow = { srcMac: guestMac(this.domid), dstMac: mac, saddr: guestIp(this.domid), daddr: ip, sport: 40000 + this.domid, dport: 9 };
    for (let i = 0; i < frames; i++) this.queue.push({ flow, len });
  }

  get pending(): number {
    return this.queue.length;
  }

  next(): TxPacket | null {
    const q = this.queue.shift();
    if (q === undefined) return null;
    const p = this.frame.setUdp(q.flow, this.domid, this.pos, q.len - 42, false);
    this.pos += q.len;
    return p;
  }
}

/** An honest guest: the real netfront, hand-connected to its vif. */
export class HonestGuest {
  /** Grant-return notices not yet handed to netfront. */
  readonly returns: GrantReturnMessage[] = [];

  constructor(
    readonly domid: number,
    readonly nf: Netfront,
    readonly driver: NetfrontDriver,
    readonly source: HonestSource,
    readonly vif: Xenvif,
  ) {}

  /** Takes the grant returns, then one netfront round (events, TX responses, RX, transmit). */
  step(now: number): number {
    let did = 0;
    for (const m of this.returns) did += this.nf.handleGrantReturns(m.grefs);
    this.returns.length = 0;
    return did + this.driver.round(now, true);
  }
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
  private readonly hooks = new Map<number, (() => void)[]>();
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
    for (let domid = 1; domid <= n; domid++) rig.honest.push(rig.connectHonest(domid));
    // Each honest guest speaks once, so the bridge forwards to it instead of flooding.
    const r = await rig.exchange(1);
    if (!r.ok) throw new Error(`rig: warm-up failed: ${r.error}`);
    return rig;
  }

  // ---- honest guests ----

  private mapRing(domid: number, ref: number, entryBytes: number): BackRing {
    const m = this.dom0.mapper.map({ dom: domid, ref, flags: GNTMAP_host_map });
    if (m.status !== GNTST_okay || m.bytes === null) throw new Error(`rig: cannot map ring gref ${ref} of d${domid}: status ${m.status}`);
    const r = attachBackRing(m.bytes.buffer as SharedArrayBuffer, m.bytes.byteOffset, entryBytes);
    if (!r.ok) throw new Error(`rig: ${r.error}`);
    return r.value;
  }

  // What netback's connect does for a well-behaved frontend: map both rings, bind the channel, connect the vif.
  private connectHonest(domid: number): HonestGuest {
    const dom0 = this.dom0;
    const memory = GuestMemory.create(1024);
    const gnttab = new GrantTable({ domid, nrEntries: 2048, clock: this.clock });
    const ev = this.evtchn.domain(domid);
    const source = new HonestSource(domid);
    const frames: number[] = [];
    for (let f = 0; f < memory.nrFrames; f++) frames.push(f);
    const nf = new Netfront({ domid, backendDomid: dom0.config.domid, memory, gnttab, evtchn: ev, frames, clock: this.clock });
    const rings = nf.setupRings();
    if (!rings.ok) throw new Error(`rig: ${rings.error}`);
    dom0.mapper.addDomain(domid, gnttab.entries.sab, memory.sab);
    const txRing = this.mapRing(domid, rings.value.txRingRef, XEN_NETIF_TX_SLOT_SIZE);
    const rxRing = this.mapRing(domid, rings.value.rxRingRef, XEN_NETIF_RX_SLOT_SIZE);
    const ev0 = this.evtchn.domain(dom0.config.domid);
    const bound = ev0.bindInterdomain(domid, rings.value.eventChannel);
    if (!bound.ok) throw new Error(`rig: ${bound.error}`);
    const vif = this.makeVif(domid, 0);
    ev0.bind(bound.value, () => vif.interrupt());
    const port = ev0.port(bound.value);
    let guest: HonestGuest | null = null;
    vif.connect({
      txRing,
      rxRing,
      txPort: port,
      rxPort: port,
      features: { canSg: true, gsoMask: 1 << XEN_NETIF_GSO_TYPE_TCPV4, ipCsum: true, rxNotify: true },
      grantReturnPort: { postMessage: (m) => void guest!.returns.push(m) },
    });
    guest = new HonestGuest(domid, nf, new NetfrontDriver(nf, ev, source), source, vif);
    nf.connect({ sg: true, gsoTcpv4: true, rxCopy: true, multiQueueMaxQueues: 1, splitEventChannels: false });
    return guest;
  }

  // backend_create_xenvif as the backend worker does it (backend/loop.ts BackendRuntime), with the interleave seam.
  private makeVif(domid: number, handle: number): Xenvif {
    const dom0 = this.dom0;
    const base = dom0.events;
    const hooks = this.hooks;
    const fire = (d: number): void => {
      const list = hooks.get(d);
      if (list === undefined || list.length === 0) return;
      hooks.delete(d);
      for (const fn of list) fn();
    };
    const events: GrantEvents = {
      mapped(page: Page): void {
        base.mapped(page);
        fire(domid);
      },
      returned(pages: readonly Page[], n: number): void {
        base.returned(pages, n);
      },
      copied(d: number, gref: number, len: number): void {
        base.copied(d, gref, len);
        fire(domid);
      },
    };
    const vif = new Xenvif({
      domid,
      handle,
      ctx: dom0.ctx,
      mapper: dom0.mapper,
      clock: this.clock,
      events,
      mtu: dom0.config.mtu,
      rxDrainTimeoutMs: dom0.config.rxDrainTimeoutMs,
      log: (level, m) => {
        if (level === 'err') dom0.notes.push(m);
      },
    });
    vif.attach(dom0.stack);
    dom0.vifs.push({ domid, vif, close: async () => {} });
    return vif;
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
      createVif: (fe, handle) => this.makeVif(fe, handle),
      destroyVif: (vif) => {
        vif.detach();
        const i = dom0.vifs.findIndex((v) => v.vif === vif);
        if (i >= 0) dom0.vifs.splice(i, 1);
      },
      log: (level, m) => {
        if (level === 'err') dom0.notes.push(m);
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
    const list = this.hooks.get(domid);
    if (list === undefined) this.hooks.set(domid, [fn]);
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
    return honestHealthOf(this.honest, (g) => g.vif.disabled);
  }

  exchange(frames: number, each?: () => void): Promise<Result<void>> {
    return honestExchange(
      {
        guests: this.honest,
        remote: RIG_REMOTE,
        macOf: (g) => guestMac(g.domid),
        ipOf: (g) => guestIp(g.domid),
        nameOf: (g) => `d${g.domid}`,
        uplinkVerified: () => this.dom0.uplink.stats.udpVerified,
        health: () => this.honestHealth(),
        run: (ms, until, e) => this.run(ms, until, e),
      },
      frames,
      each,
    );
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
