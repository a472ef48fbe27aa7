// Golden bytes for every netif wire struct (hand-encoded from the C layouts in io/netif.h), writer range
// errors, and the exact messages of the peer-data validators.

import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import {
  ETH_HLEN,
  ExtraInfo,
  FATAL_SKB_SLOTS_DEFAULT,
  NET_RX_RING_SIZE,
  NET_TX_RING_SIZE,
  NETRXF_csum_blank,
  NETRXF_data_validated,
  NETRXF_extra_info,
  NETRXF_gso_prefix,
  NETRXF_more_data,
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_extra_info,
  NETTXF_more_data,
  RxRequest,
  RxResponse,
  TxRequest,
  TxResponse,
  validateExtraInfo,
  validateRxResponse,
  validateTxResponse,
  validateTxSlot,
  XEN_NETBACK_TX_COPY_LEN,
  XEN_NETBK_LEGACY_SLOTS_MAX,
  XEN_NETBK_MCAST_MAX,
  XEN_NETIF_EXTRA_FLAG_MORE,
  XEN_NETIF_EXTRA_TYPE_GSO,
  XEN_NETIF_EXTRA_TYPE_HASH,
  XEN_NETIF_EXTRA_TYPE_MAX,
  XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
  XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
  XEN_NETIF_EXTRA_TYPE_NONE,
  XEN_NETIF_EXTRA_TYPE_XDP,
  XEN_NETIF_GSO_TYPE_NONE,
  XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_GSO_TYPE_TCPV6,
  XEN_NETIF_MAX_TX_SIZE,
  XEN_NETIF_NR_SLOTS_MIN,
  XEN_NETIF_RSP_DROPPED,
  XEN_NETIF_RSP_ERROR,
  XEN_NETIF_RSP_NULL,
  XEN_NETIF_RSP_OKAY,
  XEN_NETIF_RX_SLOT_SIZE,
  XEN_NETIF_TX_SLOT_SIZE,
} from '../../shared/netif.js';
import type { ExtraInfoFields, StructModule } from '../../shared/netif.js';

const CANARY = 0xa5;
const AT = 5; // an odd, unaligned offset: the accessors must not assume alignment

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

/** Writes `value` at AT into a canary-filled buffer; returns the struct's bytes and checks the canaries. */
function encode<T>(struct: StructModule<T>, value: T): { bytes: string; canariesIntact: boolean } {
  const buf = new Uint8Array(32).fill(CANARY);
  struct.write(new DataView(buf.buffer), AT, value);
  const outside = [...buf.subarray(0, AT), ...buf.subarray(AT + struct.SIZE)];
  return { bytes: hex(buf.subarray(AT, AT + struct.SIZE)), canariesIntact: outside.every((b) => b === CANARY) };
}

/** Reads a struct from hand-encoded bytes placed at AT. */
function decode<T>(struct: StructModule<T>, bytes: readonly number[]): T {
  const buf = new Uint8Array(32).fill(CANARY);
  buf.set(bytes, AT);
  return struct.read(new DataView(buf.buffer), AT);
}

function extra(patch: Partial<Omit<ExtraInfoFields, 'gso' | 'mcast' | 'hash' | 'xdp'>> & {
  gso?: Partial<ExtraInfoFields['gso']>;
  mcast?: number[];
  hash?: Partial<ExtraInfoFields['hash']>;
  xdp?: number;
}): ExtraInfoFields {
  const e = ExtraInfo.create();
  if (patch.type !== undefined) e.type = patch.type;
  if (patch.flags !== undefined) e.flags = patch.flags;
  Object.assign(e.gso, patch.gso ?? {});
  if (patch.mcast !== undefined) e.mcast.addr = Uint8Array.from(patch.mcast);
  Object.assign(e.hash, patch.hash ?? {});
  if (patch.xdp !== undefined) e.xdp.headroom = patch.xdp;
  return e;
}

