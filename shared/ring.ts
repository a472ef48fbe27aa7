// Xen shared producer/consumer rings (xen/include/public/io/ring.h) on a SharedArrayBuffer page.
// One ring core serves both ends: FrontRing produces requests and consumes responses, BackRing the reverse.
// Requests and responses share slots (a C union): a response is written into the slot of a request the
// backend has already consumed, which is why a consumer copies a slot once (RING_COPY_*) before validating it.

import { err, ok } from './result.js';
import type { Result } from './result.js';

/** Bytes in a Xen page; a single-page shared ring occupies exactly one (io/ring.h XEN_PAGE_SHIFT 12). */
export const XEN_PAGE_SIZE = 4096;

/** Bytes before the first entry: req_prod, req_event, rsp_prod, rsp_event, pvt[4], __pad[44] (io/ring.h). */
export const SRING_HEADER_SIZE = 64;

/** Word index of `req_prod` in the header's Int32Array (io/ring.h struct __name##_sring). */
export const kReqProd = 0;
/** Word index of `req_event` (io/ring.h). */
export const kReqEvent = 1;
/** Word index of `rsp_prod` (io/ring.h). */
export const kRspProd = 2;
/** Word index of `rsp_event` (io/ring.h). */
export const kRspEvent = 3;
/** Byte offset of the `pvt` union (pvt_pad[4]) in the header (io/ring.h). */
export const SRING_PVT_OFFSET = 16;
/** Byte offset of `__pad[44]` in the header (io/ring.h). */
export const SRING_PAD_OFFSET = 20;

/** Returned by unconsumedRequests()/unconsumedResponses() when the peer's producer index is impossible. */
export const RING_OVERFLOW = -1;

// Header words live in an Int32Array, which is host-endian; Xen's ABI (x86, arm) is little-endian.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('grantwire rings require a little-endian host');
}

/** A fixed-size wire struct that can be copied out of, and written into, a ring slot. */
export interface WireStruct<T> {
  /** sizeof the C struct in bytes. */
  readonly SIZE: number;
  /** Copies the struct at `off` into `target` field by field (each byte read once) and returns target. */
  readInto(view: DataView, off: number, target: T): T;
  /** Writes `value` at `off`, little-endian; throws RangeError for values that do not fit. */
  write(view: DataView, off: number, value: Readonly<T>): void;
}

/** Entries in one page of `entryBytes` slots, rounded down to a power of two (io/ring.h __CONST_RING_SIZE). */
export function ringSize(entryBytes: number): number {
  const room = XEN_PAGE_SIZE - SRING_HEADER_SIZE;
  if (!Number.isInteger(entryBytes) || entryBytes < 1 || entryBytes > room) {
    throw new RangeError(`entryBytes must be an integer in 1..${room} but got ${entryBytes}`);
  }
  // __RD32: the highest power of two not above the quotient.
  return 2 ** Math.floor(Math.log2(Math.floor(room / entryBytes)));
}

function checkPage(buffer: SharedArrayBuffer, byteOffset: number): void {
  const max = buffer.byteLength - XEN_PAGE_SIZE;
  if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset > max || byteOffset % 4 !== 0) {
    throw new RangeError(
      `ring page is out of bounds: expected a multiple of 4 in 0..${max} but got ${byteOffset}`,
    );
  }
}

function checkIndex(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`${name} must be a uint32 but got ${value}`);
  }
}

/**
 * Initialises an empty shared ring page: producers at `startIndex`, events at `startIndex + 1`, pvt and pad
 * zeroed (io/ring.h SHARED_RING_INIT). Only the frontend does this. Departure: Xen always starts at 0;
 * `startIndex` lets tests start near the 32-bit wrap. Not safe while either end is attached.
 */
