// XenBus: the device handshake both split drivers run through xenstore. Each end owns a `state` key and watches
// the other end's; states follow xen/include/public/io/xenbus.h, and the legal steps follow what Linux netfront
// and netback actually do (drivers/net/xen-netfront.c netback_changed, xennet_remove; drivers/net/xen-netback/
// xenbus.c set_backend_state, frontend_changed; drivers/xen/xenbus/xenbus_client.c __xenbus_switch_state).
// Also here: the key names of the vif protocol, the vif paths, and the toolstack steps libxl takes.
//
// Departures from Linux, each on purpose:
// - A peer whose state node disappears (or whose domain is released) is reported as Closed with `vanished` set;
//   Linux reports Unknown, which netfront ignores. Corrupt state values are reported as Unknown, as Linux does.
// - Reconfiguring/Reconfigured are illegal for both ends: no net driver uses them.
// - Our own illegal transitions are refused with a Result; Linux would simply write them.

import { err, ok, type Result } from './result.js';
import { withTransaction } from './xenstore-client.js';
import { DOMID_FIRST_RESERVED, XS_RELEASE_DOMAIN } from './xenstore.js';
import type { XenStore } from './xenstore.js';
import type { XsClient, XsResult, XsWatchHandle } from './xenstore-protocol.js';

/** XenbusState values (xen/include/public/io/xenbus.h). */
export const XenbusStateUnknown = 0;
export const XenbusStateInitialising = 1;
export const XenbusStateInitWait = 2;
export const XenbusStateInitialised = 3;
export const XenbusStateConnected = 4;
export const XenbusStateClosing = 5;
export const XenbusStateClosed = 6;
export const XenbusStateReconfiguring = 7;
export const XenbusStateReconfigured = 8;

/** One of the nine XenbusState values. */
export type XenbusState = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8;

/** Which end of a split device. */
export type XenbusRole = 'frontend' | 'backend';

const STATE_NAMES = [
  'Unknown',
  'Initialising',
  'InitWait',
  'Initialised',
  'Connected',
  'Closing',
  'Closed',
  'Reconfiguring',
  'Reconfigured',
] as const;

/** The name Linux prints for a state, "INVALID" for anything else (xenbus_client.c xenbus_strstate). */
export function xenbusStateName(state: number): string {
  return Number.isInteger(state) && state >= 0 && state < STATE_NAMES.length ? STATE_NAMES[state]! : 'INVALID';
}

// Single steps a frontend takes: probe (Unknown -> Initialising); netfront connects straight from Initialising,
// generic frontends pass Initialised; xennet_bus_close goes to Closing from anywhere; xenbus_frontend_closed goes
// straight to Closed when the backend closes; resume starts over from Closed (drivers/net/xen-netfront.c).
const FRONTEND_STEPS: Readonly<Record<XenbusState, readonly XenbusState[]>> = {
  [XenbusStateUnknown]: [XenbusStateInitialising],
  [XenbusStateInitialising]: [XenbusStateInitialised, XenbusStateConnected, XenbusStateClosing, XenbusStateClosed],
  [XenbusStateInitWait]: [],
  [XenbusStateInitialised]: [XenbusStateConnected, XenbusStateClosing, XenbusStateClosed],
  [XenbusStateConnected]: [XenbusStateClosing, XenbusStateClosed],
  [XenbusStateClosing]: [XenbusStateClosed],
  [XenbusStateClosed]: [XenbusStateInitialising],
  [XenbusStateReconfiguring]: [],
  [XenbusStateReconfigured]: [],
};