test('constants match io/netif.h and xen-netback', (t) => {
  t.deepEqual(
    [NETTXF_csum_blank, NETTXF_data_validated, NETTXF_more_data, NETTXF_extra_info],
    [1, 2, 4, 8],
  );
  t.deepEqual(
    [NETRXF_data_validated, NETRXF_csum_blank, NETRXF_more_data, NETRXF_extra_info, NETRXF_gso_prefix],
    [1, 2, 4, 8, 16],
  );
  t.deepEqual(
    [
      XEN_NETIF_EXTRA_TYPE_NONE,
      XEN_NETIF_EXTRA_TYPE_GSO,
      XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
      XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
      XEN_NETIF_EXTRA_TYPE_HASH,
      XEN_NETIF_EXTRA_TYPE_XDP,
      XEN_NETIF_EXTRA_TYPE_MAX,
    ],
    [0, 1, 2, 3, 4, 5, 6],
  );
  t.is(XEN_NETIF_EXTRA_FLAG_MORE, 1);
  t.deepEqual([XEN_NETIF_GSO_TYPE_NONE, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6], [0, 1, 2]);
  t.deepEqual([XEN_NETIF_RSP_DROPPED, XEN_NETIF_RSP_ERROR, XEN_NETIF_RSP_OKAY, XEN_NETIF_RSP_NULL], [-2, -1, 0, 1]);
  t.is(XEN_NETIF_NR_SLOTS_MIN, 18);
  t.is(XEN_NETIF_MAX_TX_SIZE, 0xffff);
  t.is(XEN_NETBK_LEGACY_SLOTS_MAX, 18);
  t.is(FATAL_SKB_SLOTS_DEFAULT, 20);
  t.is(XEN_NETBACK_TX_COPY_LEN, 128);
  t.is(XEN_NETBK_MCAST_MAX, 64);
  t.is(ETH_HLEN, 14);
});

test('struct sizes and ring sizes match the C layouts', (t) => {
  t.deepEqual(
    [TxRequest.SIZE, TxResponse.SIZE, ExtraInfo.SIZE, RxRequest.SIZE, RxResponse.SIZE],
    [12, 4, 8, 8, 8],
  );
  t.is(XEN_NETIF_TX_SLOT_SIZE, 12);
  t.is(XEN_NETIF_RX_SLOT_SIZE, 8);
  // (4096 - 64) / 12 = 336 -> 256; (4096 - 64) / 8 = 504 -> 256
  t.is(NET_TX_RING_SIZE, 256);
  t.is(NET_RX_RING_SIZE, 256);
});

// Golden bytes: each row is hand-encoded from the C struct (little-endian), checked in both directions.
const txRequestGolden = [
  {
    value: { gref: 0x12345678, offset: 0x0abc, flags: NETTXF_more_data | NETTXF_csum_blank, id: 0x0102, size: 0x05dc },
    bytes: [0x78, 0x56, 0x34, 0x12, 0xbc, 0x0a, 0x05, 0x00, 0x02, 0x01, 0xdc, 0x05],
  },
  {
    value: { gref: 0xffffffff, offset: 0xffff, flags: 0x000f, id: 0xffff, size: 0xffff },
    bytes: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0xff, 0xff, 0xff, 0xff],
  },
  {
    value: { gref: 8, offset: 0, flags: NETTXF_extra_info, id: 255, size: 14 },
    bytes: [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0xff, 0x00, 0x0e, 0x00],
  },
];

test('netif_tx_request golden bytes', (t) => {
  for (const { value, bytes } of txRequestGolden) {
    t.deepEqual(encode(TxRequest, value), { bytes: hex(Uint8Array.from(bytes)), canariesIntact: true });
    t.deepEqual(decode(TxRequest, bytes), value);
  }
});

