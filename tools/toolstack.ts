// The toolstack (libxl and xenstored in one, on the main thread): hosts the xenstore, builds domains (guest
// memory, the event-channel pages of every domain, xenstore homes and vif directories, the MessageChannel each
// guest's grant returns arrive on), starts the backend domain in its own worker and the guests as tasks of a
// piscina pool (several guests per thread: concurrentTasksPerWorker, atomics disabled so each thread keeps
// serving its event loop), and runs the show over comlink (connect, stats, drain, shutdown) and the guests'
// shared statistics blocks. The data plane never passes through here: only SharedArrayBuffer rings, grants and
// event channels between the workers.
//
// Shutdown is orderly: guests stop transmitting; the backend drains (NIC completions, tap window, RX queues,
// the TCP retransmit queue until ACKed or aborted) and flushes dealloc; guests take every grant back and end
// access; the oracle checks quiescence; then every worker exits. A guest whose grants do not come back within
// the deadline is reported, never waited on forever.
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { Piscina } from 'piscina';
import { VIF_REMOVE_TIMEOUT_MS, type BackendApi, type BackendConfig, type BackendFaults, type BackendInit, type BackendReport, type DrainReport } from '../backend/loop.js';
import {
  GUEST_CLOSE_TIMEOUT_MS,
  GUEST_CONNECTED,
  GUEST_DONE,
  GUEST_FAILED,
  GuestStatsBlock,
  LATENCY_BUCKETS,
  PHASE_CLOSE,
  PHASE_RUN,
  PHASE_STOP,
  STATS_COUNTERS,
  latencyQuantile,
  sCorruptPayloads,
  sDoubleReturns,
  sEarlyReturns,
  sGranted,
  sOutstanding,
  sReturned,
  sRxBytes,
  sRxPackets,
  sTxBytes,
  sTxErrors,
  sTxPackets,
  type GuestConfig,
  type GuestHostApi,
  type GuestReport,
  type GuestTask,
  type GuestTrafficKind,
} from '../frontend/loop.js';
import { EvtchnHost } from '../shared/evtchn.js';
import { macToString } from '../shared/ether.js';
import { ipv4 } from '../shared/inet.js';
import { GuestMemory } from '../shared/memory.js';
import { XenstoreClient, exposeXenstoreConnection, type XenstoreChannel } from '../shared/xenstore-client.js';
import { XenStore } from '../shared/xenstore.js';
import { toolstackAddVif, toolstackCreateDomain } from '../shared/xenbus.js';

// ---- Addressing plan --------------------------------------------------------------------------------------

/** The backend domain's id. */
export const BACKEND_DOMID = 0;
/** Xen's OUI for guest MACs, 00:16:3e (libxl__device_nic_setdefault). */
export const XEN_OUI = 0x00163e;
/** The local TCP endpoint on the bridge: a locally administered MAC, 10.0.255.254, port 5001. */
export const ENDPOINT = { mac: 0x02_00_00_00_00_fe, ip: ipv4(10, 0, 255, 254), port: 5001 } as const;
/** The remote host beyond the uplink (TEST-NET-1, RFC 5737): the TCP peer and the sink of guests' uplink UDP. */
export const REMOTE = { mac: 0x02_00_00_00_00_01, ip: ipv4(192, 0, 2, 1), port: 5001 } as const;

/** A guest's MAC: 00:16:3e plus its domid. */
export function guestMac(domid: number): number {
  return XEN_OUI * 2 ** 24 + domid;
}

/** A guest's IPv4 address: 10.0.hi.lo of its domid. */
export function guestIp(domid: number): number {
  return ipv4(10, 0, (domid >>> 8) & 0xff, domid & 0xff);
}

// ---- Options, progress and reports ------------------------------------------------------------------------

