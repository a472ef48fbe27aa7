// The frontend side of the vif handshake (drivers/net/xen-netfront.c talk_to_netback, netback_changed,
// xennet_remove/xennet_bus_close): read what the backend offers, set up and publish the rings and the event
// channel in ONE xenstore transaction retried on EAGAIN, go Connected; follow the backend to Closing/Closed
// (tearing the connection down and reclaiming grants), and start over on reconnect (a restarted backend).
//
// Departures from Linux: one queue, so the flat keys only (no multi-queue-num-queues, no queue-N/); no split
// event channels; feature values that are not unsigned decimals make the connect fail instead of reading as 0.

import type { Clock } from '../shared/clock.js';
import { err, ok, type Result } from '../shared/result.js';
import {
  VifKey,
  XenbusDevice,
  XenbusStateClosed,
  XenbusStateClosing,
  XenbusStateConnected,
  XenbusStateInitialising,
  XenbusStateInitWait,
  netfrontBackendChanged,
  parseXenbusUnsigned,
  writeXenbusKeys,
  xenbusStateName,
  type XenbusState,
} from '../shared/xenbus.js';
import type { XsClient } from '../shared/xenstore-protocol.js';
import type { NetbackFeatures, Netfront, NetfrontRings } from './netfront.js';

/** How long xennet_bus_close waits for the backend at each step (5 * HZ in xen-netfront.c), ms. */
export const NETFRONT_CLOSE_TIMEOUT_MS = 5000;

async function readFeature(client: XsClient, dir: string, key: string): Promise<Result<number>> {
  const r = await client.read(`${dir}/${key}`);
  if (!r.ok) return r.error === 'ENOENT' ? ok(0) : err(`cannot read ${dir}/${key}: ${r.error}`);
  return parseXenbusUnsigned(key, r.value);
}

/**
 * Reads the backend's feature keys (xenbus_read_unsigned with default 0): feature-sg, feature-gso-tcpv4,
 * feature-rx-copy, multi-queue-max-queues, feature-split-event-channels. Garbage values are refused.
 */
export async function readNetbackFeatures(client: XsClient, backendPath: string): Promise<Result<NetbackFeatures>> {
  const sg = await readFeature(client, backendPath, VifKey.featureSg);
  if (!sg.ok) return sg;
  const gso = await readFeature(client, backendPath, VifKey.featureGsoTcpv4);
  if (!gso.ok) return gso;
  const rxCopy = await readFeature(client, backendPath, VifKey.featureRxCopy);
  if (!rxCopy.ok) return rxCopy;
  const mq = await readFeature(client, backendPath, VifKey.multiQueueMaxQueues);
  if (!mq.ok) return mq;
  const split = await readFeature(client, backendPath, VifKey.featureSplitEventChannels);
  if (!split.ok) return split;
  return ok({
    sg: sg.value !== 0,
    gsoTcpv4: gso.value !== 0,
    rxCopy: rxCopy.value !== 0,
    multiQueueMaxQueues: Math.max(1, mq.value),
    splitEventChannels: split.value !== 0,
  });
}

/** The keys talk_to_netback writes for one queue with one event channel, in Linux's order. */
export function netfrontKeys(rings: NetfrontRings): [string, string][] {
  return [
    [VifKey.txRingRef, String(rings.txRingRef)],
    [VifKey.rxRingRef, String(rings.rxRingRef)],
    [VifKey.eventChannel, String(rings.eventChannel)],
    [VifKey.requestRxCopy, '1'],
    [VifKey.featureRxNotify, '1'],
    [VifKey.featureSg, '1'],
    [VifKey.featureGsoTcpv4, '1'],
  ];
}

/**
 * talk_to_netback: reads the backend's features (feature-rx-copy is required), sets up the rings and event
 * channel, writes every key in one transaction retried on EAGAIN, then fills the RX ring. On failure the rings
 * are torn down again. The caller switches to Connected.
 */
