// The backend side of the vif handshake (drivers/net/xen-netback/xenbus.c): netback_probe advertises the features
// and creates the vif; frontend_changed drives set_backend_state; connect() reads the frontend's keys, maps the
// two rings (refusing impossible ring indices, -EIO), binds the event channel(s) and connects the vif's data path;
// leaving Connected disconnects: both directions stop, the RX queue is binned, and the vif waits until every grant
// the stack still holds has come back (the backend's loop keeps running flushDealloc) before the rings are
// unmapped and the ports closed. A vanished frontend (its domain died) is never notified again.
//
// Departures from Linux, on purpose:
// - One queue: multi-queue-max-queues is 1 and no control ring is offered (no feature-ctrl-ring).
// - Frontend keys that are not unsigned decimals are fatal (xenbus_read_unsigned would read the default).
// - request-rx-copy missing or 0 is xenbus_dev_fatal (Linux's connect() ignores read_xenbus_vif_flags' -EOPNOTSUPP).
// - A failed connect does not write Connected after the fatal error (Linux's set_backend_state goes on to).
// - The Connected write waits for hotplug-status=connected as Linux's deferred backend_switch_state does, but the
//   data path is connected at the same moment rather than before.
// - There is no rate (credit) support; the `rate` key is not read.

import type { Clock, TimerId } from '../shared/clock.js';
import { parseMac } from '../shared/ether.js';
import type { EvtchnDomain } from '../shared/evtchn.js';
import { GNTMAP_host_map, GNTST_okay, gntstName } from '../shared/gnttab.js';
import type { GrantMapper } from '../shared/gnttab-mapper.js';
import type { GrantReturnPort } from '../shared/grant-return.js';
import { XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6, XEN_NETIF_RX_SLOT_SIZE, XEN_NETIF_TX_SLOT_SIZE } from '../shared/netif.js';
import { err, ok, type Result } from '../shared/result.js';
import { attachBackRing, type BackRing } from '../shared/ring.js';
import {
  VifKey,
  XenbusDevice,
  XenbusStateClosed,
  XenbusStateConnected,
  XenbusStateClosing,
  XenbusStateInitWait,
  XenbusStateInitialised,
  netbackFrontendChanged,
  parseXenbusUnsigned,
  writeXenbusKeys,
  type XenbusState,
} from '../shared/xenbus.js';
import type { XsClient, XsWatchHandle } from '../shared/xenstore-protocol.js';
import type { NetbackLog } from './netback.js';
import type { Xenvif, XenvifFeatures } from './xenvif.js';

/** Queues this netback offers (xenvif_max_queues; multi-queue is not modelled). */
export const NETBACK_MAX_QUEUES = 1;
/** How often a teardown waiting for grants says which are still mapped (the old xenvif_wait_unmap_timeout). */
export const NETBACK_UNMAP_WARN_MS = 1000;

// errno values xenbus_dev_fatal reports (include/uapi/asm-generic/errno*.h).
const ENOENT = 2;
const EIO = 5;
const EINVAL = 22;
const EOPNOTSUPP = 95;

/** Options of one backend device. */
export interface NetbackXenbusOptions {
  /** The backend domain's xenstore connection. */
  readonly client: XsClient;
  /** The backend directory, /local/domain/<be>/backend/vif/<fe>/<devid>. */
  readonly nodename: string;
  readonly mapper: GrantMapper;
  /** The backend domain's event channels (bind_interdomain, notify, handlers). */
  readonly evtchn: EvtchnDomain;
  /** backend_create_xenvif: makes the vif (and puts it on the bridge). */
  readonly createVif: (frontendDomid: number, handle: number) => Xenvif;
  /** netback_remove: the vif is freed (take it off the bridge). */
  readonly destroyVif?: (vif: Xenvif) => void;
  /** Where the frontend's grant-return notices go. */
  readonly grantReturnPort?: GrantReturnPort | null;
  /** For the periodic "Page still granted!" report during teardown. */
  readonly clock?: Clock;
  readonly log?: NetbackLog;
  readonly maxQueues?: number;
}

// What connect() acquired, undone in reverse by teardown.
interface DataPath {
  txHandle: number;
  rxHandle: number;
  ports: number[];
}

/** netback's xenbus driver for one vif device (struct backend_info). */
export class NetbackXenbus {
  /** The vif (created at probe). */
  vif: Xenvif | null = null;
  /** The last xenbus_dev_fatal message, exactly, or null. */
  lastError: string | null = null;
  /** Successful connects. */
  connects = 0;
  /** Set once netback_remove ran (the device is unregistered). */
  removed = false;

  private data: DataPath | null = null;
  private hotplugWatch: XsWatchHandle | null = null;
  private unlisten: (() => void) | null = null;
  private readonly maxQueues: number;

