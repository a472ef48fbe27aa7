// Malicious guests: every item of the bad-guest checklist (../shared/reference/kernel-xen.md) played against the
// real netback, one named case per hostile act. A case is data: the checklist item it plays, what Linux netback
// answers (`expect`), a play() that drives a real ring, grant table and event channel as a hostile netfront would
// (raw slot writes, raw index stores, raw xenstore state writes: no netfront), and a check() that judges the outcome
// only from what the backend visibly did: the responses on the ring, the vif's state and counters, the grant-return
// notices, and the GTF_reading/GTF_writing flags in the adversary's own grant table. runAdversaryCase() plays one
// case against any backend composition that implements AdversaryHost (adversary-rig.ts: one thread, virtual time;
// a stress tool: worker threads) and then demands the common outcome: the backend did not throw, the honest guests
// keep exchanging traffic with every grant back, and once the adversary's domain is destroyed none of its grants
// stays mapped.
//
// Departures: no case for the control ring (netback offers no feature-ctrl-ring, so there is no hash key or mapping
// to abuse); the frontend writes xenstore keys outside a transaction (a hostile guest need not use one).

import type { Clock } from '../shared/clock.js';
import type { EvtchnDomain } from '../shared/evtchn.js';
import { GNTST_bad_gntref, GNTST_general_error, type GrantTable } from '../shared/gnttab.js';
import type { GrantReturnMessage } from '../shared/grant-return.js';
import { XEN_PAGE_SIZE, type GuestMemory } from '../shared/memory.js';
import {
  ETH_HLEN,
  NETTXF_extra_info,
  NETTXF_more_data,
  RxRequest,
  RxResponse,
  TxRequest,
  TxResponse,
  XEN_NETIF_EXTRA_FLAG_MORE,
  XEN_NETIF_EXTRA_TYPE_GSO,
  XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
  XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
  XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_RSP_ERROR,
  XEN_NETIF_RSP_NULL,
  XEN_NETIF_RSP_OKAY,
  XEN_NETIF_RX_SLOT_SIZE,
  XEN_NETIF_TX_SLOT_SIZE,
  XEN_NETBK_MCAST_MAX,
  type RxResponseFields,
  type TxResponseFields,
} from '../shared/netif.js';
import { err, ok, type Result } from '../shared/result.js';
import { FrontRing, RING_OVERFLOW, SRING_HEADER_SIZE, kReqProd, kRspProd, sharedRingInit, type WireStruct } from '../shared/ring.js';
import {
  VifKey,
  XenbusStateClosed,
  XenbusStateClosing,
  XenbusStateConnected,
  XenbusStateInitialising,
  XenbusStateInitWait,
  xenbusStateName,
  type XenbusState,
} from '../shared/xenbus.js';
import type { XsClient } from '../shared/xenstore-protocol.js';
import type { Xenvif } from '../backend/xenvif.js';
import type { Netfront } from './netfront.js';
import { TxFrame } from './traffic.js';

// ---- The checklist and Linux's answers ----------------------------------------------------------------------

/** The bad-guest checklist of kernel-xen.md, item by item (the text each case cites). */
export const CHECKLIST = {
  ring: '`req_prod` more than 256 ahead, or going backwards; requests rewritten after being read',
  slots: '`offset+size > 4096`; 18-19 slots and ≥ 20 slots; `more_data` running past the producer',
  sizes: 'frag larger than the remaining total; total < 14; sum of frags ≠ total',
  zero: 'zero-length frags, including every frag of a packet',
  extras: 'extras: type 0 or ≥6, runaway `MORE`, duplicates, GSO size 0 or bad type',
  headers: 'headers split over tiny slots (XSA-423/432 shapes)',
  grefs: 'invalid, revoked, read-only or foreign grefs; writes to mapped pages',
  mcast: 'more than 64 multicast additions',
  connect: 'bad ring state at connect; too many queues or missing queue keys; `request-rx-copy`=0',
  withhold: 'withholding RX requests or responses so foreign pages stay pinned',
  lifecycle: 'event floods; state flapping with packets in flight; dying with grants mapped',
} as const;

/** One checklist item's text. */
export type ChecklistItem = (typeof CHECKLIST)[keyof typeof CHECKLIST];

/**
 * How Linux netback answers a hostile act (drivers/net/xen-netback/netback.c, rx.c, xenbus.c):
 * FATAL xenvif_fatal_tx_err (vif disabled, carrier off, nothing more answered until reconnect); ERROR xenvif_tx_err
 * (every slot RSP_ERROR, extras RSP_NULL); SLOT_ERROR xenvif_tx_check_gop (the failed slot RSP_ERROR, the others
 * OKAY, packet dropped); OKAY (accepted, every slot OKAY); RX_ERROR (the failed copy's GNTST code as the RX status);
 * DRAIN (rx_drain_timeout drops what waits); XENBUS_FATAL (xenbus_dev_fatal at connect, backend Closing, nothing
 * mapped); RECONNECT (disconnect waits for the stack, then a fresh data path); UNPLUG (the frontend died: never
 * notified again, unmapped as the stack frees); IGNORE (no answer: the backend just keeps serving the others).
 */
export type LinuxAnswer = 'FATAL' | 'ERROR' | 'SLOT_ERROR' | 'OKAY' | 'RX_ERROR' | 'DRAIN' | 'XENBUS_FATAL' | 'RECONNECT' | 'UNPLUG' | 'IGNORE';

// ---- What a case needs from the backend composition ------------------------------------------------------------

/** The backend's view of one vif, as plain data (xenvif.ts Xenvif, interface.c struct xenvif). */
export interface VifStatus {
  /** 'idle' | 'connected' | 'disconnecting'. */
  readonly state: string;
  readonly disabled: boolean;
  readonly carrier: boolean;
  readonly fatalError: string | null;
  readonly lastTxError: string | null;
  readonly mcastCount: number;
  /** Frames waiting on the vif's RX queue. */
  readonly rxQueued: number;
  /** The vif's counters (xenvif.ts XenvifStats field names). */
  readonly stats: Readonly<Record<string, number>>;
}

/** The backend's xenbus device of one vif (netback-xenbus.ts NetbackXenbus). */
export interface DeviceStatus {
  readonly state: XenbusState;
  /** The last xenbus_dev_fatal message, exactly, or null. */
  readonly lastError: string | null;
  readonly connects: number;
  /** netback_remove ran. */
  readonly removed: boolean;
}

/** A guest domain the host built for the adversary: its memory, grant table, event channels and xenstore home. */
export interface HostGuest {
  readonly domid: number;
  readonly mac: number;
  readonly ip: number;
  readonly memory: GuestMemory;
  readonly gnttab: GrantTable;
  readonly evtchn: EvtchnDomain;
  /** The guest's own xenstore connection. */
  readonly xs: XsClient;
  readonly frontendPath: string;
  /** Grant-return notices the backend posted to this guest, in order (the host appends). */
  readonly notices: GrantReturnMessage[];
}

/** The honest guests' state, summed over all of them. */
export interface HonestHealth {
  /** TX grants granted and not yet returned. */
  readonly outstanding: number;
  readonly rxVerified: number;
  readonly rxCorrupt: number;
  /** Returned grants the backend still mapped, and returns naming no outstanding grant: backend bugs. */
  readonly badReturns: number;
  /** Any honest guest's netfront broken, or its vif disabled. */
  readonly broken: boolean;
}

/** What the grant-lifetime oracle and the loop saw so far. */
export interface HostAudit {
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly leaks: number;
  readonly violations: readonly string[];
  /** The first exception the backend threw (a Linux BUG), or null. */
  readonly backendError: string | null;
}

/**
 * A backend composition the cases can run against: dom0 (netback, the stack, the oracle), a toolstack that makes
 * guest domains, and honest guests on the same bridge. One thread (adversary-rig.ts) or several.
 */
export interface AdversaryHost {
  readonly backendDomid: number;
  readonly clock: Clock;
  /** The host beyond the uplink: the adversary sends there, so the uplink checks what got through. */
  readonly remote: { readonly mac: number; readonly ip: number };
  /** How long netback lets a frame wait for RX requests (Linux rx_drain_timeout_msecs). */
  readonly rxDrainTimeoutMs: number;
  /** Builds a guest domain with one vif device, lets the backend probe it, and returns once it is in InitWait. */
  createGuest(): Promise<HostGuest>;
  /** The toolstack destroys the domain: its xenstore home and the hypervisor's grant access go (idempotent). */
  destroyGuest(domid: number): Promise<void>;
  /** Runs the system (backend and honest guests, time passing) until `until()` or `ms` elapsed; `each` runs before every round. */
  run(ms: number, until?: () => boolean, each?: () => void): Promise<boolean>;
  /** One round of the backend and the honest guests with no time passing. */
  step(): Promise<void>;
  /** Runs `fn` once, inside netback's next TX action for `domid`, after it has read the requests (while it maps). */
  interleave(domid: number, fn: () => void): void;
  vifStatus(domid: number): VifStatus | null;
  deviceStatus(domid: number): DeviceStatus | null;
  /** Makes the first honest guest send `frames` UDP frames of `len` bytes to (mac, ip). */
  honestSendTo(mac: number, ip: number, frames: number, len: number): void;
  honestHealth(): HonestHealth;
  /** The honest guests exchange `frames` frames with each other and the remote; ok once all arrived and every grant is back. */
  exchange(frames: number, each?: () => void): Promise<Result<void>>;
  /** What the uplink host saw: UDP payloads verified or corrupt, and other frames. */
  uplink(): { readonly udpVerified: number; readonly udpCorrupt: number; readonly other: number };
  /** The uplink NIC completes nothing for `ms` (its frames keep their pages): for a case that acts on a queued frame. */
  stallUplink(ms: number): void;
  audit(): HostAudit;
}

// ---- Raw slots and extras ------------------------------------------------------------------------------------

/** Raw bytes in a ring slot: entries a real writer refuses (extra type 0 or 6, garbage). */
const RawSlot: WireStruct<Uint8Array> = {
  SIZE: 8,
  readInto(view: DataView, off: number, t: Uint8Array): Uint8Array {
    for (let i = 0; i < t.length; i++) t[i] = view.getUint8(off + i);
    return t;
  },
  write(view: DataView, off: number, v: Readonly<Uint8Array>): void {
    for (let i = 0; i < v.length; i++) view.setUint8(off + i, v[i]!);
  },
};

