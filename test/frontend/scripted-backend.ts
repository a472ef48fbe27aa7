// A scripted backend for netfront tests, on one thread: it maps the ring grants with the hypervisor-side mapper
// (shared/gnttab-mapper.ts), binds the event channel, reads TX requests (mapping each data grant read-only and
// gathering the frame), writes TX responses, posts grant returns, and delivers RX frames by grant copy into the
// posted buffers. Every step is explicit so tests can order them any way (or misbehave on purpose).
import { VirtualClock } from '../../shared/clock.js';
import { EvtchnHost, type EvtchnDomain } from '../../shared/evtchn.js';
import { DOMID_SELF, GNTCOPY_dest_gref, GNTMAP_host_map, GNTMAP_readonly, GNTST_okay, GrantTable } from '../../shared/gnttab.js';
import { GrantMapper } from '../../shared/gnttab-mapper.js';
import { GuestMemory, XEN_PAGE_SIZE } from '../../shared/memory.js';
import {
  ExtraInfo,
  NETRXF_extra_info,
  NETRXF_more_data,
  NETTXF_extra_info,
  NETTXF_more_data,
  RxRequest,
  RxResponse,
  TxRequest,
  TxResponse,
  XEN_NETIF_EXTRA_TYPE_GSO,
  XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_RSP_NULL,
  XEN_NETIF_RSP_OKAY,
  XEN_NETIF_RX_SLOT_SIZE,
  XEN_NETIF_TX_SLOT_SIZE,
  type ExtraInfoFields,
  type TxRequestFields,
} from '../../shared/netif.js';
import { type BackRing, attachBackRing } from '../../shared/ring.js';
import { Netfront, type NetbackFeatures, type NetfrontOptions, type NetfrontRings } from '../../frontend/netfront.js';

export const FE = 1;
export const BE = 0;
export const FE_MAC = 0x02_00_00_00_00_11;

export const ALL_FEATURES: NetbackFeatures = { sg: true, gsoTcpv4: true, rxCopy: true, multiQueueMaxQueues: 1, splitEventChannels: false };

/** One TX packet as the backend read it: its slots, extras, and the bytes gathered from its grants. */
export interface TxPacketSeen {
  readonly slots: TxRequestFields[];
  readonly extras: ExtraInfoFields[];
  /** Ring indices of every request of the packet (data and extras), in order. */
  readonly indices: number[];
  readonly data: Uint8Array;
  readonly refs: number[];
}

/** The guest side of a rig: memory, grant table, event channels, netfront. */
export interface GuestRig {
  readonly clock: VirtualClock;
  readonly mem: GuestMemory;
  readonly gnttab: GrantTable;
  readonly host: EvtchnHost;
  readonly fe: EvtchnDomain;
  readonly be: EvtchnDomain;
  readonly frames: number[];
  readonly nf: Netfront;
  readonly logs: string[];
  readonly received: Uint8Array[];
}

/** Builds a guest with `poolFrames` frames for netfront (2 rings + RX buffers + TX pages). */
export function makeGuest(opts: Partial<NetfrontOptions> & { poolFrames?: number; grantEntries?: number } = {}): GuestRig {
  const clock = new VirtualClock();
  const poolFrames = opts.poolFrames ?? 2 + 256 + 64;
  const mem = GuestMemory.create(poolFrames + 4);
  const gnttab = new GrantTable({ domid: FE, nrEntries: opts.grantEntries ?? 1024, clock });
  const host = EvtchnHost.create({ maxDomains: 2, nrPorts: 64 });
  const fe = host.domain(FE);
  const be = host.domain(BE);
  // Frames 0..3 stay outside netfront, so a stray write into them would show.
  const frames: number[] = [];
  for (let i = 0; i < poolFrames; i++) frames.push(4 + i);
  const logs: string[] = [];
  const received: Uint8Array[] = [];
  const nf = new Netfront({
    domid: FE,
    backendDomid: BE,
    memory: mem,
    gnttab,
    evtchn: fe,
    frames,
    clock,
    log: (level, m) => logs.push(`${level}: ${m}`),
    onFrame: (buf, off, len) => received.push(buf.slice(off, off + len)),
    ...opts,
  });
  return { clock, mem, gnttab, host, fe, be, frames, nf, logs, received };
}

/** The backend's half: mapper, rings, port. */
export class ScriptedBackend {
  readonly mapper = new GrantMapper({ domid: BE });
  readonly tx: BackRing;
  readonly rx: BackRing;
  readonly port: number;
  /** Handles of data grants currently mapped, by ref. */
  readonly mapped = new Map<number, number>();
  private readonly txReq = TxRequest.create();
  private readonly extra = ExtraInfo.create();
  private readonly rxReq = RxRequest.create();
  /** Handles of the two ring mappings. */
  readonly ringHandles: number[] = [];
  /** RX requests consumed and not answered yet, in ring order. */
  readonly rxPosted: { index: number; id: number; gref: number }[] = [];