/** What the toolstack builds and runs. */
export interface ToolstackOptions {
  readonly guests: number;
  readonly seconds: number;
  readonly mtu: number;
  readonly loss: number;
  readonly tap: boolean;
  readonly pcapPath: string | null;
  readonly seed: number;
  /** Release design of the backend (default 'rusty'). */
  readonly design?: string;
  /** Netback grant-copies instead of mapping (default false). */
  readonly grantCopy?: boolean;
  /** Guest traffic (default 'mix'); 'fixed' sends UDP frames of fixedSize bytes to the remote host. */
  readonly traffic?: GuestTrafficKind;
  readonly fixedSize?: number;
  /** Guest threads (default: cores - 1, at least 1); guests share them. */
  readonly guestThreads?: number;
  /** Frames of each guest's memory (default 1024 = 4 MiB). */
  readonly guestFrames?: number;
  /** Grant-table entries of each guest (default 2048). */
  readonly grantEntries?: number;
  /** How long guests may take to connect, ms (default 20000). */
  readonly connectTimeoutMs?: number;
  /** How long the backend may drain before aborting what is left, ms (default 5000). */
  readonly drainTimeoutMs?: number;
  /** How long guests wait for their last grants, ms (default 5000). */
  readonly returnDeadlineMs?: number;
  /** How long guest tasks and the backend may take to finish after close, ms (default 10000). */
  readonly closeTimeoutMs?: number;
  /** Progress callback interval, ms (default 1000). */
  readonly progressIntervalMs?: number;
  /** Tap hold window, ms (default 20). */
  readonly tapHoldMs?: number;
  /** Uplink TX completion delay, ms (default 0.05). */
  readonly nicCompletionDelayMs?: number;
  /** Remote host round-trip time, ms (default 1). */
  readonly remoteRttMs?: number;
  /** Verify what leaves the uplink (TCP peer, UDP payloads); false discards it (the bench). Default true. */
  readonly uplinkVerify?: boolean;
  /** How often guests publish their counters, ms (default 50; the bench samples faster). */
  readonly publishEveryMs?: number;
  /** Fault injection in the backend (tests). */
  readonly faults?: BackendFaults;
  /** How long each step of a vif's teardown may wait for the other end, ms (default 2000 guest, 3000 backend). */
  readonly closeStepTimeoutMs?: number;
}

/** p50 and p99 in microseconds (NaN when there were no samples). */
export interface LatencyFigures {
  readonly p50: number;
  readonly p99: number;
}

/** One guest's progress over the last interval. */
export interface GuestProgress {
  readonly domid: number;
  readonly pps: number;
  readonly gbps: number;
  readonly outstanding: number;
  readonly returnLatencyUs: LatencyFigures;
}

/** The whole system's progress over the last interval. */
export interface SystemProgress {
  readonly elapsedSeconds: number;
  readonly pps: number;
  readonly gbps: number;
  readonly outstanding: number;
  readonly returnLatencyUs: LatencyFigures;
  readonly perGuest: readonly GuestProgress[];
}

/** The final audit. */
export interface SystemAudit {
  readonly granted: number;
  readonly returned: number;
  readonly outstanding: number;
  readonly leaked: number;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly corruptPayloads: number;
}

/** What a run produced. */
export interface SystemReport {
  readonly guests: number;
  /** Seconds between PHASE_RUN and PHASE_STOP. */
  readonly trafficSeconds: number;
  /** Frames the guests transmitted in that time, and their bytes. */
  readonly packets: number;
  readonly bytes: number;
  /** Grant-return latency over the whole run. */
  readonly returnLatencyUs: LatencyFigures;
  readonly audit: SystemAudit;
  readonly perGuest: readonly GuestReport[];
  readonly drain: DrainReport | null;
  readonly backend: BackendReport | null;
  /** Failures that are not audit figures (a guest that failed, a worker that crashed, a timeout). */
  readonly errors: readonly string[];
  readonly notes: readonly string[];
}

// ---- Domain building --------------------------------------------------------------------------------------

/** One guest as the toolstack built it: what the task gets, and the toolstack's ends. */
export interface GuestDomain {
  readonly domid: number;
  readonly config: GuestConfig;
  readonly memory: GuestMemory;
  readonly stats: GuestStatsBlock;
  readonly xenstore: XenstoreChannel;
  /** The backend's end of the grant-return channel (given to the backend with the guest's grant table). */
  readonly grantBackendPort: MessagePort;
  /** The guest's end. */
  readonly grantGuestPort: MessagePort;
  /** The toolstack's end of the guest's comlink channel (GuestHostApi is exposed on it). */
  readonly hostPort: MessagePort;
  /** The guest's end. */
  readonly hostGuestPort: MessagePort;
}

