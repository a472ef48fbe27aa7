// Event channels (Xen's 2-level ABI in spirit): what a "notify" does and how a driver sleeps and wakes.
//
// One SharedArrayBuffer plays the hypervisor's memory: a small header, then one page per domain holding the
// vcpu_info words (evtchn_upcall_pending, evtchn_pending_sel), a wake word and a sleeping flag, counters, the
// shared_info bitmaps (evtchn_pending, evtchn_mask) and a port table. Any thread may notify, poll, mask or
// bind; each domain has one waiting thread (one vcpu). Waking a sleeping thread costs ~50-90 us here
// (TOOLCHAIN.md), so a sender pays Atomics.notify only when the receiver said it sleeps.
//
// Departure from Xen: the port table lives in shared memory (Xen keeps it in the hypervisor), so every
// word read from it is validated before use; a thread that scribbles on pages can cause spurious events or
// swallow its own, but never an exception or an out-of-range access in another thread.
//
// The seam "how a driver is woken": drivers send through an EventPort and receive through handlers bound on
// an EventDispatcher. A Waker decides what raising an event on a sleeping domain does: AtomicsWaker (worker
// threads, Atomics.notify) or SchedulerWaker (one thread, the domain's dispatch is queued on a Scheduler).

import { err, ok, type Result } from './result.js';
import type { Random } from './random.js';

// ---- Xen constants ---------------------------------------------------------------------------------------

/** Invalid argument, returned negated (xen/include/public/errno.h). */
export const XEN_EINVAL = 22;
/** Transport endpoint is not connected, returned negated (xen/include/public/errno.h). */
export const XEN_ENOTCONN = 107;

/** Channel is available for use (xen/include/xen/sched.h). */
export const ECS_FREE = 0;
/** Channel is reserved: port 0 of every domain (xen/include/xen/sched.h, evtchn_init). */
export const ECS_RESERVED = 1;
/** Channel is waiting for an interdomain binding from one remote domain (xen/include/xen/sched.h). */
export const ECS_UNBOUND = 2;
/** Channel is bound to a port of another (or the same) domain (xen/include/xen/sched.h). */
export const ECS_INTERDOMAIN = 3;

/** EVTCHNOP_status: channel is not in use (xen/include/public/event_channel.h). */
export const EVTCHNSTAT_closed = 0;
/** EVTCHNOP_status: channel is waiting for a remote connection (xen/include/public/event_channel.h). */
export const EVTCHNSTAT_unbound = 1;
/** EVTCHNOP_status: channel is connected to a remote domain (xen/include/public/event_channel.h). */
export const EVTCHNSTAT_interdomain = 2;

/** Bits per pending/mask word: a 32-bit guest's xen_ulong_t (xen/include/public/xen.h). */
export const BITS_PER_EVTCHN_WORD = 32;
/** The 2-level ABI's port limit for 32-bit words: 32 selector bits x 32 ports (xen/common/event_2l.c). */
export const EVTCHN_2L_NR_CHANNELS = BITS_PER_EVTCHN_WORD * BITS_PER_EVTCHN_WORD;
/** Domain ids at or above this are special (xen/include/public/xen.h). */
export const DOMID_FIRST_RESERVED = 0x7ff0;

// ---- Layout ----------------------------------------------------------------------------------------------

/** Buffer header word: magic, so attach() can tell an event-channel buffer from garbage. */
export const kHdrMagic = 0;
/** Buffer header word: number of domain pages. */
export const kHdrMaxDomains = 1;
/** Buffer header word: ports per domain. */
export const kHdrNrPorts = 2;
/** The magic value ("EVTC"). */
export const EVTCHN_MAGIC = 0x45565443;
/** Header bytes before the first domain page (one cache line). */
export const EVTCHN_HEADER_BYTES = 64;

/** Page word: vcpu_info.evtchn_upcall_pending, 1 while an upcall is due (xen/include/public/xen.h). */
export const kUpcallPending = 0;
/** Page word: vcpu_info.evtchn_pending_sel, bit i set when pending word i may hold unmasked events. */
export const kPendingSel = 1;
/** Page word: the wake word the domain's thread sleeps on; bumped once per upcall (so it counts upcalls). */
export const kWake = 2;
/** Page word: 1 while the domain's thread is about to sleep or sleeps on kWake; senders notify only then. */
export const kSleeping = 3;
/** Counter: notify() calls from this domain that raised a remote port. */
export const kSent = 16;
/** Counter: notify() calls from this domain that failed (closed, unbound or corrupt port). */
export const kSendErrors = 17;
/** Counter: set_pending on this domain's ports (sends from any domain, plus bind fix-ups). */
export const kRaised = 18;
/** Counter: raises that found the port already pending (coalesced into the pending one). */
export const kSuppressedPending = 19;
/** Counter: raises that made a masked port pending (no upcall until unmask). */
export const kSuppressedMasked = 20;
/** Counter: unmasks that found the port pending and re-raised it (Xen evtchn_2l_unmask). */
export const kUnmaskRaised = 21;
/** Counter: newly pending unmasked ports whose upcall was already due (selector bit or upcall flag set). */
export const kCoalesced = 22;
/** Counter: Atomics.notify calls on kWake, made because this domain's thread was sleeping. */
export const kKicks = 23;
/** Counter: ports handed out by poll(). */
export const kTaken = 24;
/** Counter: waits that found an upcall due without sleeping (spin, re-check, or wake word moved). */
export const kPollHits = 25;
/** Counter: waits that slept and were ended by a kick. */
export const kWakeups = 26;
/** Counter: waits that slept until their timeout. */
export const kTimeouts = 27;
/** Page word where the pending bitmap (shared_info.evtchn_pending) starts. */
export const kPendingWords = 32;