  constructor(
    readonly g: GuestRig,
    readonly rings: NetfrontRings,
  ) {
    this.mapper.addDomain(FE, g.gnttab.entries.sab, g.mem.sab);
    this.tx = this.attach(rings.txRingRef, XEN_NETIF_TX_SLOT_SIZE);
    this.rx = this.attach(rings.rxRingRef, XEN_NETIF_RX_SLOT_SIZE);
    const p = g.be.bindInterdomain(FE, rings.eventChannel);
    if (!p.ok) throw new Error(p.error);
    this.port = p.value;
  }

  private attach(ref: number, slot: number): BackRing {
    const m = this.mapper.map({ dom: FE, ref, flags: GNTMAP_host_map });
    if (m.status !== GNTST_okay || m.bytes === null) throw new Error(`cannot map ring ref ${ref}: ${m.status}`);
    this.ringHandles.push(m.handle);
    const r = attachBackRing(m.bytes.buffer as SharedArrayBuffer, m.bytes.byteOffset, slot);
    if (!r.ok) throw new Error(r.error);
    return r.value;
  }

  /** Reads every whole packet pending on the TX ring, mapping each data grant read-only (kept mapped). */
  readTx(): TxPacketSeen[] {
    const ring = this.tx;
    const n = ring.unconsumedRequests();
    if (n < 0) throw new Error(ring.overflowError());
    const out: TxPacketSeen[] = [];
    let i = 0;
    const base = ring.reqCons;
    while (i < n) {
      const slots: TxRequestFields[] = [];
      const extras: ExtraInfoFields[] = [];
      const indices: number[] = [];
      let idx = (base + i) >>> 0;
      const first = { ...ring.copyRequest(idx, TxRequest, this.txReq) };
      slots.push(first);
      indices.push(idx);
      i++;
      let more = (first.flags & NETTXF_extra_info) !== 0;
      while (more) {
        idx = (base + i) >>> 0;
        const e = ring.copyRequest(idx, ExtraInfo, this.extra);
        extras.push({ ...e, gso: { ...e.gso }, mcast: { addr: e.mcast.addr.slice() }, hash: { ...e.hash }, xdp: { ...e.xdp } });
        indices.push(idx);
        i++;
        more = (e.flags & 1) !== 0;
      }
      let last = first;
      while ((last.flags & NETTXF_more_data) !== 0) {
        idx = (base + i) >>> 0;
        last = { ...ring.copyRequest(idx, TxRequest, this.txReq) };
        slots.push(last);
        indices.push(idx);
        i++;
      }
      const data = new Uint8Array(first.size);
      const refs: number[] = [];
      let pos = 0;
      for (let k = 0; k < slots.length; k++) {
        const s = slots[k]!;
        const own = k === 0 ? first.size - slots.slice(1).reduce((a, x) => a + x.size, 0) : s.size;
        const bytes = this.mapData(s.gref, true);
        data.set(bytes.subarray(s.offset, s.offset + own), pos);
        pos += own;
        refs.push(s.gref);
      }
      out.push({ slots, extras, indices, data, refs });
    }
    ring.consumeRequests(n);
    return out;
  }

  /** Disconnects as netback does: unmaps every data grant and both rings, closes its event-channel port. */
  close(): void {
    this.unmap([...this.mapped.keys()]);
    for (const h of this.ringHandles.splice(0)) this.mapper.unmap(h);
    this.g.be.close(this.port);
  }

  /** Maps a data grant (read-only unless told), keeping the handle; returns the page. */
  mapData(ref: number, readonly: boolean): Uint8Array {
    const m = this.mapper.map({ dom: FE, ref, flags: GNTMAP_host_map | (readonly ? GNTMAP_readonly : 0) });
    if (m.status !== GNTST_okay || m.bytes === null) throw new Error(`cannot map ref ${ref}: status ${m.status}`);
    this.mapped.set(ref, m.handle);
    return m.bytes;
  }

  /** Unmaps data grants. */
  unmap(refs: readonly number[]): void {
    for (const ref of refs) {
      const h = this.mapped.get(ref);
      if (h === undefined) throw new Error(`ref ${ref} is not mapped`);
      if (this.mapper.unmap(h) !== GNTST_okay) throw new Error(`cannot unmap ref ${ref}`);
      this.mapped.delete(ref);
    }
  }

  /** Answers a packet: each data slot gets `status` (echoing its id), each extra XEN_NETIF_RSP_NULL; pushes. */
  respond(p: TxPacketSeen, status = XEN_NETIF_RSP_OKAY): boolean {
    for (const s of p.slots) this.tx.putResponse(TxResponse, { id: s.id, status });
    for (let k = 0; k < p.extras.length; k++) this.tx.putResponse(TxResponse, { id: 0, status: XEN_NETIF_RSP_NULL });
    return this.tx.pushResponsesAndCheckNotify();
  }