export async function talkToNetback(client: XsClient, nodename: string, backendPath: string, nf: Netfront): Promise<Result<NetbackFeatures>> {
  const features = await readNetbackFeatures(client, backendPath);
  if (!features.ok) return features;
  if (!features.value.rxCopy) return err('backend does not support copying receive path');
  // A reconnect over a live connection starts from scratch (netfront_resume -> xennet_disconnect_backend).
  if (nf.connected || nf.eventChannel >= 0) nf.disconnect();
  const rings = nf.setupRings();
  if (!rings.ok) return err(`setting up rings: ${rings.error}`);
  const w = await writeXenbusKeys(client, nodename, netfrontKeys(rings.value));
  if (!w.ok) {
    nf.disconnect();
    return err(`completing transaction: ${w.error}`);
  }
  nf.connect(features.value);
  return features;
}

/** Options of a NetfrontXenbus. */
export interface NetfrontXenbusOptions {
  readonly client: XsClient;
  /** The frontend's device directory, /local/domain/<fe>/device/vif/<devid>. */
  readonly nodename: string;
  readonly netfront: Netfront;
  /** Times the waits of an orderly close. */
  readonly clock: Clock;
  /** Called after each successful connect (e.g. to give the traffic mix the backend's features). */
  readonly onConnected?: (features: NetbackFeatures) => void;
  /** Called after each teardown caused by the backend closing or vanishing. */
  readonly onDisconnected?: () => void;
}

/**
 * The frontend's xenbus driver (netback_changed): on backend InitWait, talk_to_netback and go Connected; on
 * backend Closing/Closed or a vanished backend, tear down (reclaiming grants) and go Closed. reconnect() starts
 * over for a restarted backend; close() is the orderly xennet_remove.
 */
export class NetfrontXenbus {
  /** The last failure (connect or close), exactly, or null. */
  lastError: string | null = null;
  /** How many times talk_to_netback succeeded. */
  connects = 0;
  private dev: XenbusDevice;
  private unlisten: (() => void) | null = null;

  private constructor(
    private readonly opts: NetfrontXenbusOptions,
    dev: XenbusDevice,
  ) {
    this.dev = dev;
  }

  /** Opens the device at opts.nodename and starts following the backend. */
  static async open(opts: NetfrontXenbusOptions): Promise<Result<NetfrontXenbus>> {
    const dev = await XenbusDevice.open(opts.client, 'frontend', opts.nodename);
    if (!dev.ok) return dev;
    const fx = new NetfrontXenbus(opts, dev.value);
    fx.follow();
    return ok(fx);
  }

  /** The underlying device (own and backend state). */
  get device(): XenbusDevice {
    return this.dev;
  }

  /** This end's state. */
  get state(): XenbusState {
    return this.dev.state;
  }

  private follow(): void {
    this.unlisten = this.dev.onOtherendChanged((state, vanished) => this.backendChanged(state, vanished));
  }

  private async backendChanged(state: XenbusState, vanished: boolean): Promise<void> {
    const dev = this.dev;
    const nf = this.opts.netfront;
    const target = netfrontBackendChanged(dev.state, vanished ? XenbusStateClosed : state);
    if (target === XenbusStateConnected) {
      const r = await talkToNetback(this.opts.client, dev.nodename, dev.otherend, nf);
      if (!r.ok) {
        // xenbus_dev_fatal: report and go Closing.
        this.lastError = r.error;
        await this.switchTo(XenbusStateClosing);
        return;
      }
      const s = await this.switchTo(XenbusStateConnected);
      if (!s) {
        nf.disconnect();
        return;
      }
      this.connects++;
      this.opts.onConnected?.(r.value);
      return;
    }
    if (target === XenbusStateClosed) {
      // xenbus_frontend_closed: the backend is gone or going; take everything back.
      if (nf.connected || nf.eventChannel >= 0) {
        nf.disconnect();
        this.opts.onDisconnected?.();
      }
      await this.switchTo(XenbusStateClosed);
    }
  }

  private async switchTo(to: XenbusState): Promise<boolean> {
    const r = await this.dev.switchState(to);
    if (!r.ok) this.lastError = r.error;
    return r.ok;
  }