const kCounterFirst = kSent;
const kCounterLast = kTimeouts;

// Port table word: state in bits 0-3, remote port in bits 4-15, remote domid in bits 16-31. One word so a
// reader gets a consistent (state, remote) snapshot with one Atomics.load.
const kStateBits = 0xf;
const kRemotePortShift = 4;
const kRemotePortBits = 0xfff;
const kRemoteDomShift = 16;

/** Default spin iterations before sleeping (TOOLCHAIN.md measured ~3000 as a good poll before Atomics.wait). */
export const EVTCHN_DEFAULT_SPIN = 3000;

/** Int32 words in one domain page for nrPorts ports (header, counters, pending, mask, port table; 64 B aligned). */
export function evtchnPageWords(nrPorts: number): number {
  const bitmapWords = nrPorts / BITS_PER_EVTCHN_WORD;
  const words = kPendingWords + 2 * bitmapWords + nrPorts;
  return Math.ceil(words / 16) * 16;
}

/** Bytes of the SharedArrayBuffer holding maxDomains pages of nrPorts ports each. */
export function evtchnBufferBytes(maxDomains: number, nrPorts: number): number {
  return EVTCHN_HEADER_BYTES + maxDomains * evtchnPageWords(nrPorts) * 4;
}

function packPort(state: number, remoteDom: number, remotePort: number): number {
  return state | (remotePort << kRemotePortShift) | (remoteDom << kRemoteDomShift);
}

function stateName(state: number): string {
  switch (state) {
    case ECS_FREE:
      return 'closed';
    case ECS_RESERVED:
      return 'reserved';
    case ECS_UNBOUND:
      return 'unbound';
    case ECS_INTERDOMAIN:
      return 'interdomain';
    default:
      return `corrupt (state ${state})`;
  }
}

function validNrPorts(n: number): boolean {
  return Number.isInteger(n) && n >= BITS_PER_EVTCHN_WORD && n <= EVTCHN_2L_NR_CHANNELS && n % BITS_PER_EVTCHN_WORD === 0;
}

function validMaxDomains(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= DOMID_FIRST_RESERVED;
}

// ---- The seam --------------------------------------------------------------------------------------------

/** The sending side of one bound channel, as a driver sees it: kick the peer. */
export interface EventPort {
  /** The local port. */
  readonly port: number;
  /** Raises the remote port; returns 0, -XEN_EINVAL (closed or bad port) or -XEN_ENOTCONN (peer gone). */
  notify(): number;
}

/** A handler for events on one local port. */
export type EventHandler = (port: number) => void;

/** The receiving side, as a driver sees it: handlers run when their port fires. */
export interface EventDispatcher {
  /** Registers the handler for a local port and unmasks it (a pending event is re-raised, none is lost). */
  bind(port: number, handler: EventHandler): void;
  /** Masks the port and forgets its handler; events stay pending until the next bind. */
  unbind(port: number): void;
}

/** What raising an event on a domain with nothing yet due does to that domain's thread. */
export interface Waker {
  /** Called once per upcall (evtchn_upcall_pending going 0 -> 1) of target. */
  wake(target: EvtchnDomain): void;
}

/** Worker threads: Atomics.notify the target's wake word, only if its thread sleeps. */
export const atomicsWaker: Waker = {
  wake(target: EvtchnDomain): void {
    target.kickIfSleeping();
  },
};

/** A minimal task queue for running everything in one thread. */
export interface Scheduler {
  /** Queues a task; it runs later, never inside post. */
  post(task: () => void): void;
}

/** One thread: the target domain's dispatch is queued on a Scheduler (the simulator's "interrupt"). */
export class SchedulerWaker implements Waker {
  constructor(readonly scheduler: Scheduler) {}

  wake(target: EvtchnDomain): void {
    this.scheduler.post(target.dispatchTask);
  }
}

/** A minimal deterministic scheduler: FIFO, or a seeded random pick among queued tasks. */
export class SimScheduler implements Scheduler {
  private readonly queue: (() => void)[] = [];

  /** With a Random, runNext picks a queued task at random (seeded interleavings); without, FIFO. */
  constructor(private readonly random: Random | null = null) {}