/** Defaults a guest config is built from. */
export interface GuestBuildOptions {
  readonly guests: number;
  readonly seed: number;
  readonly mtu: number;
  readonly traffic: GuestTrafficKind;
  readonly fixedSize: number;
  readonly guestFrames: number;
  readonly grantEntries: number;
  readonly returnDeadlineMs: number;
  readonly spin: number;
  readonly publishEveryMs: number;
  readonly closeTimeoutMs: number;
}

/** A guest's config: its addresses, everyone else's, and its share of the seed. */
export function guestConfig(domid: number, o: GuestBuildOptions): GuestConfig {
  const guests = [];
  for (let d = 1; d <= o.guests; d++) if (d !== domid) guests.push({ mac: guestMac(d), ip: guestIp(d) });
  return {
    domid,
    backendDomid: BACKEND_DOMID,
    devid: 0,
    seed: (o.seed + Math.imul(domid, 0x9e3779b1)) >>> 0,
    mtu: o.mtu,
    self: { mac: guestMac(domid), ip: guestIp(domid) },
    guests,
    remote: { mac: REMOTE.mac, ip: REMOTE.ip },
    endpoint: { mac: ENDPOINT.mac, ip: ENDPOINT.ip, port: ENDPOINT.port },
    traffic: o.traffic,
    fixedSize: o.fixedSize,
    grantEntries: o.grantEntries,
    returnDeadlineMs: o.returnDeadlineMs,
    spin: o.spin,
    publishEveryMs: o.publishEveryMs,
    closeTimeoutMs: o.closeTimeoutMs,
  };
}

/**
 * Builds a guest domain as libxl does: introduces it to the xenstore with its home, adds its vif (both
 * directories, Initialising, hotplug-status connected), allocates its memory and statistics block, opens its
 * xenstore connection and its two channels.
 */
export async function buildGuestDomain(store: XenStore, dom0: XenstoreClient, domid: number, o: GuestBuildOptions): Promise<GuestDomain> {
  const created = await toolstackCreateDomain(store, dom0, domid);
  if (!created.ok) throw new Error(`cannot create domain ${domid} in the xenstore: ${created.error}`);
  const config = guestConfig(domid, o);
  const vif = await toolstackAddVif(dom0, {
    frontendDomid: domid,
    backendDomid: BACKEND_DOMID,
    devid: config.devid,
    mac: macToString(config.self.mac),
  });
  if (!vif.ok) throw new Error(`cannot add the vif of domain ${domid}: ${vif.error}`);
  const xs = exposeXenstoreConnection(store, domid);
  if (!xs.ok) throw new Error(`cannot open the xenstore connection of domain ${domid}: ${xs.error}`);
  const grant = new MessageChannel();
  const host = new MessageChannel();
  return {
    domid,
    config,
    memory: GuestMemory.create(o.guestFrames),
    stats: GuestStatsBlock.create(),
    xenstore: xs.value,
    grantBackendPort: grant.port1,
    grantGuestPort: grant.port2,
    hostPort: host.port1,
    hostGuestPort: host.port2,
  };
}

// ---- Progress sampling ------------------------------------------------------------------------------------

/** A snapshot of one guest's block. */
export interface GuestSample {
  readonly counters: Float64Array;
  readonly histogram: Float64Array;
  readonly at: number;
}

/** Reads a consistent snapshot of a guest's block (the previous one if the guest kept overlapping). */
export function sampleGuest(block: GuestStatsBlock, at: number, prev: GuestSample | null): GuestSample {
  const counters = new Float64Array(STATS_COUNTERS);
  const histogram = new Float64Array(LATENCY_BUCKETS);
  if (!block.snapshot(counters, histogram) && prev !== null) return prev;
  return { counters, histogram, at };
}

/** One guest's progress between two samples. */
export function guestProgress(domid: number, prev: GuestSample, cur: GuestSample): GuestProgress {
  const dt = (cur.at - prev.at) / 1000;
  const dp = cur.counters[sTxPackets]! - prev.counters[sTxPackets]!;
  const db = cur.counters[sTxBytes]! - prev.counters[sTxBytes]!;
  const h = new Float64Array(LATENCY_BUCKETS);
  for (let i = 0; i < LATENCY_BUCKETS; i++) h[i] = cur.histogram[i]! - prev.histogram[i]!;
  return {
    domid,
    pps: dt > 0 ? dp / dt : 0,
    gbps: dt > 0 ? (db * 8) / dt / 1e9 : 0,
    outstanding: cur.counters[sOutstanding]!,
    returnLatencyUs: { p50: latencyQuantile(h, 0.5), p99: latencyQuantile(h, 0.99) },
  };
}