export function sharedRingInit(buffer: SharedArrayBuffer, byteOffset: number, startIndex = 0): void {
  checkPage(buffer, byteOffset);
  checkIndex('startIndex', startIndex);
  const words = new Int32Array(buffer, byteOffset, SRING_HEADER_SIZE / 4);
  new Uint8Array(buffer, byteOffset + SRING_PVT_OFFSET, SRING_HEADER_SIZE - SRING_PVT_OFFSET).fill(0);
  Atomics.store(words, kReqProd, startIndex | 0);
  Atomics.store(words, kRspProd, startIndex | 0);
  Atomics.store(words, kReqEvent, (startIndex + 1) | 0);
  Atomics.store(words, kRspEvent, (startIndex + 1) | 0);
}

/**
 * The ring code both ends share (io/ring.h): a private producer index, a private consumer index, and which
 * header words this end publishes to and reads from. Not thread-safe: one end object per thread.
 */
abstract class RingEnd {
  /** Number of entries (RING_SIZE), a power of two. */
  readonly size: number;
  /** Bytes per slot (sizeof the request/response union). */
  readonly entryBytes: number;
  /** A DataView of the whole ring page; slot offsets are relative to it. */
  readonly view: DataView;

  protected readonly words: Int32Array;
  protected readonly mask: number;
  /** Our private producer index (req_prod_pvt or rsp_prod_pvt). */
  protected prodPvt: number;
  /** Our private consumer index (rsp_cons or req_cons). */
  protected cons: number;
  /** The peer's producer index as last loaded (one Atomics.load per poll). */
  protected peerProd: number;
  /** Entries at `cons` that the last poll allowed us to consume. */
  protected avail = 0;

  protected constructor(
    buffer: SharedArrayBuffer,
    byteOffset: number,
    entryBytes: number,
    startIndex: number,
    private readonly prodWord: number,
    private readonly prodEventWord: number,
    private readonly consWord: number,
    private readonly consEventWord: number,
  ) {
    checkPage(buffer, byteOffset);
    checkIndex('startIndex', startIndex);
    this.size = ringSize(entryBytes);
    this.entryBytes = entryBytes;
    this.mask = this.size - 1;
    this.words = new Int32Array(buffer, byteOffset, SRING_HEADER_SIZE / 4);
    this.view = new DataView(buffer, byteOffset, XEN_PAGE_SIZE);
    this.prodPvt = startIndex;
    this.cons = startIndex;
    this.peerProd = startIndex;
  }

  /** Byte offset in `view` of the slot for free-running `index` (io/ring.h RING_GET_REQUEST); pure arithmetic. */
  slotOffset(index: number): number {
    return SRING_HEADER_SIZE + (index & this.mask) * this.entryBytes;
  }

  /** Slots we may still produce into before the peer frees more. */
  protected abstract produceRoom(): number;
  /** Caps a validated count of peer entries (back ring: XEN_RING_NR_UNCONSUMED_REQUESTS). */
  protected abstract consumeCap(pending: number): number;

  protected put<T>(struct: WireStruct<T>, value: Readonly<T>, what: string): void {
    if (this.produceRoom() === 0) throw new RangeError(`no free slot to put a ${what} into`);
    if (struct.SIZE > this.entryBytes) {
      throw new RangeError(`a ${struct.SIZE}-byte struct does not fit a ${this.entryBytes}-byte slot`);
    }
    struct.write(this.view, this.slotOffset(this.prodPvt), value);
    this.prodPvt = (this.prodPvt + 1) >>> 0;
  }

  protected publish(): void {
    // Atomics.store is sequentially consistent: it orders the slot writes before it (xen_wmb).
    Atomics.store(this.words, this.prodWord, this.prodPvt | 0);
  }

  protected publishAndCheckNotify(): boolean {
    const oldProd = Atomics.load(this.words, this.prodWord) >>> 0;
    const newProd = this.prodPvt;
    Atomics.store(this.words, this.prodWord, newProd | 0);
    // The seq-cst store then load is the full barrier (xen_mb) between publishing and reading the event.
    const event = Atomics.load(this.words, this.prodEventWord) >>> 0;
    return (newProd - event) >>> 0 < (newProd - oldProd) >>> 0;
  }

