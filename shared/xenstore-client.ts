// Reaching a xenstore connection from anywhere: the main thread exposes a connection on a MessagePort with comlink
// (requests) and posts watch events on a second port; a worker wraps both ports in an XenstoreClient. The same
// client class also wraps a connection in this thread, so drivers are written once against XsClient.

import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import type { XenStore, XsConnection } from './xenstore.js';
import type {
  XsClient,
  XsConnectionApi,
  XsPerm,
  XsResult,
  XsWatchEventMessage,
  XsWatchHandle,
  XsWatchHandler,
  XsWorkerPorts,
} from './xenstore-protocol.js';

// The connection API whether it answers at once (same thread) or through a promise (comlink).
type AnyConnectionApi = {
  [K in keyof XsConnectionApi]: XsConnectionApi[K] extends (...a: infer A) => infer R
    ? (...a: A) => R | Promise<R>
    : never;
};

/** The main thread's end of one exposed connection. */
export interface XenstoreChannel {
  /** Pass these to the worker (workerData), with `transferList` in the Worker options. */
  readonly ports: XsWorkerPorts;
  readonly transferList: MessagePort[];
  /** Closes the connection (dropping its watches and transactions) and both ports. */
  close(): void;
  /** Settles once the channel is closed, by `close()` or because the worker's end went away. */
  readonly closed: Promise<void>;
}

/**
 * Opens a connection for `domid` and exposes it over comlink (main thread side). Only the XsConnectionApi methods
 * are reachable from the worker; watch events are posted as XsWatchEventMessage on the event port. The
 * connection closes when either port is closed, as xenstored closes a connection whose socket went away.
 */
export function exposeXenstoreConnection(store: XenStore, domid: number): XsResult<XenstoreChannel> {
  const opened = store.connect(domid);
  if (!opened.ok) return opened;
  const conn = opened.value;
  const ctrl = new MessageChannel();
  const events = new MessageChannel();
  const api = connectionFacade(conn);
  Comlink.expose(api, nodeEndpoint(ctrl.port1));
  conn.setWatchSink((path, token) => {
    const msg: XsWatchEventMessage = { type: 'watch_event', path, token };
    events.port1.postMessage(msg);
  });
  let isClosed = false;
  let settle: () => void = () => {};
  const closed = new Promise<void>((resolve) => (settle = resolve));
  const close = (): void => {
    if (isClosed) return;
    isClosed = true;
    conn.setWatchSink(null);
    conn.close();
    ctrl.port1.close();
    events.port1.close();
    settle();
  };
  ctrl.port1.once('close', close);
  events.port1.once('close', close);
  return {
    ok: true,
    value: {
      ports: { domid, ctrlPort: ctrl.port2, eventPort: events.port2 },
      transferList: [ctrl.port2, events.port2],
      close,
      closed,
    },
  };
}

// Only the protocol's methods cross the boundary: the worker cannot reach setWatchSink, close or internals.
function connectionFacade(conn: XsConnection): XsConnectionApi {
  return {
    read: (path, tx) => conn.read(path, tx),
    write: (path, value, tx) => conn.write(path, value, tx),
    mkdir: (path, tx) => conn.mkdir(path, tx),
    rm: (path, tx) => conn.rm(path, tx),
    directory: (path, tx) => conn.directory(path, tx),
    getPerms: (path, tx) => conn.getPerms(path, tx),
    setPerms: (path, perms, tx) => conn.setPerms(path, perms, tx),
    transactionStart: () => conn.transactionStart(),
    transactionEnd: (tx, commit) => conn.transactionEnd(tx, commit),
    watch: (path, token) => conn.watch(path, token),
    unwatch: (path, token) => conn.unwatch(path, token),
    resetWatches: () => conn.resetWatches(),
    getDomainPath: (domid) => conn.getDomainPath(domid),
    isDomainIntroduced: (domid) => conn.isDomainIntroduced(domid),
  };
}

/**
 * The asynchronous xenstore client: gives each watch a fresh token and routes events to its handler. Build it
 * with `XenstoreClient.local(conn)` in the store's thread or `XenstoreClient.remote(ports)` in a worker.
 * Handlers run from the event loop, never inside the request that raised the event.
 */
export class XenstoreClient implements XsClient {
  private readonly handlers = new Map<string, XsWatchHandler>();
  private nextToken = 1;

  private constructor(
    readonly domid: number,
    private readonly api: AnyConnectionApi,
    private readonly release: () => void,
  ) {}