const txResponseGolden = [
  { value: { id: 0x00ab, status: XEN_NETIF_RSP_ERROR }, bytes: [0xab, 0x00, 0xff, 0xff] },
  { value: { id: 0x1234, status: XEN_NETIF_RSP_NULL }, bytes: [0x34, 0x12, 0x01, 0x00] },
  { value: { id: 3, status: XEN_NETIF_RSP_DROPPED }, bytes: [0x03, 0x00, 0xfe, 0xff] },
  { value: { id: 0xffff, status: -0x8000 }, bytes: [0xff, 0xff, 0x00, 0x80] },
];

test('netif_tx_response golden bytes (the rest of the 12-byte slot is untouched)', (t) => {
  for (const { value, bytes } of txResponseGolden) {
    t.deepEqual(encode(TxResponse, value), { bytes: hex(Uint8Array.from(bytes)), canariesIntact: true });
    t.deepEqual(decode(TxResponse, bytes), value);
  }
});

const extraGolden: { name: string; value: ExtraInfoFields; bytes: number[] }[] = [
  {
    name: 'GSO tcpv6 mss 1448 with MORE',
    value: extra({
      type: XEN_NETIF_EXTRA_TYPE_GSO,
      flags: XEN_NETIF_EXTRA_FLAG_MORE,
      gso: { size: 1448, type: XEN_NETIF_GSO_TYPE_TCPV6, pad: 0, features: 0 },
    }),
    bytes: [0x01, 0x01, 0xa8, 0x05, 0x02, 0x00, 0x00, 0x00],
  },
  {
    name: 'GSO tcpv4 with features',
    value: extra({
      type: XEN_NETIF_EXTRA_TYPE_GSO,
      gso: { size: 0xfffe, type: XEN_NETIF_GSO_TYPE_TCPV4, pad: 0x7f, features: 0x0201 },
    }),
    bytes: [0x01, 0x00, 0xfe, 0xff, 0x01, 0x7f, 0x01, 0x02],
  },
  {
    name: 'MCAST_ADD 01:00:5e:00:00:fb',
    value: extra({ type: XEN_NETIF_EXTRA_TYPE_MCAST_ADD, mcast: [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb] }),
    bytes: [0x02, 0x00, 0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
  },
  {
    name: 'MCAST_DEL 33:33:00:00:00:01 with MORE',
    value: extra({
      type: XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
      flags: XEN_NETIF_EXTRA_FLAG_MORE,
      mcast: [0x33, 0x33, 0x00, 0x00, 0x00, 0x01],
    }),
    bytes: [0x03, 0x01, 0x33, 0x33, 0x00, 0x00, 0x00, 0x01],
  },
  {
    name: 'HASH type 1 algorithm 1 value 0xdeadbeef',
    value: extra({ type: XEN_NETIF_EXTRA_TYPE_HASH, hash: { type: 1, algorithm: 1, value: 0xdeadbeef } }),
    bytes: [0x04, 0x00, 0x01, 0x01, 0xef, 0xbe, 0xad, 0xde],
  },
  {
    name: 'XDP headroom 256',
    value: extra({ type: XEN_NETIF_EXTRA_TYPE_XDP, xdp: 256 }),
    bytes: [0x05, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
  },
];

test('netif_extra_info golden bytes: write', (t) => {
  for (const { name, value, bytes } of extraGolden) {
    t.deepEqual(encode(ExtraInfo, value), { bytes: hex(Uint8Array.from(bytes)), canariesIntact: true }, name);
  }
});

test('netif_extra_info golden bytes: read decodes every union member from the same bytes', (t) => {
  for (const { name, bytes } of extraGolden) {
    const e = decode(ExtraInfo, bytes);
    const u = bytes.slice(2);
    t.is(e.type, bytes[0], name);
    t.is(e.flags, bytes[1], name);
    t.deepEqual(
      e.gso,
      { size: u[0]! | (u[1]! << 8), type: u[2], pad: u[3], features: u[4]! | (u[5]! << 8) },
      name,
    );
    t.deepEqual([...e.mcast.addr], u, name);
    t.deepEqual(
      e.hash,
      { type: u[0], algorithm: u[1], value: (u[2]! | (u[3]! << 8) | (u[4]! << 16) | (u[5]! << 24)) >>> 0 },
      name,
    );
    t.deepEqual(e.xdp, { headroom: u[0]! | (u[1]! << 8) }, name);
  }
});

test('netif_extra_info: XDP zeroes its pad over stale slot bytes', (t) => {
  const buf = new Uint8Array(8).fill(0xee);
  ExtraInfo.write(new DataView(buf.buffer), 0, extra({ type: XEN_NETIF_EXTRA_TYPE_XDP, xdp: 0x1234 }));
  t.is(hex(buf), '05 00 34 12 00 00 00 00');
});

const rxRequestGolden = [
  { value: { id: 0x0102, gref: 0xcafef00d }, bytes: [0x02, 0x01, 0x00, 0x00, 0x0d, 0xf0, 0xfe, 0xca] },
  { value: { id: 255, gref: 0 }, bytes: [0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00] },
];

test('netif_rx_request golden bytes (pad written as zero, ignored on read)', (t) => {
  for (const { value, bytes } of rxRequestGolden) {
    t.deepEqual(encode(RxRequest, value), { bytes: hex(Uint8Array.from(bytes)), canariesIntact: true });
    t.deepEqual(decode(RxRequest, bytes), value);
    const dirtyPad = [...bytes];
    dirtyPad[2] = 0x99;
    dirtyPad[3] = 0x88;
    t.deepEqual(decode(RxRequest, dirtyPad), value);
  }
});

const rxResponseGolden = [
  {
    value: { id: 0x00ff, offset: 0x0010, flags: NETRXF_more_data | NETRXF_data_validated, status: 1500 },
    bytes: [0xff, 0x00, 0x10, 0x00, 0x05, 0x00, 0xdc, 0x05],
  },
  {
    value: { id: 7, offset: 0, flags: NETRXF_extra_info | NETRXF_csum_blank, status: XEN_NETIF_RSP_ERROR },
    bytes: [0x07, 0x00, 0x00, 0x00, 0x0a, 0x00, 0xff, 0xff],
  },
  {
    value: { id: 0x0201, offset: 0x0fff, flags: NETRXF_gso_prefix, status: -12 },
    bytes: [0x01, 0x02, 0xff, 0x0f, 0x10, 0x00, 0xf4, 0xff],
  },
];

test('netif_rx_response golden bytes', (t) => {
  for (const { value, bytes } of rxResponseGolden) {
    t.deepEqual(encode(RxResponse, value), { bytes: hex(Uint8Array.from(bytes)), canariesIntact: true });
    t.deepEqual(decode(RxResponse, bytes), value);
  }
});

test('readInto fills the given object and reads the current bytes each time', (t) => {
  const buf = new Uint8Array(12);
  const view = new DataView(buf.buffer);
  const target = TxRequest.create();
  buf.set(txRequestGolden[0]!.bytes);
  t.is(TxRequest.readInto(view, 0, target), target);
  t.deepEqual(target, txRequestGolden[0]!.value);
  const e = ExtraInfo.create();
  const addr = e.mcast.addr;
  buf.set(extraGolden[2]!.bytes);
  t.is(ExtraInfo.readInto(view, 0, e), e);
  t.is(e.mcast.addr, addr);
  t.deepEqual([...addr], [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
});

test('the snapshot does not change when the peer rewrites the slot afterwards', (t) => {
  const buf = new Uint8Array(12);
  buf.set(txRequestGolden[0]!.bytes);
  const snap = TxRequest.read(new DataView(buf.buffer), 0);
  buf.fill(0x77);
  t.deepEqual(snap, txRequestGolden[0]!.value);
});

const u16Arb = fc.integer({ min: 0, max: 0xffff });
const u32Arb = fc.integer({ min: 0, max: 0xffffffff });
const s16Arb = fc.integer({ min: -0x8000, max: 0x7fff });
const u8Arb = fc.integer({ min: 0, max: 0xff });

function roundTrip<T>(struct: StructModule<T>, value: T): T {
  const view = new DataView(new ArrayBuffer(struct.SIZE));
  struct.write(view, 0, value);
  return struct.read(view, 0);
}

testProp(
  'tx_request / tx_response / rx_request / rx_response round-trip',
  [
    fc.record({ gref: u32Arb, offset: u16Arb, flags: u16Arb, id: u16Arb, size: u16Arb }),
    fc.record({ id: u16Arb, status: s16Arb }),
    fc.record({ id: u16Arb, gref: u32Arb }),
    fc.record({ id: u16Arb, offset: u16Arb, flags: u16Arb, status: s16Arb }),
  ],
  (t, txq, txp, rxq, rxp) => {
    t.deepEqual(roundTrip(TxRequest, txq), txq);
    t.deepEqual(roundTrip(TxResponse, txp), txp);
    t.deepEqual(roundTrip(RxRequest, rxq), rxq);
    t.deepEqual(roundTrip(RxResponse, rxp), rxp);
  },
);

testProp(
  'extra_info: reading any 8 bytes and writing the result back reproduces them (XDP: pad zeroed)',
  [fc.integer({ min: 1, max: 5 }), fc.uint8Array({ minLength: 7, maxLength: 7 })],
  (t, type, rest) => {
    const bytes = Uint8Array.from([type, ...rest]);
    const e = ExtraInfo.read(new DataView(bytes.buffer), 0);
    const out = new Uint8Array(8);
    ExtraInfo.write(new DataView(out.buffer), 0, e);
    const expected = Uint8Array.from(bytes);
    if (type === XEN_NETIF_EXTRA_TYPE_XDP) expected.fill(0, 4);
    t.is(hex(out), hex(expected));
  },
);

test('writers reject values that do not fit, with exact messages', (t) => {
  const tx = { gref: 1, offset: 0, flags: 0, id: 0, size: 60 };
  const rx = { id: 0, offset: 0, flags: 0, status: 0 };
  const writeTo = <T>(struct: StructModule<T>, value: T) => () =>
    struct.write(new DataView(new ArrayBuffer(struct.SIZE)), 0, value);
  const cases: [string, () => void, string][] = [
    ['gref -1', writeTo(TxRequest, { ...tx, gref: -1 }), 'invalid uint32: -1'],
    ['gref 2^32', writeTo(TxRequest, { ...tx, gref: 2 ** 32 }), 'invalid uint32: 4294967296'],
    ['offset 70000', writeTo(TxRequest, { ...tx, offset: 70000 }), 'invalid uint16: 70000'],
    ['id 1.5', writeTo(TxRequest, { ...tx, id: 1.5 }), 'invalid uint16: 1.5'],
    ['size -1', writeTo(TxRequest, { ...tx, size: -1 }), 'invalid uint16: -1'],
    ['tx status 40000', writeTo(TxResponse, { id: 0, status: 40000 }), 'invalid int16: 40000'],
    ['tx status -32769', writeTo(TxResponse, { id: 0, status: -32769 }), 'invalid int16: -32769'],
    ['rx status NaN', writeTo(RxResponse, { ...rx, status: NaN }), 'invalid int16: NaN'],
    ['rx flags 65536', writeTo(RxResponse, { ...rx, flags: 65536 }), 'invalid uint16: 65536'],
    ['rx gref 1e10', writeTo(RxRequest, { id: 0, gref: 1e10 }), 'invalid uint32: 10000000000'],
    ['extra type 0', writeTo(ExtraInfo, extra({ type: 0 })), 'invalid extra_info type: 0'],
    ['extra type 6', writeTo(ExtraInfo, extra({ type: 6 })), 'invalid extra_info type: 6'],
    ['extra flags 256', writeTo(ExtraInfo, extra({ type: 1, flags: 256, gso: { size: 1 } })), 'invalid uint8: 256'],
    ['gso type 300', writeTo(ExtraInfo, extra({ type: 1, gso: { size: 1, type: 300 } })), 'invalid uint8: 300'],
    ['gso size 65536', writeTo(ExtraInfo, extra({ type: 1, gso: { size: 65536, type: 1 } })), 'invalid uint16: 65536'],
    ['mcast addr 5 bytes', writeTo(ExtraInfo, extra({ type: 2, mcast: [1, 2, 3, 4, 5] })), 'invalid mcast addr length: 5'],
    ['hash value 2^32', writeTo(ExtraInfo, extra({ type: 4, hash: { value: 2 ** 32 } })), 'invalid uint32: 4294967296'],
    ['xdp headroom -1', writeTo(ExtraInfo, extra({ type: 5, xdp: -1 })), 'invalid uint16: -1'],
  ];
  for (const [name, run, message] of cases) {
    t.throws(run, { instanceOf: RangeError, message }, name);
  }
});

/** Places hand-encoded peer bytes in a slot, snapshots them once, then validates the snapshot. */
function peerExtra(bytes: number[]): ReturnType<typeof validateExtraInfo> {
  return validateExtraInfo(ExtraInfo.read(new DataView(Uint8Array.from(bytes).buffer), 0));
}

test('extra_info from the peer: exact errors', (t) => {
  const cases: [number[], string | null][] = [
    [[0x00, 0, 0, 0, 0, 0, 0, 0], 'extra_info type 0 is invalid: expected 1 <= type <= 5'],
    [[0x06, 0, 0, 0, 0, 0, 0, 0], 'extra_info type 6 is invalid: expected 1 <= type <= 5'],
    [[0x07, 1, 0xa8, 5, 1, 0, 0, 0], 'extra_info type 7 is invalid: expected 1 <= type <= 5'],
    [[0xff, 0, 0, 0, 0, 0, 0, 0], 'extra_info type 255 is invalid: expected 1 <= type <= 5'],
    [[0x01, 0, 0x00, 0x00, 0x01, 0, 0, 0], 'extra_info gso size is invalid: expected >= 1 but got 0'],
    [[0x01, 0, 0xa8, 0x05, 0x00, 0, 0, 0], 'extra_info gso type 0 is invalid: expected 1 <= type <= 2'],
    [[0x01, 0, 0xa8, 0x05, 0x03, 0, 0, 0], 'extra_info gso type 3 is invalid: expected 1 <= type <= 2'],
    [[0x01, 0, 0x01, 0x00, 0x01, 0, 0, 0], null],
    [[0x01, 1, 0xa8, 0x05, 0x02, 0xff, 0xff, 0xff], null],
    [[0x02, 0, 0, 0, 0, 0, 0, 0], null], // netback does not check the address
    [[0x03, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], null],
    [[0x04, 0, 9, 9, 9, 9, 9, 9], null],
    [[0x05, 0, 0, 0, 0, 0, 0, 0], null],
  ];
  for (const [bytes, message] of cases) {
    const r = peerExtra(bytes);
    t.deepEqual(r.ok ? null : r.error, message, hex(Uint8Array.from(bytes)));
  }
});

test('tx_request slot bounds: exact errors', (t) => {
  const req = (offset: number, size: number) => ({ gref: 1, offset, flags: 0, id: 0, size });
  const cases: [ReturnType<typeof validateTxSlot>, string | null][] = [
    [validateTxSlot(req(4000, 1000)), 'offset+size is corrupt: expected <= 4096 but got 5000'],
    [validateTxSlot(req(1, 4096)), 'offset+size is corrupt: expected <= 4096 but got 4097'],
    [validateTxSlot(req(0xffff, 0xffff)), 'offset+size is corrupt: expected <= 4096 but got 131070'],
    [validateTxSlot(req(0, 4096)), null],
    [validateTxSlot(req(4096, 0)), null],
    // First slot: size is the packet total; the caller passes the slot's own length.
    [validateTxSlot(req(100, 9000), 3996), null],
    [validateTxSlot(req(100, 9000), 3997), 'offset+size is corrupt: expected <= 4096 but got 4097'],
  ];
  for (const [r, message] of cases) t.deepEqual(r.ok ? null : r.error, message);
});

testProp('tx_request slot bounds agree with offset + size <= 4096', [u16Arb, u16Arb], (t, offset, size) => {
  const r = validateTxSlot({ gref: 0, offset, flags: 0, id: 0, size });
  t.is(r.ok, offset + size <= 4096);
});

test('tx_response from the backend: exact errors', (t) => {
  const cases: [number, number, string | null][] = [
    [0, XEN_NETIF_RSP_OKAY, null],
    [255, XEN_NETIF_RSP_ERROR, null],
    [256, XEN_NETIF_RSP_OKAY, 'tx response id 256 is invalid: expected id < 256'],
    [0xffff, XEN_NETIF_RSP_DROPPED, 'tx response id 65535 is invalid: expected id < 256'],
    [0xffff, XEN_NETIF_RSP_NULL, null], // an extra's placeholder carries no id
    [1, -3, 'tx response status -3 is invalid: expected -2 <= status <= 1'],
    [1, 2, 'tx response status 2 is invalid: expected -2 <= status <= 1'],
  ];
  for (const [id, status, message] of cases) {
    const slot = Uint8Array.from([id & 0xff, id >> 8, status & 0xff, (status >> 8) & 0xff]);
    const r = validateTxResponse(TxResponse.read(new DataView(slot.buffer), 0));
    t.deepEqual(r.ok ? null : r.error, message, `id ${id} status ${status}`);
  }
});

test('rx_response from the backend: exact errors', (t) => {
  const rsp = (id: number, offset: number, status: number) => ({ id, offset, flags: 0, status });
  const cases: [ReturnType<typeof validateRxResponse>, string | null][] = [
    [validateRxResponse(rsp(3, 0, 1500), 3), null],
    [validateRxResponse(rsp(7, 0, 1500), 3), 'rx response id 7 is invalid: expected 3'],
    [validateRxResponse(rsp(3, 4000, 97), 3), 'rx response offset+status is corrupt: expected <= 4096 but got 4097'],
    [
      validateRxResponse(rsp(3, 0xffff, 0x7fff), 3),
      'rx response offset+status is corrupt: expected <= 4096 but got 98302',
    ],
    [validateRxResponse(rsp(3, 4096, 0), 3), null],
    [validateRxResponse(rsp(3, 0, 4096), 3), null],
    [validateRxResponse(rsp(3, 0xffff, XEN_NETIF_RSP_ERROR), 3), null], // an error report, not a length
    [validateRxResponse(rsp(3, 0, -12), 3), null],
  ];
  for (const [r, message] of cases) t.deepEqual(r.ok ? null : r.error, message);
});

testProp(
  'rx_response bounds agree with status < 0 or offset + status <= 4096',
  [u16Arb, s16Arb],
  (t, offset, status) => {
    const r = validateRxResponse({ id: 1, offset, flags: 0, status }, 1);
    t.is(r.ok, status < 0 || offset + status <= 4096);
  },
);

testProp('extra_info validation agrees with the netback rules', [u8Arb, u16Arb, u8Arb], (t, type, size, gsoType) => {
  const e = extra({ type, gso: { size, type: gsoType } });
  const valid = type >= 1 && type <= 5 && (type !== 1 || (size > 0 && (gsoType === 1 || gsoType === 2)));
  t.is(validateExtraInfo(e).ok, valid);
});