  post(task: () => void): void {
    this.queue.push(task);
  }

  /** Number of queued tasks. */
  get size(): number {
    return this.queue.length;
  }

  /** Runs one queued task; false when the queue is empty. */
  runNext(): boolean {
    const n = this.queue.length;
    if (n === 0) return false;
    let task: () => void;
    if (this.random === null) {
      task = this.queue.shift()!;
    } else {
      // Swap-remove: the remaining order changes, but it is only ever read through the same seeded pick.
      const i = this.random.int(0, n - 1);
      task = this.queue[i]!;
      this.queue[i] = this.queue[n - 1]!;
      this.queue.pop();
    }
    task();
    return true;
  }

  /** Runs tasks until none is queued and returns how many ran; throws past maxTasks (a livelock is a bug). */
  runUntilIdle(maxTasks = 1_000_000): number {
    let ran = 0;
    while (this.runNext()) {
      if (++ran > maxTasks) throw new Error(`scheduler still busy after ${maxTasks} tasks`);
    }
    return ran;
  }
}

// ---- Host: the hypervisor's view of all domains ----------------------------------------------------------

/** Options for EvtchnHost.create. */
export interface EvtchnHostOptions {
  /** Number of domains (domids 0 .. maxDomains-1). */
  maxDomains: number;
  /** Ports per domain: a multiple of 32 up to 1024 (default 1024). */
  nrPorts?: number;
  /** How a domain is woken (default atomicsWaker). */
  waker?: Waker;
}

/** What EVTCHNOP_status reports for one port. */
export interface EvtchnStatus {
  /** EVTCHNSTAT_closed, EVTCHNSTAT_unbound or EVTCHNSTAT_interdomain. */
  status: number;
  /** For unbound: the domain allowed to bind; for interdomain: the peer domain; otherwise -1. */
  remoteDom: number;
  /** For interdomain: the peer port; otherwise -1. */
  remotePort: number;
}

/** One thread's handle on the event-channel buffer: toolstack operations (EVTCHNOP_*) and per-domain views. */
export class EvtchnHost {
  /** The shared words; pages start at EVTCHN_HEADER_BYTES. */
  readonly i32: Int32Array;
  /** Int32 words per domain page. */
  readonly pageWords: number;
  /** Pending/mask bitmap words per domain. */
  readonly bitmapWords: number;
  private readonly domains: (EvtchnDomain | undefined)[];

  private constructor(
    readonly buffer: SharedArrayBuffer,
    readonly maxDomains: number,
    readonly nrPorts: number,
    readonly waker: Waker,
  ) {
    this.i32 = new Int32Array(buffer);
    this.pageWords = evtchnPageWords(nrPorts);
    this.bitmapWords = nrPorts / BITS_PER_EVTCHN_WORD;
    this.domains = new Array<EvtchnDomain | undefined>(maxDomains).fill(undefined);
  }

  /** Creates a buffer for maxDomains domains, every port closed and unmasked, port 0 reserved (evtchn_init). */
  static create(options: EvtchnHostOptions): EvtchnHost {
    const nrPorts = options.nrPorts ?? EVTCHN_2L_NR_CHANNELS;
    if (!validMaxDomains(options.maxDomains)) {
      throw new RangeError(`options.maxDomains must be an integer in 1..${DOMID_FIRST_RESERVED}`);
    }
    if (!validNrPorts(nrPorts)) {
      throw new RangeError(`options.nrPorts must be a multiple of 32 in 32..${EVTCHN_2L_NR_CHANNELS}`);
    }
    const buffer = new SharedArrayBuffer(evtchnBufferBytes(options.maxDomains, nrPorts));
    const host = new EvtchnHost(buffer, options.maxDomains, nrPorts, options.waker ?? atomicsWaker);
    const i32 = host.i32;
    i32[kHdrMaxDomains] = options.maxDomains;
    i32[kHdrNrPorts] = nrPorts;
    for (let d = 0; d < options.maxDomains; d++) {
      i32[host.portWord(d, 0)] = packPort(ECS_RESERVED, 0, 0);
    }
    Atomics.store(i32, kHdrMagic, EVTCHN_MAGIC);
    return host;
  }

