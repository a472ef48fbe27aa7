// A one-thread rig for the local TCP endpoint: fake guests that send TCP streams as netback would inject them
// (a copied linear header, the rest as foreign page frags bound to fake grants, the release design attached),
// a fake uplink NIC that holds each frame until a completion delay (and optionally a tap clone for longer),
// the remote TcpPeer on the wire, and a grant checker that, after every operation, walks every live skb to
// make sure each page handed back is no longer reachable, then returns the grant (poisoning the guest page
// and re-binding the Page object later, as netback recycles mmap_pages).
import { VirtualClock } from '../../shared/clock.js';
import { ETH_HLEN, ETH_P_IP, writeEthHeader } from '../../shared/ether.js';
import { IPPROTO_TCP, IPV4_HLEN, TCP_HLEN, TCPHDR_ACK, TCPHDR_FIN, TCPHDR_PSH, TCPHDR_SYN, ipv4, writeIpv4Header, writeL4Checksum, writeTcpHeader } from '../../shared/inet.js';
import { fillPattern } from '../../shared/payload.js';
import { Random } from '../../shared/random.js';
import type { NetDevice, NetdevFeatures, SkbHolder } from '../../backend/netdev.js';
import { PAGE_SIZE, type Page, bindForeignPage, getPage, newPage, unbindForeignPage } from '../../backend/page.js';
import type { GrantSink, ReleaseDesign } from '../../backend/release.js';
import {
  SKB_GSO_TCPV4,
  SkbContext,
  type SkBuff,
  allocSkb,
  consumeSkb,
  kfreeSkb,
  skbAddFrag,
  skbClone,
  skbCopyBits,
  skbPut,
  skbReserve,
} from '../../backend/skbuff.js';
import { TcpEndpoint, type TcpEndpointOptions, parseTcpFrame } from '../../backend/tcp.js';
import { TcpPeer, type TcpPeerOptions } from '../../backend/tcp-peer.js';

export const EP_MAC = 0x02_00_00_00_00_01;
export const EP_IP = ipv4(10, 0, 0, 1);
export const EP_PORT = 5001;
export const PEER_MAC = 0x02_00_00_00_00_fe;
export const PEER_IP = ipv4(192, 0, 2, 1);
export const PEER_PORT = 9000;
/** Bytes netback grant-copies into the linear area (XEN_NETBACK_TX_COPY_LEN). */
export const TX_COPY_LEN = 128;
/** The byte a guest writes over a page whose grant came back. */
export const GUEST_POISON = 0xdb;

/** The bytes an skb carries now. */
export function bytesOf(skb: SkBuff): Uint8Array {
  const b = new Uint8Array(skb.len);
  if (skbCopyBits(skb, 0, b, 0, skb.len) !== 0) throw new Error('bytesOf: skb_copy_bits failed');
  return b;
}

/** A clone held by a tap, with its bytes and GSO fields when taken: they must not change while it is held. */
interface Tapped {
  at: number;
  skb: SkBuff;
  bytes: Uint8Array;
  gso: string;
}

/** Takes a tap clone of `skb`. */
function tapClone(skb: SkBuff, at: number): Tapped {
  const c = skbClone(skb);
  return { at, skb: c, bytes: bytesOf(c), gso: gsoOf(c) };
}

function gsoOf(skb: SkBuff): string {
  const s = skb.shinfo;
  return `${s.gsoSize}/${s.gsoSegs}/${s.gsoType}`;
}

/** Frees tapped clones that are due; records any whose bytes changed while held. */
function releaseTapped(q: Tapped[], now: number, corrupt: string[], what: string): void {
  let n = 0;
  while (n < q.length && q[n]!.at <= now) {
    const e = q[n++]!;
    const b = bytesOf(e.skb);
    if (b.length !== e.bytes.length || b.some((v, i) => v !== e.bytes[i])) corrupt.push(`${what}: a held clone's bytes changed`);
    const g = gsoOf(e.skb);
    if (g !== e.gso) corrupt.push(`${what}: a held clone's gso fields changed from ${e.gso} to ${g}`);
    kfreeSkb(e.skb);
  }
  if (n > 0) q.splice(0, n);
}