/** A raw netif_extra_info slot {u8 type, flags; u8 u[6]} (io/netif.h); any type, even invalid ones. */
export function extraSlot(type: number, flags: number, u: readonly number[] = []): Uint8Array {
  const b = new Uint8Array(8);
  b[0] = type;
  b[1] = flags;
  for (let i = 0; i < 6 && i < u.length; i++) b[2 + i] = u[i]!;
  return b;
}

/** A GSO extra {u16 size; u8 type, pad; u16 features} (io/netif.h). */
export function gsoExtraSlot(size: number, gsoType: number): Uint8Array {
  return extraSlot(XEN_NETIF_EXTRA_TYPE_GSO, 0, [size & 0xff, size >>> 8, gsoType]);
}

/** A multicast extra (MCAST_ADD or MCAST_DEL) for `mac` (io/netif.h u.mcast.addr). */
export function mcastExtraSlot(type: number, mac: number): Uint8Array {
  const a: number[] = [];
  for (let i = 5; i >= 0; i--) a.push(Math.floor(mac / 2 ** (8 * i)) & 0xff);
  return extraSlot(type, 0, a);
}

// ---- The hostile netfront -------------------------------------------------------------------------------------

/** One TX slot of a hostile packet: `size` bytes at `offset` of a freshly granted page, or a given gref. */
export interface SlotSpec {
  readonly size: number;
  readonly offset?: number;
  /** Use this gref instead of granting a page (invalid, foreign or reused grants). */
  readonly gref?: number;
  /** The slot's flags instead of the usual NETTXF_more_data on every slot but the last. */
  readonly flags?: number;
}

/** How a hostile packet is put on the ring. */
export interface PacketSpec {
  /** The first slot's size field (the packet's total); default the sum of the slot sizes. */
  readonly total?: number;
  /** More NETTXF_* flags on the first slot. */
  readonly flags?: number;
  /** Raw extra slots after the first; NETTXF_extra_info is set on the first slot and FLAG_MORE on all but the last. */
  readonly extras?: readonly Uint8Array[];
  /** Keep the extras' flags exactly as given (a runaway FLAG_MORE). */
  readonly rawExtraFlags?: boolean;
  /** Slots (by index) whose grant is ended (revoked) after the requests are written, before they are published. */
  readonly revoke?: readonly number[];
  /** Publish and notify (default true). */
  readonly push?: boolean;
}

/** What a hostile packet put on the ring. */
export interface SentPacket {
  /** Request ids of the data slots, in ring order (extras have no id of their own). */
  readonly ids: readonly number[];
  /** The gref of each data slot. */
  readonly grefs: readonly number[];
  readonly extras: number;
}

/** How the adversary connects (its talk_to_netback, with the hostile twists). */
export interface ConnectSpec {
  /** Edits the keys before they are written (drop, add or corrupt keys). */
  readonly keys?: (keys: [string, string][], front: HostileFront) => [string, string][];
  /** Grant the TX ring page read-only. */
  readonly txRingReadonly?: boolean;
  /** Publish this tx-ring-ref instead of the ring's grant. */
  readonly txRingRef?: number;
  /** Runs after the rings are initialised and granted, before the keys are written (garbage indices). */
  readonly corrupt?: (front: HostileFront) => void;
}

const TX_RING_FRAME = 0;
const RX_RING_FRAME = 1;
/** How long (virtual or real ms) a case waits for the backend to react to one hostile act. */
export const ADVERSARY_WAIT_MS = 200;
/** How long a case waits for xenstore handshakes and teardowns. */
export const ADVERSARY_HANDSHAKE_MS = 5000;

/**
 * A hostile netfront: the guest's own memory, grant table, event channel and xenstore connection, with the rings
 * written by hand. It keeps every response it read, so a check can judge what the backend answered.
 */
export class HostileFront {
  readonly domid: number;
  tx: FrontRing | null = null;
  rx: FrontRing | null = null;
  txRingRef = -1;
  rxRingRef = -1;
  /** The adversary's event channel port (bound by the backend at connect), or -1. */
  port = -1;
  /** Every TX response read, in ring order. */
  readonly txSeen: TxResponseFields[] = [];
  /** Every RX response read, in ring order. */
  readonly rxSeen: RxResponseFields[] = [];
  /** Problems the front itself ran into (a response overflow, a failed write), reported by the runner. */
  readonly troubles: string[] = [];
  private nextFrame = 2;
  private nextId = 1;
  private readonly txHeader: Int32Array;

  constructor(
    readonly host: AdversaryHost,
    readonly guest: HostGuest,
  ) {
    this.domid = guest.domid;
    this.txHeader = new Int32Array(guest.memory.sab, TX_RING_FRAME * XEN_PAGE_SIZE, SRING_HEADER_SIZE / 4);
  }

  get mac(): number {
    return this.guest.mac;
  }

  get ip(): number {
    return this.guest.ip;
  }

  /** A fresh frame of the adversary's memory. */
  frame(): number {
    if (this.nextFrame >= this.guest.memory.nrFrames) throw new Error(`adversary d${this.domid}: out of frames`);
    return this.nextFrame++;
  }

  /** Grants `frame` to `domid` (the backend by default); throws when the table is full (our bug). */
  grant(frame: number, readonly = true, domid = this.host.backendDomid): number {
    const ref = this.guest.gnttab.grantForeignAccess(domid, frame, readonly);
    if (ref < 0) throw new Error(`adversary d${this.domid}: out of grant references`);
    return ref;
  }

  /** A fresh request id (u16, never 0 so a zeroed slot is told apart). */
  id(): number {
    const id = this.nextId;
    this.nextId = this.nextId === 0xffff ? 1 : this.nextId + 1;
    return id;
  }

  /** The backend's xenbus state of our device, or -1 when it has none. */
  backendState(): number {
    return this.host.deviceStatus(this.domid)?.state ?? -1;
  }

  vif(): VifStatus | null {
    return this.host.vifStatus(this.domid);
  }

  /** Writes our `state` node directly, as a hostile frontend may (no transition checks). */
  async writeState(state: number): Promise<void> {
    const r = await this.guest.xs.write(`${this.guest.frontendPath}/${VifKey.state}`, String(state));
    if (!r.ok) this.troubles.push(`cannot write state ${state}: ${r.error}`);
  }

  /** Runs until the backend's device is in one of `states`; false on timeout. */
  waitBackend(states: readonly number[], ms = ADVERSARY_HANDSHAKE_MS): Promise<boolean> {
    return this.host.run(ms, () => states.includes(this.backendState()));
  }

  /**
   * talk_to_netback, hostile: initialises and grants both ring pages, allocates the event channel, writes the keys
   * (as `spec` edits them), goes Connected and runs until the backend is Connected or has given up (Closing).
   * Returns the backend's state.
   */
  async connect(spec: ConnectSpec = {}): Promise<number> {
    const mem = this.guest.memory;
    sharedRingInit(mem.sab, TX_RING_FRAME * XEN_PAGE_SIZE);
    sharedRingInit(mem.sab, RX_RING_FRAME * XEN_PAGE_SIZE);
    this.tx = new FrontRing(mem.sab, TX_RING_FRAME * XEN_PAGE_SIZE, XEN_NETIF_TX_SLOT_SIZE);
    this.rx = new FrontRing(mem.sab, RX_RING_FRAME * XEN_PAGE_SIZE, XEN_NETIF_RX_SLOT_SIZE);
    if (this.txRingRef < 0) this.txRingRef = this.grant(TX_RING_FRAME, spec.txRingReadonly ?? false);
    if (this.rxRingRef < 0) this.rxRingRef = this.grant(RX_RING_FRAME, false);
    if (this.port < 0) {
      const p = this.guest.evtchn.allocUnbound(this.host.backendDomid);
      if (!p.ok) throw new Error(`adversary d${this.domid}: ${p.error}`);
      this.port = p.value;
    }
    spec.corrupt?.(this);
    let keys: [string, string][] = [
      [VifKey.txRingRef, String(spec.txRingRef ?? this.txRingRef)],
      [VifKey.rxRingRef, String(this.rxRingRef)],
      [VifKey.eventChannel, String(this.port)],
      [VifKey.requestRxCopy, '1'],
      [VifKey.featureRxNotify, '1'],
      [VifKey.featureSg, '1'],
      [VifKey.featureGsoTcpv4, '1'],
    ];
    if (spec.keys !== undefined) keys = spec.keys(keys, this);
    for (const [k, v] of keys) {
      const r = await this.guest.xs.write(`${this.guest.frontendPath}/${k}`, v);
      if (!r.ok) this.troubles.push(`cannot write ${k}: ${r.error}`);
    }
    await this.writeState(XenbusStateConnected);
    await this.waitBackend([XenbusStateConnected, XenbusStateClosing, XenbusStateClosed]);
    return this.backendState();
  }

  /**
   * Closes and connects again on freshly initialised rings (the same pages and grants), as netfront's resume does:
   * Closing, Closed, Initialising, then connect(). Returns the backend's final state.
   */
  async reconnect(): Promise<number> {
    await this.writeState(XenbusStateClosing);
    await this.waitBackend([XenbusStateClosing, XenbusStateClosed]);
    await this.writeState(XenbusStateClosed);
    await this.waitBackend([XenbusStateClosed]);
    await this.writeState(XenbusStateInitialising);
    await this.waitBackend([XenbusStateInitWait]);
    return this.connect();
  }

  /** Kicks the backend (EVTCHNOP_send); a hostile guest kicks whenever it likes. */
  notify(): number {
    return this.port < 0 ? -1 : this.guest.evtchn.notify(this.port);
  }

  /** The published req_prod of our TX ring. */
  reqProd(): number {
    return Atomics.load(this.txHeader, kReqProd) >>> 0;
  }

  /** The published rsp_prod of our TX ring (what the backend has answered so far). */
  rspProd(): number {
    return Atomics.load(this.txHeader, kRspProd) >>> 0;
  }

  /** Stores req_prod directly (an overrun, or going backwards). */
  storeReqProd(value: number): void {
    Atomics.store(this.txHeader, kReqProd, value | 0);
  }

  /** Writes one tx_request straight into slot `index` of the TX ring (no ring accounting). */
  rawTxRequest(index: number, gref: number, offset: number, flags: number, id: number, size: number): void {
    const ring = this.txRing();
    TxRequest.write(ring.view, ring.slotOffset(index), { gref, offset, flags, id, size });
  }