  /** Attaches to a buffer made by create (in another thread): the header is snapshot and validated once. */
  static attach(buffer: SharedArrayBuffer, waker: Waker = atomicsWaker): Result<EvtchnHost> {
    if (!(buffer instanceof SharedArrayBuffer)) return err('buffer is not a SharedArrayBuffer');
    if (buffer.byteLength < EVTCHN_HEADER_BYTES) {
      return err(`buffer is too small: expected at least ${EVTCHN_HEADER_BYTES} bytes but got ${buffer.byteLength}`);
    }
    const hdr = new Int32Array(buffer, 0, EVTCHN_HEADER_BYTES / 4);
    const magic = Atomics.load(hdr, kHdrMagic) >>> 0;
    const maxDomains = Atomics.load(hdr, kHdrMaxDomains);
    const nrPorts = Atomics.load(hdr, kHdrNrPorts);
    if (magic !== EVTCHN_MAGIC) {
      return err(`magic is corrupt: expected 0x${EVTCHN_MAGIC.toString(16)} but got 0x${magic.toString(16)}`);
    }
    if (!validMaxDomains(maxDomains)) {
      return err(`maxDomains is corrupt: expected 1 <= x <= ${DOMID_FIRST_RESERVED} but got ${maxDomains}`);
    }
    if (!validNrPorts(nrPorts)) {
      return err(`nrPorts is corrupt: expected a multiple of 32 in 32..${EVTCHN_2L_NR_CHANNELS} but got ${nrPorts}`);
    }
    const need = evtchnBufferBytes(maxDomains, nrPorts);
    if (buffer.byteLength < need) {
      return err(`buffer is too small: expected ${need} bytes but got ${buffer.byteLength}`);
    }
    return ok(new EvtchnHost(buffer, maxDomains, nrPorts, waker));
  }

  /** This thread's view of one domain (cached); throws for a domid outside the buffer (a caller bug). */
  domain(domid: number): EvtchnDomain {
    if (!this.isDomain(domid)) {
      throw new RangeError(`domain ${domid} does not exist: expected 0 <= domid < ${this.maxDomains}`);
    }
    let d = this.domains[domid];
    if (d === undefined) {
      d = new EvtchnDomain(this, domid);
      this.domains[domid] = d;
    }
    return d;
  }

  /** Int32 index of a domain page's first word. */
  pageBase(domid: number): number {
    return EVTCHN_HEADER_BYTES / 4 + domid * this.pageWords;
  }

  /** Int32 index of a port's table word. */
  portWord(domid: number, port: number): number {
    return this.pageBase(domid) + kPendingWords + 2 * this.bitmapWords + port;
  }

  /** EVTCHNOP_alloc_unbound: a fresh port in dom that remoteDom may bind to (xen/common/event_channel.c). */
  allocUnbound(dom: number, remoteDom: number): Result<number> {
    const bad = this.checkDomain(dom) ?? this.checkDomain(remoteDom);
    if (bad !== null) return err(bad);
    const port = this.claimFreePort(dom, packPort(ECS_UNBOUND, remoteDom, 0));
    if (port < 0) return err(`no free port in domain ${dom}`);
    return ok(port);
  }

  /**
   * EVTCHNOP_bind_interdomain: binds a fresh port of localDom to remoteDom's unbound port, then marks the
   * local port pending, as Xen does, in case the peer notified before the binding existed.
   */
  bindInterdomain(localDom: number, remoteDom: number, remotePort: number): Result<number> {
    const bad = this.checkDomain(localDom) ?? this.checkDomain(remoteDom) ?? this.checkPort(remotePort);
    if (bad !== null) return err(bad);
    const rIdx = this.portWord(remoteDom, remotePort);
    const rw = Atomics.load(this.i32, rIdx);
    const rState = rw & kStateBits;
    if (rState !== ECS_UNBOUND) {
      return err(`port ${remotePort} of domain ${remoteDom} is ${stateName(rState)}: expected unbound`);
    }
    const allowed = rw >>> kRemoteDomShift;
    if (allowed !== localDom) {
      return err(`port ${remotePort} of domain ${remoteDom} accepts domain ${allowed}, not domain ${localDom}`);
    }
    const lport = this.claimFreePort(localDom, packPort(ECS_INTERDOMAIN, remoteDom, remotePort));
    if (lport < 0) return err(`no free port in domain ${localDom}`);
    if (Atomics.compareExchange(this.i32, rIdx, rw, packPort(ECS_INTERDOMAIN, localDom, lport)) !== rw) {
      Atomics.store(this.i32, this.portWord(localDom, lport), packPort(ECS_FREE, 0, 0));
      return err(`port ${remotePort} of domain ${remoteDom} changed while binding`);
    }
    this.domain(localDom).raise(lport);
    return ok(lport);
  }

  /**
   * EVTCHNOP_close: frees the port and clears its pending bit; an interdomain peer goes back to unbound
   * (accepting this domain), so its notify() answers -XEN_ENOTCONN. Like Xen, the mask bit is left alone.
   */
  close(dom: number, port: number): Result<void> {
    const bad = this.checkDomain(dom) ?? this.checkPort(port);
    if (bad !== null) return err(bad);
    const idx = this.portWord(dom, port);
    const w = Atomics.load(this.i32, idx);
    const state = w & kStateBits;
    if (state !== ECS_UNBOUND && state !== ECS_INTERDOMAIN) {
      return err(`port ${port} of domain ${dom} is ${stateName(state)}: expected unbound or interdomain`);
    }
    if (Atomics.compareExchange(this.i32, idx, w, packPort(ECS_FREE, 0, 0)) !== w) {
      return err(`port ${port} of domain ${dom} changed while closing`);
    }
    if (state === ECS_INTERDOMAIN) {
      const rd = w >>> kRemoteDomShift;
      const rp = (w >>> kRemotePortShift) & kRemotePortBits;
      // Only if the peer still points back at us: it may have closed first (both then end up free).
      if (this.isDomain(rd) && rp < this.nrPorts) {
        Atomics.compareExchange(
          this.i32,
          this.portWord(rd, rp),
          packPort(ECS_INTERDOMAIN, dom, port),
          packPort(ECS_UNBOUND, dom, 0),
        );
      }
    }
    // free_evtchn: clear the pending bit so a re-bound port starts quiet.
    const b = this.pageBase(dom);
    Atomics.and(this.i32, b + kPendingWords + (port >>> 5), ~(1 << (port & 31)));
    return ok(undefined);
  }

