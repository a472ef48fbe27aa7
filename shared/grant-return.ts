// Grant-return notices: after netback has unmapped a batch of a guest's TX grants (and pushed their ring
// responses), it posts the batch's grant references on that guest's MessagePort, one message per batch. This
// is the "tell the frontend when the backend has unmapped" channel Linux lacks (QubesOS PR 567); the ring
// response stays the protocol's word, the notice is extra. Both ends import this module; the receiving end
// treats every message as peer data and parses it with parseGrantReturnMessage.

import { err, ok, type Result } from './result.js';

/** The `type` tag of a grant-return notice. */
export const GRANT_RETURN_TYPE = 'grant-return';

/** Most grefs in one notice: one TX queue never has more than MAX_PENDING_REQS grants mapped. */
export const GRANT_RETURN_MAX_BATCH = 256; // drivers/net/xen-netback/common.h MAX_PENDING_REQS

/** One batch of grants a backend no longer maps, in unmap order. */
export interface GrantReturnMessage {
  readonly type: typeof GRANT_RETURN_TYPE;
  /** The domain that had the grants mapped (the backend). */
  readonly backend: number;
  /** Batch number on this port, from 0, u32 wrapping: a gap means a lost notice. */
  readonly seq: number;
  /** Grant references of the receiving guest's table; the buffer is transferred, not copied. */
  readonly grefs: Uint32Array;
}

/** Where notices go: a worker_threads MessagePort (or anything with the same postMessage). */
export interface GrantReturnPort {
  postMessage(value: GrantReturnMessage, transferList: ArrayBuffer[]): void;
}

/** Builds a notice for grefs[0..n) (copied into a fresh, transferable Uint32Array); throws on our own bad values. */
export function makeGrantReturnMessage(backend: number, seq: number, grefs: ArrayLike<number>, n: number = grefs.length): GrantReturnMessage {
  if (!Number.isInteger(n) || n < 1 || n > GRANT_RETURN_MAX_BATCH || n > grefs.length) {
    throw new RangeError(`grant-return batch must hold 1..${GRANT_RETURN_MAX_BATCH} grefs but got ${String(n)}`);
  }
  if (!Number.isInteger(backend) || backend < 0 || backend > 0xffff) throw new RangeError(`backend must be a u16 but got ${String(backend)}`);
  if (!Number.isInteger(seq) || seq < 0 || seq > 0xffffffff) throw new RangeError(`seq must be a u32 but got ${String(seq)}`);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = grefs[i]!;
  return { type: GRANT_RETURN_TYPE, backend, seq, grefs: out };
}

/** Posts a notice, transferring its buffer (one postMessage per batch). */
export function postGrantReturn(port: GrantReturnPort, msg: GrantReturnMessage): void {
  port.postMessage(msg, [msg.grefs.buffer as ArrayBuffer]);
}

/** Parses a received notice (peer data): never throws, returns the exact reason a message is refused. */
export function parseGrantReturnMessage(data: unknown): Result<GrantReturnMessage> {
  if (typeof data !== 'object' || data === null) {
    return err(`grant-return message is corrupt: expected an object but got ${data === null ? 'null' : typeof data}`);
  }
  const m = data as { type?: unknown; backend?: unknown; seq?: unknown; grefs?: unknown };
  if (m.type !== GRANT_RETURN_TYPE) return err(`grant-return type is corrupt: expected "${GRANT_RETURN_TYPE}" but got ${describe(m.type)}`);
  const backend = m.backend;
  if (typeof backend !== 'number' || !Number.isInteger(backend) || backend < 0 || backend > 0xffff) {
    return err(`grant-return backend is corrupt: expected an integer 0 <= x <= 65535 but got ${describe(backend)}`);
  }
  const seq = m.seq;
  if (typeof seq !== 'number' || !Number.isInteger(seq) || seq < 0 || seq > 0xffffffff) {
    return err(`grant-return seq is corrupt: expected an integer 0 <= x <= 4294967295 but got ${describe(seq)}`);
  }
  const grefs = m.grefs;
  if (!(grefs instanceof Uint32Array)) return err(`grant-return grefs is corrupt: expected a Uint32Array but got ${describe(grefs)}`);
  if (grefs.length < 1 || grefs.length > GRANT_RETURN_MAX_BATCH) {
    return err(`grant-return grefs is corrupt: expected 1 <= length <= ${GRANT_RETURN_MAX_BATCH} but got ${grefs.length}`);
  }
  return ok({ type: GRANT_RETURN_TYPE, backend, seq, grefs });
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'undefined') return String(v);
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return typeof v;
}