  private constructor(
    private readonly opts: NetbackXenbusOptions,
    readonly dev: XenbusDevice,
  ) {
    this.maxQueues = opts.maxQueues ?? NETBACK_MAX_QUEUES;
  }

  /**
   * netback_probe: opens the device, writes the features (one transaction, retried on EAGAIN), reads `handle`,
   * creates the vif and starts following the frontend (which moves us to InitWait).
   */
  static async probe(opts: NetbackXenbusOptions): Promise<Result<NetbackXenbus>> {
    const dev = await XenbusDevice.open(opts.client, 'backend', opts.nodename);
    if (!dev.ok) return dev;
    const be = new NetbackXenbus(opts, dev.value);
    const nodename = opts.nodename;
    const w = await writeXenbusKeys(opts.client, nodename, [
      [VifKey.featureSg, '1'],
      [VifKey.featureGsoTcpv4, '1'],
      [VifKey.featureGsoTcpv6, '1'],
      [VifKey.featureIpv6CsumOffload, '1'],
      [VifKey.featureRxCopy, '1'],
      ['feature-rx-flip', '0'],
      [VifKey.featureMulticastControl, '1'],
      ['feature-dynamic-multicast-control', '1'],
    ]);
    if (!w.ok) {
      await be.fatal(EIO, `completing transaction: ${w.error}`);
      await dev.value.close();
      return err(be.lastError!);
    }
    // Optional features, outside the transaction as in Linux.
    await opts.client.write(`${nodename}/${VifKey.featureSplitEventChannels}`, '1');
    await opts.client.write(`${nodename}/${VifKey.multiQueueMaxQueues}`, String(be.maxQueues));
    const h = await opts.client.read(`${nodename}/${VifKey.handle}`);
    const handle = h.ok ? parseXenbusUnsigned(VifKey.handle, h.value) : err<number>(`cannot read ${nodename}/${VifKey.handle}: ${h.error}`);
    if (!handle.ok) {
      await be.fatal(EINVAL, `reading handle: ${handle.error}`);
      await dev.value.close();
      return err(be.lastError!);
    }
    be.vif = opts.createVif(dev.value.otherendId, handle.value);
    be.unlisten = dev.value.onOtherendChanged((state, vanished) => be.frontendChanged(state, vanished));
    return ok(be);
  }

  /** The backend's own state. */
  get state(): XenbusState {
    return this.dev.state;
  }

  /** The grants of the frontend still mapped (teardown waits for these). */
  stillMapped(): readonly { readonly pendingIdx: number; readonly gref: number; readonly state: string }[] {
    return this.vif === null ? [] : this.vif.heldGrants();
  }

  // frontend_changed.
  private async frontendChanged(state: XenbusState, vanished: boolean): Promise<void> {
    if (this.removed) return;
    const online = await this.readOnline();
    const r = netbackFrontendChanged(state, online, vanished);
    if (r.target === null) {
      if (state !== XenbusStateInitialised) await this.fatal(EINVAL, `saw state ${state} at frontend`);
      return;
    }
    if (r.target === XenbusStateConnected && !(await this.hotplugReady())) return;
    await this.setState(r.target);
    if (r.unregister) await this.remove();
  }

  private async readOnline(): Promise<boolean> {
    const r = await this.opts.client.read(`${this.opts.nodename}/${VifKey.online}`);
    return r.ok && r.value === '1';
  }

  // hotplug_status_changed: the Connected write waits for the hotplug script; the watch retries it.
  private async hotplugReady(): Promise<boolean> {
    const path = `${this.opts.nodename}/${VifKey.hotplugStatus}`;
    const r = await this.opts.client.read(path);
    if (r.ok && r.value === 'connected') return true;
    if (this.hotplugWatch === null) {
      const w = await this.opts.client.watch(path, () => void this.hotplugChanged());
      if (w.ok) this.hotplugWatch = w.value;
    }
    return false;
  }

  private async hotplugChanged(): Promise<void> {
    if (this.removed) return;
    const r = await this.opts.client.read(`${this.opts.nodename}/${VifKey.hotplugStatus}`);
    if (!r.ok || r.value !== 'connected') return;
    await this.unwatchHotplug();
    if (this.dev.otherendState === XenbusStateConnected && !this.dev.peerVanished) await this.setState(XenbusStateConnected);
  }

  private async unwatchHotplug(): Promise<void> {
    const w = this.hotplugWatch;
    this.hotplugWatch = null;
    if (w !== null) await this.opts.client.unwatch(w);
  }

  private pendingFatal: { errno: number; message: string } | null = null;