  /** EVTCHNOP_status for one port (xen/include/public/event_channel.h). */
  status(dom: number, port: number): Result<EvtchnStatus> {
    const bad = this.checkDomain(dom) ?? this.checkPort(port);
    if (bad !== null) return err(bad);
    const w = Atomics.load(this.i32, this.portWord(dom, port));
    switch (w & kStateBits) {
      case ECS_FREE:
      case ECS_RESERVED:
        return ok({ status: EVTCHNSTAT_closed, remoteDom: -1, remotePort: -1 });
      case ECS_UNBOUND:
        return ok({ status: EVTCHNSTAT_unbound, remoteDom: w >>> kRemoteDomShift, remotePort: -1 });
      case ECS_INTERDOMAIN:
        return ok({
          status: EVTCHNSTAT_interdomain,
          remoteDom: w >>> kRemoteDomShift,
          remotePort: (w >>> kRemotePortShift) & kRemotePortBits,
        });
      default:
        return err(`port ${port} of domain ${dom} is corrupt: state ${w & kStateBits}`);
    }
  }

  /** True for a domid that has a page in this buffer. */
  isDomain(domid: number): boolean {
    return Number.isInteger(domid) && domid >= 0 && domid < this.maxDomains;
  }

  private checkDomain(domid: number): string | null {
    return this.isDomain(domid) ? null : `domain ${domid} does not exist: expected 0 <= domid < ${this.maxDomains}`;
  }

  private checkPort(port: number): string | null {
    return Number.isInteger(port) && port >= 0 && port < this.nrPorts
      ? null
      : `port ${port} is invalid: expected 0 <= port < ${this.nrPorts}`;
  }

  // get_free_port: the lowest free port, claimed with a compare-and-swap so concurrent allocators never share.
  private claimFreePort(dom: number, word: number): number {
    const base = this.portWord(dom, 0);
    for (let p = 1; p < this.nrPorts; p++) {
      if (Atomics.compareExchange(this.i32, base + p, ECS_FREE, word) === ECS_FREE) return p;
    }
    return -1;
  }
}

// ---- Domain: one domain's ports, seen from any thread ----------------------------------------------------

/** How a wait ended: an upcall was already due, a kick woke the sleeper, or the timeout passed. */
export type WaitResult = 'ready' | 'woken' | 'timed-out';

/** A snapshot of one domain's counters (unsigned 32-bit, wrapping). */
export interface EvtchnCounters {
  sent: number;
  sendErrors: number;
  raised: number;
  suppressedPending: number;
  suppressedMasked: number;
  unmaskRaised: number;
  coalesced: number;
  upcalls: number;
  kicks: number;
  taken: number;
  pollHits: number;
  wakeups: number;
  timeouts: number;
}

/** Steps of the sleep protocol at which a test may force another thread's notify (see waitStep). */
export const WAIT_STEP_SPUN = 0;
/** After the sleeping flag is set. */
export const WAIT_STEP_FLAGGED = 1;
/** After the wake word is read. */
export const WAIT_STEP_ARMED = 2;
/** After the re-check found nothing, right before Atomics.wait. */
export const WAIT_STEP_CHECKED = 3;

const READY: Promise<WaitResult> = Promise.resolve('ready');
const TIMED_OUT: Promise<WaitResult> = Promise.resolve('timed-out');
const KEEP_ALIVE_MS = 0x7fffffff;
function noop(): void {}

class BoundPort implements EventPort {
  constructor(
    private readonly domain: EvtchnDomain,
    readonly port: number,
  ) {}

  notify(): number {
    return this.domain.notify(this.port);
  }
}

/**
 * One domain's event channels: the sending side (notify), the 2-level pending/mask logic, and the waiting
 * side (poll, wait, waitAsync, dispatch). Send and mask from any thread; poll, wait and dispatch from the
 * domain's own single thread.
 */