  /**
   * Puts one packet on the TX ring: each slot's page gets its share of a UDP frame to the remote (so what gets
   * through is checked on the uplink) and is granted read-only; extras follow the first slot.
   */
  sendPacket(slots: readonly SlotSpec[], spec: PacketSpec = {}): SentPacket {
    const tx = this.txRing();
    const sum = slots.reduce((a, s) => a + s.size, 0);
    const bytes = this.frameBytes(sum);
    const extras = spec.extras ?? [];
    const ids: number[] = [];
    const grefs: number[] = [];
    let pos = 0;
    for (let i = 0; i < slots.length; i++) {
      const s = slots[i]!;
      const offset = s.offset ?? 0;
      let gref = s.gref;
      if (gref === undefined) {
        const f = this.frame();
        const page = this.guest.memory.frame(f);
        const n = Math.max(0, Math.min(s.size, XEN_PAGE_SIZE - offset));
        page.set(bytes.subarray(pos, pos + n), offset);
        gref = this.grant(f);
      }
      pos += s.size;
      let flags = s.flags ?? (i < slots.length - 1 ? NETTXF_more_data : 0);
      if (i === 0) {
        flags |= spec.flags ?? 0;
        if (extras.length > 0) flags |= NETTXF_extra_info;
      }
      const id = this.id();
      ids.push(id);
      grefs.push(gref);
      tx.putRequest(TxRequest, { gref, offset, flags, id, size: i === 0 ? (spec.total ?? sum) : s.size });
      if (i === 0) {
        extras.forEach((e, k) => {
          const x = e.slice();
          if (spec.rawExtraFlags !== true) x[1] = (x[1]! & ~XEN_NETIF_EXTRA_FLAG_MORE) | (k < extras.length - 1 ? XEN_NETIF_EXTRA_FLAG_MORE : 0);
          tx.putRequest(RawSlot, x);
        });
      }
    }
    for (const k of spec.revoke ?? []) {
      if (!this.guest.gnttab.endForeignAccessRef(grefs[k]!)) this.troubles.push(`could not revoke gref ${grefs[k]}`);
    }
    if (spec.push ?? true) this.push();
    return { ids, grefs, extras: extras.length };
  }

  /** A multicast control request: a zero-size slot whose extra adds or removes `mac` (netback: no grant). */
  sendMcast(type: number, mac: number): SentPacket {
    const tx = this.txRing();
    const id = this.id();
    tx.putRequest(TxRequest, { gref: 0, offset: 0, flags: NETTXF_extra_info, id, size: 0 });
    tx.putRequest(RawSlot, mcastExtraSlot(type, mac));
    return { ids: [id], grefs: [], extras: 1 };
  }

  /** Publishes the TX requests and kicks the backend whatever req_event says. */
  push(): void {
    this.txRing().pushRequests();
    this.notify();
  }

  /**
   * A good 60-byte packet written at the published req_prod, bypassing our ring accounting (which a corrupt index
   * has made meaningless): shows whether the backend still consumes anything.
   */
  probe(): number {
    const f = this.frame();
    this.guest.memory.frame(f).set(this.frameBytes(60));
    const gref = this.grant(f);
    const prod = this.reqProd();
    const id = this.id();
    this.rawTxRequest(prod, gref, 0, 0, id, 60);
    this.storeReqProd((prod + 1) >>> 0);
    this.notify();
    return id;
  }

  /** Reads every TX response published since the last call (RING_COPY_RESPONSE), keeping them in txSeen. */
  txResponses(): TxResponseFields[] {
    return this.readResponses(this.tx, TxResponse, this.txSeen);
  }

  /** Copies out every response a ring has published since the last call, appending them to `seen` too. */
  private readResponses<T>(ring: FrontRing | null, struct: WireStruct<T> & { create(): T }, seen: T[]): T[] {
    if (ring === null) return [];
    const n = ring.unconsumedResponses();
    if (n === RING_OVERFLOW) {
      this.troubles.push(ring.overflowError());
      return [];
    }
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(ring.copyResponse(ring.rspCons + i, struct, struct.create()));
    ring.consumeResponses(n);
    seen.push(...out);
    return out;
  }

  /** Every status seen for request `id`, in order. */
  statuses(id: number): number[] {
    return this.txSeen.filter((r) => r.id === id && r.status !== XEN_NETIF_RSP_NULL).map((r) => r.status);
  }

  /** RSP_NULL responses seen (one per extra slot answered). */
  nulls(): number {
    return this.txSeen.filter((r) => r.status === XEN_NETIF_RSP_NULL).length;
  }

  /** Runs until every id in `ids` has a response; false on timeout. */
  runUntilAnswered(ids: readonly number[], ms = ADVERSARY_WAIT_MS): Promise<boolean> {
    return this.host.run(ms, () => {
      this.txResponses();
      return ids.every((id) => this.statuses(id).length > 0);
    });
  }

  /** Posts `n` RX buffers (writable grants unless `readonly`); returns their ids. */
  postRx(n: number, readonly = false): number[] {
    const rx = this.rxRing();
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      const id = this.id();
      rx.putRequest(RxRequest, { id, gref: this.grant(this.frame(), readonly) });
      ids.push(id);
    }
    rx.pushRequests();
    this.notify();
    return ids;
  }

  /** Posts one RX request naming `gref` as it is (an invalid or foreign grant); returns its id. */
  postRxRef(gref: number): number {
    const rx = this.rxRing();
    const id = this.id();
    rx.putRequest(RxRequest, { id, gref });
    rx.pushRequests();
    this.notify();
    return id;
  }

  /** Reads every RX response published since the last call, keeping them in rxSeen. */
  rxResponses(): RxResponseFields[] {
    return this.readResponses(this.rx, RxResponse, this.rxSeen);
  }

  /** Our grants the backend maps or copies right now (GTF_reading/GTF_writing set in our own table). */
  inUseRefs(): number[] {
    return this.guest.gnttab
      .query()
      .outstanding.filter((g) => g.inUse)
      .map((g) => g.ref);
  }

  /** Every gref the backend posted back on our grant-return port so far. */
  returnedGrefs(): number[] {
    return this.guest.notices.flatMap((m) => Array.from(m.grefs));
  }

  /** A UDP frame from us to the remote of exactly `len` bytes (>= 50), or plain pattern bytes when shorter. */
  frameBytes(len: number): Uint8Array {
    if (len < ETH_HLEN + 20 + 8 + 8) {
      const b = new Uint8Array(len);
      for (let i = 0; i < len; i++) b[i] = (i * 7 + this.domid) & 0xff;
      return b;
    }
    const flow = { srcMac: this.mac, dstMac: this.host.remote.mac, saddr: this.ip, daddr: this.host.remote.ip, sport: 30000 + (this.domid & 0xfff), dport: 9 };
    return new TxFrame().setUdp(flow, 0x4144 + this.domid, this.nextFrame * 4096, len - ETH_HLEN - 28, false).toBytes();
  }

  /** Sends one small frame to the remote and waits until the uplink has it, so the bridge learns our MAC. */
  async announce(): Promise<boolean> {
    const seen = this.host.uplink().udpVerified;
    const p = this.sendPacket([{ size: 60 }]);
    const answered = await this.runUntilAnswered(p.ids);
    return answered && (await this.host.run(ADVERSARY_WAIT_MS, () => this.host.uplink().udpVerified > seen));
  }

  private txRing(): FrontRing {
    if (this.tx === null) throw new Error(`adversary d${this.domid}: not connected`);
    return this.tx;
  }

  private rxRing(): FrontRing {
    if (this.rx === null) throw new Error(`adversary d${this.domid}: not connected`);
    return this.rx;
  }
}

// ---- Cases ---------------------------------------------------------------------------------------------------

/** One hostile act: what it plays, what Linux answers, how to play it and how to judge the outcome. */
export interface AdversaryCase<P = unknown> {
  /** Unique, kebab-case; the ava test is `adversary: <name>`. */
  readonly name: string;
  readonly item: ChecklistItem;
  readonly expect: LinuxAnswer;
  /** Linux's answer in one line, with the message netback logs where there is one. */
  readonly linux: string;
  /** Drives the hostile netfront; returns what the check needs. */
  play(front: HostileFront): Promise<P>;
  /** The discrepancies from Linux's answer (empty: the backend answered as Linux does). */
  check(front: HostileFront, played: P): string[];
  /**
   * For a case whose hostile act needs the guest's pages still mapped (a frame in flight): whether they were
   * ('held') or the stack had already copied them ('copied': a grant-copy design, or mainline's ubuf copying at
   * a tap's clone); null for a mix of both, which the check fails. The check judges each as Linux would; a copy can
   * never hide an early return, which the oracle judges apart.
   */
  premise?(played: P): Premise | null;
}

/** Whether a case's hostile act met the guest's pages still mapped, or copies of them. */
export type Premise = 'held' | 'copied';

/** 'held' when all `n` grants were mapped, 'copied' when none was; a mix is neither (the check fails it). */
function premiseOf(mapped: number, n: number): Premise | null {
  return mapped === n ? 'held' : mapped === 0 ? 'copied' : null;
}

/** A premise that is neither held nor copied is a discrepancy. */
function expectPremise(out: string[], what: string, mapped: number, n: number): Premise | null {
  const p = premiseOf(mapped, n);
  if (p === null) out.push(`${what}: expected all ${n} or none still mapped but got ${mapped}`);
  return p;
}

function show(v: unknown): string {
  return v === undefined ? 'undefined' : JSON.stringify(v);
}

function expectEq(out: string[], what: string, got: unknown, want: unknown): void {
  if (show(got) !== show(want)) out.push(`${what}: expected ${show(want)} but got ${show(got)}`);
}

const OKAY = XEN_NETIF_RSP_OKAY;
const ERROR = XEN_NETIF_RSP_ERROR;

/** Every data slot's statuses: `want(k)` for slot k, exactly once each. */
function expectStatuses(out: string[], f: HostileFront, p: SentPacket, want: (k: number) => number): void {
  expectEq(
    out,
    'slot statuses',
    p.ids.map((id) => f.statuses(id)),
    p.ids.map((_, k) => [want(k)]),
  );
  expectEq(out, 'RSP_NULL responses', f.nulls(), p.extras);
}

