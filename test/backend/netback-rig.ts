// A scripted frontend and a backend around real rings in guest memory with real grants, for the netback tests.
// Each TestGuest owns a grant table, a memory, a TX and an RX ring (the frontend's ends), and the backend's Xenvif
// on rings attached from the same pages. The oracle walks the test's holder and every vif's RX queue.

import { VirtualClock } from '../../shared/clock.js';
import type { EventPort } from '../../shared/evtchn.js';
import { GrantTable } from '../../shared/gnttab.js';
import { GrantMapper } from '../../shared/gnttab-mapper.js';
import { GuestMemory, XEN_PAGE_SIZE } from '../../shared/memory.js';
import {
  ExtraInfo,
  RxRequest,
  RxResponse,
  TxRequest,
  TxResponse,
  XEN_NETIF_RX_SLOT_SIZE,
  XEN_NETIF_TX_SLOT_SIZE,
  type ExtraInfoFields,
  type RxResponseFields,
  type TxRequestFields,
} from '../../shared/netif.js';
import { FrontRing, attachBackRing, sharedRingInit, type WireStruct } from '../../shared/ring.js';
import type { GrantReturnMessage } from '../../shared/grant-return.js';
import { patternByte } from '../../shared/payload.js';
import { oracleGrantEvents, type GrantEvents } from '../../backend/netback.js';
import type { SkbHolder } from '../../backend/netdev.js';
import { GrantOracle } from '../../backend/oracle.js';
import { rusty, type ReleaseDesign } from '../../backend/release.js';
import { SkbContext, kfreeSkb, skbCopyBits, type SkBuff } from '../../backend/skbuff.js';
import { Xenvif, type XenvifFeatures, type XenvifOptions } from '../../backend/xenvif.js';

export const BACKEND_DOMID = 0;

/** A TX ring entry as the script writes it: a request, an extra, or raw bytes (garbage a real writer refuses). */
export type TxEntry =
  | { kind: 'req'; req: TxRequestFields }
  | { kind: 'extra'; extra: ExtraInfoFields }
  | { kind: 'raw'; bytes: Uint8Array };

/** Raw slot bytes, for entries ExtraInfo.write refuses to produce (type 0, type 6...). */
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

/** A fake event port that counts notifications. */
export class CountingPort implements EventPort {
  notifies = 0;
  constructor(readonly port: number) {}
  notify(): number {
    this.notifies++;
    return 0;
  }
}

/** A fake MessagePort collecting grant-return notices. */
export class NoticeSink {
  readonly messages: GrantReturnMessage[] = [];
  postMessage(value: GrantReturnMessage, _transfer: ArrayBuffer[]): void {
    this.messages.push(value);
  }
  /** Every gref posted so far, in order. */
  grefs(): number[] {
    return this.messages.flatMap((m) => Array.from(m.grefs));
  }
}

/** One TX slot as the script describes it: a slot of `size` bytes at `offset` in a fresh granted page. */
export interface SlotSpec {
  size: number;
  offset?: number;
  /** Use this gref instead of granting a page (invalid grefs, for error rows). */
  gref?: number;
  flags?: number;
}

/** What a sent packet should look like in the stack. */
export interface SentPacket {
  /** Request ids per slot (the first slot, its extras, then the frags), in ring order. */
  readonly ids: number[];
  /** Ids of the data slots only (no extras). */
  readonly dataIds: number[];
  readonly grefs: number[];
  /** The bytes the packet carries, slot after slot. */
  readonly bytes: Uint8Array;
}

export interface RigOptions {
  design?: ReleaseDesign;
  /** Runs inside every grant map/copy pin, between the entry snapshot and its cmpxchg (a racing guest). */
  beforeCmpxchg?: (dom: number, ref: number) => void;
  /** Sees every grant event after the oracle. */
  events?: GrantEvents;
  vif?: Partial<Omit<XenvifOptions, 'domid' | 'handle' | 'ctx' | 'mapper' | 'clock' | 'events'>>;
  features?: Partial<XenvifFeatures>;
  frames?: number;
}

/** The backend side shared by all guests: clock, mapper, skb context, oracle, and what the stack holds. */
export class Rig {
  readonly clock = new VirtualClock();
  readonly mapper: GrantMapper;
  readonly ctx: SkbContext;
  /** Skbs the "stack" holds (what the vif handed over). */
  readonly held: SkBuff[] = [];
  readonly guests: TestGuest[] = [];
  readonly oracle: GrantOracle;
  readonly logs: string[] = [];

  constructor(readonly opts: RigOptions = {}) {
    const hook = opts.beforeCmpxchg;
    this.mapper = new GrantMapper({ domid: BACKEND_DOMID, ...(hook !== undefined && { beforeCmpxchg: hook }) });
    this.ctx = new SkbContext({ design: opts.design ?? rusty });
    this.oracle = new GrantOracle(() => this.roots());
  }

  /** More holders whose skbs are roots (a Stack, in integration tests). */
  readonly holders: SkbHolder[] = [];

