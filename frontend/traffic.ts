// The guest's traffic: frame builders (Ethernet/IPv4 + UDP with tagged payloads, or TCP segments whose payload
// bytes are the stream pattern of shared/payload.ts), the receive-side verifier, a minimal TCP bulk sender for
// the backend's local TCP endpoint (backend/tcp.ts), and a seeded mix of all of it. Frames are described by a
// reusable TxFrame and written straight into the guest page (or one scratch buffer) by netfront: no allocation
// per packet. Stream conventions match the endpoint and its remote peer (backend/tcp-peer.ts): a TCP stream's
// id is the guest's source port and the byte at sequence number isn + 1 + k is patternByte(sport, k).
//
// Departures from Linux TCP (the sender is deliberately minimal): no options (no MSS option, SACK, timestamps,
// window scaling), go-back-N after a timeout instead of SACK/fast retransmit, a fixed RTO that doubles on each
// timeout, no congestion window (the peer's advertised window and `maxInflight` bound what is in flight).
import type { Clock } from '../shared/clock.js';
import { ETH_BROADCAST, ETH_HLEN, ETH_P_IP, ETH_ZLEN, parseEthHeader } from '../shared/ether.js';
import {
  IPPROTO_TCP,
  IPPROTO_UDP,
  IPV4_HLEN,
  TCPHDR_ACK,
  TCPHDR_FIN,
  TCPHDR_PSH,
  TCPHDR_RST,
  TCPHDR_SYN,
  TCP_HLEN,
  UDP_HLEN,
  get16,
  get32,
  csumFold,
  csumFold16,
  csumPartial,
  l4ChecksumOk,
  parseIpv4Header,
  pseudoHeaderSum,
} from '../shared/inet.js';
import { NETRXF_csum_blank, NETRXF_data_validated, XEN_NETIF_MAX_TX_SIZE } from '../shared/netif.js';
import { PAYLOAD_TAG_LEN, checkTaggedPayload, patternByte } from '../shared/payload.js';
import type { Random } from '../shared/random.js';
import { err, ok, type Result } from '../shared/result.js';
import type { TxPacket, TxSource } from './netfront.js';

// ---- Pattern fill ----------------------------------------------------------------------------------------

/** patternByte(stream, pos) depends on pos only modulo 2^16 (251 and 13 * 256 vanish mod 256 at that period). */
export const PATTERN_PERIOD = 0x10000;
// Runs up to this long are copied byte by byte (measured: faster than subarray + set below ~64 bytes).
const SMALL_FILL = 64;

/**
 * Per-stream tables of two pattern periods, so any run of up to PATTERN_PERIOD bytes is one `set` from a
 * subarray: filling 64 KiB costs a memcpy instead of a byte loop. Least recently used tables are evicted.
 * A table may also be had at a chosen byte alignment (`shift`): a set() into a SharedArrayBuffer copies words
 * only when source and destination agree modulo 8, and byte by byte (~5x slower) when they do not.
 */
export class PatternCache {
  private readonly tables = new Map<number, Uint8Array>();
  private readonly bases = new Map<number, Uint8Array>();
  // The two most recently used tables: a run of frames of one stream (its table, and one aligned copy) skips the
  // Map and its re-insertion entirely.
  private lastKey = -1;
  private lastTable: Uint8Array | null = null;
  private prevKey = -1;
  private prevTable: Uint8Array | null = null;

