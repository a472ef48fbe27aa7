// Software TCP segmentation (GSO): the header checks and fix-ups of inet_gso_segment / ipv6_gso_segment and
// tcp_gso_segment (net/ipv4/af_inet.c, net/ipv6/ip6_offload.c, net/ipv4/tcp_offload.c) around skb_segment.
// The fix-ups are written over plain bytes (a segment's private head). Headers come from the guest: they are
// parsed into a Result, never trusted.
// Departure: segments get a complete TCP checksum in software (as tcp_gso_segment does for a device without
// checksum offload), so their bytes are exactly what a wire carries.
import { ETH_HLEN, ETH_P_IP, ETH_P_IPV6 } from '../shared/ether.js';
import { IPPROTO_TCP, IPV4_HLEN, TCP_CSUM_OFFSET, TCP_HLEN, csumFold, csumFold16, csumPartial, get16, get32, put16, put32 } from '../shared/inet.js';
import { err, ok, type Result } from '../shared/result.js';
import { CHECKSUM_NONE, SKB_GSO_TCPV4, SKB_GSO_TCPV6, type SkBuff, __skbPull, pskbMayPull, skbHeadlen, skbPush, skbSegment } from './skbuff.js';

/** struct ipv6hdr without extension headers. */
export const IPV6_HLEN = 40;
const TCP_FLAG_FIN = 0x01;
const TCP_FLAG_PSH = 0x08;
const TCP_FLAG_CWR = 0x80;

/** What segmentation needs from a GSO frame's headers, read once from the original frame. */
export interface TcpGsoHeaders {
  readonly ipv6: boolean;
  /** Offset of the IP header from the MAC header. */
  readonly nhOff: number;
  /** Offset of the TCP header from the MAC header. */
  readonly thOff: number;
  /** MAC + IP + TCP header bytes: every segment starts with a copy of them. */
  readonly hdrLen: number;
  readonly seq: number;
  /** IPv4 identification of the first segment (0 for IPv6). */
  readonly ipId: number;
  readonly tcpFlags: number;
}

/** Parses the Ethernet/IP/TCP headers of a TCP GSO frame of `len` bytes whose MAC header is at `off`. */
export function parseTcpGsoHeaders(buf: Uint8Array, off: number, len: number, gsoType: number): Result<TcpGsoHeaders> {
  const v6 = (gsoType & SKB_GSO_TCPV6) !== 0;
  if (!v6 && (gsoType & SKB_GSO_TCPV4) === 0) {
    return err(`GSO type is unsupported: expected SKB_GSO_TCPV4 or SKB_GSO_TCPV6 but got 0x${gsoType.toString(16)}`);
  }
  if (len < ETH_HLEN) return err(`GSO frame is truncated: expected >= ${ETH_HLEN} bytes but got ${len}`);
  const proto = get16(buf, off + 12);
  const want = v6 ? ETH_P_IPV6 : ETH_P_IP;
  if (proto !== want) return err(`GSO ethertype is corrupt: expected 0x${want.toString(16)} but got 0x${proto.toString(16)}`);
  const nh = ETH_HLEN;
  let th: number;
  let ipId = 0;
  if (v6) {
    if (len < nh + IPV6_HLEN) return err(`GSO IPv6 header is truncated: expected >= ${nh + IPV6_HLEN} bytes but got ${len}`);
    const version = buf[off + nh]! >>> 4;
    if (version !== 6) return err(`GSO IPv6 version is corrupt: expected 6 but got ${version}`);
    const next = buf[off + nh + 6]!;
    // Departure: extension headers are not walked (ipv6_gso_segment would); netfront does not send them with GSO.
    if (next !== IPPROTO_TCP) return err(`GSO IPv6 next header is corrupt: expected ${IPPROTO_TCP} but got ${next}`);
    th = nh + IPV6_HLEN;
  } else {
    if (len < nh + IPV4_HLEN) return err(`GSO IPv4 header is truncated: expected >= ${nh + IPV4_HLEN} bytes but got ${len}`);
    const version = buf[off + nh]! >>> 4;
    if (version !== 4) return err(`GSO IPv4 version is corrupt: expected 4 but got ${version}`);
    const ihl = (buf[off + nh]! & 0x0f) * 4;
    if (ihl < IPV4_HLEN || nh + ihl > len) return err(`GSO IPv4 ihl is corrupt: expected ${IPV4_HLEN} <= x <= ${len - nh} but got ${ihl}`);
    const p = buf[off + nh + 9]!;
    if (p !== IPPROTO_TCP) return err(`GSO IPv4 protocol is corrupt: expected ${IPPROTO_TCP} but got ${p}`);
    ipId = get16(buf, off + nh + 4);
    th = nh + ihl;
  }
  if (len < th + TCP_HLEN) return err(`GSO TCP header is truncated: expected >= ${th + TCP_HLEN} bytes but got ${len}`);
  const doff = (buf[off + th + 12]! >>> 4) * 4;
  if (doff < TCP_HLEN || th + doff > len) return err(`GSO TCP doff is corrupt: expected ${TCP_HLEN} <= x <= ${len - th} but got ${doff}`);
  return ok({ ipv6: v6, nhOff: nh, thOff: th, hdrLen: th + doff, seq: get32(buf, off + th + 4), ipId, tcpFlags: buf[off + th + 13]! });
}

