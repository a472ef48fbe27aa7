// Xen network interface wire format (xen/include/public/io/netif.h): flags, statuses, limits, and one small
// module per ring struct with named offsets, SIZE, read/readInto/write. Always little-endian. TX and RX are
// named from the frontend's point of view, as Xen does. Peer data is validated by validate* functions that
// return a Result with an exact message; writers validate our own values and throw RangeError.

import { err, ok } from './result.js';
import type { Result } from './result.js';
import { ringSize, XEN_PAGE_SIZE } from './ring.js';
import type { WireStruct } from './ring.js';

// ---- TX request flags (io/netif.h NETTXF_*) ----
/** Protocol checksum field is blank in the packet (io/netif.h). */
export const NETTXF_csum_blank = 1 << 0;
/** Packet data has been validated against protocol checksum (io/netif.h). */
export const NETTXF_data_validated = 1 << 1;
/** Packet continues in the next request descriptor (io/netif.h). */
export const NETTXF_more_data = 1 << 2;
/** Packet to be followed by extra descriptor(s) (io/netif.h). */
export const NETTXF_extra_info = 1 << 3;

// ---- RX response flags (io/netif.h NETRXF_*) ----
/** Packet data has been validated against protocol checksum (io/netif.h). */
export const NETRXF_data_validated = 1 << 0;
/** Protocol checksum field is blank in the packet (io/netif.h). */
export const NETRXF_csum_blank = 1 << 1;
/** Packet continues in the next request descriptor (io/netif.h). */
export const NETRXF_more_data = 1 << 2;
/** Packet to be followed by extra descriptor(s) (io/netif.h). */
export const NETRXF_extra_info = 1 << 3;
/** Packet has GSO prefix; deprecated, for Windows frontends (io/netif.h). */
export const NETRXF_gso_prefix = 1 << 4;

// ---- extra_info (io/netif.h XEN_NETIF_EXTRA_*) ----
/** Never used: invalid (io/netif.h). */
export const XEN_NETIF_EXTRA_TYPE_NONE = 0;
/** u.gso (io/netif.h). */
export const XEN_NETIF_EXTRA_TYPE_GSO = 1;
/** u.mcast (io/netif.h). */
export const XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2;
/** u.mcast (io/netif.h). */
export const XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3;
/** u.hash (io/netif.h). */
export const XEN_NETIF_EXTRA_TYPE_HASH = 4;
/** u.xdp (io/netif.h). */
export const XEN_NETIF_EXTRA_TYPE_XDP = 5;
/** One past the last valid type (io/netif.h). */
export const XEN_NETIF_EXTRA_TYPE_MAX = 6;
/** Another extra_info follows this one (io/netif.h). */
export const XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0;

/** No GSO (io/netif.h). */
export const XEN_NETIF_GSO_TYPE_NONE = 0;
/** TCP over IPv4 segmentation (io/netif.h). */
export const XEN_NETIF_GSO_TYPE_TCPV4 = 1;
/** TCP over IPv6 segmentation (io/netif.h). */
export const XEN_NETIF_GSO_TYPE_TCPV6 = 2;

// ---- response statuses (io/netif.h XEN_NETIF_RSP_*) ----
/** Packet dropped; never sent on TX by netback (io/netif.h). */
export const XEN_NETIF_RSP_DROPPED = -2;
/** Request failed (io/netif.h). */
export const XEN_NETIF_RSP_ERROR = -1;
/** Request succeeded (io/netif.h). */
export const XEN_NETIF_RSP_OKAY = 0;
/** Placeholder response for an extra_info slot (io/netif.h). */
export const XEN_NETIF_RSP_NULL = 1;