  private *roots(): Iterable<SkBuff> {
    yield* this.held;
    for (const h of this.holders) {
      const out: SkBuff[] = [];
      h.forEachSkb((s) => out.push(s));
      yield* out;
    }
    for (const g of this.guests) {
      const out: SkBuff[] = [];
      g.vif.forEachSkb((s) => out.push(s));
      yield* out;
    }
  }

  /** Adds a guest with its vif connected. */
  guest(domid: number, extra: RigOptions = {}): TestGuest {
    const g = new TestGuest(this, domid, { ...this.opts, ...extra });
    this.guests.push(g);
    return g;
  }

  /** Frees every held skb. */
  freeAll(): void {
    while (this.held.length > 0) kfreeSkb(this.held.pop()!);
  }

  /** Reads an skb's bytes. */
  static bytesOf(skb: SkBuff): Uint8Array {
    const out = new Uint8Array(skb.len);
    if (skbCopyBits(skb, 0, out, 0, skb.len) !== 0) throw new Error('skb_copy_bits failed');
    return out;
  }
}

/** The frontend of one guest, scripted. */
export class TestGuest {
  readonly table: GrantTable;
  readonly mem: GuestMemory;
  readonly tx: FrontRing;
  readonly rx: FrontRing;
  readonly txPort = new CountingPort(1);
  readonly rxPort = new CountingPort(2);
  readonly notices = new NoticeSink();
  readonly vif: Xenvif;
  private nextFrame = 2;
  private nextId = 0;
  private stream = 0;

  constructor(readonly rig: Rig, readonly domid: number, opts: RigOptions) {
    const frames = opts.frames ?? 1200;
    this.table = new GrantTable({ domid, nrEntries: 4096, clock: rig.clock });
    this.mem = GuestMemory.create(frames);
    rig.mapper.addDomain(domid, this.table.entries.sab, this.mem.sab);
    sharedRingInit(this.mem.sab, 0);
    sharedRingInit(this.mem.sab, XEN_PAGE_SIZE);
    this.tx = new FrontRing(this.mem.sab, 0, XEN_NETIF_TX_SLOT_SIZE);
    this.rx = new FrontRing(this.mem.sab, XEN_PAGE_SIZE, XEN_NETIF_RX_SLOT_SIZE);
    const txBack = attachBackRing(this.mem.sab, 0, XEN_NETIF_TX_SLOT_SIZE);
    const rxBack = attachBackRing(this.mem.sab, XEN_PAGE_SIZE, XEN_NETIF_RX_SLOT_SIZE);
    if (!txBack.ok || !rxBack.ok) throw new Error('attach failed');
    this.vif = new Xenvif({
      domid,
      handle: 0,
      ctx: rig.ctx,
      mapper: rig.mapper,
      clock: rig.clock,
      events: oracleGrantEvents(rig.oracle, opts.events),
      log: (level, m) => rig.logs.push(`${level}: ${m}`),
      ...opts.vif,
    });
    this.vif.setInput((skb) => rig.held.push(skb));
    this.vif.connect({
      txRing: txBack.value,
      rxRing: rxBack.value,
      txPort: this.txPort,
      rxPort: this.rxPort,
      features: { canSg: true, gsoMask: 0b110, ...opts.features },
      grantReturnPort: this.notices,
    });
  }

  /** Tears the data path down (the vif must be drained) and connects again on freshly initialised rings. */
  reconnect(features: Partial<XenvifFeatures> = { canSg: true, gsoMask: 0b110 }): void {
    this.vif.beginDisconnect();
    this.vif.finishDisconnect();
    sharedRingInit(this.mem.sab, 0);
    sharedRingInit(this.mem.sab, XEN_PAGE_SIZE);
    (this as { tx: FrontRing }).tx = new FrontRing(this.mem.sab, 0, XEN_NETIF_TX_SLOT_SIZE);
    (this as { rx: FrontRing }).rx = new FrontRing(this.mem.sab, XEN_PAGE_SIZE, XEN_NETIF_RX_SLOT_SIZE);
    const txBack = attachBackRing(this.mem.sab, 0, XEN_NETIF_TX_SLOT_SIZE);
    const rxBack = attachBackRing(this.mem.sab, XEN_PAGE_SIZE, XEN_NETIF_RX_SLOT_SIZE);
    if (!txBack.ok || !rxBack.ok) throw new Error('attach failed');
    this.vif.connect({ txRing: txBack.value, rxRing: rxBack.value, txPort: this.txPort, rxPort: this.rxPort, features, grantReturnPort: this.notices });
  }

  /** A fresh frame number. */
  frame(): number {
    if (this.nextFrame >= this.mem.nrFrames) throw new Error('rig: out of guest frames');
    return this.nextFrame++;
  }

  /** Grants a fresh frame to the backend; returns [gref, frame]. */
  grant(readonly = true): [number, number] {
    const f = this.frame();
    const ref = this.table.grantForeignAccess(BACKEND_DOMID, f, readonly);
    if (ref < 0) throw new Error('rig: out of grant refs');
    return [ref, f];
  }