/** The uplink NIC double: frames wait in the ring for a completion delay, then go to the wire and are freed. */
export class FakeNic implements NetDevice, SkbHolder {
  readonly name = 'eth0';
  readonly mtu = 1500;
  readonly features: NetdevFeatures;
  /** Payload length of every data frame put on the wire, in order. */
  readonly payloads: number[] = [];
  /** Frames whose size broke the device's limits (a GSO frame on a device without TSO, or too long). */
  readonly oversize: string[] = [];
  frames = 0;
  /** Wire loss decided by the test: frame index (0-based over all frames) and its parsed seq/payload. */
  dropIf: ((index: number, seq: number, payloadLen: number, flags: number) => boolean) | null = null;
  dropped = 0;
  /** Tapped clones whose bytes changed while held (someone wrote into shared data). */
  readonly tapCorrupt: string[] = [];
  private readonly ring: { at: number; skb: SkBuff; drop: boolean }[] = [];
  private readonly tap: Tapped[] = [];
  private readonly hdr = new Uint8Array(ETH_HLEN + IPV4_HLEN + TCP_HLEN);

  constructor(
    private readonly clock: VirtualClock,
    private readonly random: Random,
    tso: boolean,
    private readonly completionMs: number,
    private readonly tapProb: number,
    private readonly tapHoldMs: number,
    private readonly wire: (skb: SkBuff) => void,
  ) {
    this.features = { sg: true, tso };
  }

  startXmit(skb: SkBuff): void {
    const index = this.frames++;
    const now = this.clock.now();
    if (skbCopyBits(skb, 0, this.hdr, 0, Math.min(skb.len, this.hdr.length)) !== 0) throw new Error('FakeNic: cannot read the headers');
    const f = parseTcpFrame(this.hdr, 0, skb.len); // reads only the header bytes; the length bounds tot_len
    if (!f.ok) throw new Error(`FakeNic: the endpoint sent a bad frame: ${f.error}`);
    const plen = skb.len - ETH_HLEN - IPV4_HLEN - TCP_HLEN;
    const flags = f.value.tcp.flags;
    const seq = f.value.tcp.seq;
    if (plen > 0) {
      this.payloads.push(plen);
      const limit = this.features.tso ? 0xffff - IPV4_HLEN - TCP_HLEN : this.mtu - IPV4_HLEN - TCP_HLEN;
      if (plen > limit) this.oversize.push(`frame ${index}: payload ${plen} > ${limit}`);
    }
    if (this.tapProb > 0 && this.random.chance(this.tapProb)) this.tap.push(tapClone(skb, now + this.tapHoldMs));
    const drop = this.dropIf !== null && this.dropIf(index, seq, plen, flags);
    if (drop) this.dropped++;
    this.ring.push({ at: now + this.completionMs, skb, drop });
  }

  /** TX completion: due frames go to the wire (the peer reads their bytes), then are freed. */
  poll(now: number): void {
    let n = 0;
    while (n < this.ring.length && this.ring[n]!.at <= now) {
      const e = this.ring[n++]!;
      if (!e.drop) this.wire(e.skb);
      consumeSkb(e.skb);
    }
    if (n > 0) this.ring.splice(0, n);
    releaseTapped(this.tap, now, this.tapCorrupt, 'uplink tap');
  }

  nextDeadline(): number {
    return Math.min(this.ring[0]?.at ?? Infinity, this.tap[0]?.at ?? Infinity);
  }

  idle(): boolean {
    return this.ring.length === 0 && this.tap.length === 0;
  }

  forEachSkb(fn: (skb: SkBuff) => void): void {
    for (const q of [this.ring, this.tap]) for (const e of q) fn(e.skb);
  }
}

/** One guest TCP stream: a sender that respects the endpoint's window and never needs to retransmit. */
export interface GuestStream {
  readonly id: number; // the source port, which is also the payload pattern's stream id
  readonly mac: number;
  readonly ip: number;
  readonly isn: number;
  readonly total: number;
  state: 'closed' | 'syn-sent' | 'established' | 'fin-sent' | 'done';
  epIss: number;
  sent: number;
  acked: number;
  window: number;
  synAt: number;
}