  /** Keeps at most `capacity` tables (128 KiB each; one per stream key, 256 of them, and alignment shift). */
  constructor(readonly capacity = 32) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a positive integer but got ${capacity}`);
  }

  /** The stream's table: its pattern from position 0 over two periods (a byte at p is at p mod PATTERN_PERIOD). */
  table(stream: number): Uint8Array {
    return this.alignedTable(stream, 0);
  }

  /** The pattern of a stream key from position 0, computed once per key (at most 256 of them). */
  private baseTable(stream: number): Uint8Array {
    const k = Math.imul(stream >>> 0, 101) & 0xff;
    let b = this.bases.get(k);
    if (b === undefined) {
      b = new Uint8Array(2 * PATTERN_PERIOD);
      for (let i = 0; i < b.length; i++) b[i] = patternByte(stream >>> 0, i);
      this.bases.set(k, b);
    }
    return b;
  }

  /** The stream's table, with its byteOffset congruent to `shift` (0..7) modulo 8 while the cache has room. */
  alignedTable(stream: number, shift: number): Uint8Array {
    // patternByte depends on the stream only through imul(stream, 101) & 0xff: streams sharing that key share a table.
    const key = (Math.imul(stream >>> 0, 101) & 0xff) * 8 + (shift & 7);
    if (key === this.lastKey) return this.lastTable!;
    if (key === this.prevKey) {
      const p = this.prevTable!;
      this.prevKey = this.lastKey;
      this.prevTable = this.lastTable;
      this.lastKey = key;
      this.lastTable = p;
      return p;
    }
    let t = this.tables.get(key);
    if (t !== undefined) {
      // Re-insert to mark it most recently used (Map keeps insertion order).
      this.tables.delete(key);
      this.tables.set(key, t);
    } else if (this.tables.size < this.capacity) {
      t = new Uint8Array(new ArrayBuffer(2 * PATTERN_PERIOD + 8), shift & 7, 2 * PATTERN_PERIOD);
      t.set(this.baseTable(stream));
      this.tables.set(key, t);
    } else {
      // Full: the stream key's base table has the same bytes at any alignment. Evicting and rebuilding aligned
      // copies instead made every frame allocate 128 KiB once a thread ran more streams than the cache held (the
      // demo fell from ~110k to ~7k packets/s); alignment only makes set() faster, never changes a byte.
      return this.baseTable(stream);
    }
    this.prevKey = this.lastKey;
    this.prevTable = this.lastTable;
    this.lastKey = key;
    this.lastTable = t;
    return t;
  }

  /** Same bytes as payload.ts fillPattern(buf, off, len, stream, pos), copied from the stream's table. */
  fill(buf: Uint8Array, off: number, len: number, stream: number, pos: number): void {
    const t = this.table(stream);
    if (len <= SMALL_FILL) {
      // A short run: a byte loop beats subarray() + set() (an allocation and a call into the runtime).
      const start = pos & (PATTERN_PERIOD - 1);
      for (let i = 0; i < len; i++) buf[off + i] = t[start + i]!;
      return;
    }
    let done = 0;
    while (done < len) {
      const n = Math.min(len - done, PATTERN_PERIOD);
      const start = ((pos + done) >>> 0) & (PATTERN_PERIOD - 1);
      buf.set(t.subarray(start, start + n), off + done);
      done += n;
    }
  }
}

// ---- Frames ----------------------------------------------------------------------------------------------

/** TxFrame kind: Ethernet/IPv4/UDP with a tagged payload. */
export const FRAME_UDP = 1;
/** TxFrame kind: Ethernet/IPv4/TCP whose payload is the stream pattern. */
export const FRAME_TCP = 2;

/** Largest TCP payload one frame may carry so that the whole frame fits a tx_request size (u16). */
export const TCP_MAX_FRAME_PAYLOAD = XEN_NETIF_MAX_TX_SIZE - ETH_HLEN - IPV4_HLEN - TCP_HLEN;

/** Addresses and ports of one direction of a flow. */
export interface Flow {
  readonly srcMac: number;
  readonly dstMac: number;
  readonly saddr: number;
  readonly daddr: number;
  readonly sport: number;
  readonly dport: number;
}

const defaultCache = new PatternCache(8);

/**
 * One frame to transmit, described by fields and written on demand (a netfront TxPacket). A source owns one
 * and refills it for each packet, so sending allocates nothing.
 */
export class TxFrame implements TxPacket {
  kind = FRAME_UDP;
  /** Whole frame length, padding included. */
  len = 0;
  pageOffset = 0;
  csumBlank = false;
  gsoSize = 0;
  srcMac = 0;
  dstMac = 0;
  saddr = 0;
  daddr = 0;
  sport = 0;
  dport = 0;
  ipId = 0;
  ttl = 64;
  /** Pattern stream and position of the payload (after the tag, for UDP). */
  stream = 0;
  pos = 0;
  payloadLen = 0;
  seq = 0;
  ack = 0;
  tcpFlags = 0;
  window = 0;
  // What prepare() works out per frame: the header length and checksums, and where the pattern bytes are. The
  // headers of a frame written across pages are built in `hdr` first.
  private readonly hdr = new Uint8Array(HDR_MAX);
  private readonly hdrView = new DataView(this.hdr.buffer);
  private hdrLen = 0;
  private ipCsum = 0;
  private l4Csum = 0;
  private patTable: Uint8Array | null = null;
  private patStart = 0;
  private patLen = 0;
  // A DataView of the last destination buffer (guest memory: one for all its pages).
  private dstBuffer: ArrayBufferLike | null = null;
  private dstView: DataView | null = null;

  constructor(private readonly cache: PatternCache = defaultCache) {}

  /** Makes this a UDP datagram of `payloadLen` >= PAYLOAD_TAG_LEN bytes tagged (stream, pos). */
  setUdp(flow: Flow, stream: number, pos: number, payloadLen: number, csumBlank: boolean): this {
    if (!Number.isInteger(payloadLen) || payloadLen < PAYLOAD_TAG_LEN || payloadLen > 0xffff - IPV4_HLEN - UDP_HLEN) {
      throw new RangeError(`UDP payload must be ${PAYLOAD_TAG_LEN}..${0xffff - IPV4_HLEN - UDP_HLEN} bytes but got ${payloadLen}`);
    }
    this.kind = FRAME_UDP;
    this.setFlow(flow);
    this.stream = stream >>> 0;
    this.pos = pos >>> 0;
    this.payloadLen = payloadLen;
    this.csumBlank = csumBlank;
    this.gsoSize = 0;
    this.len = Math.max(ETH_ZLEN, ETH_HLEN + IPV4_HLEN + UDP_HLEN + payloadLen);
    return this;
  }

  /**
   * Makes this a TCP segment: `payloadLen` pattern bytes of `stream` from `pos`; `gsoSize` > 0 asks the backend
   * to segment it (XEN_NETIF_GSO_TYPE_TCPV4 with that MSS).
   */
  setTcp(flow: Flow, seq: number, ack: number, flags: number, window: number, stream: number, pos: number, payloadLen: number, gsoSize: number): this {
    if (!Number.isInteger(payloadLen) || payloadLen < 0 || payloadLen > TCP_MAX_FRAME_PAYLOAD) {
      throw new RangeError(`TCP payload must be 0..${TCP_MAX_FRAME_PAYLOAD} bytes but got ${payloadLen}`);
    }
    this.kind = FRAME_TCP;
    this.setFlow(flow);
    this.seq = seq >>> 0;
    this.ack = ack >>> 0;
    this.tcpFlags = flags;
    this.window = window;
    this.stream = stream >>> 0;
    this.pos = pos >>> 0;
    this.payloadLen = payloadLen;
    // Linux sends locally generated TCP as CHECKSUM_PARTIAL: netfront marks it csum_blank.
    this.csumBlank = true;
    this.gsoSize = gsoSize;
    this.len = Math.max(ETH_ZLEN, ETH_HLEN + IPV4_HLEN + TCP_HLEN + payloadLen);
    return this;
  }

  private setFlow(flow: Flow): void {
    this.srcMac = flow.srcMac;
    this.dstMac = flow.dstMac;
    this.saddr = flow.saddr >>> 0;
    this.daddr = flow.daddr >>> 0;
    this.sport = flow.sport;
    this.dport = flow.dport;
  }

  /** Writes the whole frame contiguously at `off` (len bytes): headers, payload, checksums, zero padding. */
  writeTo(buf: Uint8Array, off: number): void {
    if (!(off >= 0 && off + this.len <= buf.length)) {
      throw new RangeError(`frame of ${this.len} bytes does not fit at ${off} in ${buf.length} bytes`);
    }
    this.prepare();
    // The headers straight into the destination by 16/32-bit stores, then the pattern and the padding.
    this.writeHeaders(this.viewOf(buf), buf.byteOffset + off);
    this.emit(buf, off + this.hdrLen, this.hdrLen, this.len - this.hdrLen);
  }

  /**
   * Writes the whole frame at byte `at` of `mem` (a whole guest memory) with `view` a DataView of the same buffer:
   * writeTo without looking up the page's buffer and offset (each a slow accessor on a typed array).
   */
  writeAt(mem: Uint8Array, view: DataView, at: number): void {
    if (!(at >= 0 && at + this.len <= mem.length)) {
      throw new RangeError(`frame of ${this.len} bytes does not fit at ${at} in ${mem.length} bytes`);
    }
    this.prepare();
    this.writeHeaders(view, at);
    this.emit(mem, at + this.hdrLen, this.hdrLen, this.len - this.hdrLen);
  }

  /**
   * Writes the frame across `count` pages: from `offset` to the end of pages[0], then from 0 in each next page,
   * straight into them (no contiguous copy first). Throws RangeError if the pages do not hold exactly len bytes.
   */
  writePages(pages: readonly Uint8Array[], count: number, offset: number): void {
    this.prepare();
    // The headers may straddle a page boundary: build them aside, emit() copies them like any other bytes.
    this.writeHeaders(this.hdrView, 0);
    let from = 0;
    for (let i = 0; i < count && from < this.len; i++) {
      const page = pages[i]!;
      const at = i === 0 ? offset : 0;
      const n = Math.min(this.len - from, page.length - at);
      if (!(at >= 0 && n > 0)) break;
      this.emit(page, at, from, n);
      from += n;
    }
    if (from !== this.len) throw new RangeError(`${count} pages from offset ${offset} hold ${from} of the frame's ${this.len} bytes`);
  }

  // Per frame: the header length, where the pattern bytes come from, and both checksums (from the fields and the
  // table, which holds the pattern contiguously in plain memory: nothing is read back from guest pages).
  private prepare(): void {
    const udp = this.kind === FRAME_UDP;
    const l4len = (udp ? UDP_HLEN : TCP_HLEN) + this.payloadLen;
    const proto = udp ? IPPROTO_UDP : IPPROTO_TCP;
    const totalLen = IPV4_HLEN + l4len;
    this.hdrLen = ETH_HLEN + IPV4_HLEN + (udp ? UDP_HLEN + PAYLOAD_TAG_LEN : TCP_HLEN);
    const patLen = udp ? this.payloadLen - PAYLOAD_TAG_LEN : this.payloadLen;
    const t = this.cache.table(this.stream);
    this.patTable = t;
    this.patStart = this.pos & (PATTERN_PERIOD - 1);
    this.patLen = patLen;
    const sa = this.saddr;
    const da = this.daddr;
    // ip_send_check over the 20 bytes writeHeaders stores (version/ihl 0x45, DF 0x4000).
    this.ipCsum = csumFold(
      0x4500 + (totalLen & 0xffff) + (this.ipId & 0xffff) + 0x4000 + (((this.ttl & 0xff) << 8) | proto) + (sa >>> 16) + (sa & 0xffff) + (da >>> 16) + (da & 0xffff),
    );
    const pseudo = pseudoHeaderSum(sa, da, proto, l4len);
    if (this.csumBlank) {
      this.l4Csum = csumFold16(pseudo);
      return;
    }
    // The L4 header's 16-bit words (checksum field 0), then the pattern (it starts at an even L4 offset).
    let hs = (this.sport & 0xffff) + (this.dport & 0xffff);
    if (udp) {
      const st = this.stream;
      const ps = this.pos;
      // The tag is little-endian: its bytes taken as big-endian words.
      hs += (l4len & 0xffff) + (((st & 0xff) << 8) | ((st >>> 8) & 0xff)) + (((st >>> 16) & 0xff) << 8 | (st >>> 24));
      hs += (((ps & 0xff) << 8) | ((ps >>> 8) & 0xff)) + (((ps >>> 16) & 0xff) << 8 | (ps >>> 24));
    } else {
      hs += (this.seq >>> 16) + (this.seq & 0xffff) + (this.ack >>> 16) + (this.ack & 0xffff);
      hs += (((TCP_HLEN / 4) << 12) | ((this.tcpFlags & 0xff))) + (this.window & 0xffff);
    }
    let c = csumFold(csumPartial(t, this.patStart, patLen, pseudo + hs));
    if (udp && c === 0) c = 0xffff; // RFC 768: a computed zero is sent as all ones
    this.l4Csum = c;
  }

  // The Ethernet, IPv4 and L4 headers (UDP: and the payload tag) at byte `at` of `dv`, big-endian as on the wire.
  private writeHeaders(dv: DataView, at: number): void {
    const dst = this.dstMac;
    const src = this.srcMac;
    dv.setUint32(at, Math.floor(dst / 0x10000));
    dv.setUint16(at + 4, dst % 0x10000);
    dv.setUint32(at + 6, Math.floor(src / 0x10000));
    dv.setUint16(at + 10, src % 0x10000);
    dv.setUint16(at + 12, ETH_P_IP);
    const l3 = at + ETH_HLEN;
    const udp = this.kind === FRAME_UDP;
    const l4len = (udp ? UDP_HLEN : TCP_HLEN) + this.payloadLen;
    const proto = udp ? IPPROTO_UDP : IPPROTO_TCP;
    dv.setUint32(l3, 0x4500_0000 | ((IPV4_HLEN + l4len) & 0xffff));
    dv.setUint32(l3 + 4, ((this.ipId & 0xffff) << 16) | 0x4000);
    dv.setUint32(l3 + 8, ((this.ttl & 0xff) << 24) | (proto << 16) | this.ipCsum);
    dv.setUint32(l3 + 12, this.saddr);
    dv.setUint32(l3 + 16, this.daddr);
    const l4 = l3 + IPV4_HLEN;
    dv.setUint32(l4, ((this.sport & 0xffff) << 16) | (this.dport & 0xffff));
    if (udp) {
      dv.setUint32(l4 + 4, ((l4len & 0xffff) << 16) | this.l4Csum);
      // The tag, little-endian as payload.ts writes it.
      dv.setUint32(l4 + UDP_HLEN, this.stream, true);
      dv.setUint32(l4 + UDP_HLEN + 4, this.pos, true);
    } else {
      dv.setUint32(l4 + 4, this.seq);
      dv.setUint32(l4 + 8, this.ack);
      dv.setUint32(l4 + 12, ((TCP_HLEN / 4) << 28) | ((this.tcpFlags & 0xff) << 16) | (this.window & 0xffff));
      dv.setUint32(l4 + 16, this.l4Csum << 16);
    }
  }

  // A DataView of the buffer under `buf` (guest memory: one for all its pages), made once per buffer.
  private viewOf(buf: Uint8Array): DataView {
    const b = buf.buffer;
    if (b !== this.dstBuffer) {
      this.dstBuffer = b;
      this.dstView = new DataView(b);
    }
    return this.dstView!;
  }

  // Frame bytes [from, from + n) at buf[off..]: header bytes from `hdr`, pattern bytes from the table, zero padding.
  private emit(buf: Uint8Array, off: number, from: number, n: number): void {
    const end = from + n;
    const hdrEnd = this.hdrLen;
    const patEnd = hdrEnd + this.patLen;
    let a = from;
    let d = off; // where frame byte a goes in buf
    if (a < hdrEnd) {
      const k = (end < hdrEnd ? end : hdrEnd) - a;
      const h = this.hdr;
      for (let i = 0; i < k; i++) buf[d + i] = h[a + i]!;
      a += k;
      d += k;
    }
    if (a < end && a < patEnd) {
      const k = (end < patEnd ? end : patEnd) - a;
      const s = this.patStart + (a - hdrEnd);
      if (k > COPY_BY_SET) {
        // A long run goes by set(): from a copy of the table that lies at the destination's alignment.
        const t = this.cache.alignedTable(this.stream, buf.byteOffset + d - s);
        buf.set(t.subarray(s, s + k), d);
      } else {
        const t = this.patTable!;
        for (let i = 0; i < k; i++) buf[d + i] = t[s + i]!;
      }
      a += k;
      d += k;
    }
    for (; a < end; a++, d++) buf[d] = 0;
  }

  /** The frame as a fresh array (tests and tools; the data path uses writeTo). */
  toBytes(): Uint8Array {
    const b = new Uint8Array(this.len);
    this.writeTo(b, 0);
    return b;
  }
}