function expectNotDisabled(out: string[], v: VifStatus | null): void {
  if (v === null) {
    out.push('the vif is gone');
    return;
  }
  expectEq(out, 'vif disabled', v.disabled, false);
  expectEq(out, 'fatal error', v.fatalError, null);
}

/** Every gref of the packet's answered slots came back on the grant-return port. */
function expectReturned(out: string[], f: HostileFront, p: SentPacket): void {
  const back = new Set(f.returnedGrefs());
  const missing = p.grefs.filter((g) => !back.has(g));
  if (missing.length > 0) out.push(`grants answered but never posted back: ${missing.join(', ')}`);
}

// -- FATAL: xenvif_fatal_tx_err --

interface FatalPlayed {
  readonly bad: readonly number[];
  readonly vif: VifStatus | null;
  readonly rspAtFatal: number;
  readonly rspAfterProbe: number;
  readonly rxAtFatal: number;
  readonly rxAfterProbe: number;
  readonly reconnected: number;
  readonly after: readonly number[];
}

/** A FATAL case: `send` plays the hostile act (returning its ids); then a probe, a reconnect and a good packet. */
function fatalCase(
  name: string,
  item: ChecklistItem,
  message: string,
  send: (f: HostileFront) => Promise<readonly number[]> | readonly number[],
): AdversaryCase<FatalPlayed> {
  return {
    name,
    item,
    expect: 'FATAL',
    linux: `xenvif_fatal_tx_err: "${message}"; vif disabled, carrier off, nothing answered until reconnect`,
    async play(f) {
      await f.connect();
      const bad = await send(f);
      f.notify();
      await f.host.run(ADVERSARY_WAIT_MS, () => f.vif()?.disabled === true);
      const vif = f.vif();
      f.txResponses();
      const rspAtFatal = f.rspProd();
      const rxAtFatal = vif?.stats.rxPackets ?? -1;
      // Nothing more is consumed or answered until reconnect.
      f.probe();
      await f.host.run(ADVERSARY_WAIT_MS);
      f.txResponses();
      const rspAfterProbe = f.rspProd();
      const rxAfterProbe = f.vif()?.stats.rxPackets ?? -1;
      const reconnected = await f.reconnect();
      const good = f.sendPacket([{ size: 300 }]);
      await f.runUntilAnswered(good.ids);
      return { bad, vif, rspAtFatal, rspAfterProbe, rxAtFatal, rxAfterProbe, reconnected, after: f.statuses(good.ids[0]!) };
    },
    check(f, p) {
      const out: string[] = [];
      const v = p.vif;
      if (v === null) return ['the vif is gone'];
      expectEq(out, 'vif disabled', v.disabled, true);
      expectEq(out, 'carrier', v.carrier, false);
      expectEq(out, 'fatal error', v.fatalError, message);
      const answered = p.bad.filter((id) => f.statuses(id).length > 0);
      if (answered.length > 0) out.push(`slots of the hostile packet answered: ${answered.join(', ')}`);
      expectEq(out, 'responses after the FATAL (rsp_prod)', p.rspAfterProbe, p.rspAtFatal);
      expectEq(out, 'frames handed to the stack after the FATAL', p.rxAfterProbe, p.rxAtFatal);
      expectEq(out, 'backend state after reconnect', xenbusStateName(p.reconnected), xenbusStateName(XenbusStateConnected));
      expectEq(out, 'a good packet after reconnect', p.after, [OKAY]);
      return out;
    },
  };
}

// -- ERROR / SLOT_ERROR / OKAY: one packet, judged by its responses --

interface PacketPlayed {
  readonly pkt: SentPacket;
  readonly vif: VifStatus | null;
  readonly delivered: number;
  readonly corrupt: number;
  readonly extra: number;
  /** The packet's grants still mapped when the in-flight act ran (-1 without one). */
  readonly mappedAtAct: number;
}

interface PacketCaseSpec {
  readonly name: string;
  readonly item: ChecklistItem;
  readonly expect: 'ERROR' | 'SLOT_ERROR' | 'OKAY';
  readonly linux: string;
  /** Puts the packet on the ring (connected, MAC announced). */
  readonly send: (f: HostileFront) => SentPacket;
  /** Status of data slot k (default: OKAY for OKAY cases, ERROR otherwise). */
  readonly status?: (k: number) => number;
  /** The vif's last TX error, exactly (or its start, for messages with a pending index). */
  readonly txError?: string;
  readonly txErrorPrefix?: boolean;
  /** Frames the uplink verified because of this packet: 1 delivered intact, 0 dropped (default: 1 if OKAY). */
  readonly delivered?: number | ((p: PacketPlayed) => number);
  /**
   * Between the backend's first round and the rest, with the uplink stalled so that a zero-copy backend still has
   * the pages mapped (the case's premise: see AdversaryCase.premise).
   */
  readonly inFlight?: (f: HostileFront, pkt: SentPacket) => void;
  /** A number the check wants, read after the run. */
  readonly extra?: (f: HostileFront) => number;
  readonly more?: (out: string[], f: HostileFront, p: PacketPlayed) => void;
}

/** How long a case that acts on frames in flight stalls the uplink: past a step on real time, within ADVERSARY_WAIT_MS. */
const IN_FLIGHT_STALL_MS = 100;

function packetCase(s: PacketCaseSpec): AdversaryCase<PacketPlayed> {
  return {
    name: s.name,
    item: s.item,
    expect: s.expect,
    linux: s.linux,
    async play(f) {
      await f.connect();
      await f.announce();
      const up0 = f.host.uplink();
      // The frame must still be queued in the uplink NIC when the guest acts, on real time too.
      if (s.inFlight !== undefined) f.host.stallUplink(IN_FLIGHT_STALL_MS);
      const pkt = s.send(f);
      let mappedAtAct = -1;
      if (s.inFlight !== undefined) {
        await f.host.step();
        mappedAtAct = f.inUseRefs().filter((r) => pkt.grefs.includes(r)).length;
        s.inFlight(f, pkt);
      }
      await f.runUntilAnswered(pkt.ids);
      // Let what got through reach the uplink (NIC completion, after the stall: a copying backend answers before).
      await f.host.run(s.inFlight !== undefined ? IN_FLIGHT_STALL_MS + 5 : 5);
      f.txResponses();
      const up1 = f.host.uplink();
      return {
        pkt,
        vif: f.vif(),
        delivered: up1.udpVerified - up0.udpVerified,
        corrupt: up1.udpCorrupt - up0.udpCorrupt,
        extra: s.extra?.(f) ?? 0,
        mappedAtAct,
      };
    },
    check(f, p) {
      const out: string[] = [];
      expectNotDisabled(out, p.vif);
      if (s.inFlight !== undefined) expectPremise(out, 'grants of the packet when the guest acted', p.mappedAtAct, p.pkt.grefs.length);
      const dflt = s.expect === 'OKAY' ? OKAY : ERROR;
      expectStatuses(out, f, p.pkt, s.status ?? (() => dflt));
      if (s.txError !== undefined) {
        const got = p.vif?.lastTxError ?? null;
        if (s.txErrorPrefix === true) {
          if (got === null || !got.startsWith(s.txError)) out.push(`last TX error: expected to start with ${show(s.txError)} but got ${show(got)}`);
        } else {
          expectEq(out, 'last TX error', got, s.txError);
        }
      }
      const delivered = typeof s.delivered === 'function' ? s.delivered(p) : s.delivered;
      if (delivered !== -1) expectEq(out, 'frames verified on the uplink', p.delivered, delivered ?? (s.expect === 'OKAY' ? 1 : 0));
      expectReturned(out, f, p.pkt);
      s.more?.(out, f, p);
      return out;
    },
    ...(s.inFlight !== undefined && { premise: (p: PacketPlayed) => premiseOf(p.mappedAtAct, p.pkt.grefs.length) }),
  };
}

// -- XENBUS_FATAL: xenbus_dev_fatal at connect --

interface ConnectPlayed {
  readonly state: number;
  readonly dev: DeviceStatus | null;
  readonly vif: VifStatus | null;
  readonly inUse: readonly number[];
  readonly message: string;
}

function connectCase(
  name: string,
  message: (f: HostileFront) => string,
  spec: ConnectSpec,
  linux: string,
): AdversaryCase<ConnectPlayed> {
  return {
    name,
    item: CHECKLIST.connect,
    expect: 'XENBUS_FATAL',
    linux,
    async play(f) {
      const state = await f.connect(spec);
      await f.host.run(5);
      return { state, dev: f.host.deviceStatus(f.domid), vif: f.vif(), inUse: f.inUseRefs(), message: message(f) };
    },
    check(_f, p) {
      const out: string[] = [];
      expectEq(out, 'backend state', xenbusStateName(p.state), xenbusStateName(XenbusStateClosing));
      expectEq(out, 'xenbus_dev_fatal message', p.dev?.lastError ?? null, p.message);
      expectEq(out, 'connects', p.dev?.connects ?? -1, 0);
      expectEq(out, 'vif data path', p.vif?.state ?? null, 'idle');
      expectEq(out, 'grants the backend left mapped', p.inUse, []);
      return out;
    },
  };
}

function ringMapMessage(f: HostileFront, txRef: number, why: string): string {
  return `mapping shared-frames ${txRef}/${f.rxRingRef} port tx ${f.port} rx ${f.port}: ${why}`;
}

/** A small good packet for the ERROR rows that need a valid first slot. */
const UNUSED_GREF = 999_999;

const frags = (n: number, size: number): SlotSpec[] => Array.from({ length: n }, () => ({ size }));

// -- The catalogue --

const ringCases: AdversaryCase[] = [
  fatalCase('req-prod-overrun', CHECKLIST.ring, 'Impossible number of requests. req_prod 300, req_cons 0, size 256', (f) => {
    f.storeReqProd(300);
    return [];
  }),
  fatalCase('req-prod-backwards', CHECKLIST.ring, 'Impossible number of requests. req_prod 0, req_cons 1, size 256', async (f) => {
    const p = f.sendPacket([{ size: 60 }]);
    await f.runUntilAnswered(p.ids);
    f.storeReqProd(0);
    return [];
  }),
  packetCase({
    name: 'double-fetch-during-map',
    item: CHECKLIST.ring,
    expect: 'OKAY',
    linux: 'RING_COPY_REQUEST (XSA-155): each request is copied once, then validated; rewriting the slots changes nothing',
    send: (f) => {
      const p = f.sendPacket([{ size: 600 }, { size: 800, offset: 5 }], { push: false });
      f.host.interleave(f.domid, () => rewriteTxRing(f));
      f.push();
      return p;
    },
  }),
  packetCase({
    name: 'rewrite-before-response',
    item: CHECKLIST.ring,
    expect: 'OKAY',
    linux: 'responses echo the id netback copied (pending_tx_info), never the slot as rewritten since',
    send: (f) => f.sendPacket([{ size: 600 }, { size: 800, offset: 5 }]),
    // Responses already in the ring are read first: the guest's garbage would overwrite its own unread answers.
    inFlight: (f) => {
      f.txResponses();
      rewriteTxRing(f);
    },
  }),
];