  /** A fresh request id (wrapping u16). */
  id(): number {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff;
    return id;
  }

  /** Puts raw TX entries (requests or extras) and pushes them. */
  putTx(entries: TxEntry[]): void {
    for (const e of entries) {
      if (e.kind === 'req') this.tx.putRequest(TxRequest, e.req);
      else if (e.kind === 'extra') this.tx.putRequest(ExtraInfo, e.extra);
      else this.tx.putRequest(RawSlot, e.bytes);
    }
    this.tx.pushRequests();
  }

  /**
   * Sends one packet: each slot gets its own granted page filled with a fresh pattern at its offset; the first
   * slot's size is the packet's total. `extras` follow the first slot. Returns what the stack should see.
   */
  send(slots: SlotSpec[], opts: { flags?: number; extras?: ExtraInfoFields[]; totalSize?: number; bytes?: Uint8Array } = {}): SentPacket {
    const total = opts.totalSize ?? slots.reduce((a, s) => a + s.size, 0);
    const stream = ++this.stream + this.domid * 1000;
    const bytes = new Uint8Array(slots.reduce((a, s) => a + s.size, 0));
    const ids: number[] = [];
    const dataIds: number[] = [];
    const grefs: number[] = [];
    const entries: TxEntry[] = [];
    let pos = 0;
    const extras = opts.extras ?? [];
    slots.forEach((s, i) => {
      const offset = s.offset ?? 0;
      let gref = s.gref;
      if (gref === undefined) {
        const [ref, f] = this.grant();
        const page = this.mem.frame(f);
        for (let k = 0; k < s.size; k++) {
          const b = opts.bytes !== undefined ? opts.bytes[pos + k]! : patternByte(stream, pos + k);
          page[offset + k] = b;
          bytes[pos + k] = b;
        }
        gref = ref;
      }
      pos += s.size;
      grefs.push(gref);
      let flags = s.flags ?? 0;
      if (i < slots.length - 1 && s.flags === undefined) flags |= 4; // NETTXF_more_data
      if (i === 0) {
        flags |= opts.flags ?? 0;
        if (extras.length > 0) flags |= 8; // NETTXF_extra_info
      }
      const id = this.id();
      ids.push(id);
      dataIds.push(id);
      entries.push({ kind: 'req', req: { gref, offset, flags, id, size: i === 0 ? total : s.size } });
      if (i === 0) {
        extras.forEach((e, k) => {
          const x = { ...e, flags: e.flags | (k < extras.length - 1 ? 1 : 0) };
          entries.push({ kind: 'extra', extra: x });
          ids.push(-1);
        });
      }
    });
    this.putTx(entries);
    return { ids, dataIds, grefs, bytes };
  }

  /** Every TX response published since the last call, in ring order. */
  txResponses(): { id: number; status: number }[] {
    const out: { id: number; status: number }[] = [];
    const n = this.tx.unconsumedResponses();
    if (n < 0) throw new Error('rig: response overflow');
    const r = TxResponse.create();
    for (let i = 0; i < n; i++) {
      this.tx.copyResponse(this.tx.rspCons + i, TxResponse, r);
      out.push({ id: r.id, status: r.status });
    }
    this.tx.consumeResponses(n);
    return out;
  }

  /** Posts `n` RX buffers (writable grants); returns their [id, gref, frame]. */
  postRx(n: number): { id: number; gref: number; frame: number }[] {
    const out: { id: number; gref: number; frame: number }[] = [];
    for (let i = 0; i < n; i++) {
      const [gref, frame] = this.grant(false);
      const id = this.id();
      this.rx.putRequest(RxRequest, { id, gref });
      out.push({ id, gref, frame });
    }
    this.rx.pushRequests();
    return out;
  }

  /** RX responses (raw slots) published since the last call. */
  rxResponses(): RxResponseFields[] {
    const out: RxResponseFields[] = [];
    const n = this.rx.unconsumedResponses();
    if (n < 0) throw new Error('rig: rx response overflow');
    for (let i = 0; i < n; i++) out.push(this.rx.copyResponse(this.rx.rspCons + i, RxResponse, RxResponse.create()));
    this.rx.consumeResponses(n);
    return out;
  }

  /** The extra_info in RX response slot `index` (free-running) as the frontend would read it. */
  rxExtraAt(index: number): ExtraInfoFields {
    return ExtraInfo.read(this.rx.view, this.rx.slotOffset(index));
  }
}

/** A GSO extra. */
export function gsoExtra(size: number, type: number): ExtraInfoFields {
  const e = ExtraInfo.create();
  e.type = 1;
  e.gso.size = size;
  e.gso.type = type;
  return e;
}

/** An extra of any type (its union left zero). */
export function rawExtra(type: number, mac?: number[]): ExtraInfoFields {
  const e = ExtraInfo.create();
  e.type = type;
  if (mac !== undefined) e.mcast.addr.set(mac);
  return e;
}