// Header bytes a frame has at most: Ethernet, IPv4 and TCP, or UDP and the payload tag (rounded up).
const HDR_MAX = 64;
// Pattern runs longer than this are copied with subarray() + set(), shorter ones by a byte loop.
const COPY_BY_SET = 128;

// ---- Receive-side verification ---------------------------------------------------------------------------

/** Verdict: the payload was checked against its pattern and matches. */
export const RX_VERIFIED = 0;
/** Verdict: a well-formed frame without a checkable payload (ARP, TCP control segments, short UDP). */
export const RX_UNVERIFIED = 1;
/** Verdict: the Ethernet, IPv4 or L4 headers are malformed. */
export const RX_BAD_FRAME = 2;
/** Verdict: the L4 checksum is wrong (only checked when the backend claims neither csum_blank nor data_validated). */
export const RX_BAD_CHECKSUM = 3;
/** Verdict: the payload does not match its pattern (a poisoned or misplaced page). */
export const RX_CORRUPT_PAYLOAD = 4;

/** A received frame's L4 fields, valid after verify() returned RX_VERIFIED or RX_UNVERIFIED for IPv4 TCP/UDP. */
export interface RxL4Info {
  proto: number;
  saddr: number;
  daddr: number;
  sport: number;
  dport: number;
  /** Offset of the L4 header and of its payload in the verified buffer. */
  l4Off: number;
  payloadOff: number;
  payloadLen: number;
}