/** Rewrites every slot of the TX ring with garbage: offsets past the page, huge sizes, new ids, more_data. */
export function rewriteTxRing(f: HostileFront): void {
  for (let i = 0; i < 256; i++) f.rawTxRequest(i, 0xfffffff0, 4000, NETTXF_more_data | NETTXF_extra_info, 0xbeef, 4096);
}

const slotCases: AdversaryCase[] = [
  fatalCase('first-slot-crosses-page', CHECKLIST.slots, 'txreq.offset: 4000, size: 200, end: 4200', (f) => f.sendPacket([{ size: 200, offset: 4000 }]).ids),
  fatalCase('frag-crosses-page', CHECKLIST.slots, 'Cross page boundary, txp->offset: 4000, size: 200', (f) =>
    f.sendPacket([{ size: 100 }, { size: 200, offset: 4000 }]).ids,
  ),
  packetCase({
    name: 'slots-19-accepted',
    item: CHECKLIST.slots,
    expect: 'OKAY',
    linux: 'up to XEN_NETBK_LEGACY_SLOTS_MAX frags: accepted, the frags past MAX_SKB_FRAGS go on a frag_list (copied)',
    send: (f) => f.sendPacket([{ size: 100 }, ...frags(18, 50)]),
  }),
  packetCase({
    name: 'slots-20-dropped',
    item: CHECKLIST.slots,
    expect: 'ERROR',
    linux: 'xenvif_tx_err: "Too many slots (18) exceeding limit (18), dropping packet"; every slot RSP_ERROR',
    send: (f) => f.sendPacket([{ size: 100 }, ...frags(19, 50)]),
    txError: 'Too many slots (18) exceeding limit (18), dropping packet',
  }),
  packetCase({
    name: 'slots-21-dropped',
    item: CHECKLIST.slots,
    expect: 'ERROR',
    linux: 'still below fatal_skb_slots (20 frags): dropped, every slot RSP_ERROR',
    send: (f) => f.sendPacket([{ size: 100 }, ...frags(20, 50)]),
    txError: 'Too many slots (18) exceeding limit (18), dropping packet',
  }),
  fatalCase('slots-22-fatal', CHECKLIST.slots, 'Malicious frontend using 20 slots, threshold 20', (f) => f.sendPacket([{ size: 100 }, ...frags(21, 50)]).ids),
  fatalCase('more-data-past-producer', CHECKLIST.slots, 'Asked for 2 slots but exceeds this limit', (f) =>
    f.sendPacket(
      [
        { size: 100, flags: NETTXF_more_data },
        { size: 50, flags: NETTXF_more_data },
        { size: 50, flags: NETTXF_more_data },
      ],
      { total: 200 },
    ).ids,
  ),
];

const sizeCases: AdversaryCase[] = [
  packetCase({
    name: 'frag-larger-than-total',
    item: CHECKLIST.sizes,
    expect: 'ERROR',
    linux: 'xenvif_count_requests: not fatal ("buggy frontends"), dropped, every slot RSP_ERROR, its extra RSP_NULL',
    send: (f) => f.sendPacket([{ size: 100 }, { size: 200 }], { total: 100, extras: [gsoExtraSlot(1000, XEN_NETIF_GSO_TYPE_TCPV4)] }),
    txError: 'Invalid tx request, slot size 200 > remaining size 100',
  }),
  packetCase({
    name: 'runt-first-slot',
    item: CHECKLIST.sizes,
    expect: 'ERROR',
    linux: 'first slot shorter than ETH_HLEN: "Bad packet size", every slot RSP_ERROR',
    send: (f) => f.sendPacket([{ size: 10 }, { size: 100 }]),
    txError: 'Bad packet size: 10',
  }),
  packetCase({
    name: 'runt-total',
    item: CHECKLIST.sizes,
    expect: 'ERROR',
    linux: 'a 13-byte packet: "Bad packet size", RSP_ERROR',
    send: (f) => f.sendPacket([{ size: 13 }]),
    txError: 'Bad packet size: 13',
  }),
  packetCase({
    name: 'frags-short-of-total',
    item: CHECKLIST.sizes,
    expect: 'OKAY',
    linux: 'total larger than the frags: the first slot simply holds the difference (read from its page), accepted',
    // 1000 + 400 granted, but the total says 1500: the first slot is read as 1100 bytes of its page.
    send: (f) => f.sendPacket([{ size: 1000 }, { size: 400 }], { total: 1500 }),
    delivered: -1,
    more: (out, _f, p) => expectEq(out, 'frames the backend handed to the stack', p.vif?.stats.rxPackets, 2),
  }),
];

const zeroCases: AdversaryCase[] = [
  packetCase({
    name: 'zero-length-frag',
    item: CHECKLIST.zero,
    expect: 'OKAY',
    linux: 'XSA-448: a zero-length frag is answered OKAY at once and never becomes a frag (even with a bad gref)',
    send: (f) => f.sendPacket([{ size: 600 }, { size: 0, gref: UNUSED_GREF }, { size: 800 }, { size: 0 }]),
    more: (out, _f, p) => expectEq(out, 'txZeroLengthSlots', p.vif?.stats.txZeroLengthSlots, 2),
  }),
  packetCase({
    name: 'zero-length-every-frag',
    item: CHECKLIST.zero,
    expect: 'OKAY',
    linux: 'XSA-448: every frag zero-length: all answered OKAY, the packet is its first slot',
    send: (f) => f.sendPacket([{ size: 200 }, { size: 0 }, { size: 0 }, { size: 0 }]),
    more: (out, _f, p) => expectEq(out, 'txZeroLengthSlots', p.vif?.stats.txZeroLengthSlots, 3),
  }),
];

const extraCases: AdversaryCase[] = [
  fatalCase('extra-type-0', CHECKLIST.extras, 'Invalid extra type: 0', (f) => f.sendPacket([{ size: 100 }], { extras: [extraSlot(0, 0)] }).ids),
  fatalCase('extra-type-6', CHECKLIST.extras, 'Invalid extra type: 6', (f) => f.sendPacket([{ size: 100 }], { extras: [extraSlot(6, 0)] }).ids),
  fatalCase('extra-runaway-more', CHECKLIST.extras, 'Missing extra info', (f) =>
    f.sendPacket([{ size: 100 }], { extras: [extraSlot(XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_FLAG_MORE, [0xdc, 5, 1])], rawExtraFlags: true }).ids,
  ),
  packetCase({
    name: 'extra-duplicate',
    item: CHECKLIST.extras,
    expect: 'OKAY',
    linux: 'xenvif_get_extras: a repeated type overwrites the earlier one (the last wins)',
    send: (f) => {
      const a = 0x01_00_5e_00_00_01;
      const b = 0x01_00_5e_00_00_02;
      const first = f.sendMcast(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, a);
      const tx = f.tx!;
      // Two MCAST_ADD extras on one request: a, then b.
      const id = f.id();
      tx.putRequest(TxRequest, { gref: 0, offset: 0, flags: NETTXF_extra_info, id, size: 0 });
      tx.putRequest(RawSlot, withMore(mcastExtraSlot(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, a)));
      tx.putRequest(RawSlot, mcastExtraSlot(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, b));
      const del = f.sendMcast(XEN_NETIF_EXTRA_TYPE_MCAST_DEL, b);
      f.push();
      return { ids: [first.ids[0]!, id, del.ids[0]!], grefs: [], extras: 4 };
    },
    delivered: -1,
    // a, then b (the last extra wins, not a again), then b deleted: one address is left.
    more: (out, _f, p) => expectEq(out, 'multicast addresses held', p.vif?.mcastCount, 1),
  }),
  fatalCase('gso-size-0', CHECKLIST.extras, 'GSO size must not be zero.', (f) =>
    f.sendPacket([{ size: 600 }], { extras: [gsoExtraSlot(0, XEN_NETIF_GSO_TYPE_TCPV4)] }).ids,
  ),
  fatalCase('gso-bad-type', CHECKLIST.extras, 'Bad GSO type 3.', (f) => f.sendPacket([{ size: 600 }], { extras: [gsoExtraSlot(1000, 3)] }).ids),
];

function withMore(e: Uint8Array): Uint8Array {
  const x = e.slice();
  x[1] = x[1]! | XEN_NETIF_EXTRA_FLAG_MORE;
  return x;
}

const headerCases: AdversaryCase[] = [
  packetCase({
    name: 'header-over-tiny-slots',
    item: CHECKLIST.headers,
    expect: 'OKAY',
    linux: 'XSA-423: the 128-byte header copy spans the tiny slots; they are answered at once, the frame arrives intact',
    send: (f) => f.sendPacket([{ size: 20 }, ...frags(12, 10), { size: 1260, offset: 7 }]),
  }),
  packetCase({
    name: 'header-whole-first-slot',
    item: CHECKLIST.headers,
    expect: 'OKAY',
    linux: 'XSA-432 shape: with 17 frags the whole first slot is copied, so the rest fits the frags; accepted intact',
    send: (f) => f.sendPacket([{ size: 700, offset: 3000 }, ...frags(17, 40)]),
  }),
];

