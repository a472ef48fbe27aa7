// The honest guests an adversary host runs next to its hostile ones (adversary-rig.ts, tools/stress/adversary.ts):
// the real netfront, connected by hand to a vif of the backend domain (both rings mapped and the event channel
// bound, as netback's connect() does for a well-behaved frontend), sending the UDP frames its host queues.
// They are the cases' witnesses: a case is only handled if they kept running and got every grant back.
//
// Departure from the running system: the handshake does not go through xenstore, and grant-return notices are handed
// to netfront in the guest's next step rather than over a MessagePort.
import type { Dom0Backend } from '../backend/loop.js';
import type { Xenvif } from '../backend/xenvif.js';
import { guestMac } from '../shared/ether.js';
import type { EvtchnHost } from '../shared/evtchn.js';
import { GNTMAP_host_map, GNTST_okay, GrantTable } from '../shared/gnttab.js';
import type { GrantReturnMessage } from '../shared/grant-return.js';
import { guestIp } from '../shared/inet.js';
import { GuestMemory } from '../shared/memory.js';
import { XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_RX_SLOT_SIZE, XEN_NETIF_TX_SLOT_SIZE } from '../shared/netif.js';
import type { Result } from '../shared/result.js';
import { attachBackRing, type BackRing } from '../shared/ring.js';
import { honestExchange, honestHealthOf, type HonestExchangeHost, type HonestHealth } from './adversary.js';
import { NetfrontDriver, type GuestSource } from './loop.js';
import { Netfront, type TxPacket } from './netfront.js';
import { TxFrame, type Flow } from './traffic.js';

/** Pages of an honest guest's memory, and grant entries of its table. */
const HONEST_FRAMES = 1024;
const HONEST_GRANT_ENTRIES = 2048;

/** An honest guest's traffic: UDP frames queued by its host, sent by netfront as fast as the ring allows. */
export class HonestSource implements GuestSource {
  readonly maxFrameLen = 1514;
  private readonly queue: { flow: Flow; len: number }[] = [];
  private readonly frame = new TxFrame();
  private pos = 0;

  constructor(private readonly domid: number) {}

  /** Queues `frames` frames of `len` bytes (>= 50) to (mac, ip). */
  add(mac: number, ip: number, frames: number, len: number): void {
    const flow: Flow = { srcMac: guestMac(this.domid), dstMac: mac, saddr: guestIp(this.domid), daddr: ip, sport: 40000 + (this.domid & 0xfff), dport: 9 };
    for (let i = 0; i < frames; i++) this.queue.push({ flow, len });
  }

  get pending(): number {
    return this.queue.length;
  }

  next(): TxPacket | null {
    const q = this.queue.shift();
    if (q === undefined) return null;
    const p = this.frame.setUdp(q.flow, this.domid, this.pos, q.len - 42, false);
    this.pos += q.len;
    return p;
  }
}

/** An honest guest: the real netfront, hand-connected to its vif. */
export class HonestGuest {
  /** Grant-return notices not yet handed to netfront. */
  readonly returns: GrantReturnMessage[] = [];

  constructor(
    readonly domid: number,
    readonly nf: Netfront,
    readonly gnttab: GrantTable,
    readonly driver: NetfrontDriver,
    readonly source: HonestSource,
    readonly vif: Xenvif,
    /** The backend's maptrack handles of the two rings. */
    readonly ringHandles: readonly number[],
    /** The backend's local event-channel port. */
    readonly port: number,
  ) {}

  /** Takes the grant returns, then one netfront round (events, TX responses, RX, transmit). */
  step(now: number): number {
    let did = 0;
    for (const m of this.returns) did += this.nf.handleGrantReturns(m.grefs);
    this.returns.length = 0;
    return did + this.driver.round(now, true);
  }

  /**
   * Takes the guest off the backend once its vif is drained (the caller waits for that): the vif's data path ends,
   * the rings are unmapped, the port closed, netfront and the grant table disposed, the vif freed.
   */
  disconnect(dom0: Dom0Backend, evtchn: EvtchnHost): void {
    if (this.vif.isDrained()) this.vif.finishDisconnect();
    for (const h of this.ringHandles) dom0.mapper.unmap(h);
    const ev0 = evtchn.domain(dom0.config.domid);
    ev0.unbind(this.port);
    ev0.close(this.port);
    this.nf.disconnect();
    this.nf.dispose();
    this.gnttab.dispose();
    dom0.destroyVif(this.vif);
  }
}