// Single steps a backend takes: exactly the backend_switch_state calls of set_backend_state
// (drivers/net/xen-netback/xenbus.c), plus creation by the toolstack (Unknown -> Initialising).
const BACKEND_STEPS: Readonly<Record<XenbusState, readonly XenbusState[]>> = {
  [XenbusStateUnknown]: [XenbusStateInitialising],
  [XenbusStateInitialising]: [XenbusStateInitWait, XenbusStateClosed],
  [XenbusStateInitWait]: [XenbusStateConnected, XenbusStateClosing],
  [XenbusStateInitialised]: [],
  [XenbusStateConnected]: [XenbusStateClosing],
  [XenbusStateClosing]: [XenbusStateClosed],
  [XenbusStateClosed]: [XenbusStateInitWait, XenbusStateClosing],
  [XenbusStateReconfiguring]: [],
  [XenbusStateReconfigured]: [],
};

function isState(x: number): x is XenbusState {
  return Number.isInteger(x) && x >= 0 && x <= XenbusStateReconfigured;
}

/** Whether one step from `from` to `to` is one the Linux driver of that role takes. A non-step (from === to) is not. */
export function isLegalTransition(role: XenbusRole, from: number, to: number): boolean {
  if (!isState(from) || !isState(to)) return false;
  return (role === 'frontend' ? FRONTEND_STEPS : BACKEND_STEPS)[from].includes(to);
}

/** The same check with the exact refusal, e.g. `illegal XenbusState transition for a frontend: Connected -> InitWait`. */
export function checkTransition(role: XenbusRole, from: number, to: number): Result<void> {
  if (isLegalTransition(role, from, to)) return ok(undefined);
  return err(`illegal XenbusState transition for a ${role}: ${xenbusStateName(from)} -> ${xenbusStateName(to)}`);
}

function quote(raw: string): string {
  return JSON.stringify(raw.length > 40 ? `${raw.slice(0, 40)}...` : raw);
}

/** Parses a `state` value written by the peer: one decimal digit 0..8, nothing else. */
export function parseXenbusState(raw: string): Result<XenbusState> {
  if (/^[0-8]$/.test(raw)) return ok(Number(raw) as XenbusState);
  return err(`state is corrupt: expected an integer 0 <= x <= 8 but got ${quote(raw)}`);
}

/** Parses an unsigned decimal value written by the peer (ring refs, ports, flags): no sign, no spaces, <= max. */
export function parseXenbusUnsigned(key: string, raw: string, max: number = 0xffffffff): Result<number> {
  if (/^\d{1,10}$/.test(raw)) {
    const n = Number(raw);
    if (n <= max) return ok(n);
  }
  return err(`${key} is corrupt: expected an integer 0 <= x <= ${max} but got ${quote(raw)}`);
}

/** Reads `dir/key` and parses it with parseXenbusUnsigned; a read error is reported with its errno. */
export async function readXenbusUnsigned(
  client: XsClient,
  dir: string,
  key: string,
  max: number = 0xffffffff,
  tx?: number,
): Promise<Result<number>> {
  const r = await client.read(`${dir}/${key}`, tx);
  if (!r.ok) return err(`cannot read ${dir}/${key}: ${r.error}`);
  return parseXenbusUnsigned(key, r.value, max);
}

/**
 * The states set_backend_state passes through to reach `target` from `from`, by Linux's shortest path
 * (drivers/net/xen-netback/xenbus.c). Targets other than InitWait, Connected, Closing and Closed are Linux's BUG().
 */
export function backendStatePath(from: number, target: number): Result<XenbusState[]> {
  const path: XenbusState[] = [];
  let s = from;
  const bug = (): Result<XenbusState[]> =>
    err(`set_backend_state: no path from ${xenbusStateName(from)} to ${xenbusStateName(target)}`);
  if (
    target !== XenbusStateInitWait &&
    target !== XenbusStateConnected &&
    target !== XenbusStateClosing &&
    target !== XenbusStateClosed
  ) {
    return from === target && isState(from) ? ok(path) : bug();
  }
  while (s !== target) {
    let next: XenbusState;
    switch (s) {
      case XenbusStateInitialising:
        next = target === XenbusStateClosed ? XenbusStateClosed : XenbusStateInitWait;
        break;
      case XenbusStateClosed:
        next = target === XenbusStateClosing ? XenbusStateClosing : XenbusStateInitWait;
        break;
      case XenbusStateInitWait:
        next = target === XenbusStateConnected ? XenbusStateConnected : XenbusStateClosing;
        break;
      case XenbusStateConnected:
        next = XenbusStateClosing;
        break;
      case XenbusStateClosing:
        next = XenbusStateClosed;
        break;
      default:
        return bug();
    }
    path.push(next);
    s = next;
  }
  return ok(path);
}