const grefCases: AdversaryCase[] = [
  packetCase({
    name: 'gref-invalid',
    item: CHECKLIST.grefs,
    expect: 'SLOT_ERROR',
    linux: 'xenvif_tx_check_gop: the frag whose map fails (GNTST_bad_gntref) RSP_ERROR, the others OKAY, packet dropped',
    send: (f) => f.sendPacket([{ size: 600 }, { size: 800, gref: UNUSED_GREF }]),
    status: (k) => (k === 1 ? ERROR : OKAY),
    txError: 'Grant map of 1. frag failed! status: -3 (GNTST_bad_gntref)',
    txErrorPrefix: true,
  }),
  packetCase({
    name: 'gref-revoked-while-queued',
    item: CHECKLIST.grefs,
    expect: 'SLOT_ERROR',
    linux: 'access ended before netback maps: the map fails (GNTST_general_error), that slot RSP_ERROR',
    send: (f) => f.sendPacket([{ size: 600 }, { size: 800 }], { revoke: [1] }),
    status: (k) => (k === 1 ? ERROR : OKAY),
    txError: 'Grant map of 1. frag failed! status: -1 (GNTST_general_error)',
    txErrorPrefix: true,
  }),
  packetCase({
    name: 'gref-foreign',
    item: CHECKLIST.grefs,
    expect: 'SLOT_ERROR',
    linux: 'a frag granted to another domain: the map fails (GNTST_general_error), that slot RSP_ERROR',
    send: (f) => {
      const other = f.grant(f.frame(), true, f.host.backendDomid + 5);
      return f.sendPacket([{ size: 600 }, { size: 800, gref: other }]);
    },
    status: (k) => (k === 1 ? ERROR : OKAY),
    txError: 'Grant map of 1. frag failed! status: -1 (GNTST_general_error)',
    txErrorPrefix: true,
  }),
  packetCase({
    name: 'header-gref-foreign',
    item: CHECKLIST.grefs,
    expect: 'SLOT_ERROR',
    linux: 'the header copy fails: its slots RSP_ERROR, the frag sharing the header\'s last slot too ("sharing a slot, send an error")',
    send: (f) => {
      const other = f.grant(f.frame(), true, f.host.backendDomid + 5);
      return f.sendPacket([{ size: 100, gref: other }, { size: 800 }]);
    },
    status: () => ERROR,
    txError: 'Grant copy of header failed! status: -1 (GNTST_general_error)',
    txErrorPrefix: true,
  }),
  packetCase({
    name: 'mapped-page-rewritten',
    item: CHECKLIST.grefs,
    expect: 'OKAY',
    linux: 'a guest may scribble on its mapped page: only its own payload changes; the header was copied, so what the stack decided on stands',
    send: (f) => f.sendPacket([{ size: 1400 }]),
    inFlight: (f, pkt) => {
      const frame = f.guest.gnttab.entries.frame(pkt.grefs[0]!);
      f.guest.memory.frame(frame).fill(0x5a);
    },
    // A page the stack had already copied keeps the guest's scribbles out of the frame.
    delivered: (p) => (p.mappedAtAct > 0 ? 0 : 1),
    more: (out, _f, p) => expectEq(out, 'corrupt payloads on the uplink (the guest\'s own)', p.corrupt, p.mappedAtAct > 0 ? 1 : 0),
  }),
];

interface RxPlayed {
  readonly statuses: readonly number[];
  readonly vif: VifStatus | null;
}

const rxBadGrefCase: AdversaryCase<RxPlayed> = {
  name: 'rx-grefs-readonly-and-invalid',
  item: CHECKLIST.grefs,
  expect: 'RX_ERROR',
  linux: 'xenvif_rx_copy: a copy into a read-only or invalid grant fails; the slot\'s status is the GNTST code',
  async play(f) {
    await f.connect();
    await f.announce();
    f.postRx(1, true);
    f.postRxRef(UNUSED_GREF);
    f.host.honestSendTo(f.mac, f.ip, 2, 1400);
    await f.host.run(ADVERSARY_WAIT_MS, () => {
      f.rxResponses();
      return f.rxSeen.length >= 2;
    });
    return { statuses: f.rxSeen.map((r) => r.status), vif: f.vif() };
  },
  check(_f, p) {
    const out: string[] = [];
    expectNotDisabled(out, p.vif);
    expectEq(out, 'RX statuses', p.statuses, [GNTST_general_error, GNTST_bad_gntref]);
    if (!((p.vif?.stats.rxCopyErrors ?? 0) >= 2)) out.push(`rxCopyErrors: expected >= 2 but got ${p.vif?.stats.rxCopyErrors}`);
    return out;
  },
};

interface McastPlayed {
  readonly adds: readonly SentPacket[];
  readonly dels: readonly SentPacket[];
  readonly vif: VifStatus | null;
}

const mcastCase: AdversaryCase<McastPlayed> = {
  name: 'mcast-over-64',
  item: CHECKLIST.mcast,
  expect: 'ERROR',
  linux: `xenvif_mcast_add: ${XEN_NETBK_MCAST_MAX} addresses OKAY, the next RSP_ERROR ("Too many multicast addresses"); DEL always OKAY`,
  async play(f) {
    await f.connect();
    const mac = (i: number): number => 0x01_00_5e_00_00_00 + i;
    const adds: SentPacket[] = [];
    for (let i = 0; i <= XEN_NETBK_MCAST_MAX; i++) adds.push(f.sendMcast(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, mac(i)));
    const dels = [f.sendMcast(XEN_NETIF_EXTRA_TYPE_MCAST_DEL, 0x01_00_5e_09_09_09), f.sendMcast(XEN_NETIF_EXTRA_TYPE_MCAST_DEL, mac(3))];
    f.push();
    await f.runUntilAnswered([...adds, ...dels].map((p) => p.ids[0]!));
    return { adds, dels, vif: f.vif() };
  },
  check(f, p) {
    const out: string[] = [];
    expectNotDisabled(out, p.vif);
    expectEq(
      out,
      'MCAST_ADD statuses',
      p.adds.map((a) => f.statuses(a.ids[0]!)),
      p.adds.map((_, i) => [i < XEN_NETBK_MCAST_MAX ? OKAY : ERROR]),
    );
    expectEq(out, 'MCAST_DEL statuses', p.dels.map((d) => f.statuses(d.ids[0]!)), [[OKAY], [OKAY]]);
    expectEq(out, 'RSP_NULL responses', f.nulls(), p.adds.length + p.dels.length);
    expectEq(out, 'multicast addresses held', p.vif?.mcastCount, XEN_NETBK_MCAST_MAX - 1);
    expectEq(out, 'last TX error', p.vif?.lastTxError, 'Too many multicast addresses');
    return out;
  },
};

const connectCases: AdversaryCase[] = [
  connectCase(
    'ring-ref-not-granted',
    (f) => ringMapMessage(f, 200, 'ring grant 200: GNTST_general_error'),
    { txRingRef: 200 },
    'xenbus_map_ring_valloc fails: xenbus_dev_fatal, backend Closing',
  ),
  connectCase(
    'ring-granted-readonly',
    (f) => ringMapMessage(f, f.txRingRef, `ring grant ${f.txRingRef}: GNTST_general_error`),
    { txRingReadonly: true },
    'the ring map is writable, a read-only grant refuses it: xenbus_dev_fatal, backend Closing',
  ),
  connectCase(
    'ring-indices-garbage',
    (f) => ringMapMessage(f, f.txRingRef, 'ring indices are corrupt: expected req_prod - rsp_prod <= 256 but got 1000'),
    { corrupt: (f) => f.storeReqProd(1000) },
    'xenvif_map_frontend_data_rings: impossible indices, -EIO, xenbus_dev_fatal',
  ),
  connectCase(
    'too-many-queues',
    () => 'guest requested 4 queues, exceeding the maximum of 1.',
    { keys: (k) => [...k, [VifKey.multiQueueNumQueues, '4']] },
    'connect: more queues than multi-queue-max-queues: xenbus_dev_fatal',
  ),
  connectCase(
    'missing-ring-ref',
    (f) => `reading ${f.guest.frontendPath}/ring-ref`,
    { keys: (k) => k.filter(([key]) => key !== VifKey.rxRingRef) },
    'connect_data_rings: a ring ref missing: xenbus_dev_fatal',
  ),
  connectCase(
    'request-rx-copy-0',
    (f) => `${f.guest.frontendPath}/request-rx-copy is not set: only the copying receive path is supported`,
    { keys: (k) => [...k.filter(([key]) => key !== VifKey.requestRxCopy), [VifKey.requestRxCopy, '0']] },
    'read_xenbus_vif_flags: -EOPNOTSUPP (the flipping receive path is gone)',
  ),
];

// -- Withholding --

interface WithholdPlayed {
  readonly frames: number;
  readonly pinnedOutstanding: number;
  readonly queuedWhilePinned: number;
  readonly releasedAfterMs: number;
  readonly outstandingAfter: number;
  readonly vif: VifStatus | null;
}

const WITHHELD_FRAMES = 8;

const withholdRxCase: AdversaryCase<WithholdPlayed> = {
  name: 'withhold-rx-requests',
  item: CHECKLIST.withhold,
  expect: 'DRAIN',
  linux: 'rx_drain_timeout_msecs: frames waiting longer are dropped, so the sender\'s foreign pages cannot stay pinned',
  async play(f) {
    await f.connect();
    await f.announce();
    const h0 = f.host.honestHealth().outstanding;
    f.host.honestSendTo(f.mac, f.ip, WITHHELD_FRAMES, 1400);
    const t0 = f.host.clock.now();
    await f.host.run(ADVERSARY_WAIT_MS, () => f.vif()?.rxQueued === WITHHELD_FRAMES);
    // Two more rounds: grants a copying stack gave back at once reach the sender (its next step) before we count.
    await f.host.step();
    await f.host.step();
    const pinnedOutstanding = f.host.honestHealth().outstanding - h0;
    const queuedWhilePinned = f.vif()?.rxQueued ?? -1;
    await f.host.run(f.host.rxDrainTimeoutMs * 2, () => f.host.honestHealth().outstanding === h0 && f.vif()?.rxQueued === 0);
    return {
      frames: WITHHELD_FRAMES,
      pinnedOutstanding,
      queuedWhilePinned,
      releasedAfterMs: f.host.clock.now() - t0,
      outstandingAfter: f.host.honestHealth().outstanding - h0,
      vif: f.vif(),
    };
  },
  check(f, p) {
    const out: string[] = [];
    expectNotDisabled(out, p.vif);
    expectEq(out, 'frames queued for the withholding guest', p.queuedWhilePinned, p.frames);
    // A zero-copy stack keeps the sender's pages mapped (its grants out) while the frames wait: the hazard the timeout
    // exists for, and then nothing but the timeout may give them back. A stack that copied them has nothing pinned.
    const pinned = withholdPremise(p);
    if (pinned === null) out.push(`honest grants pinned while queued: expected >= ${p.frames} (or 0, copied) but got ${p.pinnedOutstanding}`);
    expectEq(out, 'honest grants still out after the drain timeout', p.outstandingAfter, 0);
    if (pinned === 'held' && p.releasedAfterMs < f.host.rxDrainTimeoutMs) {
      out.push(`grants came back after ${p.releasedAfterMs} ms: before the ${f.host.rxDrainTimeoutMs} ms drain timeout`);
    }
    expectEq(out, 'rxDropped', p.vif?.stats.rxDropped, p.frames);
    expectEq(out, 'frames still queued', p.vif?.rxQueued, 0);
    return out;
  },
  premise: (p) => withholdPremise(p),
};

