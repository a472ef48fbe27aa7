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
import {
  VIF_REMOVE_TIMEOUT_MS,
  type BackendApi,
  type BackendConfig,
  type BackendFault,
  type BackendFaults,
  type BackendInit,
  type BackendReport,
  type BackendStats,
  type DrainReport,
} from '../backend/loop.js';
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
  sConnects,
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
import type { MixSettings } from '../frontend/traffic.js';
import { EVTCHNSTAT_closed, EvtchnHost } from '../shared/evtchn.js';
import { GTF_reading, GTF_writing, GrantEntriesV1 } from '../shared/gnttab.js';
import { guestMac, macToString } from '../shared/ether.js';
import { guestIp, ipv4 } from '../shared/inet.js';
import { GuestMemory } from '../shared/memory.js';
import { XenstoreClient, exposeXenstoreConnection, withTransaction, type XenstoreChannel } from '../shared/xenstore-client.js';
import type { XsResult, XsWorkerPorts } from '../shared/xenstore-protocol.js';
import { XenStore } from '../shared/xenstore.js';
import {
  VifKey,
  XenbusStateClosed,
  XenbusStateInitialising,
  toolstackAddVif,
  toolstackCreateDomain,
  toolstackDestroyDomain,
  vifBackendPath,
  vifFrontendPath,
} from '../shared/xenbus.js';

// ---- Addressing plan --------------------------------------------------------------------------------------

/** The backend domain's id. */
export const BACKEND_DOMID = 0;
// Guests: guestMac (shared/ether.ts) and guestIp (shared/inet.ts) of their domid.
/** The local TCP endpoint on the bridge: a locally administered MAC, 10.0.255.254, port 5001. */
export const ENDPOINT = { mac: 0x02_00_00_00_00_fe, ip: ipv4(10, 0, 255, 254), port: 5001 } as const;
/** The remote host beyond the uplink (TEST-NET-1, RFC 5737): the TCP peer and the sink of guests' uplink UDP. */
export const REMOTE = { mac: 0x02_00_00_00_00_01, ip: ipv4(192, 0, 2, 1), port: 5001 } as const;

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
  /** What 'mix' traffic changes from the demo's mix (weights, UDP sizes); default none. */
  readonly mix?: MixSettings;
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
  /** How long netback lets an RX queue sit before dropping it, ms (default Linux's 10000). */
  readonly rxDrainTimeoutMs?: number;
  /** Event-channel room for domains beyond the first guests (restarted guests, adversaries); default 0. */
  readonly extraDomains?: number;
  /** The backend worker's entry (default backend/worker.js). */
  readonly backendWorker?: URL;
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
  readonly mix?: MixSettings;
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
    mix: o.mix ?? {},
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

// ---- Domain death: what the hypervisor and libxl do ----------------------------------------------------------

/**
 * Xen's evtchn_destroy (domain_kill): closes every port of a dead domain, so each interdomain peer goes back to
 * unbound and its notify answers -ENOTCONN. Returns how many ports were open.
 */
export function closeDomainPorts(evtchn: EvtchnHost, domid: number): number {
  let n = 0;
  for (let port = 1; port < evtchn.nrPorts; port++) {
    const s = evtchn.status(domid, port);
    if (s.ok && s.value.status === EVTCHNSTAT_closed) continue;
    if (evtchn.close(domid, port).ok) n++;
  }
  return n;
}

/**
 * Xen's gnttab_release_mappings (xen/common/grant_table.c, run by domain_kill for a dying domain): every grant the
 * dead domain had mapped loses its pins, so the granting guest's GTF_reading/GTF_writing are cleared and its end of
 * access succeeds again. Departure: Xen walks the dead domain's maptrack; that lived in the dead worker's heap, so
 * we clear the flags of every entry granted to the dead domain instead (only it could have set them). Returns how
 * many entries were released.
 */
export function releaseMappings(table: SharedArrayBuffer, deadDomid: number): number {
  const e = new GrantEntriesV1(table);
  let n = 0;
  for (let ref = 0; ref < e.nrEntries; ref++) {
    if (e.domid(ref) !== deadDomid || (e.flags(ref) & (GTF_reading | GTF_writing)) === 0) continue;
    e.clearFlags(ref, GTF_reading | GTF_writing);
    n++;
  }
  return n;
}