export class EvtchnDomain implements EventDispatcher {
  /** Extra upcall checks a wait makes before it sleeps (0: one check, then sleep). */
  spin = EVTCHN_DEFAULT_SPIN;
  /** A prebound `dispatch()`, for schedulers (no allocation per wake). */
  readonly dispatchTask: () => void;
  private readonly i32: Int32Array;
  private readonly base: number;
  private readonly pendingIdx: number;
  private readonly maskIdx: number;
  private readonly portsIdx: number;
  private readonly nrPorts: number;
  private readonly handlers: (EventHandler | undefined)[];
  private scratch: Uint32Array | null = null;

  /**
   * Use host.domain(domid), which caches one view per domain (the view a SchedulerWaker dispatches); build
   * one directly only to subclass it in tests.
   */
  constructor(
    readonly host: EvtchnHost,
    readonly domid: number,
  ) {
    if (!host.isDomain(domid)) {
      throw new RangeError(`domain ${domid} does not exist: expected 0 <= domid < ${host.maxDomains}`);
    }
    this.i32 = host.i32;
    this.base = host.pageBase(domid);
    this.pendingIdx = this.base + kPendingWords;
    this.maskIdx = this.pendingIdx + host.bitmapWords;
    this.portsIdx = this.maskIdx + host.bitmapWords;
    this.nrPorts = host.nrPorts;
    this.handlers = new Array<EventHandler | undefined>(host.nrPorts).fill(undefined);
    this.dispatchTask = () => {
      this.dispatch();
    };
  }

  // -- sending --

  /**
   * EVTCHNOP_send on a local port: raises the bound remote port. Returns 0, -XEN_EINVAL for a bad, closed
   * or corrupt port, or -XEN_ENOTCONN for an unbound one (departure: Xen drops that silently and returns 0).
   * Any thread.
   */
  notify(port: number): number {
    const i32 = this.i32;
    if (!(port >= 0 && port < this.nrPorts && (port | 0) === port)) return this.sendError(-XEN_EINVAL);
    const w = Atomics.load(i32, this.portsIdx + port);
    const state = w & kStateBits;
    if (state === ECS_INTERDOMAIN) {
      const rd = w >>> kRemoteDomShift;
      const rp = (w >>> kRemotePortShift) & kRemotePortBits;
      if (rd >= this.host.maxDomains || rp >= this.nrPorts) return this.sendError(-XEN_EINVAL);
      Atomics.add(i32, this.base + kSent, 1);
      this.host.domain(rd).raise(rp);
      return 0;
    }
    return this.sendError(state === ECS_UNBOUND ? -XEN_ENOTCONN : -XEN_EINVAL);
  }

  /** An EventPort bound to a local port (allocate once per channel, not per notify). */
  port(port: number): EventPort {
    return new BoundPort(this, port);
  }

  /** EVTCHNOP_alloc_unbound for this domain. */
  allocUnbound(remoteDom: number): Result<number> {
    return this.host.allocUnbound(this.domid, remoteDom);
  }

  /** EVTCHNOP_bind_interdomain for this domain. */
  bindInterdomain(remoteDom: number, remotePort: number): Result<number> {
    return this.host.bindInterdomain(this.domid, remoteDom, remotePort);
  }

  /** EVTCHNOP_close for this domain. */
  close(port: number): Result<void> {
    return this.host.close(this.domid, port);
  }

  // -- the 2-level logic --

  /**
   * evtchn_2l_set_pending on one of this domain's ports (caller validated the port): pending bit, then
   * selector bit unless masked, then the upcall. Any thread.
   */
  raise(port: number): void {
    const i32 = this.i32;
    const b = this.base;
    const word = port >>> 5;
    const bit = 1 << (port & 31);
    Atomics.add(i32, b + kRaised, 1);
    if ((Atomics.or(i32, this.pendingIdx + word, bit) & bit) !== 0) {
      Atomics.add(i32, b + kSuppressedPending, 1);
      return;
    }
    if ((Atomics.load(i32, this.maskIdx + word) & bit) !== 0) {
      Atomics.add(i32, b + kSuppressedMasked, 1);
      return;
    }
    this.markSelector(word);
  }

  /** Sets the mask bit of a local port (the guest writes shared_info.evtchn_mask); 0 or -XEN_EINVAL. */
  mask(port: number): number {
    if (!this.validPort(port)) return -XEN_EINVAL;
    Atomics.or(this.i32, this.maskIdx + (port >>> 5), 1 << (port & 31));
    return 0;
  }

  /** EVTCHNOP_unmask: clears the mask bit and re-raises the port if it is pending (evtchn_2l_unmask). */
  unmask(port: number): number {
    if (!this.validPort(port)) return -XEN_EINVAL;
    const i32 = this.i32;
    const word = port >>> 5;
    const bit = 1 << (port & 31);
    if ((Atomics.and(i32, this.maskIdx + word, ~bit) & bit) !== 0 && (Atomics.load(i32, this.pendingIdx + word) & bit) !== 0) {
      Atomics.add(i32, this.base + kUnmaskRaised, 1);
      this.markSelector(word);
    }
    return 0;
  }

