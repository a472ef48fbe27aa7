// Exact XenbusState transitions for the simulator's event log: an XsClient that passes every call through and
// reports each committed write of a vif's `state` key (a write outside a transaction at once, one inside a
// transaction when the transaction commits; an aborted or retried transaction reports nothing). Every step of every
// handshake and teardown (Closing, Closed, Initialising...) is then in the log, however fast it went.

import { xenbusStateName } from '../../shared/xenbus.js';
import type { XsClient, XsPerm, XsResult, XsWatchHandle, XsWatchHandler } from '../../shared/xenstore-protocol.js';

/** `/local/domain/<fe>/device/vif/<devid>/state` or `/local/domain/<be>/backend/vif/<fe>/<devid>/state`. */
const VIF_STATE = /^\/local\/domain\/\d+\/(?:device\/vif\/(\d+)|backend\/vif\/(\d+)\/(\d+))\/state$/;

/** Called for each committed state write: the vif (`vif<fe>.<devid>`) and the state's name. */
export type StateWriteListener = (vif: string, state: string) => void;

/** The device a state path belongs to, e.g. `vif3.0`, or null for any other path. */
export function vifOfStatePath(path: string): string | null {
  const m = VIF_STATE.exec(path);
  if (m === null) return null;
  return m[1] !== undefined ? `vif${/^\/local\/domain\/(\d+)\//.exec(path)![1]!}.${m[1]}` : `vif${m[2]!}.${m[3]!}`;
}

/** An XsClient that reports committed vif state writes to a listener. */
export class StateLoggingClient implements XsClient {
  readonly domid: number;
  private readonly pending = new Map<number, [string, string][]>();

  constructor(
    private readonly inner: XsClient,
    private readonly listener: StateWriteListener,
  ) {
    this.domid = inner.domid;
  }

  read(path: string, tx?: number): Promise<XsResult<string>> {
    return this.inner.read(path, tx);
  }

  async write(path: string, value: string, tx?: number): Promise<XsResult<void>> {
    const r = await this.inner.write(path, value, tx);
    const vif = r.ok ? vifOfStatePath(path) : null;
    if (vif !== null) {
      const name = /^[0-9]+$/.test(value) ? xenbusStateName(Number(value)) : JSON.stringify(value);
      if (tx === undefined || tx === 0) this.listener(vif, name);
      else {
        const list = this.pending.get(tx);
        if (list === undefined) this.pending.set(tx, [[vif, name]]);
        else list.push([vif, name]);
      }
    }
    return r;
  }

  mkdir(path: string, tx?: number): Promise<XsResult<void>> {
    return this.inner.mkdir(path, tx);
  }

  rm(path: string, tx?: number): Promise<XsResult<void>> {
    return this.inner.rm(path, tx);
  }

  directory(path: string, tx?: number): Promise<XsResult<string[]>> {
    return this.inner.directory(path, tx);
  }

  getPerms(path: string, tx?: number): Promise<XsResult<XsPerm[]>> {
    return this.inner.getPerms(path, tx);
  }

  setPerms(path: string, perms: readonly XsPerm[], tx?: number): Promise<XsResult<void>> {
    return this.inner.setPerms(path, perms, tx);
  }

  transactionStart(): Promise<XsResult<number>> {
    return this.inner.transactionStart();
  }

  async transactionEnd(tx: number, commit: boolean): Promise<XsResult<void>> {
    const r = await this.inner.transactionEnd(tx, commit);
    const list = this.pending.get(tx);
    this.pending.delete(tx);
    if (r.ok && commit && list !== undefined) for (const [vif, name] of list) this.listener(vif, name);
    return r;
  }

  getDomainPath(domid: number): Promise<XsResult<string>> {
    return this.inner.getDomainPath(domid);
  }

  isDomainIntroduced(domid: number): Promise<XsResult<boolean>> {
    return this.inner.isDomainIntroduced(domid);
  }

  watch(path: string, handler: XsWatchHandler): Promise<XsResult<XsWatchHandle>> {
    return this.inner.watch(path, handler);
  }

  unwatch(handle: XsWatchHandle): Promise<XsResult<void>> {
    return this.inner.unwatch(handle);
  }

  close(): void {
    this.pending.clear();
    this.inner.close();
  }
}