/** What netback does when it sees the frontend's state (drivers/net/xen-netback/xenbus.c frontend_changed). */
export interface NetbackReaction {
  /** The state to reach with set_backend_state, or null to do nothing. */
  readonly target: XenbusState | null;
  /** Whether the device is then unregistered (frontend gone, or closed while the toolstack set online=0). */
  readonly unregister: boolean;
}

/** Netback's reaction to a frontend state; a vanished frontend is Linux's Unknown: close and unregister. */
export function netbackFrontendChanged(frontendState: number, online: boolean, vanished = false): NetbackReaction {
  if (vanished) return { target: XenbusStateClosed, unregister: true };
  switch (frontendState) {
    case XenbusStateInitialising:
      return { target: XenbusStateInitWait, unregister: false };
    case XenbusStateConnected:
      return { target: XenbusStateConnected, unregister: false };
    case XenbusStateClosing:
      return { target: XenbusStateClosing, unregister: false };
    case XenbusStateClosed:
      return { target: XenbusStateClosed, unregister: !online };
    case XenbusStateUnknown:
      return { target: XenbusStateClosed, unregister: true };
    default:
      // Initialised: wait for Connected; anything else is xenbus_dev_fatal "saw state %d at frontend".
      return { target: null, unregister: false };
  }
}

/**
 * Netfront's reaction to a backend state (drivers/net/xen-netfront.c netback_changed): the state to switch to,
 * or null. Connected means "talk_to_netback first"; Closed is xenbus_frontend_closed.
 */
export function netfrontBackendChanged(ownState: number, backendState: number): XenbusState | null {
  switch (backendState) {
    case XenbusStateInitWait:
      return ownState === XenbusStateInitialising ? XenbusStateConnected : null;
    case XenbusStateClosed:
      return ownState === XenbusStateClosed ? null : XenbusStateClosed;
    case XenbusStateClosing:
      return ownState === XenbusStateClosed ? null : XenbusStateClosed;
    default:
      return null;
  }
}

/** Key names of the vif protocol (drivers/net/xen-netback/xenbus.c, drivers/net/xen-netfront.c, libxl). */
export const VifKey = {
  state: 'state',
  backend: 'backend',
  backendId: 'backend-id',
  frontend: 'frontend',
  frontendId: 'frontend-id',
  txRingRef: 'tx-ring-ref',
  rxRingRef: 'rx-ring-ref',
  eventChannel: 'event-channel',
  eventChannelTx: 'event-channel-tx',
  eventChannelRx: 'event-channel-rx',
  requestRxCopy: 'request-rx-copy',
  requestMulticastControl: 'request-multicast-control',
  featureRxNotify: 'feature-rx-notify',
  featureSg: 'feature-sg',
  featureGsoTcpv4: 'feature-gso-tcpv4',
  featureGsoTcpv6: 'feature-gso-tcpv6',
  featureIpv6CsumOffload: 'feature-ipv6-csum-offload',
  featureNoCsumOffload: 'feature-no-csum-offload',
  featureRxCopy: 'feature-rx-copy',
  featureMulticastControl: 'feature-multicast-control',
  featureSplitEventChannels: 'feature-split-event-channels',
  featureCtrlRing: 'feature-ctrl-ring',
  ctrlRingRef: 'ctrl-ring-ref',
  eventChannelCtrl: 'event-channel-ctrl',
  multiQueueMaxQueues: 'multi-queue-max-queues',
  multiQueueNumQueues: 'multi-queue-num-queues',
  hotplugStatus: 'hotplug-status',
  mac: 'mac',
  handle: 'handle',
  online: 'online',
} as const;