  // set_backend_state: backend_connect before Connected, backend_disconnect when leaving it.
  private async setState(target: XenbusState): Promise<void> {
    const r = await this.dev.setBackendState(target, async (from, to) => {
      if (from === XenbusStateInitWait && to === XenbusStateConnected) return this.connect();
      if (from === XenbusStateConnected) await this.disconnect();
      return ok(undefined);
    });
    const f = this.pendingFatal;
    if (f !== null) {
      this.pendingFatal = null;
      await this.fatal(f.errno, f.message);
      return;
    }
    if (!r.ok) this.lastError = r.error;
  }

  // A fatal error found inside a state step: reported once the walk has stopped (the state lock is held there).
  private fail(errno: number, message: string): Result<void> {
    this.pendingFatal = { errno, message };
    return err(message);
  }

  /**
   * xenbus_dev_fatal: writes "<errno> <message>" to error/<nodename>/error in the backend's home and switches to
   * Closing (from Connected that disconnects first).
   */
  private async fatal(errno: number, message: string): Promise<void> {
    this.lastError = message;
    this.opts.log?.('err', `${this.opts.nodename}: ${message}`);
    const m = /^(\/local\/domain\/\d+)\/(.+)$/.exec(this.opts.nodename);
    const path = m === null ? `${this.opts.nodename}/error` : `${m[1]}/error/${m[2]}/error`;
    await this.opts.client.write(path, `${errno} ${message}`);
    if (this.dev.state !== XenbusStateClosing) await this.setState(XenbusStateClosing);
  }

  private async readKey(dir: string, key: string, dflt: number | null): Promise<Result<number>> {
    const r = await this.opts.client.read(`${dir}/${key}`);
    if (!r.ok) {
      if (r.error === 'ENOENT' && dflt !== null) return ok(dflt);
      return err(`reading ${dir}/${key}: ${r.error}`);
    }
    return parseXenbusUnsigned(key, r.value);
  }

  // connect(): the frontend's keys, then the data rings, then the vif.
  private async connect(): Promise<Result<void>> {
    const vif = this.vif;
    if (vif === null) return ok(undefined);
    const fe = this.dev.otherend;
    const nodename = this.opts.nodename;
    const nq = await this.readKey(fe, VifKey.multiQueueNumQueues, 1);
    if (!nq.ok) return this.fail(EINVAL, nq.error);
    if (nq.value > this.maxQueues || nq.value === 0) {
      return this.fail(EINVAL, `guest requested ${nq.value} queues, exceeding the maximum of ${this.maxQueues}.`);
    }
    const macRaw = await this.opts.client.read(`${nodename}/${VifKey.mac}`);
    const mac = macRaw.ok ? parseMac(macRaw.value) : err<number>(macRaw.error);
    if (!mac.ok) return this.fail(ENOENT, `parsing ${nodename}/mac`);

    // read_xenbus_vif_flags.
    const rxCopy = await this.readKey(fe, VifKey.requestRxCopy, 0);
    if (!rxCopy.ok) return this.fail(EINVAL, rxCopy.error);
    if (rxCopy.value === 0) return this.fail(EOPNOTSUPP, `${fe}/request-rx-copy is not set: only the copying receive path is supported`);
    const flags: Record<string, number> = {};
    for (const key of [
      VifKey.featureRxNotify,
      VifKey.featureSg,
      VifKey.featureGsoTcpv4,
      VifKey.featureGsoTcpv6,
      VifKey.featureNoCsumOffload,
      VifKey.featureIpv6CsumOffload,
      VifKey.requestMulticastControl,
    ]) {
      const v = await this.readKey(fe, key, 0);
      if (!v.ok) return this.fail(EINVAL, v.error);
      flags[key] = v.value;
    }
    const features: XenvifFeatures = {
      canSg: flags[VifKey.featureSg] !== 0,
      gsoMask:
        (flags[VifKey.featureGsoTcpv4] !== 0 ? 1 << XEN_NETIF_GSO_TYPE_TCPV4 : 0) |
        (flags[VifKey.featureGsoTcpv6] !== 0 ? 1 << XEN_NETIF_GSO_TYPE_TCPV6 : 0),
      ipCsum: flags[VifKey.featureNoCsumOffload] === 0,
      ipv6Csum: flags[VifKey.featureIpv6CsumOffload] !== 0,
      rxNotify: flags[VifKey.featureRxNotify] !== 0,
      multicastControl: flags[VifKey.requestMulticastControl] !== 0,
    };

    // connect_data_rings.
    const txRef = await this.readKey(fe, VifKey.txRingRef, null);
    const rxRef = await this.readKey(fe, VifKey.rxRingRef, null);
    if (!txRef.ok || !rxRef.ok) return this.fail(ENOENT, `reading ${fe}/ring-ref`);
    let txEvt = await this.readKey(fe, VifKey.eventChannelTx, null);
    let rxEvt = await this.readKey(fe, VifKey.eventChannelRx, null);
    if (!txEvt.ok || !rxEvt.ok) {
      txEvt = await this.readKey(fe, VifKey.eventChannel, null);
      if (!txEvt.ok) return this.fail(ENOENT, `reading ${fe}/event-channel(-tx/rx)`);
      rxEvt = txEvt;
    }
    const what = `mapping shared-frames ${txRef.value}/${rxRef.value} port tx ${txEvt.value} rx ${rxEvt.value}`;
    const data: DataPath = { txHandle: -1, rxHandle: -1, ports: [] };
    const fail = (errno: number, why: string): Result<void> => {
      this.undo(data);
      return this.fail(errno, `${what}: ${why}`);
    };
    const tx = this.mapRing(txRef.value, XEN_NETIF_TX_SLOT_SIZE);
    if (!tx.ok) return fail(EIO, tx.error);
    data.txHandle = tx.value.handle;
    const rx = this.mapRing(rxRef.value, XEN_NETIF_RX_SLOT_SIZE);
    if (!rx.ok) return fail(EIO, rx.error);
    data.rxHandle = rx.value.handle;
    const evtchn = this.opts.evtchn;
    const txPort = evtchn.bindInterdomain(this.dev.otherendId, txEvt.value);
    if (!txPort.ok) return fail(EINVAL, txPort.error);
    data.ports.push(txPort.value);
    let rxPort = txPort.value;
    if (rxEvt.value !== txEvt.value) {
      const p = evtchn.bindInterdomain(this.dev.otherendId, rxEvt.value);
      if (!p.ok) return fail(EINVAL, p.error);
      data.ports.push(p.value);
      rxPort = p.value;
    }
    for (const port of data.ports) evtchn.bind(port, () => vif.interrupt());
    vif.connect({
      txRing: tx.value.ring,
      rxRing: rx.value.ring,
      txPort: evtchn.port(txPort.value),
      rxPort: evtchn.port(rxPort),
      features,
      grantReturnPort: this.opts.grantReturnPort ?? null,
    });
    this.data = data;
    this.connects++;
    return ok(undefined);
  }