// ---- limits ----
/** Slots per packet every backend must accept (io/netif.h). */
export const XEN_NETIF_NR_SLOTS_MIN = 18;
/** Largest packet a tx_request's 16-bit size can describe (io/netif.h). */
export const XEN_NETIF_MAX_TX_SIZE = 0xffff;
/** Slots above which netback drops a packet with RSP_ERROR (drivers/net/xen-netback/common.h). */
export const XEN_NETBK_LEGACY_SLOTS_MAX = XEN_NETIF_NR_SLOTS_MIN;
/** Slots at which netback declares the frontend malicious (drivers/net/xen-netback/netback.c fatal_skb_slots). */
export const FATAL_SKB_SLOTS_DEFAULT = 20;
/** Bytes of a TX packet netback grant-copies instead of mapping (drivers/net/xen-netback/common.h). */
export const XEN_NETBACK_TX_COPY_LEN = 128;
/** Multicast addresses netback keeps per vif (drivers/net/xen-netback/common.h). */
export const XEN_NETBK_MCAST_MAX = 64;
/** Ethernet header length (include/uapi/linux/if_ether.h). */
export const ETH_HLEN = 14;

// ---- writer checks (our own values: throw) ----

function u8(v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new RangeError(`invalid uint8: ${v}`);
  return v;
}

function u16(v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`invalid uint16: ${v}`);
  return v;
}

function s16(v: number): number {
  if (!Number.isInteger(v) || v < -0x8000 || v > 0x7fff) throw new RangeError(`invalid int16: ${v}`);
  return v;
}

function u32(v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`invalid uint32: ${v}`);
  return v;
}

/** What each struct module below provides: the ring's WireStruct plus named field offsets, create and read. */
export type StructModule<T> = WireStruct<T> & {
  readonly [field: `OFF_${string}`]: number;
  create(): T;
  read(view: DataView, off: number): T;
};

// ---- struct netif_tx_request ----

/** A snapshot of struct netif_tx_request (io/netif.h). On the first slot `size` is the whole packet's length. */
export interface TxRequestFields {
  gref: number;
  offset: number;
  flags: number;
  id: number;
  size: number;
}

/** struct netif_tx_request {u32 gref; u16 offset, flags, id, size} (io/netif.h). */
export const TxRequest = {
  SIZE: 12,
  OFF_GREF: 0,
  OFF_OFFSET: 4,
  OFF_FLAGS: 6,
  OFF_ID: 8,
  OFF_SIZE: 10,
  /** A zeroed scratch value for readInto. */
  create(): TxRequestFields {
    return { gref: 0, offset: 0, flags: 0, id: 0, size: 0 };
  },
  /** Copies the struct at `off` into a new object. */
  read(view: DataView, off: number): TxRequestFields {
    return TxRequest.readInto(view, off, TxRequest.create());
  },
  /** Copies the struct at `off` into `t` without allocating; each field is read once. */
  readInto(view: DataView, off: number, t: TxRequestFields): TxRequestFields {
    t.gref = view.getUint32(off + TxRequest.OFF_GREF, true);
    t.offset = view.getUint16(off + TxRequest.OFF_OFFSET, true);
    t.flags = view.getUint16(off + TxRequest.OFF_FLAGS, true);
    t.id = view.getUint16(off + TxRequest.OFF_ID, true);
    t.size = view.getUint16(off + TxRequest.OFF_SIZE, true);
    return t;
  },
  /** Writes `v` at `off`; throws RangeError for a field that does not fit. */
  write(view: DataView, off: number, v: Readonly<TxRequestFields>): void {
    view.setUint32(off + TxRequest.OFF_GREF, u32(v.gref), true);
    view.setUint16(off + TxRequest.OFF_OFFSET, u16(v.offset), true);
    view.setUint16(off + TxRequest.OFF_FLAGS, u16(v.flags), true);
    view.setUint16(off + TxRequest.OFF_ID, u16(v.id), true);
    view.setUint16(off + TxRequest.OFF_SIZE, u16(v.size), true);
  },
} as const satisfies StructModule<TxRequestFields>;

// ---- struct netif_tx_response ----

/** A snapshot of struct netif_tx_response (io/netif.h). */
export interface TxResponseFields {
  id: number;
  status: number;
}