/**
 * Checks received frames as the guest stack would (eth_type_trans, ip_rcv, udp/tcp checksum) and then the payload
 * pattern. With NETRXF_csum_blank or NETRXF_data_validated the L4 checksum is trusted, as Linux netfront does
 * (CHECKSUM_PARTIAL / CHECKSUM_UNNECESSARY); the pattern check still runs. Peer bytes never throw.
 */
export class FrameVerifier {
  /** Why the last verify() did not return RX_VERIFIED or RX_UNVERIFIED, or null. */
  error: string | null = null;
  /** L4 fields of the last frame (proto 0 when it was not IPv4 TCP/UDP). */
  readonly l4: RxL4Info = { proto: 0, saddr: 0, daddr: 0, sport: 0, dport: 0, l4Off: 0, payloadOff: 0, payloadLen: 0 };

  /** Verifies the `len`-byte frame at `off`; `rxFlags` are the first RX response's NETRXF_* flags. */
  verify(buf: Uint8Array, off: number, len: number, rxFlags: number): number {
    this.error = null;
    const l4 = this.l4;
    l4.proto = 0;
    const eth = parseEthHeader(buf, off, len);
    if (!eth.ok) return this.fail(RX_BAD_FRAME, eth.error);
    if (eth.value.proto !== ETH_P_IP) return RX_UNVERIFIED;
    const ip = parseIpv4Header(buf, off + ETH_HLEN, len - ETH_HLEN);
    if (!ip.ok) return this.fail(RX_BAD_FRAME, ip.error);
    const h = ip.value;
    if (h.proto !== IPPROTO_UDP && h.proto !== IPPROTO_TCP) return RX_UNVERIFIED;
    const l4Off = off + ETH_HLEN + h.ihl;
    const l4len = h.totalLen - h.ihl;
    let hdr: number;
    if (h.proto === IPPROTO_UDP) {
      if (l4len < UDP_HLEN) return this.fail(RX_BAD_FRAME, `UDP header is truncated: expected >= ${UDP_HLEN} bytes but got ${l4len}`);
      const ulen = get16(buf, l4Off + 4);
      if (ulen !== l4len) return this.fail(RX_BAD_FRAME, `UDP length is corrupt: expected ${l4len} but got ${ulen}`);
      hdr = UDP_HLEN;
    } else {
      if (l4len < TCP_HLEN) return this.fail(RX_BAD_FRAME, `TCP header is truncated: expected >= ${TCP_HLEN} bytes but got ${l4len}`);
      hdr = (buf[l4Off + 12]! >>> 4) * 4;
      if (hdr < TCP_HLEN || hdr > l4len) return this.fail(RX_BAD_FRAME, `TCP doff is corrupt: expected ${TCP_HLEN} <= x <= ${l4len} but got ${hdr}`);
    }
    if ((rxFlags & (NETRXF_csum_blank | NETRXF_data_validated)) === 0 && !l4ChecksumOk(buf, l4Off, l4len, h.proto, h.saddr, h.daddr)) {
      return this.fail(RX_BAD_CHECKSUM, `${h.proto === IPPROTO_UDP ? 'UDP' : 'TCP'} checksum is wrong`);
    }
    l4.proto = h.proto;
    l4.saddr = h.saddr;
    l4.daddr = h.daddr;
    l4.sport = get16(buf, l4Off);
    l4.dport = get16(buf, l4Off + 2);
    l4.l4Off = l4Off;
    l4.payloadOff = l4Off + hdr;
    l4.payloadLen = l4len - hdr;
    // Only UDP payloads carry their own (stream, position); a TCP payload's position needs the connection.
    if (h.proto !== IPPROTO_UDP || l4.payloadLen <= PAYLOAD_TAG_LEN) return RX_UNVERIFIED;
    const p = checkTaggedPayload(buf, l4.payloadOff, l4.payloadLen);
    if (!p.ok) return this.fail(RX_CORRUPT_PAYLOAD, p.error);
    return RX_VERIFIED;
  }

  private fail(verdict: number, message: string): number {
    this.error = message;
    return verdict;
  }
}

// ---- TCP bulk sender -------------------------------------------------------------------------------------

/** Sender state: not open, or reset (include/net/tcp_states.h). */
export const TCP_CLOSE = 7;
/** Sender state: SYN sent, waiting for the SYN-ACK (include/net/tcp_states.h). */
export const TCP_SYN_SENT = 2;
/** Sender state: sending the stream (include/net/tcp_states.h). */
export const TCP_ESTABLISHED = 1;
/** Sender state: FIN sent, not yet ACKed (include/net/tcp_states.h). */
export const TCP_FIN_WAIT1 = 4;
/** Sender state: the FIN was ACKed and the peer's FIN seen; the stream is complete (ours, not Linux's). */
export const TCP_DONE = 11;

/** Options of a TcpBulkSender. */
export interface TcpBulkOptions {
  readonly clock: Clock;
  readonly random: Random;
  /** Our addresses and the endpoint's; `sport` is also the stream id the remote peer checks. */
  readonly flow: Flow;
  /** Largest payload of one non-GSO segment. Default 1460. */
  readonly mss?: number;
  /** Send segments of up to ~64 KiB with a GSO extra (the backend offered feature-gso-tcpv4). Default false. */
  readonly gso?: boolean;
  /** Most unACKed bytes in flight (besides the peer's window). Default 256 KiB. */
  readonly maxInflight?: number;
  /** Stream bytes to send before the FIN; Infinity sends until close(). Default Infinity. */
  readonly totalBytes?: number;
  /** Retransmission timeout, ms: initial value and ceiling after doubling. Defaults 200 and 5000. */
  readonly rtoMs?: number;
  readonly rtoMaxMs?: number;
  /** The receive window we advertise (we never receive data). Default 65535. */
  readonly window?: number;
}

/** Sender counters. */
export interface TcpBulkStats {
  segments: number;
  /** Stream bytes sent for the first time. */
  bytesSent: number;
  /** Stream bytes the endpoint ACKed. */
  bytesAcked: number;
  retransmitSegments: number;
  timeouts: number;
  acksIn: number;
  /** Segments from the endpoint that were not acceptable (bad ACK, wrong state). */
  badSegments: number;
  resets: number;
  gsoSegments: number;
}

/**
 * A minimal TCP sender of one bulk stream to the backend's local TCP endpoint: SYN handshake, a window of
 * unACKed bytes bounded by the advertised window, cumulative ACKs, go-back-N resend on timeout, FIN. Feed it
 * every received frame with receive(); take segments to send with next().
 */