/** The system's progress between two sets of samples (same guests, same order). */
export function systemProgress(
  domids: readonly number[],
  prev: readonly GuestSample[],
  cur: readonly GuestSample[],
  elapsedSeconds: number,
): SystemProgress {
  const perGuest = domids.map((d, i) => guestProgress(d, prev[i]!, cur[i]!));
  const all = new Float64Array(LATENCY_BUCKETS);
  for (let i = 0; i < cur.length; i++) {
    for (let b = 0; b < LATENCY_BUCKETS; b++) all[b]! += cur[i]!.histogram[b]! - prev[i]!.histogram[b]!;
  }
  let pps = 0;
  let gbps = 0;
  let outstanding = 0;
  for (const g of perGuest) {
    pps += g.pps;
    gbps += g.gbps;
    outstanding += g.outstanding;
  }
  return { elapsedSeconds, pps, gbps, outstanding, returnLatencyUs: { p50: latencyQuantile(all, 0.5), p99: latencyQuantile(all, 0.99) }, perGuest };
}

/** A guest report made from its last sample, for a guest whose task did not report. */
export function reportFromSample(domid: number, s: GuestSample, error: string): GuestReport {
  const c = s.counters;
  return {
    domid,
    txPackets: c[sTxPackets]!,
    txBytes: c[sTxBytes]!,
    rxPackets: c[sRxPackets]!,
    rxBytes: c[sRxBytes]!,
    granted: c[sGranted]!,
    returned: c[sReturned]!,
    outstanding: c[sOutstanding]!,
    corruptPayloads: c[sCorruptPayloads]!,
    earlyReturns: c[sEarlyReturns]!,
    doubleReturns: c[sDoubleReturns]!,
    txErrors: c[sTxErrors]!,
    error,
    notes: [],
  };
}

/** The audit: guests' grant counts and poisoning checks plus the backend oracle's violations. */
export function auditOf(guests: readonly GuestReport[], backend: BackendReport | null): SystemAudit {
  let granted = 0;
  let returned = 0;
  let outstanding = 0;
  let early = 0;
  let double = 0;
  let corrupt = 0;
  for (const g of guests) {
    granted += g.granted;
    returned += g.returned;
    outstanding += g.outstanding;
    early += g.earlyReturns;
    double += g.doubleReturns;
    corrupt += g.corruptPayloads;
  }
  const o = backend?.oracle;
  return {
    granted,
    returned,
    outstanding,
    leaked: o?.leaks ?? 0,
    earlyReturns: early + (o?.earlyReturns ?? 0),
    doubleReturns: double + (o?.doubleReturns ?? 0),
    corruptPayloads: corrupt + (backend?.corruptPayloads ?? 0),
  };
}

