// The adversary catalogue (frontend/adversary.ts) against the running backend of a thread-mode stress run. This
// host lives in the backend worker's thread (tools/stress/backend-worker.ts), next to the live Dom0Backend that went
// through the run's faults: adversary domains are real domains (the toolstack introduces them to the xenstore and
// adds their vif; the backend's own xenbus watch probes it, as for any guest), playing raw rings, grants and event
// channels from this thread; two honest guests run the real netfront here too, hand-connected to vifs on the same
// bridge, and are stepped in every softirq round. Time is the backend's real clock.
//
// Departures from the one-thread rig (frontend/adversary-rig.ts): time is real, so run() waits for rounds instead of
// making them; grant-return notices of the honest guests are handed over in their next step (no MessagePort).
import * as Comlink from 'comlink';
import type { BackendRuntime, Dom0Backend } from '../../backend/loop.js';
import type { Clock } from '../../shared/clock.js';
import { guestMac } from '../../shared/ether.js';
import type { EvtchnHost } from '../../shared/evtchn.js';
import { GrantTable } from '../../shared/gnttab.js';
import type { GrantReturnMessage } from '../../shared/grant-return.js';
import { guestIp } from '../../shared/inet.js';
import { GuestMemory } from '../../shared/memory.js';
import type { Result } from '../../shared/result.js';
import { vifFrontendPath } from '../../shared/xenbus.js';
import { XenstoreClient } from '../../shared/xenstore-client.js';
import type { BackendHostApi } from '../toolstack.js';
import { ADVERSARY_CASES, runAdversaryCase, vifStatusOf, type AdversaryHost, type AdversaryResult, type DeviceStatus, type HonestHealth, type HostAudit, type HostGuest, type VifStatus } from '../../frontend/adversary.js';
import { connectHonestGuest, exchangeHonest, honestGuestsHealth, type AddHonestDomain, type HonestGuest } from '../../frontend/honest-guest.js';

/** Honest guests the host runs next to the adversaries. */
export const THREAD_HONEST_GUESTS = 2;
/** How long an exchange of the honest guests may take, ms. */
export const EXCHANGE_MS = 5000;
/** How long past its deadline a wait ends on its own when no round comes (the loop died), ms. */
const DEAD_LOOP_GRACE_MS = 100;
/** How long step() lets xenstore messages cross between threads before its round, ms. */
export const STEP_SETTLE_MS = 30;
/**
 * Cases whose step() follows a xenstore change it must see the backend's answer to (a state write, a domain's
 * death): on virtual time the rig's xenstore answers at once; here the messages cross threads, so such a step
 * first waits STEP_SETTLE_MS.
 */
export const SETTLE_CASES: ReadonlySet<string> = new Set(['state-flap-in-flight', 'die-with-grants-mapped']);

interface Adversary {
  readonly guest: HostGuest;
  readonly xs: XenstoreClient;
  dead: boolean;
}

/** The catalogue's AdversaryHost over a live backend runtime (one per backend worker). */
export class ThreadAdversaryHost implements AdversaryHost {
  readonly backendDomid: number;
  readonly clock: Clock;
  readonly remote: { readonly mac: number; readonly ip: number };
  readonly rxDrainTimeoutMs: number;
  readonly honest: HonestGuest[] = [];
  private readonly dom0: Dom0Backend;
  private readonly adversaries = new Map<number, Adversary>();
  private readonly roundWaiters: (() => void)[] = [];
  private each: (() => void) | null = null;
  private honestError: string | null = null;
  private settleSteps = false;

  constructor(
    readonly runtime: BackendRuntime,
    private readonly evtchn: EvtchnHost,
    private readonly host: Comlink.Remote<BackendHostApi>,
  ) {
    this.dom0 = runtime.dom0;
    this.backendDomid = this.dom0.config.domid;
    this.clock = this.dom0.clock;
    this.remote = this.dom0.config.remote;
    this.rxDrainTimeoutMs = this.dom0.config.rxDrainTimeoutMs;
    // Before the backend's own work each round: the case's `each`, the honest guests, then the round waiters.
    this.dom0.roundHooks.push((now) => {
      this.each?.();
      let did = 0;
      for (const g of this.honest) {
        try {
          did += g.step(now);
        } catch (e) {
          this.honestError ??= e instanceof Error ? (e.stack ?? e.message) : String(e);
        }
      }
      const w = this.roundWaiters.splice(0);
      for (const fn of w) fn();
      return did;
    });
  }

  /** Builds the honest guests (once) and teaches the bridge their MACs. */
  async start(): Promise<void> {
    if (this.honest.length > 0) return;
    const dom0 = this.dom0;
    const addDomain: AddHonestDomain = (domid, table, memory, post) => dom0.addDomain(domid, table, memory, { postMessage: post, close: () => {} });
    for (let i = 0; i < THREAD_HONEST_GUESTS; i++) this.honest.push(connectHonestGuest(dom0, this.evtchn, await this.host.allocDomid(), addDomain));
    const r = await this.exchange(1);
    if (!r.ok) throw new Error(`adversary host: warm-up failed: ${r.error}`);
  }

