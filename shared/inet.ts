// IPv4, TCP and UDP headers and the Internet checksum (RFC 791, 793, 768, 1071), as net/ipv4 builds and checks
// them. Builders write into a caller's buffer (no allocation); parsers take peer bytes and return a Result.
import { err, ok, type Result } from './result.js';

export const IPPROTO_ICMP = 1; // include/uapi/linux/in.h
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPV4_HLEN = 20; // without options
export const TCP_HLEN = 20; // without options
export const UDP_HLEN = 8;
export const TCP_CSUM_OFFSET = 16; // offsetof(struct tcphdr, check)
export const UDP_CSUM_OFFSET = 6; // offsetof(struct udphdr, check)

export const TCPHDR_FIN = 0x01; // include/net/tcp.h
export const TCPHDR_SYN = 0x02;
export const TCPHDR_RST = 0x04;
export const TCPHDR_PSH = 0x08;
export const TCPHDR_ACK = 0x10;

/** Adds `len` bytes at `off` to a running one's-complement sum (csum_partial; the sum stays unfolded). */
export function csumPartial(buf: Uint8Array, off: number, len: number, sum: number): number {
  let s = sum;
  const end = off + len;
  let i = off;
  // Pairs of bytes as big-endian 16-bit words; the carry is folded every 2^15 words so `s` stays exact.
  while (i + 1 < end) {
    const stop = Math.min(end - 1, i + 0x10000);
    for (; i < stop; i += 2) s += (buf[i]! << 8) | buf[i + 1]!;
    s = (s & 0xffff) + Math.floor(s / 0x10000);
  }
  if (i < end) s += buf[i]! << 8;
  return s;
}

/** Folds a sum to 16 bits (csum_fold without the final complement). */
export function csumFold16(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

/** The checksum field value for a sum: its folded one's complement (csum_fold). */
export function csumFold(sum: number): number {
  return ~csumFold16(sum) & 0xffff;
}

/** Sum of the TCP/UDP pseudo-header (csum_tcpudp_nofold). Addresses are u32 host-order numbers. */
export function pseudoHeaderSum(saddr: number, daddr: number, proto: number, l4len: number): number {
  return (saddr >>> 16) + (saddr & 0xffff) + (daddr >>> 16) + (daddr & 0xffff) + proto + l4len;
}

/** A parsed IPv4 header (options are skipped, not interpreted). */
export interface Ipv4Header {
  readonly ihl: number; // header length in bytes
  readonly totalLen: number;
  readonly id: number;
  readonly ttl: number;
  readonly proto: number;
  readonly saddr: number;
  readonly daddr: number;
}

/** Fields needed to write an IPv4 header without options. */
export interface Ipv4Fields {
  totalLen: number;
  id: number;
  ttl: number;
  proto: number;
  saddr: number;
  daddr: number;
}

/** Writes a big-endian u16. */
export function put16(buf: Uint8Array, off: number, v: number): void {
  buf[off] = (v >>> 8) & 0xff;
  buf[off + 1] = v & 0xff;
}

/** Writes a big-endian u32. */
export function put32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 24;
  buf[off + 1] = (v >>> 16) & 0xff;
  buf[off + 2] = (v >>> 8) & 0xff;
  buf[off + 3] = v & 0xff;
}

/** Reads a big-endian u16. */
export function get16(buf: Uint8Array, off: number): number {
  return (buf[off]! << 8) | buf[off + 1]!;
}

/** Reads a big-endian u32. */
export function get32(buf: Uint8Array, off: number): number {
  return ((buf[off]! << 24) | (buf[off + 1]! << 16) | (buf[off + 2]! << 8) | buf[off + 3]!) >>> 0;
}

/** Writes a 20-byte IPv4 header with DF set and a valid header checksum (ip_send_check). */
export function writeIpv4Header(buf: Uint8Array, off: number, f: Ipv4Fields): void {
  buf[off] = 0x45;
  buf[off + 1] = 0;
  put16(buf, off + 2, f.totalLen);
  put16(buf, off + 4, f.id);
  put16(buf, off + 6, 0x4000);
  buf[off + 8] = f.ttl;
  buf[off + 9] = f.proto;
  put16(buf, off + 10, 0);
  put32(buf, off + 12, f.saddr);
  put32(buf, off + 16, f.daddr);
  put16(buf, off + 10, csumFold(csumPartial(buf, off, IPV4_HLEN, 0)));
}