/** struct netif_tx_response {u16 id; s16 status} (io/netif.h); the rest of its 12-byte slot is untouched. */
export const TxResponse = {
  SIZE: 4,
  OFF_ID: 0,
  OFF_STATUS: 2,
  /** A zeroed scratch value for readInto. */
  create(): TxResponseFields {
    return { id: 0, status: 0 };
  },
  /** Copies the struct at `off` into a new object. */
  read(view: DataView, off: number): TxResponseFields {
    return TxResponse.readInto(view, off, TxResponse.create());
  },
  /** Copies the struct at `off` into `t` without allocating; each field is read once. */
  readInto(view: DataView, off: number, t: TxResponseFields): TxResponseFields {
    t.id = view.getUint16(off + TxResponse.OFF_ID, true);
    t.status = view.getInt16(off + TxResponse.OFF_STATUS, true);
    return t;
  },
  /** Writes `v` at `off`; throws RangeError for a field that does not fit. */
  write(view: DataView, off: number, v: Readonly<TxResponseFields>): void {
    view.setUint16(off + TxResponse.OFF_ID, u16(v.id), true);
    view.setInt16(off + TxResponse.OFF_STATUS, s16(v.status), true);
  },
} as const satisfies StructModule<TxResponseFields>;

// ---- struct netif_extra_info ----

/**
 * A snapshot of struct netif_extra_info (io/netif.h): type, flags, and every member of the 6-byte union `u`
 * decoded from the same single read of the slot. `hash.value` is value[4] read as the little-endian u32
 * Linux netback stores there.
 */
export interface ExtraInfoFields {
  type: number;
  flags: number;
  gso: { size: number; type: number; pad: number; features: number };
  mcast: { addr: Uint8Array };
  hash: { type: number; algorithm: number; value: number };
  xdp: { headroom: number };
}

/** struct netif_extra_info {u8 type, flags; union {gso, mcast, hash, xdp, u16 pad[3]} u} (io/netif.h). */
export const ExtraInfo = {
  SIZE: 8,
  OFF_TYPE: 0,
  OFF_FLAGS: 1,
  OFF_U: 2,
  OFF_GSO_SIZE: 2,
  OFF_GSO_TYPE: 4,
  OFF_GSO_PAD: 5,
  OFF_GSO_FEATURES: 6,
  OFF_MCAST_ADDR: 2,
  OFF_HASH_TYPE: 2,
  OFF_HASH_ALGORITHM: 3,
  OFF_HASH_VALUE: 4,
  OFF_XDP_HEADROOM: 2,
  /** A zeroed scratch value for readInto. */
  create(): ExtraInfoFields {
    return {
      type: 0,
      flags: 0,
      gso: { size: 0, type: 0, pad: 0, features: 0 },
      mcast: { addr: new Uint8Array(6) },
      hash: { type: 0, algorithm: 0, value: 0 },
      xdp: { headroom: 0 },
    };
  },
  /** Copies the struct at `off` into a new object. */
  read(view: DataView, off: number): ExtraInfoFields {
    return ExtraInfo.readInto(view, off, ExtraInfo.create());
  },
  /** Copies the struct at `off` into `t` without allocating: two loads, then every union member decoded locally. */
  readInto(view: DataView, off: number, t: ExtraInfoFields): ExtraInfoFields {
    const lo = view.getUint32(off, true); // bytes 0..3
    const hi = view.getUint32(off + 4, true); // bytes 4..7
    t.type = lo & 0xff;
    t.flags = (lo >>> 8) & 0xff;
    t.gso.size = lo >>> 16;
    t.gso.type = hi & 0xff;
    t.gso.pad = (hi >>> 8) & 0xff;
    t.gso.features = hi >>> 16;
    const addr = t.mcast.addr;
    addr[0] = (lo >>> 16) & 0xff;
    addr[1] = lo >>> 24;
    addr[2] = hi & 0xff;
    addr[3] = (hi >>> 8) & 0xff;
    addr[4] = (hi >>> 16) & 0xff;
    addr[5] = hi >>> 24;
    t.hash.type = (lo >>> 16) & 0xff;
    t.hash.algorithm = lo >>> 24;
    t.hash.value = hi;
    t.xdp.headroom = lo >>> 16;
    return t;
  },
  /**
   * Writes type, flags and the union member `type` selects (XDP's pad zeroed); throws RangeError for a type
   * outside 1..5 or a field that does not fit: we never put an invalid extra on a ring.
   */
  write(view: DataView, off: number, v: Readonly<ExtraInfoFields>): void {
    const U = off + ExtraInfo.OFF_U;
    switch (v.type) {
      case XEN_NETIF_EXTRA_TYPE_GSO:
        view.setUint16(off + ExtraInfo.OFF_GSO_SIZE, u16(v.gso.size), true);
        view.setUint8(off + ExtraInfo.OFF_GSO_TYPE, u8(v.gso.type));
        view.setUint8(off + ExtraInfo.OFF_GSO_PAD, u8(v.gso.pad));
        view.setUint16(off + ExtraInfo.OFF_GSO_FEATURES, u16(v.gso.features), true);
        break;
      case XEN_NETIF_EXTRA_TYPE_MCAST_ADD:
      case XEN_NETIF_EXTRA_TYPE_MCAST_DEL: {
        const addr = v.mcast.addr;
        if (addr.length !== 6) throw new RangeError(`invalid mcast addr length: ${addr.length}`);
        for (let i = 0; i < 6; i++) view.setUint8(U + i, addr[i]!);
        break;
      }
      case XEN_NETIF_EXTRA_TYPE_HASH:
        view.setUint8(off + ExtraInfo.OFF_HASH_TYPE, u8(v.hash.type));
        view.setUint8(off + ExtraInfo.OFF_HASH_ALGORITHM, u8(v.hash.algorithm));
        view.setUint32(off + ExtraInfo.OFF_HASH_VALUE, u32(v.hash.value), true);
        break;
      case XEN_NETIF_EXTRA_TYPE_XDP:
        view.setUint16(off + ExtraInfo.OFF_XDP_HEADROOM, u16(v.xdp.headroom), true);
        view.setUint32(U + 2, 0, true);
        break;
      default:
        throw new RangeError(`invalid extra_info type: ${v.type}`);
    }
    view.setUint8(off + ExtraInfo.OFF_TYPE, v.type);
    view.setUint8(off + ExtraInfo.OFF_FLAGS, u8(v.flags));
  },
} as const satisfies StructModule<ExtraInfoFields>;

