// Ethernet framing as include/uapi/linux/if_ether.h: addresses are 48-bit numbers (exact in a JS number) so
// that a bridge can key its forwarding table on them without allocating strings.
import { err, ok, type Result } from './result.js';

export const ETH_ALEN = 6; // include/uapi/linux/if_ether.h
export const ETH_HLEN = 14;
export const ETH_ZLEN = 60;
export const ETH_DATA_LEN = 1500;
export const ETH_FRAME_LEN = 1514;
export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;
export const ETH_P_IPV6 = 0x86dd;

/** The broadcast address ff:ff:ff:ff:ff:ff. */
export const ETH_BROADCAST = 0xffff_ffff_ffff;
/** Xen's OUI for guest MACs, 00:16:3e (libxl__device_nic_setdefault). */
export const XEN_OUI = 0x00163e;

/** A guest's MAC in grantwire's addressing plan: Xen's OUI and its domid (libxl picks the low bytes at random). */
export function guestMac(domid: number): number {
  return XEN_OUI * 2 ** 24 + domid;
}

/** A parsed Ethernet header. */
export interface EthHeader {
  readonly dst: number;
  readonly src: number;
  readonly proto: number;
}

/** Reads a 48-bit MAC address stored in network order at `off`. */
export function readMac(buf: Uint8Array, off: number): number {
  return (
    buf[off]! * 0x100_0000_0000 +
    buf[off + 1]! * 0x1_0000_0000 +
    buf[off + 2]! * 0x100_0000 +
    ((buf[off + 3]! << 16) | (buf[off + 4]! << 8) | buf[off + 5]!)
  );
}

/** Writes a 48-bit MAC address in network order at `off`. */
export function writeMac(buf: Uint8Array, off: number, mac: number): void {
  const hi = Math.floor(mac / 0x1_0000_0000);
  const lo = mac >>> 0;
  buf[off] = (hi >>> 8) & 0xff;
  buf[off + 1] = hi & 0xff;
  buf[off + 2] = lo >>> 24;
  buf[off + 3] = (lo >>> 16) & 0xff;
  buf[off + 4] = (lo >>> 8) & 0xff;
  buf[off + 5] = lo & 0xff;
}

/** True for group (multicast or broadcast) addresses: the I/G bit of the first octet (is_multicast_ether_addr). */
export function isMulticastMac(mac: number): boolean {
  return Math.floor(mac / 0x100_0000_0000) % 2 === 1;
}

/** Formats a MAC address as aa:bb:cc:dd:ee:ff. */
export function macToString(mac: number): string {
  const parts: string[] = [];
  for (let i = 5; i >= 0; i--) parts.push((Math.floor(mac / 2 ** (8 * i)) & 0xff).toString(16).padStart(2, '0'));
  return parts.join(':');
}

/** Parses aa:bb:cc:dd:ee:ff (as written in the xenstore `mac` key). */
export function parseMac(text: string): Result<number> {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(text);
  if (m === null) return err(`mac is corrupt: expected aa:bb:cc:dd:ee:ff but got ${JSON.stringify(text)}`);
  let mac = 0;
  for (let i = 1; i <= 6; i++) mac = mac * 256 + parseInt(m[i]!, 16);
  return ok(mac);
}

/** Writes an Ethernet header at `off`. */
export function writeEthHeader(buf: Uint8Array, off: number, dst: number, src: number, proto: number): void {
  writeMac(buf, off, dst);
  writeMac(buf, off + ETH_ALEN, src);
  buf[off + 12] = proto >>> 8;
  buf[off + 13] = proto & 0xff;
}

/** Parses the Ethernet header of a frame of `len` bytes starting at `off`. */
export function parseEthHeader(buf: Uint8Array, off: number, len: number): Result<EthHeader> {
  if (len < ETH_HLEN) return err(`frame is too short: expected >= ${ETH_HLEN} bytes but got ${len}`);
  return ok({ dst: readMac(buf, off), src: readMac(buf, off + ETH_ALEN), proto: (buf[off + 12]! << 8) | buf[off + 13]! });
}