/** Options of a rig run. */
export interface RigOptions {
  readonly seed: number;
  readonly design: ReleaseDesign;
  readonly streams: number;
  readonly bytesPerStream: number;
  readonly tso: boolean;
  /** Peer-side random loss, ACK loss, reordering and partial ACKs. */
  readonly loss?: number;
  readonly ackLoss?: number;
  readonly reorder?: number;
  readonly partialAck?: number;
  readonly rttMs?: number;
  /** Largest guest frame payload (GSO frames above 1460). */
  readonly maxFrame?: number;
  /** NIC completion delay and tap behaviour on the uplink. */
  readonly completionMs?: number;
  readonly tapProb?: number;
  readonly tapHoldMs?: number;
  /** Probability that a guest frame is also cloned by a LAN-side tap (its head becomes shared). */
  readonly lanTapProb?: number;
  /** How long the LAN-side tap holds its clone, ms. Default 2. */
  readonly lanTapHoldMs?: number;
  readonly endpoint?: Partial<TcpEndpointOptions>;
  readonly peer?: Partial<TcpPeerOptions>;
  /** Guest pages available for mapping at once (netback's pending slots). */
  readonly guestPages?: number;
  /** Guest frame sizes: 'random' (mostly maxFrame, some small) or always 'max'. Default 'random'. */
  readonly sizes?: 'random' | 'max';
}

/** Where a guest frame's payload bytes went: stream positions [from, to) of each foreign page frag. */
export interface FrameRecord {
  readonly stream: number;
  readonly pos: number;
  readonly len: number;
  readonly frags: { readonly page: Page; readonly from: number; readonly to: number }[];
}

/** What the grant checker saw. */
export interface GrantReport {
  bound: number;
  released: number;
  /** Releases of a page some live skb could still read. */
  early: string[];
  /** A second release of one binding, or an unbind refused by the page model. */
  double: string[];
}

/** The whole system on one thread and a virtual clock. */
export class Rig {
  readonly clock = new VirtualClock();
  readonly random: Random;
  readonly ctx: SkbContext;
  readonly nic: FakeNic;
  readonly peer: TcpPeer;
  readonly ep: TcpEndpoint;
  readonly streams: GuestStream[] = [];
  readonly grants: GrantReport = { bound: 0, released: 0, early: [], double: [] };
  /** skbs held by the LAN-side tap (roots for the checker). */
  readonly lanTap: Tapped[] = [];
  /** LAN-tap clones whose bytes changed while held. */
  readonly lanTapCorrupt: string[] = [];
  /** Frames from the endpoint on their way to the guests (delivered by the loop, never re-entrantly). */
  readonly lanInbox: SkBuff[] = [];
  /** Every page handed back, in order (for tests that look at one release). */
  readonly releaseLog: Page[] = [];
  /** Every guest data frame, in order. */
  readonly frameLog: FrameRecord[] = [];
  /** Smallest window a guest saw in an ACK after the handshake. */
  minWindow = Infinity;
  /** Largest payload the endpoint held at once (sum of its queued skbs' lengths). */
  maxHeld = 0;
  /** Set when forEachSkb visited one skb twice. */
  duplicateVisit: string | null = null;
  steps = 0;

  private readonly opts: RigOptions;
  private readonly sink: GrantSink;
  private readonly pendingRelease: Page[] = [];
  private readonly freePages: Page[] = [];
  private readonly freeBuffers: Uint8Array[] = [];
  private pagesInUse = 0;
  private readonly bindingOf = new Map<Page, number>();
  private readonly released = new Set<number>();
  private nextGref = 1;
  private nextBinding = 1;
  private readonly rxBuf = new Uint8Array(256);
  private readonly frame = new Uint8Array(ETH_HLEN + 0xffff);
  private readonly guestPages: number;

