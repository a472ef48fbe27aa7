import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import {
  IPPROTO_TCP,
  IPPROTO_UDP,
  TCP_CSUM_OFFSET,
  completePartialChecksum,
  csumFold,
  csumPartial,
  ipToString,
  ipv4,
  l4ChecksumOk,
  parseIpv4Header,
  writeIpv4Header,
  writeL4Checksum,
  writeTcpHeader,
  writeUdpHeader,
} from '../../shared/inet.js';

// Independent reference: RFC 1071 with BigInt words, folded once at the end.
function refChecksum(bytes: Uint8Array, pseudo = 0n): number {
  let s = pseudo;
  for (let i = 0; i < bytes.length; i += 2) s += BigInt((bytes[i]! << 8) | (bytes[i + 1] ?? 0));
  while (s > 0xffffn) s = (s & 0xffffn) + (s >> 16n);
  return Number(~s & 0xffffn);
}

test('IPv4 header checksum matches the classic worked example (0xb861)', (t) => {
  const buf = new Uint8Array(20);
  writeIpv4Header(buf, 0, { totalLen: 0x73, id: 0, ttl: 0x40, proto: IPPROTO_UDP, saddr: ipv4(192, 168, 0, 1), daddr: ipv4(192, 168, 0, 199) });
  t.is((buf[10]! << 8) | buf[11]!, 0xb861);
  t.is(ipToString(ipv4(192, 168, 0, 199)), '192.168.0.199');
});

testProp(
  'csumPartial agrees with an independent RFC 1071 sum at any offset and length',
  [fc.uint8Array({ minLength: 0, maxLength: 3000 }), fc.nat(7)],
  (t, data, off) => {
    const buf = new Uint8Array(data.length + off);
    buf.set(data, off);
    t.is(csumFold(csumPartial(buf, off, data.length, 0)), refChecksum(data));
  },
);

testProp(
  'a filled TCP/UDP checksum verifies, and any single flipped byte breaks it',
  [fc.uint8Array({ minLength: 1, maxLength: 600 }), fc.boolean(), fc.nat(), fc.integer({ min: 1, max: 255 })],
  (t, payload, tcp, where, flip) => {
    const hl = tcp ? 20 : 8;
    const seg = new Uint8Array(hl + payload.length);
    if (tcp) writeTcpHeader(seg, 0, { sport: 1, dport: 2, seq: 3, ack: 4, flags: 0x18, window: 5 });
    else writeUdpHeader(seg, 0, 1, 2, seg.length);
    seg.set(payload, hl);
    const proto = tcp ? IPPROTO_TCP : IPPROTO_UDP;
    const sa = ipv4(10, 0, 0, 1);
    const da = ipv4(10, 0, 0, 2);
    writeL4Checksum(seg, 0, seg.length, proto, sa, da, false);
    t.true(l4ChecksumOk(seg, 0, seg.length, proto, sa, da));
    const i = hl + (where % payload.length);
    seg[i] = seg[i]! ^ flip;
    t.false(l4ChecksumOk(seg, 0, seg.length, proto, sa, da));
  },
);

testProp(
  'CHECKSUM_PARTIAL: pseudo-header sum in the field, completed over the segment, verifies',
  [fc.uint8Array({ minLength: 0, maxLength: 600 })],
  (t, payload) => {
    const seg = new Uint8Array(20 + payload.length);
    writeTcpHeader(seg, 0, { sport: 80, dport: 1234, seq: 1, ack: 2, flags: 0x10, window: 100 });
    seg.set(payload, 20);
    const sa = ipv4(10, 0, 0, 1);
    const da = ipv4(10, 0, 0, 9);
    writeL4Checksum(seg, 0, seg.length, IPPROTO_TCP, sa, da, true);
    // The field holds the folded pseudo-header sum, computed here independently.
    let ps = (sa >>> 16) + (sa & 0xffff) + (da >>> 16) + (da & 0xffff) + IPPROTO_TCP + seg.length;
    while (ps > 0xffff) ps = (ps & 0xffff) + (ps >>> 16);
    t.is((seg[TCP_CSUM_OFFSET]! << 8) | seg[TCP_CSUM_OFFSET + 1]!, ps);
    completePartialChecksum(seg, 0, seg.length, TCP_CSUM_OFFSET);
    t.true(l4ChecksumOk(seg, 0, seg.length, IPPROTO_TCP, sa, da));
  },
);

test('IPv4 parse errors carry exact messages', (t) => {
  const good = new Uint8Array(40);
  writeIpv4Header(good, 0, { totalLen: 40, id: 7, ttl: 64, proto: IPPROTO_TCP, saddr: 1, daddr: 2 });
  t.like(parseIpv4Header(good, 0, 40), { ok: true, value: { ihl: 20, totalLen: 40, id: 7, proto: IPPROTO_TCP } });
  const cases: Array<[string, (b: Uint8Array) => void, number, string]> = [
    ['short', () => {}, 12, 'IPv4 header is truncated: expected >= 20 bytes but got 12'],
    ['version', (b) => (b[0] = 0x65), 40, 'IPv4 version is corrupt: expected 4 but got 6'],
    ['ihl', (b) => (b[0] = 0x44), 40, 'IPv4 ihl is corrupt: expected 20 <= x <= 40 but got 16'],
    ['tot_len', (b) => ((b[2] = 0), (b[3] = 60)), 40, 'IPv4 tot_len is corrupt: expected 20 <= x <= 40 but got 60'],
    ['csum', (b) => (b[8] = 1), 40, 'IPv4 header checksum is wrong'],
  ];
  for (const [name, mutate, len, message] of cases) {
    const b = good.slice();
    mutate(b);
    t.deepEqual(parseIpv4Header(b, 0, len), { ok: false, error: message }, name);
  }
});
