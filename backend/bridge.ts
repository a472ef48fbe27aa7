// A learning bridge (net/bridge): br_handle_frame learns the source MAC of each frame into the forwarding
// database (br_fdb_update), forwards known unicast to its port (br_forward), and floods unknown unicast,
// multicast and broadcast to every other port with skb_clone, the last port getting the original (br_flood).
// Never back to the source port (should_deliver). Entries age out after ageing_time (br_fdb_cleanup).
// Departures: no STP (every port forwards), no VLANs, no local (host) delivery: local hosts are ports.
import type { Clock } from '../shared/clock.js';
import { ETH_ALEN, ETH_HLEN, isMulticastMac, readMac } from '../shared/ether.js';
import type { NetDevice } from './netdev.js';
import { type SkBuff, kfreeSkb, pskbMayPull, skbClone, skbShared } from './skbuff.js';

/** BR_DEFAULT_AGEING_TIME (net/bridge/br_private.h): 300 s, in ms. */
export const BR_DEFAULT_AGEING_TIME_MS = 300_000;
/** BR_MAX_PORTS = 1 << BR_PORT_BITS (net/bridge/br_private.h). */
export const BR_MAX_PORTS = 1024;
/** Default capacity of the forwarding database (Linux: unlimited unless fdb_max_learned is set). */
export const BR_DEFAULT_MAX_LEARNED = 4096;
/** br_fdb_cleanup never reschedules itself sooner than 10 ms (net/bridge/br_fdb.c). */
const BR_MIN_CLEANUP_DELAY_MS = 10;
/** 01:80:c2:00:00:00, the IEEE 802.1D reserved group addresses 01:80:c2:00:00:0X (is_link_local_ether_addr). */
const LINK_LOCAL_BASE = 0x0180_c200_0000;

/** Options of a Bridge. */
export interface BridgeOptions {
  readonly clock: Clock;
  /** br ageing_time in ms (default 300 s); an entry not refreshed for this long is gone. */
  readonly ageingTimeMs?: number;
  /** Forwarding-database capacity: beyond it new addresses are not learned (as fdb_max_learned). Default 4096. */
  readonly maxLearned?: number;
}

/** Bridge counters. */
export interface BridgeStats {
  rxFrames: number;
  rxBytes: number;
  /** Known unicast sent to its one port. */
  forwarded: number;
  /** Frames flooded (unknown unicast, multicast, broadcast). */
  flooded: number;
  /** skb_clone calls made while flooding (one per extra port). */
  floodClones: number;
  /** skb_share_check clones (an skb handed over while someone else still held it). */
  shareClones: number;
  /** startXmit calls made on ports. */
  txFrames: number;
  /** Frames shorter than an Ethernet header. */
  droppedShort: number;
  /** Frames with a multicast or zero source address (!is_valid_ether_addr). */
  droppedBadSource: number;
  /** Frames to 01:80:c2:00:00:0X (STP and friends are never forwarded). */
  droppedLinkLocal: number;
  /** Known unicast whose destination is the source port, or floods with no other port. */
  droppedNoPort: number;
  /** Frames arriving from a device that is not a port. */
  droppedNotPort: number;
  /** New forwarding entries. */
  learned: number;
  /** Entries whose address showed up on another port. */
  moved: number;
  /** Entries removed by ageing. */
  aged: number;
  /** Addresses not learned because the table was full. */
  fdbFull: number;
}

const EMPTY = -1;

/** A learning bridge whose ports are NetDevices. */
export class Bridge {
  readonly stats: BridgeStats = {
    rxFrames: 0,
    rxBytes: 0,
    forwarded: 0,
    flooded: 0,
    floodClones: 0,
    shareClones: 0,
    txFrames: 0,
    droppedShort: 0,
    droppedBadSource: 0,
    droppedLinkLocal: 0,
    droppedNoPort: 0,
    droppedNotPort: 0,
    learned: 0,
    moved: 0,
    aged: 0,
    fdbFull: 0,
  };
  readonly ageingTimeMs: number;
  readonly maxLearned: number;