  constructor(opts: RigOptions) {
    this.opts = opts;
    this.random = new Random(opts.seed);
    this.guestPages = opts.guestPages ?? 512;
    this.ctx = new SkbContext({ design: opts.design, poisonFreed: true });
    this.sink = { release: (page: Page) => this.pendingRelease.push(page) };
    let peer: TcpPeer | null = null;
    this.nic = new FakeNic(this.clock, this.random.fork(), opts.tso, opts.completionMs ?? 0.2, opts.tapProb ?? 0, opts.tapHoldMs ?? 3, (skb) =>
      peer!.wire(skb),
    );
    let ep: TcpEndpoint | null = null;
    this.peer = new TcpPeer({
      clock: this.clock,
      random: this.random.fork(),
      mac: PEER_MAC,
      ip: PEER_IP,
      port: PEER_PORT,
      deliver: (frame) => ep!.uplinkReceive(frame),
      rttMs: opts.rttMs ?? 1,
      loss: opts.loss ?? 0,
      ackLoss: opts.ackLoss ?? 0,
      reorder: opts.reorder ?? 0,
      partialAck: opts.partialAck ?? 0,
      ...opts.peer,
    });
    peer = this.peer;
    this.ep = new TcpEndpoint({
      ctx: this.ctx,
      clock: this.clock,
      random: this.random.fork(),
      mac: EP_MAC,
      ip: EP_IP,
      port: EP_PORT,
      uplink: this.nic,
      peerMac: PEER_MAC,
      peerIp: PEER_IP,
      peerPort: PEER_PORT,
      rtoMinMs: 20,
      rtoInitMs: 100,
      ...opts.endpoint,
    });
    ep = this.ep;
    this.ep.connectLan((skb) => this.lanInbox.push(skb));
    for (let i = 0; i < opts.streams; i++) {
      this.streams.push({
        id: 40000 + i,
        mac: 0x02_00_00_00_10_00 + i,
        ip: ipv4(10, 0, 0, 10 + i),
        isn: this.random.u32(),
        total: opts.bytesPerStream,
        state: 'closed',
        epIss: 0,
        sent: 0,
        acked: 0,
        window: 0,
        synAt: 0,
      });
    }
  }

  /** Every skb a component holds: the endpoint's queues, the NIC ring and tap, the LAN tap. */
  roots(): SkBuff[] {
    const out: SkBuff[] = [];
    const seen = new Set<SkBuff>();
    this.ep.forEachSkb((skb) => {
      if (seen.has(skb)) this.duplicateVisit ??= 'the endpoint visited one skb twice';
      seen.add(skb);
      out.push(skb);
    });
    this.nic.forEachSkb((skb) => out.push(skb));
    for (const e of this.lanTap) out.push(e.skb);
    for (const skb of this.lanInbox) out.push(skb);
    return out;
  }

  /** Checks the grants handed back during the last operation, then returns them to the guest. */
  check(): void {
    this.steps++;
    let held = 0;
    this.ep.forEachSkb((skb) => (held += skb.len));
    if (held > this.maxHeld) this.maxHeld = held;
    this.checkReleases();
    if (this.until !== null && this.until()) this.stop = true;
  }

  private checkReleases(): void {
    if (this.pendingRelease.length === 0) {
      if (this.steps % 64 === 0) this.roots(); // keep the duplicate-visit check going
      return;
    }
    const reachable = new Set<Page>();
    for (const r of this.roots()) walkPages(r, reachable);
    const batch = this.pendingRelease.splice(0);
    for (const page of batch) {
      this.releaseLog.push(page);
      const binding = this.bindingOf.get(page) ?? -1;
      if (this.released.has(binding)) {
        this.grants.double.push(`binding ${binding} of page ${page.id} released twice`);
        continue;
      }
      this.released.add(binding);
      this.grants.released++;
      page.bytes.fill(GUEST_POISON); // the guest reuses its page at once: a later read shows as corrupt payload
      if (reachable.has(page)) {
        this.grants.early.push(`page ${page.id} (binding ${binding}) released at step ${this.steps} while reachable`);
        continue; // the Page object stays out of the pool (the test fails anyway)
      }
      try {
        unbindForeignPage(this.ctx, page);
      } catch (e) {
        this.grants.double.push(String(e));
        continue;
      }
      this.freeBuffers.push(page.bytes);
      this.freePages.push(page);
      this.pagesInUse--;
    }
  }

  /** Runs until every stream is relayed and closed, or `maxSteps` loop iterations pass. */
  run(maxSteps = 200_000): boolean {
    return this.runUntil(() => this.done(), maxSteps);
  }

  /** Runs the loop until `until()` holds after an operation (checked after every operation), or maxSteps iterations. */
  runUntil(until: () => boolean, maxSteps = 200_000): boolean {
    this.until = until;
    this.stop = false;
    try {
      return this.loop(maxSteps);
    } finally {
      this.until = null;
    }
  }

  private until: (() => boolean) | null = null;
  /** Set by check() when `until` holds; the loop returns after the operation in progress. */
  private stop = false;