  /** Resolves once both ends are Connected, or with false after `timeoutMs` (default: wait forever). */
  async waitConnected(timeoutMs = Infinity): Promise<boolean> {
    const both = Promise.all([this.dev.waitForState(XenbusStateConnected), this.dev.waitForOtherend((s) => s === XenbusStateConnected)]).then(() => true);
    return this.withTimeout(both, timeoutMs, false);
  }

  /**
   * Starts over after the backend closed or vanished (a restarted backend, or resume): reopens the device if the
   * backend's domain went away, and goes Closed -> Initialising so the next backend InitWait connects again.
   */
  async reconnect(): Promise<Result<void>> {
    const nf = this.opts.netfront;
    if (this.dev.state !== XenbusStateClosed) return err(`reconnect: frontend is ${xenbusStateName(this.dev.state)}, expected Closed`);
    if (nf.connected || nf.eventChannel >= 0) nf.disconnect();
    nf.retryRevokes();
    if (this.dev.peerVanished) {
      // XenbusDevice keeps a vanished peer vanished: follow the new backend through a fresh device.
      this.unlisten?.();
      await this.dev.close();
      const dev = await XenbusDevice.open(this.opts.client, 'frontend', this.opts.nodename);
      if (!dev.ok) return dev;
      this.dev = dev.value;
      const s = await this.dev.switchState(XenbusStateInitialising);
      if (!s.ok) return s;
      this.follow();
      return ok(undefined);
    }
    const s = await this.dev.switchState(XenbusStateInitialising);
    return s.ok ? ok(undefined) : s;
  }

  /**
   * The orderly close (xennet_remove -> xennet_bus_close): Closing, wait for the backend to close (or vanish),
   * Closed, wait again, then tear the connection down. Each wait gives up after `timeoutMs`, as Linux's does;
   * a timeout is reported in lastError. Stops following the backend.
   */
  async close(timeoutMs = NETFRONT_CLOSE_TIMEOUT_MS): Promise<Result<void>> {
    const nf = this.opts.netfront;
    const dev = this.dev;
    let result: Result<void> = ok(undefined);
    const closedOrGone = (s: XenbusState, v: boolean): boolean => v || s === XenbusStateClosed;
    if (dev.state !== XenbusStateClosed && !dev.peerVanished) {
      const s1 = await dev.switchState(XenbusStateClosing);
      if (!s1.ok) result = s1;
      const w1 = await this.withTimeout(
        dev.waitForOtherend((s, v) => v || s === XenbusStateClosing || s === XenbusStateClosed || s === XenbusStateInitWait).then(() => true),
        timeoutMs,
        false,
      );
      if (!w1 && result.ok) result = err(`backend did not close within ${timeoutMs} ms: it is ${xenbusStateName(dev.otherendState)}`);
      const s2 = await dev.switchState(XenbusStateClosed);
      if (!s2.ok && result.ok) result = s2;
      const w2 = await this.withTimeout(dev.waitForOtherend(closedOrGone).then(() => true), timeoutMs, false);
      if (!w2 && result.ok) result = err(`backend did not reach Closed within ${timeoutMs} ms: it is ${xenbusStateName(dev.otherendState)}`);
    } else if (dev.state !== XenbusStateClosed) {
      const s = await dev.switchState(XenbusStateClosed);
      if (!s.ok) result = s;
    }
    this.unlisten?.();
    this.unlisten = null;
    if (nf.connected || nf.eventChannel >= 0) nf.disconnect();
    await dev.close();
    if (!result.ok) this.lastError = result.error;
    return result;
  }

  private withTimeout<T>(p: Promise<T>, ms: number, onTimeout: T): Promise<T> {
    if (ms === Infinity) return p;
    return new Promise<T>((resolve) => {
      const id = this.opts.clock.schedule(ms, () => resolve(onTimeout));
      void p.then((v) => {
        this.opts.clock.cancel(id);
        resolve(v);
      });
    });
  }
}