// ---- struct netif_rx_request ----

/** A snapshot of struct netif_rx_request (io/netif.h); `pad` is not kept. */
export interface RxRequestFields {
  id: number;
  gref: number;
}

/** struct netif_rx_request {u16 id; u16 pad; u32 gref} (io/netif.h); pad is written as zero. */
export const RxRequest = {
  SIZE: 8,
  OFF_ID: 0,
  OFF_PAD: 2,
  OFF_GREF: 4,
  /** A zeroed scratch value for readInto. */
  create(): RxRequestFields {
    return { id: 0, gref: 0 };
  },
  /** Copies the struct at `off` into a new object. */
  read(view: DataView, off: number): RxRequestFields {
    return RxRequest.readInto(view, off, RxRequest.create());
  },
  /** Copies the struct at `off` into `t` without allocating; each field is read once. */
  readInto(view: DataView, off: number, t: RxRequestFields): RxRequestFields {
    t.id = view.getUint16(off + RxRequest.OFF_ID, true);
    t.gref = view.getUint32(off + RxRequest.OFF_GREF, true);
    return t;
  },
  /** Writes `v` at `off`; throws RangeError for a field that does not fit. */
  write(view: DataView, off: number, v: Readonly<RxRequestFields>): void {
    view.setUint16(off + RxRequest.OFF_ID, u16(v.id), true);
    view.setUint16(off + RxRequest.OFF_PAD, 0, true);
    view.setUint32(off + RxRequest.OFF_GREF, u32(v.gref), true);
  },
} as const satisfies StructModule<RxRequestFields>;

// ---- struct netif_rx_response ----

/** A snapshot of struct netif_rx_response (io/netif.h): `status` is a length if >= 0, else an error. */
export interface RxResponseFields {
  id: number;
  offset: number;
  flags: number;
  status: number;
}