/** Parses and checks an IPv4 header found in `len` bytes at `off` (ip_rcv_core's checks). */
export function parseIpv4Header(buf: Uint8Array, off: number, len: number): Result<Ipv4Header> {
  if (len < IPV4_HLEN) return err(`IPv4 header is truncated: expected >= ${IPV4_HLEN} bytes but got ${len}`);
  const version = buf[off]! >>> 4;
  if (version !== 4) return err(`IPv4 version is corrupt: expected 4 but got ${version}`);
  const ihl = (buf[off]! & 0x0f) * 4;
  if (ihl < IPV4_HLEN || ihl > len) return err(`IPv4 ihl is corrupt: expected ${IPV4_HLEN} <= x <= ${len} but got ${ihl}`);
  const totalLen = get16(buf, off + 2);
  if (totalLen < ihl || totalLen > len) {
    return err(`IPv4 tot_len is corrupt: expected ${ihl} <= x <= ${len} but got ${totalLen}`);
  }
  if (csumFold(csumPartial(buf, off, ihl, 0)) !== 0) return err('IPv4 header checksum is wrong');
  return ok({
    ihl,
    totalLen,
    id: get16(buf, off + 4),
    ttl: buf[off + 8]!,
    proto: buf[off + 9]!,
    saddr: get32(buf, off + 12),
    daddr: get32(buf, off + 16),
  });
}

/** Fields needed to write a 20-byte TCP header. */
export interface TcpFields {
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
}

/** Writes a 20-byte TCP header with a zero checksum field (fill it with one of the checksum helpers). */
export function writeTcpHeader(buf: Uint8Array, off: number, f: TcpFields): void {
  put16(buf, off, f.sport);
  put16(buf, off + 2, f.dport);
  put32(buf, off + 4, f.seq >>> 0);
  put32(buf, off + 8, f.ack >>> 0);
  buf[off + 12] = (TCP_HLEN / 4) << 4;
  buf[off + 13] = f.flags;
  put16(buf, off + 14, f.window);
  put16(buf, off + 16, 0);
  put16(buf, off + 18, 0);
}

/** Writes an 8-byte UDP header with a zero checksum field. */
export function writeUdpHeader(buf: Uint8Array, off: number, sport: number, dport: number, udpLen: number): void {
  put16(buf, off, sport);
  put16(buf, off + 2, dport);
  put16(buf, off + 4, udpLen);
  put16(buf, off + 6, 0);
}

/**
 * Fills the L4 checksum of a TCP/UDP segment lying contiguously in `buf` (`l4len` bytes at `l4off`).
 * With `partial` it writes only the folded pseudo-header sum, as Linux does for CHECKSUM_PARTIAL
 * (netfront then sets NETTXF_csum_blank and the backend or NIC completes it).
 */
export function writeL4Checksum(
  buf: Uint8Array,
  l4off: number,
  l4len: number,
  proto: number,
  saddr: number,
  daddr: number,
  partial: boolean,
): void {
  const field = l4off + (proto === IPPROTO_TCP ? TCP_CSUM_OFFSET : UDP_CSUM_OFFSET);
  put16(buf, field, 0);
  const pseudo = pseudoHeaderSum(saddr, daddr, proto, l4len);
  if (partial) {
    put16(buf, field, csumFold16(pseudo));
    return;
  }
  let c = csumFold(csumPartial(buf, l4off, l4len, pseudo));
  if (proto === IPPROTO_UDP && c === 0) c = 0xffff; // RFC 768: a computed zero is sent as all ones
  put16(buf, field, c);
}

/** Completes a CHECKSUM_PARTIAL checksum in place (skb_checksum_help over contiguous bytes). */
export function completePartialChecksum(buf: Uint8Array, start: number, len: number, fieldOff: number): void {
  const c = csumFold(csumPartial(buf, start, len, 0));
  put16(buf, fieldOff, c);
}

/** True when the TCP/UDP checksum of a segment lying contiguously in `buf` verifies. */
export function l4ChecksumOk(buf: Uint8Array, l4off: number, l4len: number, proto: number, saddr: number, daddr: number): boolean {
  if (proto === IPPROTO_UDP && get16(buf, l4off + UDP_CSUM_OFFSET) === 0) return true; // no checksum sent
  return csumFold(csumPartial(buf, l4off, l4len, pseudoHeaderSum(saddr, daddr, proto, l4len))) === 0;
}

/** Formats a u32 IPv4 address as dotted quad. */
export function ipToString(a: number): string {
  return `${a >>> 24}.${(a >>> 16) & 0xff}.${(a >>> 8) & 0xff}.${a & 0xff}`;
}

/** Builds a u32 IPv4 address from four octets. */
export function ipv4(a: number, b: number, c: number, d: number): number {
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}

/** A guest's IPv4 address in grantwire's addressing plan: 10.0.<domid high byte>.<domid low byte>. */
export function guestIp(domid: number): number {
  return ipv4(10, 0, (domid >>> 8) & 0xff, domid & 0xff);
}