  private readonly clock: Clock;
  private readonly ports: (NetDevice | null)[] = [];
  private readonly portOf = new Map<NetDevice, number>();
  // The forwarding database: open addressing with linear probing over typed arrays (no allocation per frame).
  private readonly mask: number;
  private readonly keys: Float64Array; // MAC, or EMPTY
  private readonly dst: Int32Array; // port number
  private readonly updated: Float64Array; // clock ms of the last frame from that MAC
  private count = 0;
  private nextCleanupAt: number;

  constructor(opts: BridgeOptions) {
    const ageing = opts.ageingTimeMs ?? BR_DEFAULT_AGEING_TIME_MS;
    if (!(ageing > 0)) throw new RangeError(`bridge ageingTimeMs must be > 0, got ${ageing}`);
    const max = opts.maxLearned ?? BR_DEFAULT_MAX_LEARNED;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`bridge maxLearned must be a positive integer, got ${max}`);
    this.clock = opts.clock;
    this.ageingTimeMs = ageing;
    this.maxLearned = max;
    let cap = 8;
    while (cap < max * 2) cap *= 2; // load factor <= 1/2 keeps probes short
    this.mask = cap - 1;
    this.keys = new Float64Array(cap).fill(EMPTY);
    this.dst = new Int32Array(cap);
    this.updated = new Float64Array(cap);
    this.nextCleanupAt = this.clock.now() + ageing;
  }

  /** br_add_if: makes `dev` a port and returns its port number (the lowest free one, as find_portno). */
  addPort(dev: NetDevice): number {
    if (this.portOf.has(dev)) throw new Error(`bridge: ${dev.name} is already a port`);
    let no = this.ports.indexOf(null);
    if (no < 0) {
      if (this.ports.length >= BR_MAX_PORTS) throw new Error(`bridge: more than ${BR_MAX_PORTS} ports`);
      no = this.ports.length;
      this.ports.push(dev);
    } else {
      this.ports[no] = dev;
    }
    this.portOf.set(dev, no);
    return no;
  }

  /** br_del_if: removes the port and flushes its forwarding entries (br_fdb_delete_by_port). */
  removePort(dev: NetDevice): void {
    const no = this.portOf.get(dev);
    if (no === undefined) throw new Error(`bridge: ${dev.name} is not a port`);
    this.portOf.delete(dev);
    this.ports[no] = null;
    for (let i = 0; i <= this.mask; ) {
      // Deleting shifts a later entry into slot i, so only advance when slot i was kept.
      if (this.keys[i] !== EMPTY && this.dst[i] === no) this.deleteSlot(i);
      else i++;
    }
  }

  /** The number of ports. */
  get portCount(): number {
    return this.portOf.size;
  }

  /** Entries in the forwarding database (expired ones not yet cleaned up included). */
  get fdbSize(): number {
    return this.count;
  }

  /** The port device `mac` is currently known on, or null (unknown or expired): br_fdb_find + has_expired. */
  fdbLookup(mac: number): NetDevice | null {
    const no = this.lookupPort(mac, this.clock.now());
    return no < 0 ? null : this.ports[no]!;
  }

  /** br_handle_frame + br_handle_frame_finish: takes one reference to `skb`, whose data points at the Ethernet header. */
  input(skb: SkBuff, fromPort: NetDevice): void {
    const src = this.portOf.get(fromPort);
    const st = this.stats;
    if (src === undefined) {
      st.droppedNotPort++;
      kfreeSkb(skb);
      return;
    }
    st.rxFrames++;
    st.rxBytes += skb.len;
    if (skbShared(skb)) {
      // br_handle_frame: skb_share_check, since pulling the header must not change another holder's skb.
      const c = skbClone(skb);
      kfreeSkb(skb);
      skb = c;
      st.shareClones++;
    }
    if (skb.len < ETH_HLEN || !pskbMayPull(skb, ETH_HLEN)) {
      st.droppedShort++;
      kfreeSkb(skb);
      return;
    }
    const h = skb.head;
    const d = skb.data;
    const dest = readMac(h, d);
    const source = readMac(h, d + ETH_ALEN);
    // br_handle_frame: !is_valid_ether_addr(h_source) -> drop.
    if (source === 0 || isMulticastMac(source)) {
      st.droppedBadSource++;
      kfreeSkb(skb);
      return;
    }
    const now = this.clock.now();
    this.learn(source, src, now);
    // is_link_local_ether_addr: 01:80:c2:00:00:0X are consumed by the bridge, never forwarded (no STP here).
    if (dest - LINK_LOCAL_BASE >= 0 && dest - LINK_LOCAL_BASE <= 0x0f) {
      st.droppedLinkLocal++;
      kfreeSkb(skb);
      return;
    }
    if (!isMulticastMac(dest)) {
      const to = this.lookupPort(dest, now);
      if (to >= 0) {
        if (to === src) {
          // should_deliver(): never back out of the port it came in on.
          st.droppedNoPort++;
          kfreeSkb(skb);
          return;
        }
        st.forwarded++;
        st.txFrames++;
        this.ports[to]!.startXmit(skb);
        return;
      }
    }
    this.flood(skb, src);
  }

  /** br_fdb_cleanup: removes entries not refreshed for ageing_time; cheap when nothing can have expired yet. */
  poll(now: number): void {
    if (now < this.nextCleanupAt) return;
    let delay = this.ageingTimeMs;
    for (let i = 0; i <= this.mask; ) {
      if (this.keys[i] === EMPTY) {
        i++;
        continue;
      }
      const expires = this.updated[i]! + this.ageingTimeMs;
      if (expires <= now) {
        this.deleteSlot(i);
        this.stats.aged++;
      } else {
        if (expires - now < delay) delay = expires - now;
        i++;
      }
    }
    this.nextCleanupAt = now + Math.max(delay, BR_MIN_CLEANUP_DELAY_MS);
  }

  // br_flood: a clone to every eligible port but the last, which gets the original.
  private flood(skb: SkBuff, src: number): void {
    const st = this.stats;
    let prev = -1;
    for (let p = 0; p < this.ports.length; p++) {
      if (p === src || this.ports[p] === null) continue;
      if (prev >= 0) {
        st.floodClones++;
        st.txFrames++;
        this.ports[prev]!.startXmit(skbClone(skb));
      }
      prev = p;
    }
    if (prev < 0) {
      st.droppedNoPort++;
      kfreeSkb(skb);
      return;
    }
    st.flooded++;
    st.txFrames++;
    this.ports[prev]!.startXmit(skb);
  }

  // br_fdb_update: refresh, move to the new port, or insert.
  private learn(mac: number, port: number, now: number): void {
    let i = this.slot(mac);
    for (;;) {
      const k = this.keys[i]!;
      if (k === mac) {
        if (this.dst[i] !== port) {
          this.dst[i] = port;
          this.stats.moved++;
        }
        this.updated[i] = now;
        return;
      }
      if (k === EMPTY) break;
      i = (i + 1) & this.mask;
    }
    if (this.count >= this.maxLearned) {
      this.stats.fdbFull++;
      return;
    }
    this.keys[i] = mac;
    this.dst[i] = port;
    this.updated[i] = now;
    this.count++;
    this.stats.learned++;
  }

  private lookupPort(mac: number, now: number): number {
    let i = this.slot(mac);
    for (;;) {
      const k = this.keys[i]!;
      if (k === mac) return this.updated[i]! + this.ageingTimeMs <= now ? -1 : this.dst[i]!;
      if (k === EMPTY) return -1;
      i = (i + 1) & this.mask;
    }
  }

  private slot(mac: number): number {
    const lo = mac >>> 0;
    const hi = (mac - lo) / 0x1_0000_0000;
    let h = Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    return h & this.mask;
  }

  // Linear-probing deletion by backward shift: later entries of the same probe run move up, so no tombstones.
  private deleteSlot(i: number): void {
    const m = this.mask;
    let hole = i;
    let j = i;
    for (;;) {
      j = (j + 1) & m;
      const k = this.keys[j]!;
      if (k === EMPTY) break;
      const home = this.slot(k);
      // Entry j may fill the hole only if its home slot is not cyclically within (hole, j].
      if (((j - home) & m) >= ((j - hole) & m)) {
        this.keys[hole] = k;
        this.dst[hole] = this.dst[j]!;
        this.updated[hole] = this.updated[j]!;
        hole = j;
      }
    }
    this.keys[hole] = EMPTY;
    this.count--;
  }
}