  private loop(maxSteps: number): boolean {
    let sameInstant = 0;
    let lastNow = -1;
    for (let i = 0; i < maxSteps; i++) {
      if (this.done()) return true;
      const now = this.clock.now();
      this.pumpGuests(now);
      if (this.stop) return true;
      this.ep.poll(now);
      this.check();
      if (this.stop) return true;
      this.nic.poll(now);
      this.check();
      if (this.stop) return true;
      this.pollLanTap(now);
      this.check();
      if (this.stop) return true;
      this.peer.poll(now);
      this.check();
      if (this.stop) return true;
      this.deliverLan();
      if (this.stop) return true;
      const next = Math.min(this.ep.nextDeadline(), this.nic.nextDeadline(), this.peer.nextDeadline(), this.lanTap[0]?.at ?? Infinity, this.guestDeadline(now));
      if (now === lastNow) sameInstant++;
      else sameInstant = 0;
      lastNow = now;
      if (next > now || sameInstant > 20) this.clock.advance(next === Infinity || next <= now ? 1 : next - now);
    }
    return this.done();
  }

  /** True when every stream is relayed, closed on both sides, and nothing is in flight. */
  done(): boolean {
    if (!this.streams.every((s) => s.state === 'done')) return false;
    if (!this.streams.every((s) => this.peer.stream(s.id)?.finished === true)) return false;
    return this.ep.connections === 0 && this.nic.idle() && this.lanTap.length === 0 && this.lanInbox.length === 0 && this.peer.idle();
  }

  /** Frees whatever is still held (after a failed run) so the final accounting can be checked. */
  teardown(): void {
    this.ep.close();
    this.check();
    this.nic.poll(Infinity);
    this.pollLanTap(Infinity);
    for (const skb of this.lanInbox.splice(0)) kfreeSkb(skb);
    this.check();
  }

  /** Page get/put and skb/shinfo alloc/free balance of the skbuff model's counters. */
  balance(): { skbs: number; shinfos: number; pageRefs: number; localPages: number } {
    const s = this.ctx.stats;
    return {
      skbs: s.skbAllocs - s.skbFrees,
      shinfos: s.shinfoAllocs - s.shinfoFrees,
      pageRefs: s.pageGets + s.pageAllocs + this.grants.bound - s.pagePuts,
      localPages: s.pageAllocs - s.pageFrees,
    };
  }