  protected poll(): number {
    const prod = Atomics.load(this.words, this.consWord) >>> 0;
    this.peerProd = prod;
    const pending = (prod - this.cons) >>> 0;
    if (pending > this.size) {
      this.avail = 0;
      return RING_OVERFLOW;
    }
    this.avail = this.consumeCap(pending);
    return this.avail;
  }

  protected finalCheck(): boolean {
    if (this.poll() !== 0) return true;
    Atomics.store(this.words, this.consEventWord, (this.cons + 1) | 0);
    // The seq-cst store then load is the full barrier (xen_mb) between arming the event and rechecking.
    return this.poll() !== 0;
  }

  protected copy<T>(index: number, struct: WireStruct<T>, target: T): T {
    if ((index - this.cons) >>> 0 >= this.avail) {
      throw new RangeError(`slot ${index >>> 0} is not available: cons ${this.cons}, available ${this.avail}`);
    }
    return struct.readInto(this.view, this.slotOffset(index), target);
  }

  protected consume(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.avail) {
      throw new RangeError(`cannot consume ${n}: available ${this.avail}`);
    }
    this.cons = (this.cons + n) >>> 0;
    this.avail -= n;
  }

  protected overflowMessage(prodName: string, consName: string): string {
    const pending = (this.peerProd - this.cons) >>> 0;
    if (pending <= this.size) throw new Error(`${prodName} ${this.peerProd} is not corrupt`);
    return `${prodName} is corrupt: expected ${prodName} - ${consName} <= ${this.size} but got ${pending}`;
  }
}

/** The frontend's half of a shared ring (io/ring.h struct __name##_front_ring): pushes requests, takes responses. */
export class FrontRing extends RingEnd {
  /**
   * Attaches to an initialised ring page with req_prod_pvt = rsp_cons = `startIndex` (io/ring.h FRONT_RING_ATTACH).
   * Use one FrontRing per thread; it keeps private indices.
   */
  constructor(buffer: SharedArrayBuffer, byteOffset: number, entryBytes: number, startIndex = 0) {
    super(buffer, byteOffset, entryBytes, startIndex, kReqProd, kReqEvent, kRspProd, kRspEvent);
  }

  /** Our private request producer index (req_prod_pvt), free-running u32; never shared, so always exact. */
  get reqProdPvt(): number {
    return this.prodPvt;
  }

  /** Our response consumer index (rsp_cons), free-running u32; private, the backend never sees it. */
  get rspCons(): number {
    return this.cons;
  }

  /** The peer's rsp_prod as loaded by the last poll; the live value may already be ahead of it. */
  get rspProdSnapshot(): number {
    return this.peerProd;
  }

  /** Requests we may still put (io/ring.h RING_FREE_REQUESTS); local state only, so it only grows when we consume. */
  freeRequests(): number {
    return this.size - ((this.prodPvt - this.cons) >>> 0);
  }

  /** Whether no request slot is free (io/ring.h RING_FULL); local state only, reap responses to change it. */
  isFull(): boolean {
    return this.freeRequests() === 0;
  }

  /**
   * Writes a request into the slot at req_prod_pvt and advances it; the backend cannot see it until a push.
   * Throws RangeError if the ring is full (our bug).
   */
  putRequest<T>(struct: WireStruct<T>, value: Readonly<T>): void {
    this.put(struct, value, 'request');
  }

  /** Publishes req_prod = req_prod_pvt after the slot writes (io/ring.h RING_PUSH_REQUESTS); never notifies. */
  pushRequests(): void {
    this.publish();
  }

  /**
   * Publishes requests and returns whether the backend must be notified (io/ring.h
   * RING_PUSH_REQUESTS_AND_CHECK_NOTIFY); req_event is peer-written, so a lying peer only loses its own wake-ups.
   */
  pushRequestsAndCheckNotify(): boolean {
    return this.publishAndCheckNotify();
  }