// The honest sender's grants while its frames waited: all of them out (held) or none (the stack copied them).
function withholdPremise(p: WithholdPlayed): Premise | null {
  return p.pinnedOutstanding >= p.frames ? 'held' : p.pinnedOutstanding === 0 ? 'copied' : null;
}

interface WithholdTxPlayed {
  readonly sent: number;
  readonly delivered: number;
  readonly consumed: number;
  readonly vif: VifStatus | null;
}

const withholdTxCase: AdversaryCase<WithholdTxPlayed> = {
  name: 'withhold-tx-responses',
  item: CHECKLIST.withhold,
  expect: 'OKAY',
  linux: 'netback never waits for the frontend to read its responses; a frontend that never does only hurts itself',
  async play(f) {
    await f.connect();
    // One page, one grant, reused by every request: each 60-byte packet is copied whole and answered at once.
    const frame = f.frame();
    f.guest.memory.frame(frame).set(f.frameBytes(60));
    const gref = f.grant(frame);
    const up0 = f.host.uplink().udpVerified;
    let prod = 0;
    const rounds = 3;
    for (let r = 0; r < rounds; r++) {
      // A whole ring of requests, overwriting the responses of the last round unread, rsp_event never moved.
      for (let i = 0; i < 256; i++) f.rawTxRequest(prod + i, gref, 0, 0, (prod + i) & 0xffff, 60);
      prod += 256;
      f.storeReqProd(prod);
      f.notify();
      await f.host.run(ADVERSARY_WAIT_MS, () => f.rspProd() === prod);
    }
    await f.host.run(5);
    return { sent: rounds * 256, delivered: f.host.uplink().udpVerified - up0, consumed: f.rspProd(), vif: f.vif() };
  },
  check(_f, p) {
    const out: string[] = [];
    expectNotDisabled(out, p.vif);
    expectEq(out, 'requests answered (rsp_prod)', p.consumed, p.sent);
    expectEq(out, 'frames verified on the uplink', p.delivered, p.sent);
    return out;
  },
};

// -- Lifecycle --

interface FloodPlayed {
  readonly exchange: Result<void>;
  readonly kicks: number;
  readonly vif: VifStatus | null;
  readonly after: readonly number[];
}

/** Notifications the flooding guest sends before every round of the system. */
export const FLOOD_PER_ROUND = 200;
/** Frames each honest guest exchanges during the flood. */
const FLOOD_EXCHANGE_FRAMES = 32;
/** Rounds of flooding the case needs to mean anything; the flood goes on after the exchange until it has them. */
const FLOOD_MIN_ROUNDS = 20;

const floodCase: AdversaryCase<FloodPlayed> = {
  name: 'event-flood',
  item: CHECKLIST.lifecycle,
  expect: 'IGNORE',
  linux: 'XSA-332/391: events are only hints (lateeoi); a guest kicking as fast as it can gets no more service and starves no one',
  async play(f) {
    await f.connect();
    const sent0 = f.guest.evtchn.counters().sent;
    const flood = (): void => {
      for (let i = 0; i < FLOOD_PER_ROUND; i++) f.notify();
    };
    // The honest guests exchange traffic while the flood runs, and the flood goes on a while after.
    const exchange = await f.host.exchange(FLOOD_EXCHANGE_FRAMES, flood);
    // An exchange can take only a few rounds (real time, a fast design): the flood goes on until it is big enough.
    const enough = (): boolean => f.guest.evtchn.counters().sent - sent0 >= FLOOD_PER_ROUND * FLOOD_MIN_ROUNDS;
    await f.host.run(ADVERSARY_WAIT_MS, enough, flood);
    const kicks = f.guest.evtchn.counters().sent - sent0;
    const good = f.sendPacket([{ size: 300 }]);
    await f.runUntilAnswered(good.ids);
    return { exchange, kicks, vif: f.vif(), after: f.statuses(good.ids[0]!) };
  },
  check(_f, p) {
    const out: string[] = [];
    if (!p.exchange.ok) out.push(`honest guests during the flood: ${p.exchange.error}`);
    if (p.kicks < FLOOD_PER_ROUND * FLOOD_MIN_ROUNDS) out.push(`the flood was too small to mean anything: ${p.kicks} notifications`);
    expectNotDisabled(out, p.vif);
    expectEq(out, 'the flooder\'s own packet afterwards', p.after, [OKAY]);
    return out;
  },
};

interface FlapPlayed {
  readonly pkts: readonly SentPacket[];
  readonly inFlightAtClosing: number;
  readonly stateWhileDraining: string | null;
  readonly backendState: number;
  readonly connects: number;
  readonly after: readonly number[];
  readonly inUseAfter: readonly number[];
}

const FLAP_PACKETS = 4;
/** How long the flap and death cases stall the uplink, so that their frames are still in flight across the act, ms. */
const HOLD_MS = 500;

/**
 * Connects, then puts FLAP_PACKETS frames in flight: the uplink stalls, one round maps them and queues them in the
 * NIC (unless the stack copied them). Returns the packets and how many of their grants are mapped.
 */
async function framesInFlight(f: HostileFront): Promise<{ pkts: SentPacket[]; mapped: number }> {
  await f.connect();
  await f.announce();
  const pkts: SentPacket[] = [];
  f.host.stallUplink(HOLD_MS);
  for (let i = 0; i < FLAP_PACKETS; i++) pkts.push(f.sendPacket([{ size: 1400 }]));
  await f.host.step();
  return { pkts, mapped: f.inUseRefs().filter((r) => pkts.some((p) => p.grefs.includes(r))).length };
}

const flapCase: AdversaryCase<FlapPlayed> = {
  name: 'state-flap-in-flight',
  item: CHECKLIST.lifecycle,
  expect: 'RECONNECT',
  linux: 'Connected -> Closing -> Connected: backend_disconnect waits for the in-flight grants, then Closed, InitWait, Connected again',
  async play(f) {
    const { pkts, mapped: inFlightAtClosing } = await framesInFlight(f);
    await f.writeState(XenbusStateClosing);
    await f.host.step();
    const stateWhileDraining = f.vif()?.state ?? null;
    await f.writeState(XenbusStateConnected);
    // The backend's own state stays Connected until the drain ends (backend_disconnect runs before the Closing
    // write), so "Connected" alone says nothing yet: wait for the second connect, then for its Connected write.
    await f.host.run(ADVERSARY_HANDSHAKE_MS, () => (f.host.deviceStatus(f.domid)?.connects ?? 0) >= 2);
    await f.waitBackend([XenbusStateConnected], ADVERSARY_HANDSHAKE_MS);
    f.txResponses();
    // Answered once the stack frees its page: a host holding frames in the stack (a tap window) holds this one too.
    const good = f.sendPacket([{ size: 300 }]);
    await f.runUntilAnswered(good.ids, ADVERSARY_HANDSHAKE_MS);
    return {
      pkts,
      inFlightAtClosing,
      stateWhileDraining,
      backendState: f.backendState(),
      connects: f.host.deviceStatus(f.domid)?.connects ?? -1,
      after: f.statuses(good.ids[0]!),
      inUseAfter: f.inUseRefs().filter((r) => pkts.some((p) => p.grefs.includes(r))),
    };
  },
  check(f, p) {
    const out: string[] = [];
    const premise = expectPremise(out, 'packets in flight when Closing was written', p.inFlightAtClosing, FLAP_PACKETS);
    if (premise === 'held') expectEq(out, 'vif while the stack still holds the grants', p.stateWhileDraining, 'disconnecting');
    expectEq(out, 'backend state', xenbusStateName(p.backendState), xenbusStateName(XenbusStateConnected));
    expectEq(out, 'connects', p.connects, 2);
    expectEq(
      out,
      'in-flight slots',
      p.pkts.map((k) => f.statuses(k.ids[0]!)),
      p.pkts.map(() => [OKAY]),
    );
    for (const k of p.pkts) expectReturned(out, f, k);
    expectEq(out, 'in-flight grants still mapped', p.inUseAfter, []);
    expectEq(out, 'a packet after the flap', p.after, [OKAY]);
    return out;
  },
  premise: (p) => premiseOf(p.inFlightAtClosing, FLAP_PACKETS),
};

interface DeathPlayed {
  readonly inFlightAtDeath: number;
  readonly raisedAtDeath: number;
  readonly raisedAfter: number;
  readonly noticesAtDeath: number;
  readonly noticesAfter: number;
  readonly removed: boolean;
  readonly inUseAfter: readonly number[];
}

const deathCase: AdversaryCase<DeathPlayed> = {
  name: 'die-with-grants-mapped',
  item: CHECKLIST.lifecycle,
  expect: 'UNPLUG',
  linux: 'the frontend vanishes: netback disconnects, never notifies it again, unmaps each grant as the stack frees it, unregisters',
  async play(f) {
    const { mapped: inFlightAtDeath } = await framesInFlight(f);
    // It dies waiting for those answers: rsp_event armed, so every response pushed after its death would notify it.
    f.txResponses();
    f.tx!.setRspEvent(f.rspProd() + 1);
    const raisedAtDeath = f.guest.evtchn.counters().raised;
    const noticesAtDeath = f.guest.notices.length;
    await f.host.destroyGuest(f.domid);
    await f.host.run(ADVERSARY_HANDSHAKE_MS, () => f.host.deviceStatus(f.domid)?.removed !== false && f.inUseRefs().length === 0);
    return {
      inFlightAtDeath,
      raisedAtDeath,
      raisedAfter: f.guest.evtchn.counters().raised,
      noticesAtDeath,
      noticesAfter: f.guest.notices.length,
      removed: f.host.deviceStatus(f.domid)?.removed ?? true,
      inUseAfter: f.inUseRefs(),
    };
  },
  check(_f, p) {
    const out: string[] = [];
    expectPremise(out, 'grants mapped when the domain died', p.inFlightAtDeath, FLAP_PACKETS);
    expectEq(out, 'events raised on the dead guest', p.raisedAfter, p.raisedAtDeath);
    expectEq(out, 'grant-return notices to the dead guest', p.noticesAfter, p.noticesAtDeath);
    expectEq(out, 'device removed', p.removed, true);
    expectEq(out, 'grants of the dead guest still mapped', p.inUseAfter, []);
    return out;
  },
  premise: (p) => premiseOf(p.inFlightAtDeath, FLAP_PACKETS),
};