/** Where an honest guest's grant table and memory become mappable and its grant-return notices go (the host's toolstack). */
export type AddHonestDomain = (domid: number, table: SharedArrayBuffer, memory: SharedArrayBuffer, post: (m: GrantReturnMessage) => void) => void;

// xenbus_map_ring_valloc + BACK_RING_ATTACH for a ring the guest granted.
function mapRing(dom0: Dom0Backend, domid: number, ref: number, entryBytes: number, handles: number[]): BackRing {
  const m = dom0.mapper.map({ dom: domid, ref, flags: GNTMAP_host_map });
  if (m.status !== GNTST_okay || m.bytes === null) throw new Error(`cannot map ring gref ${ref} of d${domid}: status ${m.status}`);
  handles.push(m.handle);
  const r = attachBackRing(m.bytes.buffer as SharedArrayBuffer, m.bytes.byteOffset, entryBytes);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/**
 * Builds guest `domid` with netfront, gives it a vif of `dom0` and connects both as netback's connect() would for a
 * well-behaved frontend (SG, TCPv4 GSO, checksum offload, one shared event channel). Throws when a step fails.
 */
export function connectHonestGuest(dom0: Dom0Backend, evtchn: EvtchnHost, domid: number, addDomain: AddHonestDomain): HonestGuest {
  const clock = dom0.clock;
  const memory = GuestMemory.create(HONEST_FRAMES);
  const gnttab = new GrantTable({ domid, nrEntries: HONEST_GRANT_ENTRIES, clock });
  const ev = evtchn.domain(domid);
  const source = new HonestSource(domid);
  const frames: number[] = [];
  for (let f = 0; f < memory.nrFrames; f++) frames.push(f);
  const nf = new Netfront({ domid, backendDomid: dom0.config.domid, memory, gnttab, evtchn: ev, frames, clock });
  const rings = nf.setupRings();
  if (!rings.ok) throw new Error(rings.error);
  let guest: HonestGuest | null = null;
  const post = (m: GrantReturnMessage): void => void guest?.returns.push(m);
  addDomain(domid, gnttab.entries.sab, memory.sab, post);
  const handles: number[] = [];
  const txRing = mapRing(dom0, domid, rings.value.txRingRef, XEN_NETIF_TX_SLOT_SIZE, handles);
  const rxRing = mapRing(dom0, domid, rings.value.rxRingRef, XEN_NETIF_RX_SLOT_SIZE, handles);
  const ev0 = evtchn.domain(dom0.config.domid);
  const bound = ev0.bindInterdomain(domid, rings.value.eventChannel);
  if (!bound.ok) throw new Error(bound.error);
  const vif = dom0.createVif(domid, 0);
  ev0.bind(bound.value, () => vif.interrupt());
  const port = ev0.port(bound.value);
  vif.connect({
    txRing,
    rxRing,
    txPort: port,
    rxPort: port,
    features: { canSg: true, gsoMask: 1 << XEN_NETIF_GSO_TYPE_TCPV4, ipCsum: true, rxNotify: true },
    grantReturnPort: { postMessage: post },
  });
  guest = new HonestGuest(domid, nf, gnttab, new NetfrontDriver(nf, ev, source), source, vif, handles, bound.value);
  nf.connect({ sg: true, gsoTcpv4: true, rxCopy: true, multiQueueMaxQueues: 1, splitEventChannels: false });
  return guest;
}

/** AdversaryHost.honestHealth over honest guests: broken when a guest is, or its vif was disabled. */
export function honestGuestsHealth(guests: readonly HonestGuest[]): HonestHealth {
  return honestHealthOf(guests, (g) => g.vif.disabled);
}

/** AdversaryHost.exchange over honest guests on `dom0`'s bridge (frontend/adversary.ts honestExchange). */
export function exchangeHonest(
  dom0: Dom0Backend,
  guests: readonly HonestGuest[],
  host: Pick<HonestExchangeHost<HonestGuest>, 'remote' | 'run' | 'hostError'>,
  frames: number,
  each?: () => void,
): Promise<Result<void>> {
  return honestExchange(
    {
      ...host,
      guests,
      macOf: (g) => guestMac(g.domid),
      ipOf: (g) => guestIp(g.domid),
      nameOf: (g) => `d${g.domid}`,
      uplinkVerified: () => dom0.uplink.stats.udpVerified,
      health: () => honestGuestsHealth(guests),
    },
    frames,
    each,
  );
}