  /** evtchn_2l_is_pending; false for an invalid port. */
  isPending(port: number): boolean {
    return this.validPort(port) && (Atomics.load(this.i32, this.pendingIdx + (port >>> 5)) & (1 << (port & 31))) !== 0;
  }

  /** evtchn_2l_is_masked; false for an invalid port. */
  isMasked(port: number): boolean {
    return this.validPort(port) && (Atomics.load(this.i32, this.maskIdx + (port >>> 5)) & (1 << (port & 31))) !== 0;
  }

  /** True while an upcall is due (evtchn_upcall_pending): poll() would look. Any thread. */
  hasEvents(): boolean {
    return Atomics.load(this.i32, this.base + kUpcallPending) !== 0;
  }

  /**
   * Test-and-clears pending unmasked ports into out (lowest ports first) and returns how many; ports that
   * did not fit stay pending with the upcall still due. No allocation. The domain's own thread.
   */
  poll(out: Uint32Array): number {
    const i32 = this.i32;
    const b = this.base;
    if (Atomics.load(i32, b + kUpcallPending) === 0) return 0;
    // As Linux's upcall handler: clear the upcall first, then take the selector, so a racing raise re-arms both.
    Atomics.store(i32, b + kUpcallPending, 0);
    let sel = Atomics.exchange(i32, b + kPendingSel, 0);
    const cap = out.length;
    let n = 0;
    while (sel !== 0) {
      const low = sel & -sel;
      const word = 31 - Math.clz32(low);
      if (n === cap) {
        // Out of room: hand the untaken words back and keep the upcall due.
        Atomics.or(i32, b + kPendingSel, sel);
        Atomics.store(i32, b + kUpcallPending, 1);
        break;
      }
      const avail = Atomics.load(i32, this.pendingIdx + word) & ~Atomics.load(i32, this.maskIdx + word);
      let take = avail;
      const room = cap - n;
      if (room < 32) {
        take = 0;
        let t = avail;
        for (let k = 0; t !== 0 && k < room; k++) {
          const l = t & -t;
          take |= l;
          t ^= l;
        }
      }
      let got = Atomics.and(i32, this.pendingIdx + word, ~take) & take;
      while (got !== 0) {
        const l = got & -got;
        out[n++] = (word << 5) | (31 - Math.clz32(l));
        got ^= l;
      }
      if (take === avail) sel ^= low;
    }
    if (n !== 0) Atomics.add(i32, b + kTaken, n);
    return n;
  }

  // -- waiting --

  /**
   * Blocks until an upcall is due, a kick arrives, or timeoutMs passes: checks 1 + `spin` times, then sets the
   * sleeping flag, reads the wake word, re-checks, and Atomics.waits on the wake word. The domain's own
   * single thread, which must be allowed to block.
   */
  wait(timeoutMs = Infinity): WaitResult {
    const seq = this.prepareToSleep();
    if (seq === null) return 'ready';
    const i32 = this.i32;
    const b = this.base;
    const r = Atomics.wait(i32, b + kWake, seq, timeoutMs);
    Atomics.store(i32, b + kSleeping, 0);
    return this.sleptUntil(r);
  }

  /**
   * wait() for threads that must keep serving messages: the same protocol with Atomics.waitAsync. A pending
   * Atomics.waitAsync does not keep a worker alive; pass keepAlive = true to hold a ref'd handle until the
   * wait ends (otherwise a worker with nothing else to do exits while waiting). The domain's own thread.
   */
  waitAsync(timeoutMs = Infinity, keepAlive = false): Promise<WaitResult> {
    const seq = this.prepareToSleep();
    if (seq === null) return READY;
    const i32 = this.i32;
    const b = this.base;
    const r = Atomics.waitAsync(i32, b + kWake, seq, timeoutMs);
    if (!r.async) {
      Atomics.store(i32, b + kSleeping, 0);
      return this.sleptUntil(r.value) === 'ready' ? READY : TIMED_OUT;
    }
    // A ref'd interval is the cheapest handle that keeps the event loop alive; it never fires in practice.
    const handle = keepAlive ? setInterval(noop, KEEP_ALIVE_MS) : null;
    return r.value.then((v) => {
      if (handle !== null) clearInterval(handle);
      Atomics.store(i32, b + kSleeping, 0);
      return this.sleptUntil(v);
    });
  }

  /** What atomicsWaker does: if this domain's thread sleeps (or is about to), Atomics.notify its wake word. */
  kickIfSleeping(): void {
    const i32 = this.i32;
    const b = this.base;
    if (Atomics.load(i32, b + kSleeping) !== 0) {
      Atomics.add(i32, b + kKicks, 1);
      Atomics.notify(i32, b + kWake, 1);
    }
  }

  /**
   * A no-op hook called at each WAIT_STEP_* of the sleep protocol; tests override it to run another
   * domain's notify at an exact point (deterministic interleavings without sleeps).
   */
  protected waitStep(step: number): void {
    void step;
  }