export class TcpBulkSender {
  state = TCP_CLOSE;
  readonly stats: TcpBulkStats = { segments: 0, bytesSent: 0, bytesAcked: 0, retransmitSegments: 0, timeouts: 0, acksIn: 0, badSegments: 0, resets: 0, gsoSegments: 0 };
  readonly mss: number;
  /** Largest payload of one segment: mss, or the biggest multiple of it a GSO frame holds. */
  readonly segMax: number;
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly flow: Flow;
  private readonly maxInflight: number;
  private readonly totalBytes: number;
  private readonly rtoInit: number;
  private readonly rtoMax: number;
  private readonly window: number;
  private isn = 0;
  private sndUna = 0;
  private sndNxt = 0;
  /** Highest sequence number sent (snd_nxt before a go-back-N rewind). */
  private sndMax = 0;
  private sndWnd = 0;
  private rcvNxt = 0;
  private rto: number;
  private rtoAt = Infinity;
  private ackPending = false;
  private closing = false;
  private finSeq = -1;
  private peerFin = false;
  private ipId = 0;

  constructor(opts: TcpBulkOptions) {
    this.clock = opts.clock;
    this.random = opts.random;
    this.flow = opts.flow;
    this.mss = checkInt('mss', opts.mss ?? 1460, 1, TCP_MAX_FRAME_PAYLOAD);
    this.segMax = opts.gso === true ? Math.floor(TCP_MAX_FRAME_PAYLOAD / this.mss) * this.mss : this.mss;
    this.maxInflight = checkInt('maxInflight', opts.maxInflight ?? 262144, 1, 2 ** 30);
    const total = opts.totalBytes ?? Infinity;
    if (total !== Infinity && (!Number.isInteger(total) || total < 0 || total > 2 ** 31)) {
      throw new RangeError(`totalBytes must be Infinity or an integer in [0, 2^31] but got ${total}`);
    }
    this.totalBytes = total;
    this.rtoInit = checkInt('rtoMs', opts.rtoMs ?? 200, 1, 2 ** 30);
    this.rtoMax = checkInt('rtoMaxMs', opts.rtoMaxMs ?? 5000, this.rtoInit, 2 ** 30);
    this.window = checkInt('window', opts.window ?? 0xffff, 0, 0xffff);
    this.rto = this.rtoInit;
  }

  /** The stream id (our source port), as the remote peer names the stream. */
  get stream(): number {
    return this.flow.sport;
  }

  /** Stream bytes ACKed by the endpoint so far. */
  get acked(): number {
    return this.state === TCP_CLOSE || this.state === TCP_SYN_SENT ? 0 : (this.sndUna - this.isn - 1) >>> 0;
  }

  /** Opens the connection (the SYN goes out on the next next()); a closed or reset sender starts a new stream. */
  open(): void {
    this.isn = this.random.u32();
    this.sndUna = this.isn;
    this.sndNxt = this.isn;
    this.sndMax = this.isn;
    this.sndWnd = 0;
    this.rcvNxt = 0;
    this.rto = this.rtoInit;
    this.rtoAt = -Infinity; // the SYN is due at once
    this.ackPending = false;
    this.closing = false;
    this.finSeq = -1;
    this.peerFin = false;
    this.state = TCP_SYN_SENT;
  }

  /** Sends the FIN once every stream byte queued so far is sent (graceful close). */
  close(): void {
    this.closing = true;
  }

  /** When the retransmission (or probe) timer fires, Infinity when it is not armed. */
  nextDeadline(): number {
    if (this.state === TCP_CLOSE || this.state === TCP_DONE) return Infinity;
    return this.rtoAt === -Infinity ? this.clock.now() : this.rtoAt;
  }

  /** Whether a segment is due now (so a mix can prefer it). */
  hasWork(now: number): boolean {
    if (this.state === TCP_SYN_SENT) return now >= this.rtoAt;
    if (this.state === TCP_CLOSE || this.state === TCP_DONE) return false;
    return this.ackPending || now >= this.rtoAt || this.sendable() > 0 || this.finDue();
  }

  /** Fills `f` with the next segment to send and returns true, or returns false when nothing is due. */
  next(f: TxFrame, now: number): boolean {
    switch (this.state) {
      case TCP_SYN_SENT:
        if (now < this.rtoAt) return false;
        if (this.rtoAt !== -Infinity) this.timedOut(now);
        this.rtoAt = now + this.rto;
        this.sndNxt = this.sndMax = (this.isn + 1) >>> 0;
        this.emit(f, this.isn, 0, TCPHDR_SYN, 0, 0);
        return true;
      case TCP_ESTABLISHED:
      case TCP_FIN_WAIT1:
        break;
      default:
        return false;
    }
    if (now < this.rtoAt) {
      // Not yet: nothing timed is due.
    } else if (this.sndNxt !== this.sndUna) {
      this.timedOut(now);
      this.sndNxt = this.sndUna; // go-back-N
      this.rtoAt = now + this.rto;
    } else if (this.sndWnd !== 0 || this.allSent()) {
      // The timer outlived what it guarded (everything in flight was ACKed or rewound).
      this.rtoAt = this.sndUna === this.sndMax ? Infinity : now + this.rto;
    } else {
      // Zero-window probe: one byte beyond the window makes the endpoint answer with its current window.
      // The probe is not counted in flight; if the endpoint takes the byte, its ACK moves sndNxt past it.
      this.timedOut(now);
      this.rtoAt = now + this.rto;
      const seq = this.sndNxt;
      if (seqAfter((seq + 1) >>> 0, this.sndMax)) {
        this.stats.bytesSent += 1;
        this.sndMax = (seq + 1) >>> 0;
      }
      this.emit(f, seq, 1, TCPHDR_ACK, this.posOf(seq), 0);
      return true;
    }
    const n = this.sendable();
    if (n > 0) return this.sendData(f, Math.min(n, this.segMax));
    if (this.finDue()) {
      this.finSeq = this.sndNxt;
      this.sndNxt = (this.sndNxt + 1) >>> 0;
      if (seqAfter(this.sndNxt, this.sndMax)) this.sndMax = this.sndNxt;
      if (this.rtoAt === Infinity) this.rtoAt = now + this.rto;
      this.state = TCP_FIN_WAIT1;
      this.emit(f, this.finSeq, 0, TCPHDR_FIN | TCPHDR_ACK, 0, 0);
      return true;
    }
    if (this.ackPending) {
      this.emit(f, this.sndNxt, 0, TCPHDR_ACK, 0, 0);
      return true;
    }
    return false;
  }

  /** Offers a received frame; returns true when it belonged to this connection (and was consumed). */
  receive(buf: Uint8Array, off: number, len: number): boolean {
    if (len < ETH_HLEN + IPV4_HLEN + TCP_HLEN || get16(buf, off + 12) !== ETH_P_IP) return false;
    const ip = parseIpv4Header(buf, off + ETH_HLEN, len - ETH_HLEN);
    if (!ip.ok || ip.value.proto !== IPPROTO_TCP) return false;
    const h = ip.value;
    const th = off + ETH_HLEN + h.ihl;
    if (h.totalLen - h.ihl < TCP_HLEN) return false;
    const f = this.flow;
    if (h.saddr !== f.daddr >>> 0 || h.daddr !== f.saddr >>> 0 || get16(buf, th) !== f.dport || get16(buf, th + 2) !== f.sport) return false;
    const seq = get32(buf, th + 4);
    const ack = get32(buf, th + 8);
    const flags = buf[th + 13]! & 0x3f;
    const window = get16(buf, th + 14);
    this.segment(seq, ack, flags, window);
    return true;
  }