/** Every case, in checklist order (the stress tool plays them as data). */
export const ADVERSARY_CASES: readonly AdversaryCase[] = [
  ...ringCases,
  ...slotCases,
  ...sizeCases,
  ...zeroCases,
  ...extraCases,
  ...headerCases,
  ...grefCases,
  rxBadGrefCase,
  mcastCase,
  ...connectCases,
  withholdRxCase,
  withholdTxCase,
  floodCase,
  flapCase,
  deathCase,
];

// Names are the ava test names and the stress report's keys: refuse duplicates at load time.
{
  const seen = new Set<string>();
  for (const c of ADVERSARY_CASES) {
    if (seen.has(c.name)) throw new Error(`adversary case ${c.name} is defined twice`);
    seen.add(c.name);
  }
}

// ---- Running a case --------------------------------------------------------------------------------------------

/** The outcome of one case. */
export interface AdversaryResult {
  readonly name: string;
  /** The backend answered as Linux does, kept running, the honest guests were unharmed and nothing leaked. */
  readonly handled: boolean;
  /** What went wrong, or Linux's answer when handled. */
  readonly detail: string;
  /** The backend threw (a Linux BUG()) during the case. */
  readonly backendCrashed: boolean;
  /** For a case whose act needs mapped pages: whether they were ('held') or the stack had copied them; else null. */
  readonly premise: Premise | null;
}

/** Options of runAdversaryCase. */
export interface RunCaseOptions {
  /** Frames each honest guest exchanges after the case (default 8). */
  readonly exchangeFrames?: number;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Plays one case against `host` on a fresh adversary domain and judges it: the case's own check, then the common
 * outcome (no backend exception, honest guests exchange traffic with every grant back, the oracle saw no early or
 * double return, and after the adversary's domain is destroyed none of its grants stays mapped). Never throws.
 */
export async function runAdversaryCase(c: AdversaryCase, host: AdversaryHost, opts: RunCaseOptions = {}): Promise<AdversaryResult> {
  const problems: string[] = [];
  const before = host.audit();
  let front: HostileFront | null = null;
  let premise: Premise | null = null;
  try {
    front = new HostileFront(host, await host.createGuest());
    const played = await c.play(front);
    premise = c.premise?.(played) ?? null;
    problems.push(...c.check(front, played));
    problems.push(...front.troubles);
  } catch (e) {
    problems.push(`the case threw: ${errorText(e)}`);
  }
  try {
    const ex = await host.exchange(opts.exchangeFrames ?? 8);
    if (!ex.ok) problems.push(`honest guests afterwards: ${ex.error}`);
    if (front !== null) {
      const f = front;
      await host.destroyGuest(f.domid);
      await host.run(ADVERSARY_HANDSHAKE_MS, () => host.deviceStatus(f.domid)?.removed !== false && f.inUseRefs().length === 0);
      const left = f.inUseRefs();
      if (left.length > 0) problems.push(`grants of the dead adversary still mapped: ${left.join(', ')}`);
      if (host.deviceStatus(f.domid)?.removed === false) problems.push('the dead adversary\'s device was never removed');
    }
  } catch (e) {
    problems.push(`the aftermath threw: ${errorText(e)}`);
  }
  const after = host.audit();
  if (after.earlyReturns !== before.earlyReturns) problems.push(`oracle: ${after.earlyReturns - before.earlyReturns} early returns`);
  if (after.doubleReturns !== before.doubleReturns) problems.push(`oracle: ${after.doubleReturns - before.doubleReturns} double returns`);
  if (after.leaks !== before.leaks) problems.push(`oracle: ${after.leaks - before.leaks} leaks`);
  for (const v of after.violations.slice(before.violations.length)) problems.push(`oracle: ${v}`);
  const crashed = after.backendError !== null && after.backendError !== before.backendError;
  if (crashed) problems.push(`backend threw: ${after.backendError!}`);
  const health = host.honestHealth();
  if (health.broken) problems.push('an honest guest is broken or its vif disabled');
  return {
    name: c.name,
    handled: problems.length === 0,
    detail: problems.length === 0 ? `${c.expect}: ${c.linux}` : problems.join('; '),
    backendCrashed: crashed,
    premise,
  };
}

/** What the stress tool's JSON reports under `adversary`. */
export interface AdversarySummary {
  readonly cases: number;
  readonly handled: number;
  readonly backendCrashes: number;
  readonly results: readonly AdversaryResult[];
}

/** Plays `cases` one after another against the same host (each on its own adversary domain). */
export async function runAdversaryCatalogue(host: AdversaryHost, cases: readonly AdversaryCase[] = ADVERSARY_CASES, opts: RunCaseOptions = {}): Promise<AdversarySummary> {
  const results: AdversaryResult[] = [];
  for (const c of cases) results.push(await runAdversaryCase(c, host, opts));
  return {
    cases: results.length,
    handled: results.filter((r) => r.handled).length,
    backendCrashes: results.filter((r) => r.backendCrashed).length,
    results,
  };
}

// ---- What every AdversaryHost (the one-thread rig, the stress backend worker, the simulator) does alike ----------

/** An honest guest as the shared host helpers see it: its netfront and a queue of frames to send. */
export interface HonestGuestView {
  readonly nf: Netfront;
  readonly source: { add(mac: number, ip: number, frames: number, len: number): void; readonly pending: number };
}

/** A vif's status as the adversary checks read it, or null when there is no such vif. */
export function vifStatusOf(v: Xenvif | undefined): VifStatus | null {
  if (v === undefined) return null;
  return {
    state: v.state,
    disabled: v.disabled,
    carrier: v.carrier,
    fatalError: v.fatalError,
    lastTxError: v.lastTxError,
    mcastCount: v.mcastCount,
    rxQueued: v.rx?.queuedPackets ?? 0,
    stats: { ...v.stats },
  };
}

/** The honest guests' figures summed; `vifDown(g)` says whether g's vif is gone or disabled. */
export function honestHealthOf<G extends HonestGuestView>(guests: readonly G[], vifDown: (g: G) => boolean): HonestHealth {
  let outstanding = 0;
  let rxVerified = 0;
  let rxCorrupt = 0;
  let badReturns = 0;
  let broken = false;
  for (const g of guests) {
    const s = g.nf.stats;
    outstanding += g.nf.grantsOutstanding;
    rxVerified += s.rxVerified;
    rxCorrupt += s.rxCorruptPayloads;
    badReturns += s.endAccessFailures + s.badGrantReturns;
    broken ||= g.nf.broken || vifDown(g);
  }
  return { outstanding, rxVerified, rxCorrupt, badReturns, broken };
}

/** How long an exchange between honest guests may take before it is reported as unfinished. */
export const HONEST_EXCHANGE_MS = 5000;

/** Where one host's honest guests are and how it runs; what `honestExchange` needs. */
export interface HonestExchangeHost<G extends HonestGuestView> {
  readonly guests: readonly G[];
  readonly remote: { readonly mac: number; readonly ip: number };
  macOf(g: G): number;
  ipOf(g: G): number;
  nameOf(g: G): string;
  uplinkVerified(): number;
  health(): HonestHealth;
  run(ms: number, until: () => boolean, each?: () => void): Promise<boolean>;
  /** Called after a guest's frames are queued (the simulator wakes the guest's actor). */
  queued?(g: G): void;
  /** An error the host itself noticed during the exchange (e.g. an honest guest threw), or null. */
  hostError?(): string | null;
}

/**
 * AdversaryHost.exchange: every honest guest sends `frames` to every other one and to the remote, half big (mapped
 * frags, answered when the stack frees them) and half small (copied whole); ok when all arrived verified, every grant
 * came back, and nothing was corrupt, badly returned or broken.
 */
export async function honestExchange<G extends HonestGuestView>(h: HonestExchangeHost<G>, frames: number, each?: () => void): Promise<Result<void>> {
  const guests = h.guests;
  const n = guests.length;
  const up0 = h.uplinkVerified();
  const rx0 = guests.map((g) => g.nf.stats.rxVerified);
  const h0 = h.health();
  const big = Math.ceil(frames / 2);
  for (const g of guests) {
    const dests: [number, number][] = guests.filter((o) => o !== g).map((o) => [h.macOf(o), h.ipOf(o)]);
    dests.push([h.remote.mac, h.remote.ip]);
    for (const [mac, ip] of dests) {
      g.source.add(mac, ip, big, 1400);
      g.source.add(mac, ip, frames - big, 120);
    }
    h.queued?.(g);
  }
  const want = frames * (n - 1);
  const done = (): boolean =>
    guests.every((g, i) => g.source.pending === 0 && g.nf.stats.rxVerified - rx0[i]! >= want && g.nf.grantsOutstanding === 0) &&
    h.uplinkVerified() - up0 >= frames * n;
  const finished = await h.run(HONEST_EXCHANGE_MS, done, each);
  const h1 = h.health();
  if (h1.rxCorrupt !== h0.rxCorrupt) return err(`${h1.rxCorrupt - h0.rxCorrupt} corrupt payloads received`);
  if (h1.badReturns !== h0.badReturns) return err(`${h1.badReturns - h0.badReturns} bad grant returns (still mapped, or not outstanding)`);
  if (h1.broken) return err('an honest guest is broken or its vif disabled');
  const hostError = h.hostError?.() ?? null;
  if (hostError !== null) return err(hostError);
  if (!finished) {
    const got = guests.map(
      (g, i) => `${h.nameOf(g)}: ${g.nf.stats.rxVerified - rx0[i]!}/${want} received, ${g.source.pending} unsent, ${g.nf.grantsOutstanding} grants out`,
    );
    return err(`exchange of ${frames} frames did not finish in ${HONEST_EXCHANGE_MS} ms: ${got.join('; ')}; uplink ${h.uplinkVerified() - up0}/${frames * n}`);
  }
  return ok(undefined);
}