  // -- dispatching (the EventDispatcher seam) --

  bind(port: number, handler: EventHandler): void {
    if (!this.validPort(port)) throw new RangeError(`port ${port} is invalid: expected 0 <= port < ${this.nrPorts}`);
    this.handlers[port] = handler;
    this.unmask(port);
  }

  unbind(port: number): void {
    if (!this.validPort(port)) throw new RangeError(`port ${port} is invalid: expected 0 <= port < ${this.nrPorts}`);
    this.mask(port);
    this.handlers[port] = undefined;
  }

  /**
   * Polls once and runs the bound handler of each port taken; a port without a handler is masked and handed
   * back (pending, not counted as taken) so bind() delivers it. Returns the number of ports polled. The
   * domain's own thread.
   */
  dispatch(): number {
    const scratch = (this.scratch ??= new Uint32Array(this.nrPorts));
    const n = this.poll(scratch);
    for (let i = 0; i < n; i++) {
      const port = scratch[i]!;
      const h = this.handlers[port];
      if (h !== undefined) {
        h(port);
      } else {
        const i32 = this.i32;
        const bit = 1 << (port & 31);
        Atomics.or(i32, this.maskIdx + (port >>> 5), bit);
        Atomics.or(i32, this.pendingIdx + (port >>> 5), bit);
        Atomics.sub(i32, this.base + kTaken, 1);
      }
    }
    return n;
  }

  // -- counters --

  /** One counter word (a k* counter index), as an unsigned 32-bit number. Any thread. */
  counter(index: number): number {
    if (!(index === kWake || (index >= kCounterFirst && index <= kCounterLast))) {
      throw new RangeError(`counter index ${index} is invalid`);
    }
    return Atomics.load(this.i32, this.base + index) >>> 0;
  }

  /** A snapshot of all counters (word by word, not atomic as a whole). Any thread. */
  counters(): EvtchnCounters {
    return {
      sent: this.counter(kSent),
      sendErrors: this.counter(kSendErrors),
      raised: this.counter(kRaised),
      suppressedPending: this.counter(kSuppressedPending),
      suppressedMasked: this.counter(kSuppressedMasked),
      unmaskRaised: this.counter(kUnmaskRaised),
      coalesced: this.counter(kCoalesced),
      upcalls: this.counter(kWake),
      kicks: this.counter(kKicks),
      taken: this.counter(kTaken),
      pollHits: this.counter(kPollHits),
      wakeups: this.counter(kWakeups),
      timeouts: this.counter(kTimeouts),
    };
  }

  // -- internals --

  private validPort(port: number): boolean {
    return port >= 0 && port < this.nrPorts && (port | 0) === port;
  }

  private sendError(status: number): number {
    Atomics.add(this.i32, this.base + kSendErrors, 1);
    return status;
  }

  // Selector bit, then vcpu_mark_events_pending: the upcall flag, the wake word, then the Waker.
  private markSelector(word: number): void {
    const i32 = this.i32;
    const b = this.base;
    const sbit = 1 << word;
    if ((Atomics.or(i32, b + kPendingSel, sbit) & sbit) !== 0 || Atomics.exchange(i32, b + kUpcallPending, 1) !== 0) {
      Atomics.add(i32, b + kCoalesced, 1);
      return;
    }
    Atomics.add(i32, b + kWake, 1);
    this.host.waker.wake(this);
  }

  // Spin, then flag, arm and re-check; returns the wake word to sleep on, or null when an upcall is due.
  private prepareToSleep(): number | null {
    const i32 = this.i32;
    const b = this.base;
    for (let i = 0; i <= this.spin; i++) {
      if (Atomics.load(i32, b + kUpcallPending) !== 0) {
        Atomics.add(i32, b + kPollHits, 1);
        return null;
      }
    }
    this.waitStep(WAIT_STEP_SPUN);
    Atomics.store(i32, b + kSleeping, 1);
    this.waitStep(WAIT_STEP_FLAGGED);
    const seq = Atomics.load(i32, b + kWake);
    this.waitStep(WAIT_STEP_ARMED);
    // The re-check: a raise between the spin and the flag did not kick us, and later raises coalesce into it.
    if (Atomics.load(i32, b + kUpcallPending) !== 0) {
      Atomics.store(i32, b + kSleeping, 0);
      Atomics.add(i32, b + kPollHits, 1);
      return null;
    }
    this.waitStep(WAIT_STEP_CHECKED);
    return seq;
  }

  private sleptUntil(r: 'ok' | 'not-equal' | 'timed-out'): WaitResult {
    const i32 = this.i32;
    const b = this.base;
    if (r === 'ok') {
      Atomics.add(i32, b + kWakeups, 1);
      return 'woken';
    }
    if (r === 'not-equal') {
      Atomics.add(i32, b + kPollHits, 1);
      return 'ready';
    }
    Atomics.add(i32, b + kTimeouts, 1);
    return 'timed-out';
  }
}