/** Entries of a granting guest's table that `grantee` still maps (GTF_reading or GTF_writing set). */
export function mappedEntries(table: SharedArrayBuffer, grantee: number): number[] {
  const e = new GrantEntriesV1(table);
  const out: number[] = [];
  for (let ref = 0; ref < e.nrEntries; ref++) {
    if (e.domid(ref) === grantee && (e.flags(ref) & (GTF_reading | GTF_writing)) !== 0) out.push(ref);
  }
  return out;
}

/**
 * Re-creates the backend half of a vif for a new backend domain (libxl__device_generic_add's backend keys): the
 * directory owned by the backend and readable by the frontend, Initialising, online, hotplug-status connected.
 */
export async function toolstackReAddVifBackend(dom0: XenstoreClient, vif: { frontendDomid: number; backendDomid: number; devid: number; mac: string }): Promise<XsResult<void>> {
  const fe = vifFrontendPath(vif.frontendDomid, vif.devid);
  const be = vifBackendPath(vif.backendDomid, vif.frontendDomid, vif.devid);
  return withTransaction(dom0, async (tx) => {
    const steps: (() => Promise<XsResult<void>>)[] = [
      () => dom0.mkdir(be, tx),
      () => dom0.setPerms(be, [{ id: vif.backendDomid, perm: 'n' }, { id: vif.frontendDomid, perm: 'r' }], tx),
      () => dom0.write(`${be}/${VifKey.frontend}`, fe, tx),
      () => dom0.write(`${be}/${VifKey.frontendId}`, String(vif.frontendDomid), tx),
      () => dom0.write(`${be}/${VifKey.handle}`, String(vif.devid), tx),
      () => dom0.write(`${be}/${VifKey.mac}`, vif.mac, tx),
      () => dom0.write(`${be}/${VifKey.online}`, '1', tx),
      () => dom0.write(`${be}/${VifKey.state}`, String(XenbusStateInitialising), tx),
      () => dom0.write(`${be}/${VifKey.hotplugStatus}`, 'connected', tx),
    ];
    for (const step of steps) {
      const r = await step();
      if (!r.ok) return r;
    }
    return { ok: true, value: undefined };
  });
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

/** What the toolstack does for a backend worker that plays guests of its own (the stress tool's adversary host). */
export interface BackendHostApi {
  /** Builds a domain with one vif (xenstore home, both vif directories): its domid and its own xenstore connection. */
  createDomain(): Promise<{ readonly domid: number; readonly xenstore: XsWorkerPorts }>;
  /** Destroys it as libxl does: its ports closed, its home gone with @releaseDomain, its backend directory once closed. */
  destroyDomain(domid: number): Promise<void>;
  /** A domid (event-channel room) for a domain the backend wires by hand. */
  allocDomid(): Promise<number>;
}

/** One backend worker's life: its worker, channels, control proxy, and what it reported before it died. */
export interface BackendIncarnation {
  /** 0 for the first backend, then one more per restart. */
  readonly index: number;
  readonly worker: Worker;
  readonly xs: XenstoreChannel;
  readonly port: MessagePort;
  readonly api: Comlink.Remote<BackendApi>;
  /** The toolstack's end of the host channel (BackendHostApi), or null. */
  readonly hostPort: MessagePort | null;
  readonly exit: Promise<void>;
  /** Why the worker is gone (crash, exit, or killed by the toolstack), or null while it lives. */
  dead: string | null;
  /** The toolstack killed it (a fault), as opposed to a crash. */
  injected: boolean;
  /** finish() was called: its exit is expected. */
  finishing: boolean;
  /** The last stats it answered (the audit figures of a backend that died). */
  lastStats: BackendStats | null;
}

/** What a backend kill and restart did. */
export interface BackendRestartReport {
  /** Ports of the dead backend closed (evtchn_destroy). */
  readonly portsClosed: number;
  /** Grant entries whose GTF_reading/GTF_writing were cleared (gnttab_release_mappings). */
  readonly mappingsReleased: number;
  /** Guests that went Closed and reconnected to the new backend. */
  readonly reconnected: number;
  readonly ms: number;
  /** What went wrong (a guest that did not close or reconnect in time), empty when all went well. */
  readonly problems: readonly string[];
}

/** What a guest kill did. */
export interface GuestKillReport {
  readonly domid: number;
  /** Grants the dead guest had given the backend and never got back. */
  readonly outstanding: number;
  /** Ports of the dead guest closed. */
  readonly portsClosed: number;
  /** Of its refs, how many the backend still mapped when the hypervisor forgot it. */
  readonly stillMapped: number;
}

interface ReleaseOutcome {
  readonly portsClosed: number;
  readonly mappingsReleased: number;
  readonly problems: readonly string[];
}

interface StartOutcome {
  readonly reconnected: number;
  readonly problems: readonly string[];
}

/** A guest that was killed: its domain, its counters at death, and whether the backend let go of its grants. */
export interface DeadGuest {
  readonly domid: number;
  readonly report: GuestReport;
  readonly table: SharedArrayBuffer | null;
}

/** The built system: the xenstore, the backend worker, the guest pool and the guests' domains. */
export class Toolstack {
  private readonly errors: string[] = [];
  private readonly notes: string[] = [];
  /** Why a guest's task was rejected (piscina or worker failure), by domid. */
  private readonly taskErrors = new Map<number, string>();
  private readonly tasks = new Map<number, Promise<GuestReport | null>>();
  /** Guest grant tables as the guests registered them, by domid (the hypervisor's view, for domain_kill). */
  readonly tables = new Map<number, SharedArrayBuffer>();
  /** Guests killed so far, in order. */
  readonly dead: DeadGuest[] = [];
  /** Every backend that ran, in order; the last is the current one. */
  readonly backends: BackendIncarnation[] = [];
  private closed = false;
  private running = false;
  private readonly trafficStart = new Map<number, GuestSample>();
  private t0 = 0;
  private trafficSeconds = 0;
  private packets = 0;
  private bytes = 0;
  private drainReport: DrainReport | null = null;
  private nextDomid: number;
  // Grant-return ports of a new backend for guests that have not reattached yet, and when they may.
  private readonly reattachPorts = new Map<number, MessagePort>();
  private reattachReady: Promise<void> = Promise.resolve();
  private releaseReattach: () => void = () => {};
  private restarting = false;

  private constructor(
    readonly opts: ToolstackOptions,
    private readonly store: XenStore,
    private readonly dom0: XenstoreClient,
    readonly evtchn: EvtchnHost,
    private readonly backendConfig: BackendConfig,
    private readonly pool: Piscina<GuestTask, GuestReport>,
    readonly domains: GuestDomain[],
    private readonly build: GuestBuildOptions,
  ) {
    this.nextDomid = domains.length + 1;
    this.spawnBackend();
  }

  /** Builds everything and starts the guests' tasks (they connect, then wait for PHASE_RUN). */
  static async boot(opts: ToolstackOptions): Promise<Toolstack> {
    const store = new XenStore();
    const conn = store.connect(BACKEND_DOMID);
    if (!conn.ok) throw new Error(`cannot connect dom0 to the xenstore: ${conn.error}`);
    const dom0 = XenstoreClient.local(conn.value);
    const evtchn = EvtchnHost.create({ maxDomains: opts.guests + 1 + (opts.extraDomains ?? 0) });
    const threads = Math.max(1, Math.min(opts.guests, opts.guestThreads ?? availableParallelism() - 1));
    const build: GuestBuildOptions = {
      guests: opts.guests,
      seed: opts.seed,
      mtu: opts.mtu,
      traffic: opts.traffic ?? 'mix',
      fixedSize: opts.fixedSize ?? 1500,
      mix: opts.mix ?? {},
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
      rxDrainTimeoutMs: opts.rxDrainTimeoutMs ?? 10_000,
      uplinkVerify: opts.uplinkVerify ?? true,
      ...(opts.faults !== undefined && { faults: opts.faults }),
      vifRemoveTimeoutMs: opts.closeStepTimeoutMs ?? VIF_REMOVE_TIMEOUT_MS,
    };
    const pool = new Piscina<GuestTask, GuestReport>({
      filename: fileURLToPath(new URL('../frontend/worker.js', import.meta.url)),
      minThreads: threads,
      maxThreads: threads,
      concurrentTasksPerWorker: Math.ceil(opts.guests / threads),
      atomics: 'disabled',
      idleTimeout: 1000,
    });
    const ts = new Toolstack(opts, store, dom0, evtchn, config, pool, domains, build);
    for (const dom of domains) ts.startGuest(dom);
    return ts;
  }

  /** A fresh domid (Xen does not reuse them soon); throws when the event-channel host has no room left. */
  allocDomid(): number {
    const domid = this.nextDomid++;
    if (!this.evtchn.isDomain(domid)) throw new Error(`no room for d${domid}: the event-channel host has ${this.evtchn.maxDomains} domains`);
    return domid;
  }

  // Domains a backend worker asked for (the adversary host), with their xenstore connections.
  private readonly hostDomains = new Map<number, XenstoreChannel>();

  private readonly backendHost: BackendHostApi = {
    createDomain: async () => {
      const domid = this.allocDomid();
      const created = await toolstackCreateDomain(this.store, this.dom0, domid);
      if (!created.ok) throw new Error(`cannot create domain ${domid} in the xenstore: ${created.error}`);
      const vif = await toolstackAddVif(this.dom0, { frontendDomid: domid, backendDomid: BACKEND_DOMID, devid: 0, mac: macToString(guestMac(domid)) });
      if (!vif.ok) throw new Error(`cannot add the vif of domain ${domid}: ${vif.error}`);
      const xs = exposeXenstoreConnection(this.store, domid);
      if (!xs.ok) throw new Error(`cannot open the xenstore connection of domain ${domid}: ${xs.error}`);
      this.hostDomains.set(domid, xs.value);
      return Comlink.transfer({ domid, xenstore: xs.value.ports }, xs.value.transferList);
    },
    destroyDomain: async (domid) => {
      closeDomainPorts(this.evtchn, domid);
      const r = await toolstackDestroyDomain(this.store, this.dom0, domid);
      if (!r.ok) throw new Error(`cannot destroy d${domid}: ${r.error}`);
      this.hostDomains.get(domid)?.close();
      this.hostDomains.delete(domid);
      void this.removeBackendDirWhenClosed(domid, 0);
    },
    allocDomid: async () => this.allocDomid(),
  };

  /** The current backend. */
  get backend(): BackendIncarnation {
    return this.backends[this.backends.length - 1]!;
  }

  /** Why the current backend died unexpectedly (a crash), or null. */
  get backendDead(): string | null {
    const be = this.backend;
    return be.injected ? null : be.dead;
  }

  /** Backend worker deaths the toolstack did not cause. */
  get backendCrashes(): number {
    return this.backends.filter((b) => b.dead !== null && !b.injected && !b.finishing).length;
  }

  // Starts a backend worker with a fresh xenstore connection and control channel.
  private spawnBackend(): BackendIncarnation {
    const xs = exposeXenstoreConnection(this.store, BACKEND_DOMID);
    if (!xs.ok) throw new Error(`cannot open dom0's xenstore connection: ${xs.error}`);
    const control = new MessageChannel();
    const transferList: (MessagePort | ArrayBuffer)[] = [...xs.value.transferList, control.port2];
    let init: BackendInit = { config: this.backendConfig, evtchn: this.evtchn.buffer, xenstore: xs.value.ports, control: control.port2 };
    let hostPort: MessagePort | null = null;
    if (this.opts.backendWorker !== undefined) {
      const host = new MessageChannel();
      Comlink.expose(this.backendHost, nodeEndpoint(host.port1));
      hostPort = host.port1;
      init = { ...init, host: host.port2 };
      transferList.push(host.port2);
    }
    const url = this.opts.backendWorker ?? new URL('../backend/worker.js', import.meta.url);
    const worker = new Worker(url, { workerData: init, transferList });
    const api = Comlink.wrap<BackendApi>(nodeEndpoint(control.port1));
    let exited: () => void = () => {};
    const exit = new Promise<void>((resolve) => (exited = resolve));
    const be: BackendIncarnation = {
      index: this.backends.length,
      worker,
      xs: xs.value,
      port: control.port1,
      api,
      hostPort,
      exit,
      dead: null,
      injected: false,
      finishing: false,
      lastStats: null,
    };
    worker.on('error', (e) => {
      be.dead ??= `backend worker crashed: ${message(e)}`;
    });
    worker.once('exit', (code) => {
      if (!be.finishing) be.dead ??= `backend worker exited with code ${code}`;
      be.hostPort?.close();
      exited();
    });
    this.backends.push(be);
    return be;
  }

  private startGuest(dom: GuestDomain): void {
    const api: GuestHostApi = {
      registerGrantTable: async (table: SharedArrayBuffer): Promise<void> => {
        this.tables.set(dom.domid, table);
        const port = dom.grantBackendPort;
        await this.guard(this.backend.api.addDomain(dom.domid, table, dom.memory.sab, Comlink.transfer(port, [port])));
      },
      reattach: async (): Promise<MessagePort | null> => {
        await this.reattachReady;
        const port = this.reattachPorts.get(dom.domid);
        if (port === undefined) return null;
        this.reattachPorts.delete(dom.domid);
        return Comlink.transfer(port, [port]);
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
    this.tasks.set(
      dom.domid,
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

  /** The guests that are not dead. */
  get liveDomains(): GuestDomain[] {
    return this.domains.filter((d) => !this.isDead(d.domid));
  }

  private isDead(domid: number): boolean {
    return this.dead.some((x) => x.domid === domid);
  }

  /** Resolves once every live guest is Connected; throws on a failed guest, a dead backend or the timeout. */
  async waitConnected(timeoutMs: number, doms: readonly GuestDomain[] = this.liveDomains): Promise<void> {
    const end = performance.now() + timeoutMs;
    for (;;) {
      if (this.backendDead !== null) throw new Error(this.backendDead);
      let connected = 0;
      for (const d of doms) {
        const s = d.stats.state;
        if (s === GUEST_FAILED || s === GUEST_DONE) throw new Error(`guest d${d.domid} stopped before connecting${this.errorSuffix()}`);
        if (s === GUEST_CONNECTED) connected++;
      }
      if (connected === doms.length) return;
      if (performance.now() > end) {
        const late = doms.filter((d) => d.stats.state !== GUEST_CONNECTED).map((d) => `d${d.domid}`);
        throw new Error(`guests did not connect within ${timeoutMs} ms: ${late.join(', ')}${this.errorSuffix()}`);
      }
      await sleep(5);
    }
  }

  private errorSuffix(): string {
    return this.errors.length === 0 ? '' : ` (${this.errors.join('; ')})`;
  }

  /** Snapshots of every guest's block (dead ones included: their last counters). */
  sample(prev: readonly GuestSample[] | null = null): GuestSample[] {
    const now = performance.now();
    return this.domains.map((d, i) => sampleGuest(d.stats, now, prev?.[i] ?? null));
  }

  /** Waits for every guest to connect, then starts the traffic (PHASE_RUN); returns the samples at the start. */
  async startTraffic(): Promise<GuestSample[]> {
    await this.waitConnected(this.opts.connectTimeoutMs ?? 20_000);
    const start = this.sample();
    for (let i = 0; i < start.length; i++) this.trafficStart.set(this.domains[i]!.domid, start[i]!);
    this.t0 = performance.now();
    this.running = true;
    for (const d of this.domains) d.stats.setPhase(PHASE_RUN);
    return start;
  }

  /** Stops the traffic (PHASE_STOP), counts what was sent since startTraffic, and lets the backend drain. */
  async stopTraffic(): Promise<void> {
    this.running = false;
    for (const d of this.domains) d.stats.setPhase(PHASE_STOP);
    // Each live guest acknowledges the stop once its counters include everything it transmitted.
    const ackBy = performance.now() + 1000;
    while (performance.now() < ackBy && this.domains.some((d) => d.stats.state === GUEST_CONNECTED && !d.stats.killed && d.stats.phaseSeen < PHASE_STOP)) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const t1 = performance.now();
    if (this.trafficStart.size > 0) {
      this.trafficSeconds = (t1 - this.t0) / 1000;
      for (const d of this.domains) {
        const start = this.trafficStart.get(d.domid);
        if (start === undefined) continue;
        const end = sampleGuest(d.stats, t1, start);
        this.packets += end.counters[sTxPackets]! - start.counters[sTxPackets]!;
        this.bytes += end.counters[sTxBytes]! - start.counters[sTxBytes]!;
      }
    }
    this.drainReport = await this.guard(this.backend.api.drain(this.opts.drainTimeoutMs ?? 5000));
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

  /** Asks the current backend for its counters and keeps them (the audit figures of a backend that later dies). */
  async sampleBackend(): Promise<BackendStats | null> {
    const be = this.backend;
    if (be.dead !== null) return be.lastStats;
    try {
      const s = await this.guard(be.api.stats(), be);
      be.lastStats = s;
      return s;
    } catch {
      return be.lastStats;
    }
  }

  /** Injects a fault into the running backend. */
  async backendFault(f: BackendFault): Promise<void> {
    await this.guard(this.backend.api.fault(f));
  }

  /**
   * Kills a guest where it stands (kKill): its task stops without teardown; then the domain is destroyed as Xen and
   * libxl do: its event channels are closed (evtchn_destroy), the hypervisor forgets it (new maps fail; netback's
   * mappings stay until the stack frees the pages), and its xenstore home goes with @releaseDomain, so netback sees
   * the frontend vanish, never notifies it again, and unmaps once the stack has freed the pages.
   */
  async killGuest(domid: number): Promise<GuestKillReport> {
    const d = this.domains.find((x) => x.domid === domid);
    if (d === undefined || this.isDead(domid)) throw new Error(`no live guest d${domid}`);
    d.stats.kill();
    this.evtchn.domain(domid).kickIfSleeping();
    const limit = this.opts.closeTimeoutMs ?? 10_000;
    const r = await withTimeout(this.tasks.get(domid)!, limit, () => null);
    const report = r ?? reportFromSample(domid, sampleGuest(d.stats, 0, null), r === null ? `did not die within ${limit} ms` : 'task failed');
    this.dead.push({ domid, report, table: this.tables.get(domid) ?? null });
    const portsClosed = closeDomainPorts(this.evtchn, domid);
    let stillMapped = 0;
    if (this.backend.dead === null) {
      try {
        stillMapped = await this.guard(this.backend.api.removeDomain(domid));
      } catch (e) {
        this.notes.push(`removeDomain d${domid}: ${message(e)}`);
      }
    }
    const destroyed = await toolstackDestroyDomain(this.store, this.dom0, domid);
    if (!destroyed.ok) this.errors.push(`cannot destroy d${domid}: ${destroyed.error}`);
    d.xenstore.close();
    d.hostPort.close();
    d.grantBackendPort.close();
    void this.removeBackendDirWhenClosed(d.domid, d.config.devid);
    return { domid, outstanding: report.outstanding, portsClosed, stillMapped };
  }

  // libxl__device_destroy: once netback has closed the dead guest's vif (after the stack freed its pages), the
  // backend directory goes too (bounded: a backend that never closes it loses it at its netback's drain timeout).
  private async removeBackendDirWhenClosed(domid: number, devid: number): Promise<void> {
    const dir = vifBackendPath(BACKEND_DOMID, domid, devid);
    const end = performance.now() + (this.opts.rxDrainTimeoutMs ?? 10_000) + 10_000;
    while (!this.closed && performance.now() < end) {
      const r = await this.dom0.read(`${dir}/${VifKey.state}`);
      if (!r.ok || r.value === String(XenbusStateClosed)) break;
      await sleep(50);
    }
    if (!this.closed) await this.dom0.rm(dir);
  }

  /** Builds, starts and connects one more guest (a fresh domid); it transmits if the traffic is running. */
  async addGuest(): Promise<GuestDomain> {
    const domid = this.allocDomid();
    const dom = await buildGuestDomain(this.store, this.dom0, domid, this.build);
    this.domains.push(dom);
    this.startGuest(dom);
    await this.waitConnected(this.opts.connectTimeoutMs ?? 20_000, [dom]);
    if (this.running) {
      this.trafficStart.set(domid, sampleGuest(dom.stats, performance.now(), null));
      dom.stats.setPhase(PHASE_RUN);
    }
    return dom;
  }

  /**
   * The backend worker is killed mid-traffic (worker.terminate()) and replaced. `releaseMs` after its death the
   * toolstack plays the hypervisor's domain_kill for it (every port closed, every mapping released) and removes its
   * device directories, so each frontend sees its backend vanish (Closed: netfront tears down and reclaims every
   * grant, end access now succeeding); `restartMs` after its death (at least after the release) a new backend
   * worker starts, every live guest is introduced to it (new grant-return channels), the backend halves of the vifs
   * come back, and every guest reconnects (Closed -> Initialising -> Connected).
   */
  async killBackend(releaseMs = 0, restartMs = 0): Promise<BackendRestartReport> {
    const be = this.backend;
    if (be.dead !== null) throw new Error(`the backend is already dead: ${be.dead}`);
    const t0 = performance.now();
    this.restarting = true;
    try {
      await this.sampleBackend();
      be.injected = true;
      be.dead = 'killed by the toolstack';
      await be.worker.terminate();
      await sleep(Math.max(0, t0 + releaseMs - performance.now()));
      const released = await this.releaseDeadBackend();
      await sleep(Math.max(0, t0 + restartMs - performance.now()));
      const started = await this.startNewBackend();
      return this.restartReport(t0, released, started);
    } finally {
      this.restarting = false;
    }
  }

  /** Replaces a dead backend (killed, or crashed: then backendCrashes counts it) at once; see killBackend. */
  async restartBackend(): Promise<BackendRestartReport> {
    if (this.backend.dead === null) throw new Error('restartBackend: the backend is alive');
    const t0 = performance.now();
    this.restarting = true;
    try {
      const released = await this.releaseDeadBackend();
      const started = await this.startNewBackend();
      return this.restartReport(t0, released, started);
    } finally {
      this.restarting = false;
    }
  }

  private restartReport(t0: number, released: ReleaseOutcome, started: StartOutcome): BackendRestartReport {
    const problems = [...released.problems, ...started.problems];
    for (const p of problems) this.errors.push(`backend restart: ${p}`);
    return {
      portsClosed: released.portsClosed,
      mappingsReleased: released.mappingsReleased,
      reconnected: started.reconnected,
      ms: performance.now() - t0,
      problems,
    };
  }

  // domain_kill of the dead backend: its control and xenstore connections go, its ports close, its mappings are
  // released; then libxl removes its device directories and every live frontend goes Closed.
  private async releaseDeadBackend(): Promise<ReleaseOutcome> {
    const old = this.backend;
    const problems: string[] = [];
    let ready: () => void = () => {};
    this.reattachReady = new Promise<void>((resolve) => (ready = resolve));
    this.releaseReattach = ready;
    old.api[Comlink.releaseProxy]();
    old.port.close();
    old.hostPort?.close();
    old.xs.close();
    const portsClosed = closeDomainPorts(this.evtchn, BACKEND_DOMID);
    let mappingsReleased = 0;
    for (const table of this.tables.values()) mappingsReleased += releaseMappings(table, BACKEND_DOMID);
    const live = this.liveDomains;
    // Dead guests' directories go too: the new backend must not probe a vif whose frontend is gone.
    for (const d of this.domains) {
      const r = await this.dom0.rm(vifBackendPath(BACKEND_DOMID, d.domid, d.config.devid));
      if (!r.ok && r.error !== 'ENOENT') problems.push(`cannot remove the backend directory of d${d.domid}: ${r.error}`);
    }
    const limit = this.opts.connectTimeoutMs ?? 20_000;
    const late = await this.waitFrontends(live, (s) => s === XenbusStateClosed, limit);
    if (late.length > 0) problems.push(`frontends not Closed within ${limit} ms: ${late.join(', ')}`);
    return { portsClosed, mappingsReleased, problems };
  }

  // A new backend worker: every live guest introduced to it, the vifs' backend halves re-added, every guest reconnected.
  private async startNewBackend(): Promise<StartOutcome> {
    const problems: string[] = [];
    const live = this.liveDomains;
    const connectsBefore = new Map(live.map((d) => [d.domid, counter(d, sConnects)]));
    const be = this.spawnBackend();
    try {
      for (const d of live) {
        const table = this.tables.get(d.domid);
        if (table === undefined) continue;
        const ch = new MessageChannel();
        this.reattachPorts.get(d.domid)?.close();
        this.reattachPorts.set(d.domid, ch.port2);
        await this.guard(be.api.addDomain(d.domid, table, d.memory.sab, Comlink.transfer(ch.port1, [ch.port1])), be);
      }
      for (const d of live) {
        const r = await toolstackReAddVifBackend(this.dom0, {
          frontendDomid: d.domid,
          backendDomid: BACKEND_DOMID,
          devid: d.config.devid,
          mac: macToString(d.config.self.mac),
        });
        if (!r.ok) problems.push(`cannot re-add the vif of d${d.domid}: ${r.error}`);
      }
    } catch (e) {
      problems.push(`the new backend: ${message(e)}`);
    } finally {
      this.releaseReattach();
    }
    const limit = this.opts.connectTimeoutMs ?? 20_000;
    const end = performance.now() + limit;
    let pending = live;
    for (;;) {
      pending = pending.filter((d) => !this.isDead(d.domid) && counter(d, sConnects) <= connectsBefore.get(d.domid)!);
      if (pending.length === 0 || performance.now() > end || be.dead !== null) break;
      await sleep(10);
    }
    if (be.dead !== null) problems.push(`the new backend died: ${be.dead}`);
    if (pending.length > 0) problems.push(`guests not reconnected within ${limit} ms: ${pending.map((d) => `d${d.domid}`).join(', ')}`);
    return { reconnected: live.length - pending.length, problems };
  }

  /** Whether a backend restart is under way. */
  get restartInProgress(): boolean {
    return this.restarting;
  }

  // Polls the frontends' xenbus states until `pred` holds for each; returns those for which it did not.
  private async waitFrontends(doms: readonly GuestDomain[], pred: (s: number) => boolean, ms: number): Promise<string[]> {
    const end = performance.now() + ms;
    for (;;) {
      const late: string[] = [];
      for (const d of doms) {
        if (this.isDead(d.domid)) continue;
        const r = await this.dom0.read(`${vifFrontendPath(d.domid, d.config.devid)}/${VifKey.state}`);
        if (!r.ok || !pred(Number(r.value))) late.push(`d${d.domid}`);
      }
      if (late.length === 0 || performance.now() > end) return late;
      await sleep(10);
    }
  }

  /**
   * The orderly end: guests close (taking their last grants back, up to their deadline), the backend removes its
   * vifs and runs the oracle's quiescence check, every worker exits; then the report.
   */
  async shutdown(): Promise<SystemReport> {
    const reports = await this.closeGuests();
    let backendReport: BackendReport | null = null;
    const be = this.backend;
    try {
      if (be.dead === null) {
        be.finishing = true;
        backendReport = await this.guard(be.api.finish(), be);
      }
    } catch (e) {
      this.errors.push(`backend finish failed: ${message(e)}`);
    }
    await this.close();
    if (backendReport !== null) {
      this.notes.push(...backendReport.notes);
      this.errors.push(...backendReport.errors);
    }
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

  // A backend call that also fails when that backend worker dies.
  private async guard<T>(p: Promise<T>, be: BackendIncarnation = this.backend): Promise<T> {
    let poll: ReturnType<typeof setInterval> | undefined;
    const dead = new Promise<never>((_, reject) => {
      poll = setInterval(() => {
        if (be.dead !== null) reject(new Error(be.dead));
      }, 20);
    });
    try {
      return await Promise.race([p, dead]);
    } finally {
      clearInterval(poll);
    }
  }

  // PHASE_CLOSE: live guests wait for their last grants (up to their deadline), disconnect and report.
  private async closeGuests(): Promise<GuestReport[]> {
    const live = this.liveDomains;
    for (const d of live) d.stats.setPhase(PHASE_CLOSE);
    const limit = (this.opts.returnDeadlineMs ?? 5000) + (this.opts.closeTimeoutMs ?? 10_000);
    const results = await withTimeout(Promise.all(live.map((d) => this.tasks.get(d.domid)!)), limit, () => null);
    const out: GuestReport[] = [];
    for (let i = 0; i < live.length; i++) {
      const d = live[i]!;
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
    const be = this.backend;
    be.finishing = true;
    be.api[Comlink.releaseProxy]();
    be.port.close();
    const exited = be.dead !== null || (await withTimeout(be.exit.then(() => true), this.opts.closeTimeoutMs ?? 10_000, () => false));
    if (!exited) {
      this.errors.push('backend worker did not exit by itself');
      await be.worker.terminate();
    }
    be.xs.close();
    be.hostPort?.close();
    for (const x of this.hostDomains.values()) x.close();
    for (const p of this.reattachPorts.values()) p.close();
    this.reattachPorts.clear();
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

function counter(d: GuestDomain, index: number): number {
  return sampleGuest(d.stats, 0, null).counters[index]!;
}

/** Boots the system for `npm start` (tools/start.ts). */
export async function bootSystem(opts: ToolstackOptions): Promise<Toolstack> {
  return Toolstack.boot(opts);
}
