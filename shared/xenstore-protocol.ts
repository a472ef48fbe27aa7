// The xenstore control plane as seen across the comlink boundary: message shapes and API types only.
// Workers import this file with `import type`; nothing here exists at run time.

import type { MessagePort } from 'node:worker_threads';

/** The error strings xenstored answers with (xen/include/public/io/xs_wire.h, xsd_errors[]). */
export type XsErrno =
  | 'EINVAL'
  | 'EACCES'
  | 'EEXIST'
  | 'EISDIR'
  | 'ENOENT'
  | 'ENOMEM'
  | 'ENOSPC'
  | 'EIO'
  | 'ENOTEMPTY'
  | 'ENOSYS'
  | 'EROFS'
  | 'EBUSY'
  | 'EAGAIN'
  | 'EISCONN'
  | 'E2BIG'
  | 'EPERM';

/** A xenstore answer: a value, or xenstored's errno name (never thrown, so it crosses comlink intact). */
export type XsResult<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: XsErrno };

/** One permission letter as on the wire (xs_lib.c xenstore_perm_to_string): none, read, write, both. */
export type XsPermLetter = 'n' | 'r' | 'w' | 'b';

/** One entry of a node's permission list; the first entry names the owner and the default for everyone else. */
export interface XsPerm {
  readonly id: number;
  readonly perm: XsPermLetter;
}

/**
 * The operations one xenstore connection offers (the XS_* requests of xs_wire.h). `tx` is the transaction id
 * of the request header; 0 (XBT_NULL) means no transaction. Relative paths resolve under /local/domain/<domid>.
 */
export interface XsConnectionApi {
  read(path: string, tx?: number): XsResult<string>;
  write(path: string, value: string, tx?: number): XsResult<void>;
  mkdir(path: string, tx?: number): XsResult<void>;
  rm(path: string, tx?: number): XsResult<void>;
  directory(path: string, tx?: number): XsResult<string[]>;
  getPerms(path: string, tx?: number): XsResult<XsPerm[]>;
  setPerms(path: string, perms: readonly XsPerm[], tx?: number): XsResult<void>;
  transactionStart(): XsResult<number>;
  transactionEnd(tx: number, commit: boolean): XsResult<void>;
  watch(path: string, token: string): XsResult<void>;
  unwatch(path: string, token: string): XsResult<void>;
  resetWatches(): XsResult<void>;
  getDomainPath(domid: number): XsResult<string>;
  isDomainIntroduced(domid: number): XsResult<boolean>;
}

/** A watch event as posted on a connection's event port: the changed path and the watch's token (XS_WATCH_EVENT). */
export interface XsWatchEventMessage {
  readonly type: 'watch_event';
  readonly path: string;
  readonly token: string;
}

/** What a worker needs to reach its xenstore connection: the comlink port and the watch-event port. */
export interface XsWorkerPorts {
  readonly domid: number;
  readonly ctrlPort: MessagePort;
  readonly eventPort: MessagePort;
}

/** Called for each watch event, with the changed path (relative if the watch was) and the token. */
export type XsWatchHandler = (path: string, token: string) => void;

/** A registered watch, as needed to remove it. */
export interface XsWatchHandle {
  readonly path: string;
  readonly token: string;
}

/** The asynchronous client both drivers use: the same calls whether the store is in this thread or across comlink. */
export interface XsClient {
  readonly domid: number;
  read(path: string, tx?: number): Promise<XsResult<string>>;
  write(path: string, value: string, tx?: number): Promise<XsResult<void>>;
  mkdir(path: string, tx?: number): Promise<XsResult<void>>;
  rm(path: string, tx?: number): Promise<XsResult<void>>;
  directory(path: string, tx?: number): Promise<XsResult<string[]>>;
  getPerms(path: string, tx?: number): Promise<XsResult<XsPerm[]>>;
  setPerms(path: string, perms: readonly XsPerm[], tx?: number): Promise<XsResult<void>>;
  transactionStart(): Promise<XsResult<number>>;
  transactionEnd(tx: number, commit: boolean): Promise<XsResult<void>>;
  getDomainPath(domid: number): Promise<XsResult<string>>;
  isDomainIntroduced(domid: number): Promise<XsResult<boolean>>;
  /** Registers a watch with a fresh token; the handler also receives the immediate first event. */
  watch(path: string, handler: XsWatchHandler): Promise<XsResult<XsWatchHandle>>;
  unwatch(handle: XsWatchHandle): Promise<XsResult<void>>;
  /** Drops every handler and releases the underlying channel; later calls are the caller's bug. */
  close(): void;
}