  // xenbus_map_ring_valloc + BACK_RING_ATTACH with netback's index check.
  private mapRing(ref: number, entryBytes: number): Result<{ handle: number; ring: BackRing }> {
    const mapper = this.opts.mapper;
    const m = mapper.map({ dom: this.dev.otherendId, ref, flags: GNTMAP_host_map });
    if (m.status !== GNTST_okay || m.bytes === null) return err(`ring grant ${ref}: ${gntstName(m.status)}`);
    const r = attachBackRing(m.bytes.buffer as SharedArrayBuffer, m.bytes.byteOffset, entryBytes);
    if (!r.ok) {
      mapper.unmap(m.handle);
      return err(r.error);
    }
    return ok({ handle: m.handle, ring: r.value });
  }

  private undo(data: DataPath): void {
    const evtchn = this.opts.evtchn;
    for (const port of data.ports.splice(0).reverse()) {
      evtchn.unbind(port);
      evtchn.close(port);
    }
    if (data.rxHandle >= 0) this.opts.mapper.unmap(data.rxHandle);
    if (data.txHandle >= 0) this.opts.mapper.unmap(data.txHandle);
    data.rxHandle = -1;
    data.txHandle = -1;
  }

  // backend_disconnect: stop the vif, wait until the stack gave back every grant, then unmap and close.
  private async disconnect(): Promise<void> {
    const vif = this.vif;
    const data = this.data;
    if (vif === null || data === null) return;
    vif.beginDisconnect(this.dev.peerVanished);
    const clock = this.opts.clock;
    let timer: TimerId | undefined;
    if (clock !== undefined && !vif.isDrained()) {
      const warn = (): void => {
        for (const g of vif.heldGrants()) vif.log('err', `Page still granted! Index: ${g.pendingIdx.toString(16)} gref ${g.gref}`);
        timer = clock.schedule(NETBACK_UNMAP_WARN_MS, warn);
      };
      timer = clock.schedule(NETBACK_UNMAP_WARN_MS, warn);
    }
    await vif.whenDrained();
    if (timer !== undefined) clock!.cancel(timer);
    vif.finishDisconnect();
    this.undo(data);
    this.data = null;
  }

  /** netback_remove: Closed (disconnecting first), the vif freed, hotplug-status removed, the device closed. */
  async remove(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    this.unlisten?.();
    this.unlisten = null;
    const s = this.dev.state;
    if (s !== XenbusStateClosed) {
      await this.dev.setBackendState(XenbusStateClosed, async (from) => {
        if (from === XenbusStateConnected) await this.disconnect();
        return ok(undefined);
      });
    }
    await this.unwatchHotplug();
    await this.opts.client.rm(`${this.opts.nodename}/${VifKey.hotplugStatus}`);
    const vif = this.vif;
    this.vif = null;
    if (vif !== null) this.opts.destroyVif?.(vif);
    await this.dev.close();
  }
}