  /**
   * Loads rsp_prod once and returns how many responses may be copied (io/ring.h XEN_RING_NR_UNCONSUMED_RESPONSES),
   * or RING_OVERFLOW if rsp_prod - rsp_cons > RING_SIZE (netfront: "Illegal number of responses").
   * The count is a snapshot: the backend may add more at any time.
   */
  unconsumedResponses(): number {
    return this.poll();
  }

  /**
   * Before sleeping: rechecks, and if empty sets rsp_event = rsp_cons + 1, fences and rechecks, returning whether
   * work is pending (io/ring.h RING_FINAL_CHECK_FOR_RESPONSES); an overflow counts as work so it is noticed.
   */
  finalCheckForResponses(): boolean {
    return this.finalCheck();
  }

  /**
   * Copies the response at free-running `index` (within the last poll) into `target` (io/ring.h RING_COPY_RESPONSE);
   * validate the copy, not the slot, which the backend may still rewrite.
   */
  copyResponse<T>(index: number, struct: WireStruct<T>, target: T): T {
    return this.copy(index, struct, target);
  }

  /**
   * Advances rsp_cons by `n` polled responses, freeing their slots for our next requests (rsp_cons is private).
   * Throws RangeError past what the last poll allowed (our bug).
   */
  consumeResponses(n = 1): void {
    this.consume(n);
  }

  /** Whether `prod` claims more responses than the ring holds (io/ring.h RING_RESPONSE_PROD_OVERFLOW); pure. */
  responseProdOverflow(prod: number): boolean {
    return (prod - this.cons) >>> 0 > this.size;
  }

  /** The exact message for the snapshot the last poll rejected with RING_OVERFLOW; throws if it was valid (our bug). */
  overflowError(): string {
    return this.overflowMessage('rsp_prod', 'rsp_cons');
  }

  /**
   * Stores rsp_event, to be woken only after several responses (io/ring.h hold-off note); recheck after it,
   * since responses pushed before the store do not notify.
   */
  setRspEvent(value: number): void {
    Atomics.store(this.words, kRspEvent, value | 0);
  }

  protected produceRoom(): number {
    return this.freeRequests();
  }

  protected consumeCap(pending: number): number {
    return pending;
  }
}

/** The backend's half of a shared ring (io/ring.h struct __name##_back_ring): takes requests, pushes responses. */
export class BackRing extends RingEnd {
  /**
   * Attaches with rsp_prod_pvt = req_cons = `startIndex` (io/ring.h BACK_RING_ATTACH). Use attachBackRing() to
   * attach to a ring a frontend already used. One BackRing per thread; it keeps private indices.
   */
  constructor(buffer: SharedArrayBuffer, byteOffset: number, entryBytes: number, startIndex = 0) {
    super(buffer, byteOffset, entryBytes, startIndex, kRspProd, kRspEvent, kReqProd, kReqEvent);
  }

  /** Our private response producer index (rsp_prod_pvt), free-running u32; never shared, so always exact. */
  get rspProdPvt(): number {
    return this.prodPvt;
  }

  /** Our request consumer index (req_cons), free-running u32; private, the frontend never sees it. */
  get reqCons(): number {
    return this.cons;
  }

  /** The peer's req_prod as loaded by the last poll; the live value may already be ahead of it. */
  get reqProdSnapshot(): number {
    return this.peerProd;
  }

  /**
   * Loads req_prod once and returns how many requests may be copied, capped by free response slots (io/ring.h
   * XEN_RING_NR_UNCONSUMED_REQUESTS), or RING_OVERFLOW if req_prod - req_cons > RING_SIZE (netback treats that as
   * fatal). Departure: Linux netback reads req_prod twice here; we read it once. The count is a snapshot.
   */
  unconsumedRequests(): number {
    return this.poll();
  }

  /**
   * Before sleeping: rechecks, and if empty sets req_event = req_cons + 1, fences and rechecks, returning whether
   * work is pending (io/ring.h RING_FINAL_CHECK_FOR_REQUESTS); an overflow counts as work so it is noticed.
   */
  finalCheckForRequests(): boolean {
    return this.finalCheck();
  }