  /** Wraps a connection of this thread, taking over its watch sink; events are delivered from a microtask. */
  static local(conn: XsConnection): XenstoreClient {
    const client = new XenstoreClient(conn.domid, conn, () => conn.setWatchSink(null));
    conn.setWatchSink((path, token) => queueMicrotask(() => client.dispatch(path, token)));
    return client;
  }

  /** Wraps the ports a worker received from exposeXenstoreConnection. */
  static remote(ports: XsWorkerPorts): XenstoreClient {
    const remote = Comlink.wrap<XsConnectionApi>(nodeEndpoint(ports.ctrlPort));
    const onEvent = (data: unknown): void => {
      // The main thread is trusted, but a message of the wrong shape is still dropped rather than dispatched.
      if (typeof data !== 'object' || data === null) return;
      const m = data as Partial<XsWatchEventMessage>;
      if (m.type !== 'watch_event' || typeof m.path !== 'string' || typeof m.token !== 'string') return;
      client.dispatch(m.path, m.token);
    };
    const client = new XenstoreClient(ports.domid, remote as unknown as AnyConnectionApi, () => {
      ports.eventPort.off('message', onEvent);
      remote[Comlink.releaseProxy]();
      ports.ctrlPort.close();
      ports.eventPort.close();
    });
    ports.eventPort.on('message', onEvent);
    return client;
  }

  private dispatch(path: string, token: string): void {
    // An event may still arrive for a watch just removed: drop it.
    this.handlers.get(token)?.(path, token);
  }

  async read(path: string, tx?: number): Promise<XsResult<string>> {
    return this.api.read(path, tx);
  }

  async write(path: string, value: string, tx?: number): Promise<XsResult<void>> {
    return this.api.write(path, value, tx);
  }

  async mkdir(path: string, tx?: number): Promise<XsResult<void>> {
    return this.api.mkdir(path, tx);
  }

  async rm(path: string, tx?: number): Promise<XsResult<void>> {
    return this.api.rm(path, tx);
  }

  async directory(path: string, tx?: number): Promise<XsResult<string[]>> {
    return this.api.directory(path, tx);
  }

  async getPerms(path: string, tx?: number): Promise<XsResult<XsPerm[]>> {
    return this.api.getPerms(path, tx);
  }

  async setPerms(path: string, perms: readonly XsPerm[], tx?: number): Promise<XsResult<void>> {
    return this.api.setPerms(path, perms, tx);
  }

  async transactionStart(): Promise<XsResult<number>> {
    return this.api.transactionStart();
  }

  async transactionEnd(tx: number, commit: boolean): Promise<XsResult<void>> {
    return this.api.transactionEnd(tx, commit);
  }

  async getDomainPath(domid: number): Promise<XsResult<string>> {
    return this.api.getDomainPath(domid);
  }

  async isDomainIntroduced(domid: number): Promise<XsResult<boolean>> {
    return this.api.isDomainIntroduced(domid);
  }

  async watch(path: string, handler: XsWatchHandler): Promise<XsResult<XsWatchHandle>> {
    const token = `w${this.nextToken++}`;
    // Registered before asking: the immediate event can overtake the reply.
    this.handlers.set(token, handler);
    const r = await this.api.watch(path, token);
    if (!r.ok) {
      this.handlers.delete(token);
      return r;
    }
    return { ok: true, value: { path, token } };
  }

  async unwatch(handle: XsWatchHandle): Promise<XsResult<void>> {
    this.handlers.delete(handle.token);
    return this.api.unwatch(handle.path, handle.token);
  }

  close(): void {
    this.handlers.clear();
    this.release();
  }
}

/** How many times withTransaction retries a transaction that keeps conflicting before it gives up with EAGAIN. */
export const XS_TRANSACTION_MAX_ATTEMPTS = 1000;

/**
 * Runs `body` in a transaction and commits it, starting over while the commit answers EAGAIN (netfront's
 * talk_to_netback: `if (err == -EAGAIN) goto again`). A body error aborts the transaction and is returned.
 * Linux retries forever; we stop after `maxAttempts` so a livelock shows up as EAGAIN instead of a hang.
 */
export async function withTransaction<T>(
  client: XsClient,
  body: (tx: number) => Promise<XsResult<T>>,
  maxAttempts: number = XS_TRANSACTION_MAX_ATTEMPTS,
): Promise<XsResult<T>> {
  for (let attempt = 1; ; attempt++) {
    const tx = await client.transactionStart();
    if (!tx.ok) return tx;
    const r = await body(tx.value);
    if (!r.ok) {
      await client.transactionEnd(tx.value, false);
      return r;
    }
    const end = await client.transactionEnd(tx.value, true);
    if (end.ok) return r;
    if (end.error !== 'EAGAIN' || attempt >= maxAttempts) return end;
  }
}
