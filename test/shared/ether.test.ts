import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import {
  ETH_BROADCAST,
  ETH_P_IP,
  isMulticastMac,
  macToString,
  parseEthHeader,
  parseMac,
  readMac,
  writeEthHeader,
  writeMac,
} from '../../shared/ether.js';

test('writeEthHeader produces the wire bytes of dst, src and ethertype', (t) => {
  const buf = new Uint8Array(16);
  writeEthHeader(buf, 1, 0x001122334455, 0x00163e0a0b0c, ETH_P_IP);
  t.deepEqual([...buf.subarray(1, 15)], [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c, 0x08, 0x00]);
  const h = parseEthHeader(buf, 1, 15);
  t.deepEqual(h, { ok: true, value: { dst: 0x001122334455, src: 0x00163e0a0b0c, proto: ETH_P_IP } });
});

testProp('readMac inverts writeMac for every 48-bit address', [fc.integer({ min: 0, max: 2 ** 48 - 1 })], (t, mac) => {
  const buf = new Uint8Array(8);
  writeMac(buf, 2, mac);
  t.is(readMac(buf, 2), mac);
  t.deepEqual(parseMac(macToString(mac)), { ok: true, value: mac });
});

test('multicast bit and broadcast', (t) => {
  t.true(isMulticastMac(ETH_BROADCAST));
  t.true(isMulticastMac(0x01005e000001));
  t.false(isMulticastMac(0x00163e000001));
  t.is(macToString(ETH_BROADCAST), 'ff:ff:ff:ff:ff:ff');
});

test('parse errors carry exact messages', (t) => {
  t.deepEqual(parseEthHeader(new Uint8Array(10), 0, 10), { ok: false, error: 'frame is too short: expected >= 14 bytes but got 10' });
  t.deepEqual(parseMac('00:16:3e:0:0:1'), { ok: false, error: 'mac is corrupt: expected aa:bb:cc:dd:ee:ff but got "00:16:3e:0:0:1"' });
});