  /**
   * Copies the request at free-running `index` into `target` (io/ring.h RING_COPY_REQUEST): validate the copy,
   * never the slot, since the frontend may rewrite it. The index must lie within the last poll.
   */
  copyRequest<T>(index: number, struct: WireStruct<T>, target: T): T {
    return this.copy(index, struct, target);
  }

  /**
   * Advances req_cons by `n` polled requests; their slots stay ours until answered (req_cons is private).
   * Throws RangeError past what the last poll allowed (our bug).
   */
  consumeRequests(n = 1): void {
    this.consume(n);
  }

  /**
   * Writes a response into the slot at rsp_prod_pvt (the slot of a request already consumed) and advances it;
   * the frontend cannot see it until a push. Throws RangeError if no consumed request is left to answer (our bug).
   */
  putResponse<T>(struct: WireStruct<T>, value: Readonly<T>): void {
    this.put(struct, value, 'response');
  }

  /** Publishes rsp_prod = rsp_prod_pvt after the slot writes (io/ring.h RING_PUSH_RESPONSES); never notifies. */
  pushResponses(): void {
    this.publish();
  }

  /**
   * Publishes responses and returns whether the frontend must be notified (io/ring.h
   * RING_PUSH_RESPONSES_AND_CHECK_NOTIFY); rsp_event is peer-written, so a lying peer only loses its own wake-ups.
   */
  pushResponsesAndCheckNotify(): boolean {
    return this.publishAndCheckNotify();
  }

  /** Whether `prod` claims more requests than could be outstanding (io/ring.h RING_REQUEST_PROD_OVERFLOW); pure. */
  requestProdOverflow(prod: number): boolean {
    return (prod - this.prodPvt) >>> 0 > this.size;
  }

  /** Whether consuming up to `cons` would overrun unanswered slots (io/ring.h RING_REQUEST_CONS_OVERFLOW); pure. */
  requestConsOverflow(cons: number): boolean {
    return (cons - this.prodPvt) >>> 0 >= this.size;
  }

  /** The exact message for the snapshot the last poll rejected with RING_OVERFLOW; throws if it was valid (our bug). */
  overflowError(): string {
    return this.overflowMessage('req_prod', 'req_cons');
  }

  /**
   * Stores req_event, e.g. to be woken only once `needed` requests exist (netback xenvif_rx_ring_slots_available);
   * recheck after it, since requests pushed before the store do not notify.
   */
  setReqEvent(value: number): void {
    Atomics.store(this.words, kReqEvent, value | 0);
  }

  protected produceRoom(): number {
    return (this.cons - this.prodPvt) >>> 0;
  }

  protected consumeCap(pending: number): number {
    const room = this.size - ((this.cons - this.prodPvt) >>> 0);
    return pending < room ? pending : room;
  }
}

/**
 * Attaches a backend to a ring the frontend already initialised, at the published rsp_prod, refusing
 * req_prod - rsp_prod > RING_SIZE (netback xenvif_map_frontend_data_rings: -EIO). Reads each index once.
 */
export function attachBackRing(
  buffer: SharedArrayBuffer,
  byteOffset: number,
  entryBytes: number,
): Result<BackRing> {
  checkPage(buffer, byteOffset);
  const size = ringSize(entryBytes);
  const words = new Int32Array(buffer, byteOffset, SRING_HEADER_SIZE / 4);
  const rspProd = Atomics.load(words, kRspProd) >>> 0;
  const reqProd = Atomics.load(words, kReqProd) >>> 0;
  const pending = (reqProd - rspProd) >>> 0;
  if (pending > size) {
    return err(`ring indices are corrupt: expected req_prod - rsp_prod <= ${size} but got ${pending}`);
  }
  return ok(new BackRing(buffer, byteOffset, entryBytes, rspProd));
}