  private segment(seq: number, ack: number, flags: number, window: number): void {
    const now = this.clock.now();
    if ((flags & TCPHDR_RST) !== 0) {
      if (this.state !== TCP_CLOSE && this.state !== TCP_DONE) {
        this.stats.resets++;
        // The endpoint keeps no TIME_WAIT: once every data byte is ACKed, a RST answering our FIN (its FIN-ACK
        // was lost) ends a complete stream.
        const complete = this.finSeq >= 0 && this.sndUna === this.finSeq;
        this.state = complete ? TCP_DONE : TCP_CLOSE;
        this.rtoAt = Infinity;
      }
      return;
    }
    if ((flags & TCPHDR_ACK) === 0) {
      this.stats.badSegments++;
      return;
    }
    this.stats.acksIn++;
    if (this.state === TCP_SYN_SENT) {
      if ((flags & TCPHDR_SYN) === 0 || ack !== ((this.isn + 1) >>> 0)) {
        this.stats.badSegments++;
        return;
      }
      this.rcvNxt = (seq + 1) >>> 0;
      this.sndUna = ack;
      this.sndNxt = ack;
      this.sndMax = ack;
      this.sndWnd = window;
      this.state = TCP_ESTABLISHED;
      this.rto = this.rtoInit;
      // A zero window from the start arms the probe timer.
      this.rtoAt = window === 0 ? now + this.rto : Infinity;
      this.ackPending = true;
      return;
    }
    if (this.state !== TCP_ESTABLISHED && this.state !== TCP_FIN_WAIT1) {
      this.stats.badSegments++;
      return;
    }
    if (seqAfter(ack, this.sndMax) || seqBefore(ack, this.sndUna)) {
      this.stats.badSegments++;
      return;
    }
    if (seqAfter(ack, this.sndUna)) {
      const finAcked = this.finSeq >= 0 && ack === ((this.finSeq + 1) >>> 0);
      this.stats.bytesAcked += ((ack - this.sndUna) >>> 0) - (finAcked ? 1 : 0);
      this.sndUna = ack;
      if (seqBefore(this.sndNxt, ack)) this.sndNxt = ack;
      this.rto = this.rtoInit;
      this.rtoAt = this.sndUna === this.sndMax ? Infinity : now + this.rto;
    }
    this.sndWnd = window;
    if ((flags & TCPHDR_FIN) !== 0 && !this.peerFin && seq === this.rcvNxt) {
      this.peerFin = true;
      this.rcvNxt = (this.rcvNxt + 1) >>> 0;
      this.ackPending = true;
    }
    // A closed window with nothing in flight arms the timer that sends the zero-window probe.
    if (this.rtoAt === Infinity && this.sndWnd === 0 && this.dataLeft() > 0) this.rtoAt = now + this.rto;
    if (this.finSeq >= 0 && this.sndUna === ((this.finSeq + 1) >>> 0) && this.peerFin && !this.ackPending) this.finish();
  }

  private finish(): void {
    this.state = TCP_DONE;
    this.rtoAt = Infinity;
  }

  private timedOut(now: number): void {
    void now;
    this.stats.timeouts++;
    this.rto = Math.min(this.rtoMax, this.rto * 2);
  }

  /** Stream position of sequence number `seq`. */
  private posOf(seq: number): number {
    return (seq - this.isn - 1) >>> 0;
  }

  private allSent(): boolean {
    return this.totalBytes !== Infinity && this.posOf(this.sndNxt) >= this.totalBytes;
  }

  private finDue(): boolean {
    if (this.finSeq >= 0 && this.sndNxt !== ((this.finSeq + 1) >>> 0)) {
      // A go-back-N rewind reached the FIN again: resend it once the data before it is out.
      return this.sndNxt === this.finSeq;
    }
    if (this.finSeq >= 0) return false;
    return (this.closing || this.totalBytes !== Infinity) && this.dataLeft() === 0;
  }

  /** Stream bytes not yet sent at sndNxt (Infinity for an endless stream that is not closing). */
  private dataLeft(): number {
    const end = this.finSeq >= 0 ? this.posOf(this.finSeq) : this.closing ? this.posOf(this.sndMax) : this.totalBytes;
    return Math.max(0, end - this.posOf(this.sndNxt));
  }

  /** Bytes we may send now: what is left, within the peer's window and our in-flight cap; no silly small segments. */
  private sendable(): number {
    const inflight = (this.sndNxt - this.sndUna) >>> 0;
    const room = Math.min(this.sndWnd, this.maxInflight) - inflight;
    const n = Math.min(room, this.dataLeft());
    if (n <= 0) return 0;
    // Silly window avoidance: a sub-MSS piece only when it finishes the stream or nothing is in flight.
    if (n < this.mss && n < this.dataLeft() && inflight > 0) return 0;
    if (n > this.mss) return n - (n % this.mss);
    return n;
  }

  private sendData(f: TxFrame, n: number): boolean {
    const seq = this.sndNxt;
    const retransmit = seqBefore(seq, this.sndMax);
    this.sndNxt = (seq + n) >>> 0;
    if (seqAfter(this.sndNxt, this.sndMax)) {
      this.stats.bytesSent += retransmit ? (this.sndNxt - this.sndMax) >>> 0 : n;
      this.sndMax = this.sndNxt;
    }
    if (retransmit) this.stats.retransmitSegments++;
    if (this.rtoAt === Infinity || this.rtoAt === -Infinity) this.rtoAt = this.clock.now() + this.rto;
    const gso = n > this.mss ? this.mss : 0;
    if (gso > 0) this.stats.gsoSegments++;
    const flags = TCPHDR_ACK | (this.sndNxt === this.sndMax ? TCPHDR_PSH : 0);
    this.emit(f, seq, n, flags, this.posOf(seq), gso);
    return true;
  }

  private emit(f: TxFrame, seq: number, payloadLen: number, flags: number, pos: number, gsoSize: number): void {
    this.stats.segments++;
    const ack = (flags & TCPHDR_ACK) !== 0 ? this.rcvNxt : 0;
    if ((flags & TCPHDR_ACK) !== 0) this.ackPending = false;
    f.setTcp(this.flow, seq, ack, flags, this.window, this.flow.sport, pos, payloadLen, gsoSize);
    f.ipId = this.ipId;
    this.ipId = (this.ipId + 1) & 0xffff;
    if (this.peerFin && this.finSeq >= 0 && this.sndUna === ((this.finSeq + 1) >>> 0)) this.finish();
  }
}

/** before() of include/net/tcp.h: is sequence number a before b (modulo 2^32)? */
export function seqBefore(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}

/** after() of include/net/tcp.h. */
export function seqAfter(a: number, b: number): boolean {
  return seqBefore(b, a);
}

function checkInt(name: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`${name} must be an integer in [${lo}, ${hi}] but got ${v}`);
  return v;
}