  /** Plays case `index` of the catalogue; never throws. */
  async play(index: number): Promise<AdversaryResult> {
    const c = ADVERSARY_CASES[index];
    if (c === undefined) return { name: `case ${index}`, handled: false, detail: `no case ${index}`, backendCrashed: false, premise: null };
    try {
      await this.start();
    } catch (e) {
      return { name: c.name, handled: false, detail: e instanceof Error ? e.message : String(e), backendCrashed: false, premise: null };
    }
    this.settleSteps = SETTLE_CASES.has(c.name);
    try {
      return await runAdversaryCase(c, this);
    } finally {
      this.settleSteps = false;
    }
  }

  /** Takes the honest guests off the bridge (their grants back first): before the backend finishes. */
  async shutdown(): Promise<void> {
    for (const g of this.honest) {
      await this.run(EXCHANGE_MS, () => g.nf.grantsOutstanding === 0);
      g.vif.beginDisconnect();
      await Promise.race([g.vif.whenDrained(), this.sleepMs(EXCHANGE_MS)]);
      g.disconnect(this.dom0, this.evtchn);
      this.dom0.removeDomain(g.domid);
    }
    this.honest.length = 0;
  }

  private sleepMs(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // ---- AdversaryHost ----

  async createGuest(): Promise<HostGuest> {
    const made = await this.host.createDomain();
    const domid = made.domid;
    const memory = GuestMemory.create(512);
    const gnttab = new GrantTable({ domid, nrEntries: 1024, clock: this.clock });
    const notices: GrantReturnMessage[] = [];
    this.dom0.addDomain(domid, gnttab.entries.sab, memory.sab, { postMessage: (m) => void notices.push(m), close: () => {} });
    const xs = XenstoreClient.remote(made.xenstore);
    const guest: HostGuest = {
      domid,
      mac: guestMac(domid),
      ip: guestIp(domid),
      memory,
      gnttab,
      evtchn: this.evtchn.domain(domid),
      xs,
      frontendPath: vifFrontendPath(domid, 0),
      notices,
    };
    this.adversaries.set(domid, { guest, xs, dead: false });
    // What it corrupts in its own pages is its business: the uplink counts it apart from the audit's figure.
    this.dom0.uplink.hostileSources.add(guest.ip);
    // The backend's xenbus watch probes the new vif and answers the frontend's Initialising with InitWait.
    await this.run(5000, () => this.deviceStatus(domid)?.state === 2);
    return guest;
  }

  async destroyGuest(domid: number): Promise<void> {
    const adv = this.adversaries.get(domid);
    if (adv === undefined || adv.dead) return;
    adv.dead = true;
    adv.xs.close();
    adv.guest.gnttab.dispose();
    await this.host.destroyDomain(domid);
    this.dom0.removeDomain(domid);
    await this.step();
  }

  run(ms: number, until?: () => boolean, each?: () => void): Promise<boolean> {
    const end = this.clock.now() + ms;
    if (until?.() === true) return Promise.resolve(true);
    this.each = each ?? null;
    return new Promise<boolean>((resolve) => {
      let done = false;
      const finish = (v: boolean): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.each = null;
        resolve(v);
      };
      const check = (): void => {
        if (done) return;
        if (until?.() === true) finish(true);
        else if (this.clock.now() >= end) finish(until === undefined);
        else this.roundWaiters.push(check);
      };
      // A loop that died runs no more rounds: the deadline still ends the wait.
      const timer = setTimeout(() => finish(until === undefined ? true : until()), ms + DEAD_LOOP_GRACE_MS);
      this.roundWaiters.push(check);
    });
  }

  // One round; in a SETTLE_CASES case, after the xenstore's messages had time to cross between threads.
  async step(): Promise<void> {
    if (this.settleSteps) await this.sleepMs(STEP_SETTLE_MS);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, DEAD_LOOP_GRACE_MS);
      this.roundWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
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
    const d = this.runtime.devices.get(`${domid}/0`);
    if (d === undefined) return null;
    return { state: d.state, lastError: d.lastError, connects: d.connects, removed: d.removed };
  }

  honestSendTo(dstMac: number, dstIp: number, frames: number, len: number): void {
    this.honest[0]!.source.add(dstMac, dstIp, frames, len);
  }

  honestHealth(): HonestHealth {
    return honestGuestsHealth(this.honest);
  }

  exchange(frames: number, each?: () => void): Promise<Result<void>> {
    const hostError = (): string | null => (this.honestError === null ? null : `an honest guest threw: ${this.honestError}`);
    return exchangeHonest(this.dom0, this.honest, { remote: this.remote, run: (ms, until, e) => this.run(ms, until, e), hostError }, frames, each);
  }

  uplink(): { readonly udpVerified: number; readonly udpCorrupt: number; readonly other: number } {
    const s = this.dom0.uplink.stats;
    return { udpVerified: s.udpVerified, udpCorrupt: s.udpCorrupt + s.udpCorruptHostile, other: s.other };
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
      backendError: this.runtime.failure,
    };
  }
}