/** struct netif_rx_response {u16 id, offset, flags; s16 status} (io/netif.h). */
export const RxResponse = {
  SIZE: 8,
  OFF_ID: 0,
  OFF_OFFSET: 2,
  OFF_FLAGS: 4,
  OFF_STATUS: 6,
  /** A zeroed scratch value for readInto. */
  create(): RxResponseFields {
    return { id: 0, offset: 0, flags: 0, status: 0 };
  },
  /** Copies the struct at `off` into a new object. */
  read(view: DataView, off: number): RxResponseFields {
    return RxResponse.readInto(view, off, RxResponse.create());
  },
  /** Copies the struct at `off` into `t` without allocating; each field is read once. */
  readInto(view: DataView, off: number, t: RxResponseFields): RxResponseFields {
    t.id = view.getUint16(off + RxResponse.OFF_ID, true);
    t.offset = view.getUint16(off + RxResponse.OFF_OFFSET, true);
    t.flags = view.getUint16(off + RxResponse.OFF_FLAGS, true);
    t.status = view.getInt16(off + RxResponse.OFF_STATUS, true);
    return t;
  },
  /** Writes `v` at `off`; throws RangeError for a field that does not fit. */
  write(view: DataView, off: number, v: Readonly<RxResponseFields>): void {
    view.setUint16(off + RxResponse.OFF_ID, u16(v.id), true);
    view.setUint16(off + RxResponse.OFF_OFFSET, u16(v.offset), true);
    view.setUint16(off + RxResponse.OFF_FLAGS, u16(v.flags), true);
    view.setInt16(off + RxResponse.OFF_STATUS, s16(v.status), true);
  },
} as const satisfies StructModule<RxResponseFields>;

// ---- ring slots and sizes ----

/** Bytes per TX ring slot: sizeof(union {netif_tx_request; netif_tx_response}) (io/netif.h DEFINE_RING_TYPES). */
export const XEN_NETIF_TX_SLOT_SIZE = Math.max(TxRequest.SIZE, TxResponse.SIZE);
/** Bytes per RX ring slot: sizeof(union {netif_rx_request; netif_rx_response}) (io/netif.h DEFINE_RING_TYPES). */
export const XEN_NETIF_RX_SLOT_SIZE = Math.max(RxRequest.SIZE, RxResponse.SIZE);
/** Entries in a single-page TX ring (xen-netfront.c NET_TX_RING_SIZE, __CONST_RING_SIZE(xen_netif_tx, ...)). */
export const NET_TX_RING_SIZE = ringSize(XEN_NETIF_TX_SLOT_SIZE);
/** Entries in a single-page RX ring (xen-netfront.c NET_RX_RING_SIZE). */
export const NET_RX_RING_SIZE = ringSize(XEN_NETIF_RX_SLOT_SIZE);

// Load-time layout checks, as the C code's BUILD_BUG_ONs: the last field ends at SIZE, extras fit either slot.
function checkLayout(name: string, end: number, size: number): void {
  if (end !== size) throw new Error(`${name} layout is wrong: fields end at ${end} but SIZE is ${size}`);
}
checkLayout('netif_tx_request', TxRequest.OFF_SIZE + 2, TxRequest.SIZE);
checkLayout('netif_tx_response', TxResponse.OFF_STATUS + 2, TxResponse.SIZE);
checkLayout('netif_extra_info', ExtraInfo.OFF_GSO_FEATURES + 2, ExtraInfo.SIZE);
checkLayout('netif_extra_info.u.mcast', ExtraInfo.OFF_MCAST_ADDR + 6, ExtraInfo.SIZE);
checkLayout('netif_extra_info.u.hash', ExtraInfo.OFF_HASH_VALUE + 4, ExtraInfo.SIZE);
checkLayout('netif_rx_request', RxRequest.OFF_GREF + 4, RxRequest.SIZE);
checkLayout('netif_rx_response', RxResponse.OFF_STATUS + 2, RxResponse.SIZE);
checkLayout('netif_tx_sring_entry', XEN_NETIF_TX_SLOT_SIZE, 12);
checkLayout('netif_rx_sring_entry', XEN_NETIF_RX_SLOT_SIZE, 8);
if (ExtraInfo.SIZE > XEN_NETIF_TX_SLOT_SIZE || ExtraInfo.SIZE > XEN_NETIF_RX_SLOT_SIZE) {
  throw new Error('netif_extra_info must fit both a TX and an RX slot');
}
if (NET_TX_RING_SIZE !== 256 || NET_RX_RING_SIZE !== 256) {
  throw new Error(`netif rings must hold 256 entries, got TX ${NET_TX_RING_SIZE} RX ${NET_RX_RING_SIZE}`);
}