/** The frontend directory of a vif: /local/domain/<fe>/device/vif/<devid> (libxl). */
export function vifFrontendPath(frontendDomid: number, devid: number): string {
  return `/local/domain/${frontendDomid}/device/vif/${devid}`;
}

/** The backend directory of a vif: /local/domain/<be>/backend/vif/<fe>/<devid> (libxl). */
export function vifBackendPath(backendDomid: number, frontendDomid: number, devid: number): string {
  return `/local/domain/${backendDomid}/backend/vif/${frontendDomid}/${devid}`;
}

/** Where queue N's keys live when more than one queue is used (xen-netback/xenbus.c connect_data_rings). */
export function vifQueuePath(dir: string, queue: number): string {
  return `${dir}/queue-${queue}`;
}

/**
 * Writes several keys under `dir` in one transaction, retried on EAGAIN (netfront's talk_to_netback). The first
 * failing write aborts the transaction and is returned.
 */
export async function writeXenbusKeys(
  client: XsClient,
  dir: string,
  entries: readonly (readonly [string, string])[],
): Promise<XsResult<void>> {
  return withTransaction(client, async (tx) => {
    for (const [key, value] of entries) {
      const r = await client.write(`${dir}/${key}`, value, tx);
      if (!r.ok) return r;
    }
    return { ok: true, value: undefined };
  });
}

/** A vif as the toolstack describes it. */
export interface VifConfig {
  readonly frontendDomid: number;
  readonly backendDomid: number;
  readonly devid: number;
  readonly mac: string;
  /** Write hotplug-status=connected at once, standing in for the hotplug script (default true). */
  readonly hotplugConnected?: boolean;
}

/**
 * Introduces a domain and creates its home as libxl does: /local/domain/<id> owned by dom0 and readable by the
 * domain, with `device` and `data` owned by the domain (libxl_create.c libxl__domain_make).
 */
export async function toolstackCreateDomain(store: XenStore, dom0: XsClient, domid: number): Promise<XsResult<void>> {
  const intro = store.introduceDomain(domid);
  if (!intro.ok) return intro;
  const home = `/local/domain/${domid}`;
  return withTransaction(dom0, async (tx) => {
    const steps: (() => Promise<XsResult<void>>)[] = [
      () => dom0.mkdir(home, tx),
      () => dom0.setPerms(home, [{ id: 0, perm: 'n' }, { id: domid, perm: 'r' }], tx),
      () => dom0.mkdir(`${home}/device`, tx),
      () => dom0.setPerms(`${home}/device`, [{ id: domid, perm: 'n' }], tx),
      () => dom0.mkdir(`${home}/data`, tx),
      () => dom0.setPerms(`${home}/data`, [{ id: domid, perm: 'n' }], tx),
    ];
    return runSteps(steps);
  });
}

async function runSteps(steps: readonly (() => Promise<XsResult<void>>)[]): Promise<XsResult<void>> {
  for (const step of steps) {
    const r = await step();
    if (!r.ok) return r;
  }
  return { ok: true, value: undefined };
}

/**
 * Creates both directories of a vif in one transaction, as libxl__device_generic_add does: the frontend directory
 * owned by the frontend and readable by the backend, the backend directory the other way round, both ends in
 * Initialising, the backend online.
 */