// ---- The running system -----------------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Settles with the promise's value, or with `onTimeout()` after `ms`. */
async function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => T): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<T>((resolve) => {
    timer = setTimeout(() => resolve(onTimeout()), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The built system: the xenstore, the backend worker, the guest pool and the guests' domains. */
export class Toolstack {
  private readonly errors: string[] = [];
  private readonly notes: string[] = [];
  /** Why a guest's task was rejected (piscina or worker failure), by domid. */
  private readonly taskErrors = new Map<number, string>();
  private backendDead: string | null = null;
  private backendExit: Promise<void>;
  private tasks: Promise<GuestReport | null>[] = [];
  private closed = false;
  private trafficStart: GuestSample[] | null = null;
  private t0 = 0;
  private trafficSeconds = 0;
  private packets = 0;
  private bytes = 0;
  private drainReport: DrainReport | null = null;

  private constructor(
    readonly opts: ToolstackOptions,
    private readonly store: XenStore,
    private readonly dom0: XenstoreClient,
    private readonly evtchn: EvtchnHost,
    private readonly backendWorker: Worker,
    private readonly backendXs: XenstoreChannel,
    private readonly backendPort: MessagePort,
    private readonly backend: Comlink.Remote<BackendApi>,
    private readonly pool: Piscina<GuestTask, GuestReport>,
    readonly domains: readonly GuestDomain[],
  ) {
    this.backendExit = new Promise((resolve) => backendWorker.once('exit', () => resolve()));
    backendWorker.on('error', (e) => {
      this.backendDead ??= `backend worker crashed: ${message(e)}`;
    });
  }

  /** Builds everything and starts the guests' tasks (they connect, then wait for PHASE_RUN). */
  static async boot(opts: ToolstackOptions): Promise<Toolstack> {
    const store = new XenStore();
    const conn = store.connect(BACKEND_DOMID);
    if (!conn.ok) throw new Error(`cannot connect dom0 to the xenstore: ${conn.error}`);
    const dom0 = XenstoreClient.local(conn.value);
    const evtchn = EvtchnHost.create({ maxDomains: opts.guests + 1 });
    const threads = Math.max(1, Math.min(opts.guests, opts.guestThreads ?? availableParallelism() - 1));
    const build: GuestBuildOptions = {
      guests: opts.guests,
      seed: opts.seed,
      mtu: opts.mtu,
      traffic: opts.traffic ?? 'mix',
      fixedSize: opts.fixedSize ?? 1500,
      guestFrames: opts.guestFrames ?? 1024,
      grantEntries: opts.grantEntries ?? 2048,
      returnDeadlineMs: opts.returnDeadlineMs ?? 5000,
      // Guests sharing a thread must not spin for long before sleeping.
      spin: Math.ceil(opts.guests / threads) > 1 ? 100 : 2000,
      publishEveryMs: opts.publishEveryMs ?? 50,
      closeTimeoutMs: opts.closeStepTimeoutMs ?? GUEST_CLOSE_TIMEOUT_MS,
    };
    const domains: GuestDomain[] = [];
    for (let d = 1; d <= opts.guests; d++) domains.push(await buildGuestDomain(store, dom0, d, build));

    const backendXs = exposeXenstoreConnection(store, BACKEND_DOMID);
    if (!backendXs.ok) throw new Error(`cannot open dom0's xenstore connection: ${backendXs.error}`);
    const control = new MessageChannel();
    const config: BackendConfig = {
      domid: BACKEND_DOMID,
      seed: opts.seed,
      mtu: opts.mtu,
      loss: opts.loss,
      tap: opts.tap || opts.pcapPath !== null,
      tapHoldMs: opts.tapHoldMs ?? 20,
      pcapPath: opts.pcapPath,
      design: opts.design ?? 'rusty',
      grantCopy: opts.grantCopy ?? false,
      endpoint: ENDPOINT,
      remote: REMOTE,
      remoteRttMs: opts.remoteRttMs ?? 1,
      nicCompletionDelayMs: opts.nicCompletionDelayMs ?? 0.05,
      rxDrainTimeoutMs: 10_000,
      uplinkVerify: opts.uplinkVerify ?? true,
      ...(opts.faults !== undefined && { faults: opts.faults }),
      vifRemoveTimeoutMs: opts.closeStepTimeoutMs ?? VIF_REMOVE_TIMEOUT_MS,
    };
    const init: BackendInit = { config, evtchn: evtchn.buffer, xenstore: backendXs.value.ports, control: control.port2 };
    const worker = new Worker(new URL('../backend/worker.js', import.meta.url), {
      workerData: init,
      transferList: [...backendXs.value.transferList, control.port2],
    });
    const backend = Comlink.wrap<BackendApi>(nodeEndpoint(control.port1));
    const pool = new Piscina<GuestTask, GuestReport>({
      filename: fileURLToPath(new URL('../frontend/worker.js', import.meta.url)),
      minThreads: threads,
      maxThreads: threads,
      concurrentTasksPerWorker: Math.ceil(opts.guests / threads),
      atomics: 'disabled',
      idleTimeout: 1000,
    });
    const ts = new Toolstack(opts, store, dom0, evtchn, worker, backendXs.value, control.port1, backend, pool, domains);
    for (const dom of domains) ts.startGuest(dom);
    return ts;
  }

  private startGuest(dom: GuestDomain): void {
    const api: GuestHostApi = {
      registerGrantTable: async (table: SharedArrayBuffer): Promise<void> => {
        const port = dom.grantBackendPort;
        await this.guard(this.backend.addDomain(dom.domid, table, dom.memory.sab, Comlink.transfer(port, [port])));
      },
    };
    Comlink.expose(api, nodeEndpoint(dom.hostPort));
    const task: GuestTask = {
      config: dom.config,
      memory: dom.memory.sab,
      evtchn: this.evtchn.buffer,
      stats: dom.stats.sab,
      xenstore: dom.xenstore.ports,
      grantPort: dom.grantGuestPort,
      host: dom.hostGuestPort,
    };
    const run = this.pool.run(task, { transferList: [...dom.xenstore.transferList, dom.grantGuestPort, dom.hostGuestPort] });
    this.tasks.push(
      run.then(
        (r) => r,
        (e: unknown) => {
          if (dom.stats.state !== GUEST_FAILED) dom.stats.setState(GUEST_FAILED);
          this.taskErrors.set(dom.domid, message(e));
          return null;
        },
      ),
    );
  }

  /** Resolves once every guest is Connected; throws on a failed guest, a dead backend or the timeout. */
  async waitConnected(timeoutMs: number): Promise<void> {
    const end = performance.now() + timeoutMs;
    for (;;) {
      if (this.backendDead !== null) throw new Error(this.backendDead);
      let connected = 0;
      for (const d of this.domains) {
        const s = d.stats.state;
        if (s === GUEST_FAILED || s === GUEST_DONE) throw new Error(`guest d${d.domid} stopped before connecting${this.errorSuffix()}`);
        if (s === GUEST_CONNECTED) connected++;
      }
      if (connected === this.domains.length) return;
      if (performance.now() > end) {
        const late = this.domains.filter((d) => d.stats.state !== GUEST_CONNECTED).map((d) => `d${d.domid}`);
        throw new Error(`guests did not connect within ${timeoutMs} ms: ${late.join(', ')}${this.errorSuffix()}`);
      }
      await sleep(5);
    }
  }

  private errorSuffix(): string {
    return this.errors.length === 0 ? '' : ` (${this.errors.join('; ')})`;
  }

  /** Snapshots of every guest's block. */
  sample(prev: readonly GuestSample[] | null = null): GuestSample[] {
    const now = performance.now();
    return this.domains.map((d, i) => sampleGuest(d.stats, now, prev?.[i] ?? null));
  }

  /** Waits for every guest to connect, then starts the traffic (PHASE_RUN); returns the samples at the start. */
  async startTraffic(): Promise<GuestSample[]> {
    await this.waitConnected(this.opts.connectTimeoutMs ?? 20_000);
    const start = this.sample();
    this.trafficStart = start;
    this.t0 = performance.now();
    for (const d of this.domains) d.stats.setPhase(PHASE_RUN);
    return start;
  }

  /** Stops the traffic (PHASE_STOP), counts what was sent since startTraffic, and lets the backend drain. */
  async stopTraffic(): Promise<void> {
    for (const d of this.domains) d.stats.setPhase(PHASE_STOP);
    const t1 = performance.now();
    const start = this.trafficStart;
    if (start !== null) {
      const end = this.sample(start);
      this.trafficSeconds = (t1 - this.t0) / 1000;
      for (let i = 0; i < end.length; i++) {
        this.packets += end[i]!.counters[sTxPackets]! - start[i]!.counters[sTxPackets]!;
        this.bytes += end[i]!.counters[sTxBytes]! - start[i]!.counters[sTxBytes]!;
      }
    }
    this.drainReport = await this.guard(this.backend.drain(this.opts.drainTimeoutMs ?? 5000));
    if (!this.drainReport.quiescent) {
      this.notes.push(`backend drain aborted after ${Math.round(this.drainReport.ms)} ms: ${this.drainReport.aborted.join(', ')}`);
    }
  }

  /** Connects, runs `seconds` of traffic with a progress callback, shuts down in order and reports. */
  async run(onProgress: (p: SystemProgress) => void = () => {}): Promise<SystemReport> {
    const interval = this.opts.progressIntervalMs ?? 1000;
    const domids = this.domains.map((d) => d.domid);
    try {
      let prev = await this.startTraffic();
      const t0 = this.t0;
      const stopAt = t0 + this.opts.seconds * 1000;
      let nextProgress = t0 + interval;
      for (;;) {
        const now = performance.now();
        if (now >= stopAt) break;
        if (this.backendDead !== null) throw new Error(this.backendDead);
        await sleep(Math.max(0, Math.min(stopAt, nextProgress) - now));
        if (performance.now() >= nextProgress) {
          const cur = this.sample(prev);
          onProgress(systemProgress(domids, prev, cur, (performance.now() - t0) / 1000));
          prev = cur;
          nextProgress += interval;
        }
      }
      await this.stopTraffic();
    } catch (e) {
      this.errors.push(message(e));
    }
    return this.shutdown();
  }

  /**
   * The orderly end: guests close (taking their last grants back, up to their deadline), the backend removes its
   * vifs and runs the oracle's quiescence check, every worker exits; then the report.
   */
  async shutdown(): Promise<SystemReport> {
    const reports = await this.closeGuests();
    let backendReport: BackendReport | null = null;
    try {
      if (this.backendDead === null) backendReport = await this.guard(this.backend.finish());
    } catch (e) {
      this.errors.push(`backend finish failed: ${message(e)}`);
    }
    await this.close();
    if (backendReport !== null) this.notes.push(...backendReport.notes);
    for (const r of reports) if (r.error !== null) this.errors.push(`guest d${r.domid}: ${r.error}`);
    const hist = new Float64Array(LATENCY_BUCKETS);
    for (const d of this.domains) {
      const s = sampleGuest(d.stats, 0, null);
      for (let b = 0; b < LATENCY_BUCKETS; b++) hist[b]! += s.histogram[b]!;
    }
    return {
      guests: this.domains.length,
      trafficSeconds: this.trafficSeconds,
      packets: this.packets,
      bytes: this.bytes,
      returnLatencyUs: { p50: latencyQuantile(hist, 0.5), p99: latencyQuantile(hist, 0.99) },
      audit: auditOf(reports, backendReport),
      perGuest: reports,
      drain: this.drainReport,
      backend: backendReport,
      errors: [...this.errors],
      notes: [...this.notes],
    };
  }

  // A backend call that also fails when the backend worker dies.
  private async guard<T>(p: Promise<T>): Promise<T> {
    let poll: ReturnType<typeof setInterval> | undefined;
    const dead = new Promise<never>((_, reject) => {
      poll = setInterval(() => {
        if (this.backendDead !== null) reject(new Error(this.backendDead));
      }, 20);
    });
    try {
      return await Promise.race([p, dead]);
    } finally {
      clearInterval(poll);
    }
  }

  // PHASE_CLOSE: guests wait for their last grants (up to their deadline), disconnect and report.
  private async closeGuests(): Promise<GuestReport[]> {
    for (const d of this.domains) d.stats.setPhase(PHASE_CLOSE);
    const limit = (this.opts.returnDeadlineMs ?? 5000) + (this.opts.closeTimeoutMs ?? 10_000);
    const results = await withTimeout(Promise.all(this.tasks), limit, () => null);
    const out: GuestReport[] = [];
    for (let i = 0; i < this.domains.length; i++) {
      const d = this.domains[i]!;
      const r = results?.[i] ?? null;
      if (r !== null) {
        out.push(r);
      } else {
        const why = results === null ? `did not finish within ${limit} ms after close` : `task failed: ${this.taskErrors.get(d.domid) ?? 'unknown'}`;
        out.push(reportFromSample(d.domid, sampleGuest(d.stats, 0, null), why));
      }
    }
    return out;
  }

  /** Tears everything down: the pool, the backend worker, every port and xenstore connection. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const d of this.domains) d.stats.setPhase(PHASE_CLOSE);
    await this.pool.destroy();
    this.backend[Comlink.releaseProxy]();
    this.backendPort.close();
    const exited = await withTimeout(this.backendExit.then(() => true), this.opts.closeTimeoutMs ?? 10_000, () => false);
    if (!exited) {
      this.errors.push('backend worker did not exit by itself');
      await this.backendWorker.terminate();
    }
    this.backendXs.close();
    for (const d of this.domains) {
      d.hostPort.close();
      d.xenstore.close();
      // Ports never handed over (a guest that never registered its table) must not keep us alive.
      d.grantBackendPort.close();
    }
    this.dom0.close();
    void this.store;
  }
}

/** Boots the system for `npm start` (tools/start.ts). */
export async function bootSystem(opts: ToolstackOptions): Promise<Toolstack> {
  return Toolstack.boot(opts);
}