// ---- validation of peer data (return Result, never throw) ----

/**
 * Checks that a tx_request slot's data stays inside its granted page (netback "Cross page boundary", fatal).
 * Pass `size` = the slot's own data length: on a packet's first slot that is req.size minus the frags.
 */
export function validateTxSlot(
  req: Readonly<TxRequestFields>,
  size: number = req.size,
): Result<Readonly<TxRequestFields>> {
  const end = req.offset + size;
  if (end > XEN_PAGE_SIZE) return err(`offset+size is corrupt: expected <= ${XEN_PAGE_SIZE} but got ${end}`);
  return ok(req);
}

/**
 * Checks an extra_info from the frontend as netback does (xenvif_get_extras: type 0 or >= MAX is fatal;
 * xenvif_set_skb_gso: GSO size 0 or an unknown GSO type is fatal).
 */
export function validateExtraInfo(e: Readonly<ExtraInfoFields>): Result<Readonly<ExtraInfoFields>> {
  if (e.type <= XEN_NETIF_EXTRA_TYPE_NONE || e.type >= XEN_NETIF_EXTRA_TYPE_MAX) {
    return err(`extra_info type ${e.type} is invalid: expected 1 <= type <= ${XEN_NETIF_EXTRA_TYPE_MAX - 1}`);
  }
  if (e.type === XEN_NETIF_EXTRA_TYPE_GSO) {
    if (e.gso.size === 0) return err('extra_info gso size is invalid: expected >= 1 but got 0');
    if (e.gso.type !== XEN_NETIF_GSO_TYPE_TCPV4 && e.gso.type !== XEN_NETIF_GSO_TYPE_TCPV6) {
      return err(
        `extra_info gso type ${e.gso.type} is invalid: ` +
          `expected ${XEN_NETIF_GSO_TYPE_TCPV4} <= type <= ${XEN_NETIF_GSO_TYPE_TCPV6}`,
      );
    }
  }
  return ok(e);
}

/**
 * Checks a tx_response from the backend as netfront does: a non-NULL response's id must index the TX ring
 * (xennet_tx_buf_gc "Response has incorrect id"). Departure: we also reject a status outside -2..1.
 */
export function validateTxResponse(rsp: Readonly<TxResponseFields>): Result<Readonly<TxResponseFields>> {
  if (rsp.status < XEN_NETIF_RSP_DROPPED || rsp.status > XEN_NETIF_RSP_NULL) {
    return err(
      `tx response status ${rsp.status} is invalid: ` +
        `expected ${XEN_NETIF_RSP_DROPPED} <= status <= ${XEN_NETIF_RSP_NULL}`,
    );
  }
  if (rsp.status === XEN_NETIF_RSP_NULL) return ok(rsp);
  if (rsp.id >= NET_TX_RING_SIZE) {
    return err(`tx response id ${rsp.id} is invalid: expected id < ${NET_TX_RING_SIZE}`);
  }
  return ok(rsp);
}

/**
 * Checks an rx_response (not an extra) from the backend: its id must echo the request in the same slot
 * (io/netif.h), and a non-negative status (a length) must fit the page after offset (netfront
 * xennet_get_responses). A negative status is a valid error report for the caller to act on.
 */
export function validateRxResponse(
  rsp: Readonly<RxResponseFields>,
  expectedId: number,
): Result<Readonly<RxResponseFields>> {
  if (rsp.id !== expectedId) return err(`rx response id ${rsp.id} is invalid: expected ${expectedId}`);
  if (rsp.status >= 0 && rsp.offset + rsp.status > XEN_PAGE_SIZE) {
    return err(
      `rx response offset+status is corrupt: expected <= ${XEN_PAGE_SIZE} but got ${rsp.offset + rsp.status}`,
    );
  }
  return ok(rsp);
}