// ---- The mix ---------------------------------------------------------------------------------------------

/** A host the mix sends to: its MAC and IPv4 address. */
export interface TrafficHost {
  readonly mac: number;
  readonly ip: number;
}

/** Relative weights of the kinds of frames in the mix (0 disables a kind). */
export interface TrafficWeights {
  /** UDP to another guest's MAC. */
  readonly guest: number;
  /** UDP to the uplink host (leaves through the NIC). */
  readonly uplink: number;
  /** UDP to ff:ff:ff:ff:ff:ff / 255.255.255.255. */
  readonly broadcast: number;
  /** TCP bulk segments to the local endpoint. */
  readonly tcp: number;
}

/** Options of a TrafficMix. */
export interface TrafficMixOptions {
  readonly clock: Clock;
  readonly random: Random;
  /** This guest. */
  readonly self: TrafficHost;
  /** Other guests on the bridge. */
  readonly guests?: readonly TrafficHost[];
  /** A host beyond the uplink NIC, or null. */
  readonly uplink?: TrafficHost | null;
  /** The backend's local TCP endpoint (with its port), or null for no TCP. */
  readonly tcpEndpoint?: (TrafficHost & { readonly port: number }) | null;
  /** Our TCP source port, which is also the stream id the remote peer checks; unique per guest. Default 10000. */
  readonly tcpSport?: number;
  /** Options for the TCP sender besides flow/clock/random. */
  readonly tcp?: Omit<TcpBulkOptions, 'clock' | 'random' | 'flow' | 'mss'>;
  /** MTU (sets the largest UDP frame and the MSS). Default 1500. */
  readonly mtu?: number;
  /** First UDP stream id; this guest's UDP streams are streamBase + destination index. Default 0. */
  readonly streamBase?: number;
  /** UDP ports. Defaults 40000 and 9 (discard). */
  readonly udpSport?: number;
  readonly udpDport?: number;
  readonly weights?: Partial<TrafficWeights>;
  /** Probability that a UDP frame is the minimum size (64 B) rather than the MTU size (or in between). Default 0.4. */
  readonly smallFraction?: number;
  /** Probability that a UDP frame is full MTU size (the rest are uniform in between). Default 0.4. */
  readonly mtuFraction?: number;
  /** Probability that a frame starts at a random offset in its page instead of 0 (exercises slot splits). Default 0.25. */
  readonly randomOffsetFraction?: number;
  /** Probability that a UDP datagram leaves its checksum to the backend (NETTXF_csum_blank). Default 0.5. */
  readonly csumBlankFraction?: number;
}

/** What a user may change of the mix from a command line: the weights and the UDP size fractions. */
export interface MixSettings {
  readonly weights?: Partial<TrafficWeights>;
  readonly smallFraction?: number;
  readonly mtuFraction?: number;
}

/** The mix's default weights (guest, uplink, broadcast, tcp) and UDP size fractions (64 B, MTU-sized). */
export const MIX_DEFAULT_WEIGHTS: TrafficWeights = { guest: 1, uplink: 1, broadcast: 0.1, tcp: 1 };
export const MIX_DEFAULT_SMALL = 0.4;
export const MIX_DEFAULT_MTU = 0.4;
const MIX_WEIGHT_KEYS = ['guest', 'uplink', 'broadcast', 'tcp'] as const;
const MIX_FRACTION_KEYS = { small: 'smallFraction', mtu: 'mtuFraction' } as const;

/**
 * Parses `guest=W,uplink=W,broadcast=W,tcp=W,small=F,mtu=F` (any subset, any order). Once one weight is given,
 * the kinds not named weigh 0 (`tcp=1` is TCP only); at least one weight must be positive. `small` and `mtu` are the
 * fractions of UDP frames that are 64 B and MTU-sized (each in [0, 1], together at most 1).
 */
export function parseMixSettings(text: string): Result<MixSettings> {
  const weights: Partial<Record<(typeof MIX_WEIGHT_KEYS)[number], number>> = {};
  const fractions: { smallFraction?: number; mtuFraction?: number } = {};
  const seen = new Set<string>();
  for (const item of text.split(',')) {
    const m = /^\s*([a-z]+)\s*=\s*([^\s]*)\s*$/.exec(item);
    if (m === null) return err(`"${item}" is not key=value (keys: ${[...MIX_WEIGHT_KEYS, ...Object.keys(MIX_FRACTION_KEYS)].join(', ')})`);
    const [, key, raw] = m as unknown as [string, string, string];
    if (seen.has(key)) return err(`${key} is given twice`);
    seen.add(key);
    const v = raw === '' ? NaN : Number(raw);
    if ((MIX_WEIGHT_KEYS as readonly string[]).includes(key)) {
      if (!Number.isFinite(v) || v < 0) return err(`${key} must be a weight >= 0 but got "${raw}"`);
      weights[key as (typeof MIX_WEIGHT_KEYS)[number]] = v;
    } else if (key in MIX_FRACTION_KEYS) {
      if (!(v >= 0 && v <= 1)) return err(`${key} must be a fraction in [0, 1] but got "${raw}"`);
      fractions[MIX_FRACTION_KEYS[key as keyof typeof MIX_FRACTION_KEYS]] = v;
    } else {
      return err(`unknown key "${key}" (keys: ${[...MIX_WEIGHT_KEYS, ...Object.keys(MIX_FRACTION_KEYS)].join(', ')})`);
    }
  }
  const named = Object.keys(weights).length > 0;
  if (named && !MIX_WEIGHT_KEYS.some((k) => (weights[k] ?? 0) > 0)) return err('at least one weight must be positive');
  const small = fractions.smallFraction ?? MIX_DEFAULT_SMALL;
  const mtu = fractions.mtuFraction ?? MIX_DEFAULT_MTU;
  if (small + mtu > 1) {
    const show = (v: number, named: boolean, key: string): string => (named ? String(v) : `${v} (${key}'s default)`);
    return err(`small + mtu must be at most 1 but got ${show(small, fractions.smallFraction !== undefined, 'small')} + ${show(mtu, fractions.mtuFraction !== undefined, 'mtu')}`);
  }
  const all = named ? Object.fromEntries(MIX_WEIGHT_KEYS.map((k) => [k, weights[k] ?? 0])) : undefined;
  return ok({ ...(all !== undefined && { weights: all }), ...fractions });
}

/** The canonical text of mix settings (parseMixSettings reads it back to the same settings); '' for none. */
export function formatMixSettings(s: MixSettings): string {
  const parts: string[] = [];
  if (s.weights !== undefined) for (const k of MIX_WEIGHT_KEYS) parts.push(`${k}=${s.weights[k] ?? 0}`);
  if (s.smallFraction !== undefined) parts.push(`small=${s.smallFraction}`);
  if (s.mtuFraction !== undefined) parts.push(`mtu=${s.mtuFraction}`);
  return parts.join(',');
}

/** Mix counters. */
export interface TrafficMixStats {
  udpGuest: number;
  udpUplink: number;
  broadcast: number;
  tcp: number;
}

/** The minimum frame the mix sends (64 B on the wire without FCS, ETH_ZLEN + 4). */
export const MIX_MIN_FRAME = 64;