  /** Consumes whatever requests are pending (a response needs a consumed slot), writes raw TX responses, pushes. */
  rawTxResponses(rsps: readonly { id: number; status: number }[]): void {
    const n = this.tx.unconsumedRequests();
    if (n > 0) this.tx.consumeRequests(n);
    for (const r of rsps) this.tx.putResponse(TxResponse, r);
    this.tx.pushResponses();
  }

  /** Unmaps the packets' grants and returns them to the guest in one batch (what netback's dealloc does). */
  returnGrants(refs: readonly number[], unmapFirst = true): number {
    if (unmapFirst) this.unmap(refs.filter((r) => this.mapped.has(r)));
    return this.g.nf.handleGrantReturns(Uint32Array.from(refs));
  }

  /** Notifies the guest and lets its dispatcher run the handler. */
  kick(): void {
    this.g.be.notify(this.port);
    this.g.fe.dispatch();
  }

  /** Consumes every RX request posted (as buffers to deliver into). */
  takeRx(): number {
    const ring = this.rx;
    const n = ring.unconsumedRequests();
    if (n < 0) throw new Error(ring.overflowError());
    const base = ring.reqCons;
    for (let i = 0; i < n; i++) {
      const index = (base + i) >>> 0;
      const r = ring.copyRequest(index, RxRequest, this.rxReq);
      this.rxPosted.push({ index, id: r.id, gref: r.gref });
    }
    ring.consumeRequests(n);
    return n;
  }

  /**
   * Delivers a frame into posted buffers by grant copy: `slotBytes` per slot (default a page), NETRXF_more_data
   * chains, an optional GSO extra after the first slot. Returns the RX responses' slot count.
   */
  deliver(frame: Uint8Array, opts: { flags?: number; offset?: number; slotBytes?: number; gsoSize?: number; push?: boolean } = {}): number {
    if (this.rxPosted.length === 0) this.takeRx();
    const per = opts.slotBytes ?? XEN_PAGE_SIZE - (opts.offset ?? 0);
    const chunks: [number, number][] = [];
    for (let at = 0; at < frame.length; at += per) chunks.push([at, Math.min(per, frame.length - at)]);
    if (chunks.length === 0) chunks.push([0, 0]);
    const needed = chunks.length + (opts.gsoSize !== undefined ? 1 : 0);
    if (this.rxPosted.length < needed) throw new Error(`only ${this.rxPosted.length} RX buffers posted, need ${needed}`);
    const bufs = this.rxPosted.splice(0, needed);
    let b = 0;
    for (let k = 0; k < chunks.length; k++) {
      const [at, n] = chunks[k]!;
      const dst = bufs[b++]!;
      const off = opts.offset ?? 0;
      const op = {
        source: { ref: 0, domid: DOMID_SELF, offset: 0, buf: frame.slice(at, at + n) },
        dest: { ref: dst.gref, domid: FE, offset: off, buf: null },
        len: n,
        flags: GNTCOPY_dest_gref,
        status: 1,
      };
      if (n > 0 && this.mapper.copy([op]) !== GNTST_okay) throw new Error(`grant copy into ref ${dst.gref} failed: ${op.status}`);
      let flags = k < chunks.length - 1 ? NETRXF_more_data : 0;
      if (k === 0) {
        flags |= opts.flags ?? 0;
        if (opts.gsoSize !== undefined) flags |= NETRXF_extra_info;
      }
      this.rx.putResponse(RxResponse, { id: dst.id, offset: off, flags, status: n });
      if (k === 0 && opts.gsoSize !== undefined) {
        b++; // the extra's slot: its buffer stays unwritten
        const e = ExtraInfo.create();
        e.type = XEN_NETIF_EXTRA_TYPE_GSO;
        e.gso.size = opts.gsoSize;
        e.gso.type = XEN_NETIF_GSO_TYPE_TCPV4;
        this.rx.putResponse(ExtraInfo, e);
      }
    }
    if (opts.push ?? true) this.rx.pushResponses();
    return needed;
  }

  /** Writes raw RX responses into the next posted buffers' slots (consuming them) and pushes. */
  rawRxResponses(rsps: readonly { offset: number; flags: number; status: number; id?: number }[]): void {
    if (this.rxPosted.length === 0) this.takeRx();
    for (const r of rsps) {
      const dst = this.rxPosted.shift()!;
      this.rx.putResponse(RxResponse, { id: r.id ?? dst.id, offset: r.offset, flags: r.flags, status: r.status });
    }
    this.rx.pushResponses();
  }
}

/** A guest with rings set up, a backend attached, and netfront connected. */
export function connected(opts: Partial<NetfrontOptions> & { poolFrames?: number; grantEntries?: number; features?: NetbackFeatures } = {}): { g: GuestRig; be: ScriptedBackend } {
  const g = makeGuest(opts);
  const rings = g.nf.setupRings();
  if (!rings.ok) throw new Error(rings.error);
  const be = new ScriptedBackend(g, rings.value);
  g.nf.connect(opts.features ?? ALL_FEATURES);
  return { g, be };
}