export async function toolstackAddVif(dom0: XsClient, vif: VifConfig): Promise<XsResult<void>> {
  const fe = vifFrontendPath(vif.frontendDomid, vif.devid);
  const be = vifBackendPath(vif.backendDomid, vif.frontendDomid, vif.devid);
  const init = String(XenbusStateInitialising);
  return withTransaction(dom0, async (tx) => {
    const w = (path: string, value: string) => () => dom0.write(path, value, tx);
    const steps: (() => Promise<XsResult<void>>)[] = [
      () => dom0.mkdir(fe, tx),
      () => dom0.setPerms(fe, [{ id: vif.frontendDomid, perm: 'n' }, { id: vif.backendDomid, perm: 'r' }], tx),
      () => dom0.mkdir(be, tx),
      () => dom0.setPerms(be, [{ id: vif.backendDomid, perm: 'n' }, { id: vif.frontendDomid, perm: 'r' }], tx),
      w(`${fe}/${VifKey.backend}`, be),
      w(`${fe}/${VifKey.backendId}`, String(vif.backendDomid)),
      w(`${fe}/${VifKey.handle}`, String(vif.devid)),
      w(`${fe}/${VifKey.mac}`, vif.mac),
      w(`${fe}/${VifKey.state}`, init),
      w(`${be}/${VifKey.frontend}`, fe),
      w(`${be}/${VifKey.frontendId}`, String(vif.frontendDomid)),
      w(`${be}/${VifKey.handle}`, String(vif.devid)),
      w(`${be}/${VifKey.mac}`, vif.mac),
      w(`${be}/${VifKey.online}`, '1'),
      w(`${be}/${VifKey.state}`, init),
    ];
    if (vif.hotplugConnected ?? true) steps.push(w(`${be}/${VifKey.hotplugStatus}`, 'connected'));
    return runSteps(steps);
  });
}

/**
 * Destroys a domain as the toolstack does: removes its home (unless told not to), then releases it from the store,
 * which fires @releaseDomain.
 */
export async function toolstackDestroyDomain(
  store: XenStore,
  dom0: XsClient,
  domid: number,
  removeHome = true,
): Promise<XsResult<void>> {
  if (removeHome) {
    const r = await dom0.rm(`/local/domain/${domid}`);
    if (!r.ok) return r;
  }
  return store.releaseDomain(domid);
}

/** Called when the other end's state changes; `vanished` says its node or its domain is gone. */
export type OtherendListener = (state: XenbusState, vanished: boolean) => void | Promise<void>;

/** Runs before each step of setBackendState (connect before Connected, disconnect before Closing...). */
export type StepHook = (from: XenbusState, to: XenbusState) => Promise<Result<void>>;

/**
 * One end of a split device, bound to a xenstore client (Linux's struct xenbus_device): switches its own `state`
 * key, refusing steps its role never takes, and follows the other end's `state`. A peer whose state node goes away
 * or whose domain is released is reported as Closed with `vanished` set.
 *
 * Concurrency: listeners run one at a time in event order; a listener must not wait for the other end itself.
 */