/** The TCP pseudo-header sum of the segment at `mac` (IPv4 or IPv6 addresses read from its own header). */
function pseudoSum(buf: Uint8Array, mac: number, h: TcpGsoHeaders, l4len: number): number {
  const ip = mac + h.nhOff;
  if (h.ipv6) return csumPartial(buf, ip + 8, 32, 0) + (l4len >>> 16) + (l4len & 0xffff) + IPPROTO_TCP;
  return csumPartial(buf, ip + 12, 8, 0) + IPPROTO_TCP + l4len;
}

/**
 * Fixes the headers of segment `index` (a copy of the original headers followed by its payload, `frameLen`
 * bytes at `mac`): IP length, IPv4 id (+index) and header checksum, TCP seq (+index*mss), FIN/PSH only on the
 * last segment and CWR only on the first (tcp_gso_segment), and the TCP checksum seeded for CHECKSUM_PARTIAL.
 */
export function fixupTcpSegment(buf: Uint8Array, mac: number, h: TcpGsoHeaders, mss: number, index: number, last: boolean, frameLen: number): void {
  const ip = mac + h.nhOff;
  const th = mac + h.thOff;
  if (h.ipv6) {
    put16(buf, ip + 4, frameLen - h.nhOff - IPV6_HLEN);
  } else {
    const ihl = h.thOff - h.nhOff;
    put16(buf, ip + 2, frameLen - h.nhOff);
    put16(buf, ip + 4, (h.ipId + index) & 0xffff); // inet_gso_segment: id++ per segment (no SKB_GSO_TCP_FIXEDID)
    put16(buf, ip + 10, 0);
    put16(buf, ip + 10, csumFold(csumPartial(buf, ip, ihl, 0)));
  }
  put32(buf, th + 4, (h.seq + index * mss) >>> 0);
  let flags = h.tcpFlags;
  if (!last) flags &= ~(TCP_FLAG_FIN | TCP_FLAG_PSH);
  if (index > 0) flags &= ~TCP_FLAG_CWR;
  buf[th + 13] = flags;
  const l4len = frameLen - h.thOff;
  put16(buf, th + TCP_CSUM_OFFSET, csumFold16(pseudoSum(buf, mac, h, l4len)));
}

// skbChecksum's running state (module-level, so summing allocates no closure per segment).
let ckSum = 0;
let ckPos = 0;

function ckAdd(buf: Uint8Array, off: number, n: number): void {
  let c = csumFold16(csumPartial(buf, off, n, 0));
  if (ckPos & 1) c = ((c & 0xff) << 8) | (c >>> 8); // an odd number of bytes before: this chunk's lanes are swapped
  ckSum += c;
  ckPos += n;
}

/** Sums `len` bytes of an skb from `offset` (relative to data) over its linear part and frags (skb_checksum, unfolded). */
export function skbChecksum(skb: SkBuff, offset: number, len: number): number {
  ckSum = 0;
  ckPos = 0;
  const hl = skbHeadlen(skb);
  if (offset < hl) ckAdd(skb.head, skb.data + offset, Math.min(hl - offset, len));
  let start = hl;
  const s = skb.shinfo;
  for (let i = 0; i < s.nrFrags && ckPos < len; i++) {
    const f = s.frags[i]!;
    const lo = Math.max(offset, start);
    const hi = Math.min(offset + len, start + f.size);
    if (lo < hi) ckAdd(f.page.bytes, f.offset + (lo - start), hi - lo);
    start += f.size;
  }
  if (ckPos !== len) throw new Error(`skbChecksum: summed ${ckPos} of ${len} bytes (frag_list is not walked)`);
  return ckSum;
}

