// Guests and the backend domain in ONE thread, connected by hand the way the handshake would connect them (map
// the ring grants, bind the event channel, connect the vif and netfront), stepped alternately. The bench uses it
// to measure each side's CPU cost per packet (stable to ~10%, unlike two-thread throughput), and tests use it
// with a VirtualClock for deterministic whole-system runs. No xenstore, no workers, no MessagePorts: grant
// returns are queued and handed to the guest in its next step.
import { Dom0Backend, type BackendConfig } from '../../backend/loop.js';
import { Xenvif } from '../../backend/xenvif.js';
import { NetfrontDriver, type GuestSource } from '../../frontend/loop.js';
import { Netfront } from '../../frontend/netfront.js';
import type { Clock } from '../../shared/clock.js';
import { EvtchnHost, type EventPort, type EvtchnDomain } from '../../shared/evtchn.js';
import { GNTMAP_host_map, GNTST_okay, GrantTable } from '../../shared/gnttab.js';
import type { GrantReturnMessage } from '../../shared/grant-return.js';
import { GuestMemory, XEN_PAGE_SIZE } from '../../shared/memory.js';
import { XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_RX_SLOT_SIZE, XEN_NETIF_TX_SLOT_SIZE } from '../../shared/netif.js';
import { FrontRing, attachBackRing, sharedRingInit, type BackRing } from '../../shared/ring.js';

/** One guest of the rig. */
export class RigGuest {
  /** Grant-return notices the backend posted and the guest has not taken yet. */
  readonly returns: GrantReturnMessage[] = [];

  constructor(
    readonly domid: number,
    readonly memory: GuestMemory,
    readonly gnttab: GrantTable,
    readonly evtchn: EvtchnDomain,
    readonly nf: Netfront,
    readonly driver: NetfrontDriver,
    readonly vif: Xenvif,
  ) {}
}

/** Options of a rig. */
export interface RigOptions {
  readonly clock: Clock;
  readonly config: BackendConfig;
  /** Guests, domids 1..guests. */
  readonly guests: number;
  /** Each guest's traffic. */
  readonly source: (domid: number) => GuestSource;
  /** Frames of each guest's memory (default 1024) and grant entries (default 2048). */
  readonly frames?: number;
  readonly grantEntries?: number;
  /** Raw guests (no netfront: the test writes their rings), domids guests+1..guests+rawGuests. Default 0. */
  readonly rawGuests?: number;
}

/** A guest without netfront: its rings are written by hand (a buggy or hostile frontend). */
export class RawGuest {
  constructor(
    readonly domid: number,
    readonly memory: GuestMemory,
    readonly gnttab: GrantTable,
    readonly tx: FrontRing,
    readonly rx: FrontRing,
    readonly port: EventPort,
    readonly vif: Xenvif,
    /** Grant-return notices the backend posted. */
    readonly returns: GrantReturnMessage[],
  ) {}
}

function mapRing(dom0: Dom0Backend, domid: number, ref: number, entryBytes: number): BackRing {
  const m = dom0.mapper.map({ dom: domid, ref, flags: GNTMAP_host_map });
  if (m.status !== GNTST_okay || m.bytes === null) throw new Error(`rig: cannot map ring gref ${ref} of d${domid}: status ${m.status}`);
  const r = attachBackRing(m.bytes.buffer as SharedArrayBuffer, m.bytes.byteOffset, entryBytes);
  if (!r.ok) throw new Error(`rig: ${r.error}`);
  return r.value;
}

/** Guests and dom0 in one thread. */
export class OneThreadRig {
  readonly dom0: Dom0Backend;
  readonly evtchn: EvtchnHost;
  readonly guests: RigGuest[] = [];
  readonly raw: RawGuest[] = [];
  private readonly clock: Clock;

  constructor(opts: RigOptions) {
    this.clock = opts.clock;
    const dom0 = new Dom0Backend(opts.config, opts.clock);
    this.dom0 = dom0;
    const raw = opts.rawGuests ?? 0;
    this.evtchn = EvtchnHost.create({ maxDomains: opts.guests + raw + 1, nrPorts: 64 });
    const ev0 = this.evtchn.domain(dom0.config.domid);
    dom0.dispatchEvents = () => ev0.dispatch();
    for (let domid = 1; domid <= opts.guests; domid++) this.guests.push(this.connectGuest(domid, opts));
    for (let domid = opts.guests + 1; domid <= opts.guests + raw; domid++) this.raw.push(this.connectRaw(domid));
  }

