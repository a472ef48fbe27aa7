// The backend domain of the simulator as an actor: the real dom0 composition (backend/loop.ts Dom0Backend: stack,
// netback's vifs, the grant mapper, the oracle) and netback's xenbus driver probing every vif directory that appears
// under backend/vif, exactly as the backend worker's runtime does (backend/loop.ts BackendRuntime, whose probing is
// private and whose loop runs on real time). A step is one softirq round. Killing it drops its state on the floor: no
// more rounds, its timers never fire, its xenstore connection is closed; what it had mapped stays mapped until the
// hypervisor releases the dead domain's mappings (world.ts).

import { Dom0Backend, REMOTE_ANNOUNCE_MS, type BackendConfig } from '../../backend/loop.js';
import { NetbackXenbus } from '../../backend/netback-xenbus.js';
import type { EvtchnDomain } from '../../shared/evtchn.js';
import type { GrantReturnMessage } from '../../shared/grant-return.js';
import { XenstoreClient } from '../../shared/xenstore-client.js';
import type { XsClient, XsWatchHandle } from '../../shared/xenstore-protocol.js';
import type { XsConnection } from '../../shared/xenstore.js';
import type { LogValue } from './eventlog.js';
import type { DomainClock, SimActor } from './scheduler.js';
import { StateLoggingClient } from './xenbus-log.js';

/** Longest a backend with work it cannot do yet goes without looking again, ms (SoftirqLoop's maxSleepMs). */
export const BACKEND_MAX_SLEEP_MS = 10;

/** What the world gives a backend incarnation. */
export interface SimBackendOptions {
  /** 1 for the first backend, 2 after the first restart... */
  readonly incarnation: number;
  readonly config: BackendConfig;
  readonly clock: DomainClock;
  /** dom0's event channels. */
  readonly evtchn: EvtchnDomain;
  /** The backend's own xenstore connection (closed when it dies). */
  readonly conn: XsConnection;
  /** A grant-return notice for the frontend `domid` (its MessagePort). */
  readonly notice: (domid: number, m: GrantReturnMessage) => void;
  readonly log: (who: string, what: string, fields?: readonly (readonly [string, LogValue])[]) => void;
  /** netback's asynchronous code (probe, xenbus reactions) threw: the backend crashed. */
  readonly crash: (e: unknown) => void;
}

/** One incarnation of the backend domain. */
export class SimBackend implements SimActor {
  readonly name: string;
  readonly incarnation: number;
  readonly dom0: Dom0Backend;
  readonly clock: DomainClock;
  readonly conn: XsConnection;
  readonly xs: XsClient;
  /** netback's devices, by `<frontend domid>/<devid>`. */
  readonly devices = new Map<string, NetbackXenbus>();
  /** Set by kill(). */
  dead = false;
  private readonly probing = new Set<string>();
  private watch: XsWatchHandle | null = null;
  private readonly vifRoot: string;
  private announceAt = 0;

  constructor(private readonly opts: SimBackendOptions) {
    this.incarnation = opts.incarnation;
    this.name = `backend#${opts.incarnation}`;
    this.clock = opts.clock;
    this.conn = opts.conn;
    this.xs = new StateLoggingClient(XenstoreClient.local(opts.conn), (vif, state) => opts.log(this.name, 'xenbus', [['vif', vif], ['state', state]]));
    const dom0 = new Dom0Backend(opts.config, opts.clock);
    this.dom0 = dom0;
    dom0.dispatchEvents = () => opts.evtchn.dispatch();
    this.vifRoot = `/local/domain/${opts.config.domid}/backend/vif`;
  }

  /** Starts following backend/vif (devices already there are probed by the watch's first event). */
  async start(): Promise<void> {
    const w = await this.xs.watch(this.vifRoot, () => void this.scan().catch(this.opts.crash));
    if (!w.ok) throw new Error(`${this.name}: cannot watch ${this.vifRoot}: ${w.error}`);
    this.watch = w.value;
  }

  // Probes every <fe>/<devid> directory not probed yet (backend/loop.ts BackendRuntime.scan).
  private async scan(): Promise<void> {
    const fes = await this.xs.directory(this.vifRoot);
    if (!fes.ok) return;
    for (const fe of fes.value) {
      const devs = await this.xs.directory(`${this.vifRoot}/${fe}`);
      if (!devs.ok) continue;
      for (const devid of devs.value) void this.probe(Number(fe), devid).catch(this.opts.crash);
    }
  }

  private async probe(fe: number, devid: string): Promise<void> {
    const key = `${fe}/${devid}`;
    if (this.dead || this.devices.has(key) || this.probing.has(key) || !Number.isInteger(fe)) return;
    this.probing.add(key);
    const dom0 = this.dom0;
    const r = await NetbackXenbus.probe({
      client: this.xs,
      nodename: `${this.vifRoot}/${key}`,
      mapper: dom0.mapper,
      evtchn: this.opts.evtchn,
      clock: this.clock,
      grantReturnPort: { postMessage: (m) => this.opts.notice(fe, m) },
      createVif: (domid, handle) => dom0.createVif(domid, handle),
      destroyVif: (vif) => {
        dom0.destroyVif(vif);
        this.opts.log(this.name, 'vif-removed', [['vif', vif.name]]);
      },
      log: (level, m) => {
        if (level === 'err') dom0.note(m);
      },
    });
    this.probing.delete(key);
    if (r.ok) this.devices.set(key, r.value);
    else if (!this.dead) dom0.note(`probe of vif ${key} failed: ${r.error}`);
  }

  step(now: number): number {
    if (now >= this.announceAt) this.announceAt = now + REMOTE_ANNOUNCE_MS; // as Dom0Backend.round re-announces
    return this.dom0.round(now);
  }

  /**
   * The earliest timed work (stack, TCP, the peer, RX drain deadlines, the re-announce). A vif with work it could not
   * do yet (no pending slot, no RX request) is looked at again within BACKEND_MAX_SLEEP_MS, as the real loop's
   * bounded sleep would, rather than spun on.
   */
  nextDeadline(): number {
    const d = this.dom0;
    let t = Math.min(d.stack.nextDeadline(), d.endpoint.nextDeadline(), d.peer.nextDeadline(), this.announceAt);
    const now = this.clock.now();
    for (const v of d.vifs) {
      const vif = v.vif;
      if ((vif.tx?.deallocPending ?? 0) > 0) return now;
      const vt = vif.nextDeadline();
      if (vt < t) t = vt;
      if (vif.hasWork() && now + BACKEND_MAX_SLEEP_MS < t) t = now + BACKEND_MAX_SLEEP_MS;
    }
    return t;
  }

  /** The backend's thread dies: no more rounds, its timers dropped, its xenstore connection closed. */
  kill(): void {
    this.dead = true;
    this.clock.kill();
    this.conn.close();
  }

  /** Stops following backend/vif (orderly shutdown). */
  async unwatch(): Promise<void> {
    if (this.watch !== null) await this.xs.unwatch(this.watch);
    this.watch = null;
  }
}