/** pskb_may_pull of exactly the Ethernet, IP and TCP headers (as the gso_segment callbacks pull them, one by one). */
function pullTcpHeaders(skb: SkBuff, v6: boolean): boolean {
  const len = skb.len;
  const l3 = ETH_HLEN + (v6 ? IPV6_HLEN : IPV4_HLEN);
  if (!pskbMayPull(skb, Math.min(len, l3 + TCP_HLEN))) return false;
  if (len < l3 + TCP_HLEN) return true; // the parser reports the truncation
  const th = v6 ? l3 : ETH_HLEN + (skb.head[skb.data + ETH_HLEN]! & 0x0f) * 4;
  if (!pskbMayPull(skb, Math.min(len, th + TCP_HLEN))) return false;
  if (len < th + TCP_HLEN) return true;
  const doff = (skb.head[skb.data + th + 12]! >>> 4) * 4;
  return pskbMayPull(skb, Math.min(len, th + Math.max(doff, TCP_HLEN)));
}

/**
 * The checks of inet_gso_segment/ipv6_gso_segment + tcp_gso_segment before any cutting: pulls the headers into
 * the linear area and parses them; for a valid frame recounts gso_segs (what SKB_GSO_DODGY asks of a guest
 * frame, even when the hardware will segment it). Returns the parsed headers or why the frame is unusable.
 */
export function tcpGsoCheck(skb: SkBuff): Result<TcpGsoHeaders> {
  const s = skb.shinfo;
  const mss = s.gsoSize;
  if (mss <= 0) return err(`GSO size is corrupt: expected > 0 but got ${mss}`);
  if (!pullTcpHeaders(skb, (s.gsoType & SKB_GSO_TCPV6) !== 0)) return err('GSO headers could not be pulled into the linear area');
  // Bounds are checked against the whole frame; pullTcpHeaders made every byte the parser reads linear.
  const parsed = parseTcpGsoHeaders(skb.head, skb.data, skb.len, s.gsoType);
  if (!parsed.ok) return parsed;
  const h = parsed.value;
  if (h.hdrLen > skbHeadlen(skb)) throw new Error(`tcpGsoCheck: ${h.hdrLen} header bytes but only ${skbHeadlen(skb)} linear`);
  if (skb.len <= h.hdrLen) return err(`GSO frame has no payload: ${skb.len} bytes with ${h.hdrLen} bytes of headers`);
  s.gsoSegs = Math.ceil((skb.len - h.hdrLen) / mss);
  return parsed;
}

/**
 * Software GSO for TCP (skb_gso_segment -> inet_gso_segment/ipv6_gso_segment -> tcp_gso_segment -> skb_segment)
 * of an skb tcpGsoCheck accepted: cuts the payload into gso_size segments (frags shared with `sg`, copied
 * without), fixes every segment's headers and fills a complete TCP checksum. The input skb is left as it was
 * (the caller still owns it). Returns the segments, or null when skb_segment fails.
 */
export function tcpGsoSegment(skb: SkBuff, h: TcpGsoHeaders, sg: boolean): SkBuff[] | null {
  const mss = skb.shinfo.gsoSize;
  skb.macHeader = skb.data;
  __skbPull(skb, h.hdrLen);
  const segs = skbSegment(skb, { sg });
  skbPush(skb, h.hdrLen);
  if (typeof segs === 'number') return null;
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!;
    fixupTcpSegment(seg.head, seg.data, h, mss, i, i === segs.length - 1, seg.len);
    const sum = skbChecksum(seg, h.thOff, seg.len - h.thOff);
    put16(seg.head, seg.data + h.thOff + TCP_CSUM_OFFSET, csumFold(sum));
    seg.ipSummed = CHECKSUM_NONE;
    // A segment is a plain frame now: it carries no GSO state of its own.
    seg.shinfo.gsoSize = 0;
    seg.shinfo.gsoSegs = 0;
    seg.shinfo.gsoType = 0;
  }
  return segs;
}