  /** Grants never handed back. */
  leaks(): number {
    return this.grants.bound - this.grants.released;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Guests

  private guestDeadline(now: number): number {
    if (this.lanInbox.length > 0) return now;
    for (const s of this.streams) {
      if (s.state === 'closed') return now;
      if (s.state === 'established' && this.canSend(s) > 0) return now;
      if (s.state === 'syn-sent') return s.synAt + 50; // SYN retransmission
    }
    return Infinity;
  }

  private canSend(s: GuestStream): number {
    // Like a full TX ring: wait until enough granted pages came back for a maximal frame.
    if (this.pagesInUse + 17 > this.guestPages) return 0;
    const room = s.acked + s.window - s.sent;
    const rest = s.total - s.sent;
    if (rest === 0) return 1; // the FIN
    const max = this.opts.maxFrame ?? 1460;
    const want = Math.min(rest, max);
    if (room >= want) return want;
    if (room >= 1460) return room;
    return 0;
  }

  private pumpGuests(now: number): void {
    for (const s of this.streams) {
      if (s.state === 'closed' || (s.state === 'syn-sent' && now >= s.synAt + 50)) {
        s.state = 'syn-sent';
        s.synAt = now;
        this.send(s, 0, TCPHDR_SYN, s.isn);
        continue;
      }
      while (s.state === 'established') {
        const n = this.canSend(s);
        if (n === 0) break;
        if (s.sent === s.total) {
          this.send(s, 0, TCPHDR_FIN | TCPHDR_ACK, (s.isn + 1 + s.sent) >>> 0);
          s.state = 'fin-sent';
          break;
        }
        // Vary frame sizes: mostly full, sometimes small (netback then keeps it all linear).
        const max = this.opts.maxFrame ?? 1460;
        let len = n;
        const r = this.opts.sizes === 'max' ? 1 : this.random.float();
        if (r < 0.1) len = Math.min(n, this.random.int(1, 100));
        else if (r < 0.4) len = Math.min(n, this.random.int(1, max));
        this.send(s, len, TCPHDR_ACK | TCPHDR_PSH, (s.isn + 1 + s.sent) >>> 0);
        s.sent += len;
      }
    }
  }

  /** Builds a guest frame as netback injects it and hands it to the endpoint (as the bridge would). */
  private send(s: GuestStream, len: number, flags: number, seq: number): void {
    const f = this.frame;
    const total = ETH_HLEN + IPV4_HLEN + TCP_HLEN + len;
    writeEthHeader(f, 0, EP_MAC, s.mac, ETH_P_IP);
    writeIpv4Header(f, ETH_HLEN, { totalLen: IPV4_HLEN + TCP_HLEN + len, id: 0, ttl: 64, proto: IPPROTO_TCP, saddr: s.ip, daddr: EP_IP });
    const ack = (flags & TCPHDR_SYN) !== 0 ? 0 : (s.epIss + 1) >>> 0;
    writeTcpHeader(f, ETH_HLEN + IPV4_HLEN, { sport: s.id, dport: EP_PORT, seq, ack, flags, window: 0xffff });
    fillPattern(f, ETH_HLEN + IPV4_HLEN + TCP_HLEN, len, s.id, s.sent);
    writeL4Checksum(f, ETH_HLEN + IPV4_HLEN, TCP_HLEN + len, IPPROTO_TCP, s.ip, EP_IP, true); // csum_blank
    const linear = Math.min(total, TX_COPY_LEN);
    const skb = allocSkb(this.ctx, 64 + TX_COPY_LEN);
    skbReserve(skb, 64);
    const at = skbPut(skb, linear);
    skb.head.set(f.subarray(0, linear), at);
    skb.macHeader = skb.data;
    skb.protocol = ETH_P_IP;
    const pages: Page[] = [];
    const hdr = ETH_HLEN + IPV4_HLEN + TCP_HLEN;
    const rec: FrameRecord = { stream: s.id, pos: s.sent, len, frags: [] };
    if (len > 0) this.frameLog.push(rec);
    let off = linear;
    while (off < total) {
      const rest = total - off;
      const slotsLeft = 17 - pages.length;
      const pageOff = this.random.int(0, 511);
      let size = Math.min(rest, PAGE_SIZE - pageOff);
      if (slotsLeft > Math.ceil(rest / (PAGE_SIZE - 512)) + 1 && this.random.chance(0.3)) size = this.random.int(1, size);
      const page = this.mapGuestPage(f.subarray(off, off + size), pageOff);
      pages.push(page);
      rec.frags.push({ page, from: s.sent + off - hdr, to: s.sent + off - hdr + size });
      skbAddFrag(skb, page, pageOff, size);
      off += size;
    }
    if (len > 1460) {
      skb.shinfo.gsoSize = 1460;
      skb.shinfo.gsoType = SKB_GSO_TCPV4;
      skb.shinfo.gsoSegs = Math.ceil(len / 1460);
    }
    if (pages.length > 0) this.ctx.design.attach(skb, pages, this.sink);
    if (this.opts.lanTapProb !== undefined && this.random.chance(this.opts.lanTapProb)) {
      this.lanTap.push(tapClone(skb, this.clock.now() + (this.opts.lanTapHoldMs ?? 2)));
    }
    this.ep.startXmit(skb);
    this.check();
  }

  /** Maps a fresh guest grant (netback's gnttab map of one slot) holding `bytes` at `pageOff`; one frag ref taken. */
  private mapGuestPage(bytes: Uint8Array, pageOff: number): Page {
    if (this.pagesInUse >= this.guestPages) throw new Error('rig: guest pages exhausted (grants are not coming back)');
    const page = this.freePages.pop() ?? newPage(this.ctx);
    const buf = this.freeBuffers.pop() ?? new Uint8Array(PAGE_SIZE);
    buf.set(bytes, pageOff);
    bindForeignPage(page, buf, { domid: 1, gref: this.nextGref++ });
    this.bindingOf.set(page, this.nextBinding++);
    getPage(this.ctx, page);
    this.grants.bound++;
    this.pagesInUse++;
    return page;
  }

  /** Hands the endpoint's frames to the guests. */
  private deliverLan(): void {
    while (this.lanInbox.length > 0) {
      this.guestReceive(this.lanInbox.shift()!);
      this.check();
    }
  }

  /** The guests' side of the bridge: ACK frames from the endpoint. */
  private guestReceive(skb: SkBuff): void {
    const n = Math.min(skb.len, this.rxBuf.length);
    if (skbCopyBits(skb, 0, this.rxBuf, 0, n) !== 0) throw new Error('rig: cannot read an endpoint frame');
    consumeSkb(skb);
    const r = parseTcpFrame(this.rxBuf, 0, n);
    if (!r.ok) throw new Error(`rig: endpoint sent a bad frame: ${r.error}`);
    const t = r.value.tcp;
    const s = this.streams.find((x) => x.id === t.dport);
    if (s === undefined) throw new Error(`rig: endpoint frame for unknown port ${t.dport}`);
    if ((t.flags & TCPHDR_SYN) !== 0) {
      if (s.state === 'syn-sent') {
        s.epIss = t.seq;
        s.state = 'established';
        s.window = t.window;
        this.send(s, 0, TCPHDR_ACK, (s.isn + 1) >>> 0);
      }
      return;
    }
    if ((t.flags & TCPHDR_ACK) === 0) return;
    if (t.window < this.minWindow) this.minWindow = t.window;
    const acked = Math.min(s.total, (t.ack - s.isn - 1) | 0);
    if (acked > s.acked) s.acked = acked;
    s.window = t.window;
    if (s.state === 'fin-sent' && (t.flags & TCPHDR_FIN) !== 0 && t.ack === ((s.isn + 2 + s.total) >>> 0)) s.state = 'done';
  }

  private pollLanTap(now: number): void {
    releaseTapped(this.lanTap, now, this.lanTapCorrupt, 'LAN tap');
  }
}

/** An skb holding `bytes` in its linear area (with headroom), as a frame from the bridge. */
export function linearSkb(ctx: SkbContext, bytes: Uint8Array): SkBuff {
  const skb = allocSkb(ctx, 64 + bytes.length);
  skbReserve(skb, 64);
  const at = skbPut(skb, bytes.length);
  skb.head.set(bytes, at);
  skb.macHeader = skb.data;
  return skb;
}

/** Adds every page reachable from an skb (frags, frag_list recursively) to `out`. */
export function walkPages(skb: SkBuff, out: Set<Page>): void {
  const s = skb.shinfo;
  for (let i = 0; i < s.nrFrags; i++) out.add(s.frags[i]!.page);
  for (let c = s.fragList; c !== null; c = c.next) walkPages(c, out);
}

/** What a hand-built TCP/IPv4 frame carries. */
export interface FrameSpec {
  readonly srcMac: number;
  readonly dstMac: number;
  readonly saddr: number;
  readonly daddr: number;
  readonly sport: number;
  readonly dport: number;
  readonly seq: number;
  readonly ack?: number;
  readonly flags: number;
  readonly window?: number;
  /** Payload bytes, filled with the pattern of (stream, pos); default 0. */
  readonly payloadLen?: number;
  readonly stream?: number;
  readonly pos?: number;
}

/** A well-formed Ethernet/IPv4/TCP frame (full TCP checksum). */
export function buildTcpFrame(f: FrameSpec): Uint8Array {
  const plen = f.payloadLen ?? 0;
  const b = new Uint8Array(ETH_HLEN + IPV4_HLEN + TCP_HLEN + plen);
  writeEthHeader(b, 0, f.dstMac, f.srcMac, ETH_P_IP);
  writeIpv4Header(b, ETH_HLEN, { totalLen: IPV4_HLEN + TCP_HLEN + plen, id: 0, ttl: 64, proto: IPPROTO_TCP, saddr: f.saddr, daddr: f.daddr });
  const th = ETH_HLEN + IPV4_HLEN;
  writeTcpHeader(b, th, { sport: f.sport, dport: f.dport, seq: f.seq >>> 0, ack: (f.ack ?? 0) >>> 0, flags: f.flags, window: f.window ?? 0xffff });
  fillPattern(b, th + TCP_HLEN, plen, f.stream ?? f.sport, f.pos ?? 0);
  writeL4Checksum(b, th, TCP_HLEN + plen, IPPROTO_TCP, f.saddr, f.daddr, false);
  return b;
}