/**
 * A seeded mix of guest traffic (a netfront TxSource): UDP to other guests, to the uplink and to broadcast with
 * tagged payloads, and one TCP bulk stream to the local endpoint. Sizes: 64 B, MTU-sized, in between, and up to
 * ~64 KiB TCP GSO segments when the backend offers feature-gso-tcpv4 (call setGso once connected).
 */
export class TrafficMix implements TxSource {
  readonly stats: TrafficMixStats = { udpGuest: 0, udpUplink: 0, broadcast: 0, tcp: 0 };
  /** The TCP sender, or null without an endpoint. */
  tcp: TcpBulkSender | null = null;
  maxFrameLen: number;
  private readonly frame = new TxFrame();
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly self: TrafficHost;
  private readonly mtu: number;
  private readonly udpFlows: Flow[] = [];
  private readonly udpKinds: number[] = [];
  private readonly udpPos: number[] = [];
  private readonly streamBase: number;
  private readonly weights: TrafficWeights;
  private readonly smallFraction: number;
  private readonly mtuFraction: number;
  private readonly offsetFraction: number;
  private readonly csumBlankFraction: number;
  private readonly opts: TrafficMixOptions;
  private ipId = 0;
  private readonly guestIdx: number[] = [];
  private uplinkIdx = -1;
  private broadcastIdx = -1;

  constructor(opts: TrafficMixOptions) {
    this.opts = opts;
    this.clock = opts.clock;
    this.random = opts.random;
    this.self = opts.self;
    this.mtu = checkInt('mtu', opts.mtu ?? 1500, 68, 65535 - ETH_HLEN);
    this.streamBase = opts.streamBase ?? 0;
    this.weights = { ...MIX_DEFAULT_WEIGHTS, ...opts.weights };
    this.smallFraction = opts.smallFraction ?? MIX_DEFAULT_SMALL;
    this.mtuFraction = opts.mtuFraction ?? MIX_DEFAULT_MTU;
    this.offsetFraction = opts.randomOffsetFraction ?? 0.25;
    this.csumBlankFraction = opts.csumBlankFraction ?? 0.5;
    const sport = opts.udpSport ?? 40000;
    const dport = opts.udpDport ?? 9;
    const addFlow = (dst: TrafficHost, kind: number): number => {
      this.udpFlows.push({ srcMac: this.self.mac, dstMac: dst.mac, saddr: this.self.ip, daddr: dst.ip, sport, dport });
      this.udpKinds.push(kind);
      this.udpPos.push(0);
      return this.udpFlows.length - 1;
    };
    for (const g of opts.guests ?? []) this.guestIdx.push(addFlow(g, 0));
    if (opts.uplink != null) this.uplinkIdx = addFlow(opts.uplink, 1);
    this.broadcastIdx = addFlow({ mac: ETH_BROADCAST, ip: 0xffffffff }, 2);
    this.maxFrameLen = ETH_HLEN + this.mtu;
    this.setGso(false);
  }

  /** Opens the TCP stream (its SYN goes out with the next frames). */
  start(): void {
    this.tcp?.open();
  }

  /** The earliest time the TCP sender has timed work (a resend or probe), Infinity when none. */
  nextDeadline(): number {
    return this.tcp?.nextDeadline() ?? Infinity;
  }

  /** Builds the TCP sender for the backend's features: with `gso`, segments of up to ~64 KiB. Call before start(). */
  setGso(gso: boolean): void {
    const ep = this.opts.tcpEndpoint;
    if (ep == null) return;
    const flow: Flow = { srcMac: this.self.mac, dstMac: ep.mac, saddr: this.self.ip, daddr: ep.ip, sport: this.opts.tcpSport ?? 10000, dport: ep.port };
    this.tcp = new TcpBulkSender({ ...this.opts.tcp, clock: this.clock, random: this.random.fork(), flow, mss: this.mtu - IPV4_HLEN - TCP_HLEN, gso });
    this.maxFrameLen = gso ? Math.max(ETH_HLEN + this.mtu, ETH_HLEN + IPV4_HLEN + TCP_HLEN + this.tcp.segMax) : ETH_HLEN + this.mtu;
  }

  /** The next frame to send (the same TxFrame object each time), or null when nothing is due. */
  next(now: number): TxPacket | null {
    const tcp = this.tcp;
    // Control segments and resends of the TCP stream go first; its data competes by weight.
    if (tcp !== null && tcp.state !== TCP_ESTABLISHED && tcp.hasWork(now) && tcp.next(this.frame, now)) return this.tcpFrame();
    const w = this.weights;
    const tcpW = tcp !== null && tcp.hasWork(now) ? w.tcp : 0;
    const guestW = this.guestIdx.length > 0 ? w.guest : 0;
    const upW = this.uplinkIdx >= 0 ? w.uplink : 0;
    const total = tcpW + guestW + upW + w.broadcast;
    if (total <= 0) return null;
    let r = this.random.float() * total;
    if (r < tcpW) {
      if (tcp!.next(this.frame, now)) return this.tcpFrame();
      r = tcpW + this.random.float() * (total - tcpW);
    }
    r -= tcpW;
    let idx: number;
    if (r < guestW) idx = this.guestIdx[this.random.int(0, this.guestIdx.length - 1)]!;
    else if (r < guestW + upW) idx = this.uplinkIdx;
    else idx = this.broadcastIdx;
    return this.udpFrame(idx);
  }

  /** Offers a received frame to the TCP sender; true when it was consumed there. */
  receive(buf: Uint8Array, off: number, len: number): boolean {
    return this.tcp !== null && this.tcp.receive(buf, off, len);
  }

  private tcpFrame(): TxPacket {
    this.stats.tcp++;
    this.frame.pageOffset = this.pickOffset(this.frame.len);
    return this.frame;
  }

  private udpFrame(idx: number): TxPacket {
    const kind = this.udpKinds[idx]!;
    if (kind === 0) this.stats.udpGuest++;
    else if (kind === 1) this.stats.udpUplink++;
    else this.stats.broadcast++;
    const maxLen = ETH_HLEN + this.mtu;
    const u = this.random.float();
    let len: number;
    if (u < this.smallFraction) len = MIX_MIN_FRAME;
    else if (u < this.smallFraction + this.mtuFraction) len = maxLen;
    else len = this.random.int(MIX_MIN_FRAME, maxLen);
    const payload = len - ETH_HLEN - IPV4_HLEN - UDP_HLEN;
    const pos = this.udpPos[idx]!;
    const f = this.frame.setUdp(this.udpFlows[idx]!, this.streamBase + idx, pos, payload, this.random.chance(this.csumBlankFraction));
    this.udpPos[idx] = (pos + payload - PAYLOAD_TAG_LEN) >>> 0;
    f.ipId = this.ipId;
    this.ipId = (this.ipId + 1) & 0xffff;
    f.pageOffset = this.pickOffset(f.len);
    return f;
  }

  // Linux guarantees the first slot holds at least the Ethernet header (xennet_start_xmit copies otherwise).
  private pickOffset(len: number): number {
    void len;
    return this.random.chance(this.offsetFraction) ? this.random.int(0, 4096 - ETH_HLEN) : 0;
  }
}