  // The backend half of a connect, shared by both kinds of guest: event channel, vif, data path.
  private connectVif(domid: number, txRing: BackRing, rxRing: BackRing, remotePort: number, onNotice: (m: GrantReturnMessage) => void): Xenvif {
    const dom0 = this.dom0;
    const ev0 = this.evtchn.domain(dom0.config.domid);
    const bound = ev0.bindInterdomain(domid, remotePort);
    if (!bound.ok) throw new Error(`rig: ${bound.error}`);
    const vif = new Xenvif({
      domid,
      handle: 0,
      ctx: dom0.ctx,
      mapper: dom0.mapper,
      clock: this.clock,
      events: dom0.events,
      mtu: dom0.config.mtu,
      txGrantCopy: dom0.config.grantCopy,
    });
    ev0.bind(bound.value, () => vif.interrupt());
    const port = ev0.port(bound.value);
    vif.attach(dom0.stack);
    vif.connect({
      txRing,
      rxRing,
      txPort: port,
      rxPort: port,
      features: { canSg: true, gsoMask: 1 << XEN_NETIF_GSO_TYPE_TCPV4, ipCsum: true, rxNotify: true },
      grantReturnPort: { postMessage: (m) => onNotice(m) },
    });
    dom0.vifs.push({ domid, vif, close: async () => {} });
    return vif;
  }

  private connectRaw(domid: number): RawGuest {
    const dom0 = this.dom0;
    const memory = GuestMemory.create(64);
    const gnttab = new GrantTable({ domid, nrEntries: 64, clock: this.clock });
    sharedRingInit(memory.sab, 0);
    sharedRingInit(memory.sab, XEN_PAGE_SIZE);
    const txRef = gnttab.grantForeignAccess(dom0.config.domid, 0, false);
    const rxRef = gnttab.grantForeignAccess(dom0.config.domid, 1, false);
    dom0.mapper.addDomain(domid, gnttab.entries.sab, memory.sab);
    const ev = this.evtchn.domain(domid);
    const evt = ev.allocUnbound(dom0.config.domid);
    if (!evt.ok) throw new Error(`rig: ${evt.error}`);
    const notices: GrantReturnMessage[] = [];
    const vif = this.connectVif(
      domid,
      mapRing(dom0, domid, txRef, XEN_NETIF_TX_SLOT_SIZE),
      mapRing(dom0, domid, rxRef, XEN_NETIF_RX_SLOT_SIZE),
      evt.value,
      (m) => void notices.push(m),
    );
    const g = new RawGuest(
      domid,
      memory,
      gnttab,
      new FrontRing(memory.sab, 0, XEN_NETIF_TX_SLOT_SIZE),
      new FrontRing(memory.sab, XEN_PAGE_SIZE, XEN_NETIF_RX_SLOT_SIZE),
      ev.port(evt.value),
      vif,
      notices,
    );
    return g;
  }

  private connectGuest(domid: number, opts: RigOptions): RigGuest {
    const dom0 = this.dom0;
    const clock = opts.clock;
    const memory = GuestMemory.create(opts.frames ?? 1024);
    const gnttab = new GrantTable({ domid, nrEntries: opts.grantEntries ?? 2048, clock });
    const ev = this.evtchn.domain(domid);
    const source = opts.source(domid);
    const frames: number[] = [];
    for (let f = 0; f < memory.nrFrames; f++) frames.push(f);
    const nf = new Netfront({
      domid,
      backendDomid: dom0.config.domid,
      memory,
      gnttab,
      evtchn: ev,
      frames,
      clock,
      onFrame: (buf, off, len) => {
        source.receive?.(buf, off, len);
      },
    });
    const rings = nf.setupRings();
    if (!rings.ok) throw new Error(`rig: ${rings.error}`);
    dom0.mapper.addDomain(domid, gnttab.entries.sab, memory.sab);
    // What netback's connect does: map both rings.
    const txRing = mapRing(dom0, domid, rings.value.txRingRef, XEN_NETIF_TX_SLOT_SIZE);
    const rxRing = mapRing(dom0, domid, rings.value.rxRingRef, XEN_NETIF_RX_SLOT_SIZE);
    let guest: RigGuest | null = null;
    const vif = this.connectVif(domid, txRing, rxRing, rings.value.eventChannel, (m) => void guest!.returns.push(m));
    guest = new RigGuest(domid, memory, gnttab, ev, nf, new NetfrontDriver(nf, ev, source), vif);
    nf.connect({ sg: true, gsoTcpv4: true, rxCopy: true, multiQueueMaxQueues: 1, splitEventChannels: false });
    source.connected?.(true);
    return guest;
  }

  /** The guest's turn: take queued grant returns, then one driver round. Returns the work done. */
  guestStep(g: RigGuest, transmit: boolean): number {
    let did = 0;
    const q = g.returns;
    for (let i = 0; i < q.length; i++) did += g.nf.handleGrantReturns(q[i]!.grefs);
    q.length = 0;
    return did + g.driver.round(this.clock.now(), transmit);
  }

  /** The backend's turn: one softirq round. */
  backendStep(): number {
    return this.dom0.round(this.clock.now());
  }

  /** Every guest's grants back, no skb anywhere. */
  quiescent(): boolean {
    if (!this.dom0.quiescent()) return false;
    for (const g of this.guests) if (g.nf.grantsOutstanding !== 0 || g.returns.length !== 0) return false;
    return true;
  }
}