export class XenbusDevice {
  private own: XenbusState;
  private other: XenbusState;
  private vanishedNow = false;
  private domainGone = false;
  private lastError: string | null = null;
  private readonly listeners = new Set<OtherendListener>();
  private readonly otherWaiters: { pred: (s: XenbusState, v: boolean) => boolean; resolve: (s: XenbusState) => void }[] = [];
  private readonly ownWaiters: { state: XenbusState; resolve: () => void }[] = [];
  private readonly watches: XsWatchHandle[] = [];
  private chain: Promise<void> = Promise.resolve();
  private stateLock: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly client: XsClient,
    readonly role: XenbusRole,
    readonly nodename: string,
    readonly otherend: string,
    readonly otherendId: number,
    own: XenbusState,
    other: XenbusState,
  ) {
    this.own = own;
    this.other = other;
  }

  /**
   * Opens the device at `nodename`: reads its state and the other end's path and id (`backend`/`backend-id` for
   * a frontend, `frontend`/`frontend-id` for a backend; xenbus_probe.c xenbus_read_otherend_details), then
   * watches the other end's state and @releaseDomain.
   */
  static async open(client: XsClient, role: XenbusRole, nodename: string): Promise<Result<XenbusDevice>> {
    const ownRaw = await client.read(`${nodename}/${VifKey.state}`);
    if (!ownRaw.ok) return err(`cannot read ${nodename}/${VifKey.state}: ${ownRaw.error}`);
    const own = parseXenbusState(ownRaw.value);
    if (!own.ok) return own;
    const pathKey = role === 'frontend' ? VifKey.backend : VifKey.frontend;
    const idKey = role === 'frontend' ? VifKey.backendId : VifKey.frontendId;
    const otherend = await client.read(`${nodename}/${pathKey}`);
    if (!otherend.ok) return err(`cannot read ${nodename}/${pathKey}: ${otherend.error}`);
    if (!/^(\/[A-Za-z0-9\-_@]+)+$/.test(otherend.value)) {
      return err(`${pathKey} is corrupt: expected an absolute xenstore path but got ${quote(otherend.value)}`);
    }
    const otherId = await readXenbusUnsigned(client, nodename, idKey, DOMID_FIRST_RESERVED - 1);
    if (!otherId.ok) return otherId;
    const otherRaw = await client.read(`${otherend.value}/${VifKey.state}`);
    if (!otherRaw.ok) return err(`cannot read ${otherend.value}/${VifKey.state}: ${otherRaw.error}`);
    const otherState = parseXenbusState(otherRaw.value);
    const dev = new XenbusDevice(
      client,
      role,
      nodename,
      otherend.value,
      otherId.value,
      own.value,
      otherState.ok ? otherState.value : XenbusStateUnknown,
    );
    if (!otherState.ok) dev.lastError = otherState.error;
    const w1 = await client.watch(`${otherend.value}/${VifKey.state}`, () => dev.enqueue(() => dev.refresh()));
    if (!w1.ok) return err(`cannot watch ${otherend.value}/${VifKey.state}: ${w1.error}`);
    dev.watches.push(w1.value);
    const w2 = await client.watch(XS_RELEASE_DOMAIN, () => dev.enqueue(() => dev.checkDomain()));
    if (!w2.ok) {
      await dev.close();
      return err(`cannot watch ${XS_RELEASE_DOMAIN}: ${w2.error}`);
    }
    dev.watches.push(w2.value);
    return ok(dev);
  }

  /** This end's state, as last written by switchState. */
  get state(): XenbusState {
    return this.own;
  }

  /** The other end's state as last seen: Closed once it vanished, Unknown if it wrote garbage. */
  get otherendState(): XenbusState {
    return this.other;
  }

  /** Whether the other end's state node or domain is gone. */
  get peerVanished(): boolean {
    return this.vanishedNow;
  }

  /** Why the other end's last state could not be used (a corrupt value), or null. */
  get otherendError(): string | null {
    return this.lastError;
  }

  private enqueue(job: () => Promise<void>): void {
    this.chain = this.chain.then(job, job);
  }

  // otherend_changed: read the other end's state again; a node we can no longer read has vanished.
  private async refresh(): Promise<void> {
    if (this.closed) return;
    if (this.domainGone) return this.update(XenbusStateClosed, true);
    const r = await this.client.read(`${this.otherend}/${VifKey.state}`);
    if (!r.ok) {
      if (r.error === 'ENOENT' || r.error === 'EACCES') return this.update(XenbusStateClosed, true);
      return; // EIO: our own connection is gone; nothing more to learn.
    }
    const s = parseXenbusState(r.value);
    this.lastError = s.ok ? null : s.error;
    return this.update(s.ok ? s.value : XenbusStateUnknown, false);
  }

  // @releaseDomain says some domain died; only dom0 may ask which (XS_IS_DOMAIN_INTRODUCED is privileged).
  private async checkDomain(): Promise<void> {
    if (this.closed || this.domainGone) return;
    const r = await this.client.isDomainIntroduced(this.otherendId);
    if (!r.ok || r.value) return;
    this.domainGone = true;
    return this.update(XenbusStateClosed, true);
  }

  private async update(state: XenbusState, vanished: boolean): Promise<void> {
    if (state === this.other && vanished === this.vanishedNow) return;
    this.other = state;
    this.vanishedNow = vanished;
    for (const l of [...this.listeners]) await l(state, vanished);
    for (let i = this.otherWaiters.length - 1; i >= 0; i--) {
      const w = this.otherWaiters[i]!;
      if (w.pred(state, vanished)) {
        this.otherWaiters.splice(i, 1);
        w.resolve(state);
      }
    }
  }

  /**
   * Calls `listener` with the other end's current state, then on every change of it (as Linux's otherend watch
   * fires once when registered); returns the function that removes it.
   */
  onOtherendChanged(listener: OtherendListener): () => void {
    this.listeners.add(listener);
    this.enqueue(async () => {
      if (!this.closed && this.listeners.has(listener)) await listener(this.other, this.vanishedNow);
    });
    return () => this.listeners.delete(listener);
  }

  /** Resolves with the other end's state once `pred` holds (at once if it already does); no polling. */
  waitForOtherend(pred: (state: XenbusState, vanished: boolean) => boolean): Promise<XenbusState> {
    if (pred(this.other, this.vanishedNow)) return Promise.resolve(this.other);
    return new Promise((resolve) => this.otherWaiters.push({ pred, resolve }));
  }

  /** Resolves once this end has switched to `state` (at once if it is there). */
  waitForState(state: XenbusState): Promise<void> {
    if (this.own === state) return Promise.resolve();
    return new Promise((resolve) => this.ownWaiters.push({ state, resolve }));
  }

  /**
   * Switches this end to `to` (xenbus_client.c __xenbus_switch_state): refuses a step its role never takes; in a
   * transaction retried on EAGAIN, writes the new state only if the state node still exists, so a directory
   * being torn down is not resurrected. As in Linux, the cached state moves on even then. Same state: no-op.
   * State changes of one device run one at a time.
   */
  switchState(to: XenbusState): Promise<Result<void>> {
    return this.locked(() => this.doSwitch(to));
  }

  // State changes run one at a time, so a walk computed from `own` is never interleaved with another change.
  private locked<T>(job: () => Promise<T>): Promise<T> {
    const run = this.stateLock.then(job);
    this.stateLock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async doSwitch(to: XenbusState): Promise<Result<void>> {
    if (to === this.own) return ok(undefined);
    const legal = checkTransition(this.role, this.own, to);
    if (!legal.ok) return legal;
    const key = `${this.nodename}/${VifKey.state}`;
    const r = await withTransaction(this.client, async (tx): Promise<XsResult<boolean>> => {
      const cur = await this.client.read(key, tx);
      if (!cur.ok) return cur.error === 'ENOENT' ? { ok: true, value: false } : cur;
      const w = await this.client.write(key, String(to), tx);
      return w.ok ? { ok: true, value: true } : w;
    });
    if (!r.ok) return err(`cannot switch ${this.nodename} to ${xenbusStateName(to)}: ${r.error}`);
    this.own = to;
    for (let i = this.ownWaiters.length - 1; i >= 0; i--) {
      if (this.ownWaiters[i]!.state === to) this.ownWaiters.splice(i, 1)[0]!.resolve();
    }
    return ok(undefined);
  }

  /**
   * Moves a backend to `target` by set_backend_state's path, calling `hook` before each step (backend_connect
   * before Connected, backend_disconnect before leaving Connected). Stops at the first failure. The whole walk
   * holds the device's state lock: a hook must not switch this device's state itself.
   */
  setBackendState(target: XenbusState, hook?: StepHook): Promise<Result<void>> {
    if (this.role !== 'backend') return Promise.resolve(err('setBackendState is for a backend'));
    return this.locked(async () => {
      const path = backendStatePath(this.own, target);
      if (!path.ok) return path;
      for (const step of path.value) {
        if (hook !== undefined) {
          const h = await hook(this.own, step);
          if (!h.ok) return h;
        }
        const r = await this.doSwitch(step);
        if (!r.ok) return r;
      }
      return ok(undefined);
    });
  }

  /** Stops following the other end: removes the watches and listeners. Pending waits stay pending. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listeners.clear();
    for (const w of this.watches.splice(0)) await this.client.unwatch(w);
  }
}
