// The local TCP endpoint: a host on the backend bridge that accepts TCP streams from guests and relays their
// payload to a remote peer over its own outbound connection through the uplink NIC, WITHOUT COPYING: the
// received skbs (foreign page frags from guest grants) lose their headers and go onto the outbound write
// queue as they are. This is seed 002's situation: pages handed to TCP are referenced many times during
// transmit (a clone per transmission, pskb_copy, tcp_fragment, tcp_trim_head) and must stay put until the
// remote ACKs them, because the retransmit queue still holds them.
//
// Guest side (receive): SYN / SYN-ACK / ACK handshake is required (a segment for an unknown connection gets a
// RST); in-order data only (no out-of-order queue: early segments are dropped and answered with a duplicate
// ACK); cumulative ACKs are fresh local skbs sent through the bridge; the receive window is the room left in
// the connection's receive queue; a guest FIN is answered with FIN|ACK at once (we never send data back).
// Peer side (send, tcp_output.c in spirit): one outbound connection per guest stream, with the guest's
// source port as its own (the peer's stream id), so stream position k of both connections is the same byte;
// MSS-sized segments, or GSO skbs of up to 64 KiB with gso_size = MSS when the uplink has TSO; tcp_fragment
// (skbSplit) when a queued skb is bigger than what may be sent; a clone per transmission (pskb_copy while a
// previous clone is still in flight); slow start, congestion avoidance, fast retransmit on 3 duplicate
// ACKs with NewReno partial-ACK retransmission, RTO (RFC 6298, Karn) with go-back-N after a timeout; a
// cumulative ACK frees fully ACKed skbs and trims the head of a partially ACKed one (tcp_trim_head).
// Departures: no options (no MSS option, SACK, timestamps, window scaling); no persist timer (the peer never
// closes its window); no TIME_WAIT; no local-delivery orphaning of zero-copy frags (mainline would copy
// them in skb_orphan_frags_rx: keeping them is the design under test); ACKs from the uplink are parsed from
// bytes (the NIC model has no receive path).
import type { Clock } from '../shared/clock.js';
import { ETH_HLEN, ETH_P_IP, parseEthHeader, writeEthHeader } from '../shared/ether.js';
import {
  IPPROTO_TCP,
  IPV4_HLEN,
  TCP_CSUM_OFFSET,
  TCP_HLEN,
  TCPHDR_ACK,
  TCPHDR_FIN,
  TCPHDR_PSH,
  TCPHDR_RST,
  TCPHDR_SYN,
  get16,
  get32,
  parseIpv4Header,
  writeIpv4Header,
  writeL4Checksum,
  writeTcpHeader,
} from '../shared/inet.js';
import type { Random } from '../shared/random.js';
import { err, ok, type Result } from '../shared/result.js';
import type { NetDevice, NetdevFeatures, SkbHolder } from './netdev.js';
import {
  CHECKSUM_NONE,
  CHECKSUM_PARTIAL,
  SKB_GSO_TCPV4,
  type SkBuff,
  type SkbContext,
  __skbPull,
  allocSkb,
  consumeSkb,
  kfreeSkb,
  kfreeSkbPartial,
  pskbCopy,
  pskbExpandHead,
  pskbMayPull,
  pskbTrim,
  skbClone,
  skbCloned,
  skbHeadlen,
  skbHeadroom,
  skbHeaderCloned,
  skbHeaderRelease,
  skbLinearize,
  skbPush,
  skbReserve,
  skbShared,
  skbSplit,
  skbTryCoalesce,
  skbUnclone,
  tcpTrimHead,
} from './skbuff.js';

/** Headroom of skbs TCP allocates itself (include/net/tcp.h MAX_TCP_HEADER, here without options: 128). */
export const MAX_TCP_HEADER = 128;
/** Bytes tcp_transmit_skb, ip_queue_xmit and the Ethernet layer push in front of a segment's payload. */
export const TCP_TX_HEADERS = ETH_HLEN + IPV4_HLEN + TCP_HLEN;
/** include/net/tcp.h TCP_RTO_MIN (HZ/5), TCP_RTO_MAX (120 s) and TCP_TIMEOUT_INIT (1 s), in ms. */
export const TCP_RTO_MIN_MS = 200;
export const TCP_RTO_MAX_MS = 120_000;
export const TCP_TIMEOUT_INIT_MS = 1000;
/** include/net/tcp.h TCP_INIT_CWND (RFC 6928), in segments. */
export const TCP_INIT_CWND = 10;
/** include/net/tcp.h TCP_FASTRETRANS_THRESH: duplicate ACKs that trigger fast retransmit. */
export const TCP_FASTRETRANS_THRESH = 3;
/** The largest TSO payload: an IPv4 datagram's 16-bit total length minus the IPv4 and TCP headers. */
export const TCP_TSO_MAX_PAYLOAD = 0xffff - IPV4_HLEN - TCP_HLEN;

// include/net/tcp_states.h (the states this model uses).
export const TCP_ESTABLISHED = 1;
export const TCP_SYN_SENT = 2;
export const TCP_SYN_RECV = 3;
export const TCP_FIN_WAIT1 = 4;
export const TCP_CLOSE = 7;

// include/uapi/linux/tcp.h enum tcp_ca_state (the states this model uses).
export const TCP_CA_Open = 0;
export const TCP_CA_Recovery = 3;
export const TCP_CA_Loss = 4;

/** before() of include/net/tcp.h: is sequence number a before b (modulo 2^32)? */
export function seqBefore(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}

/** after() of include/net/tcp.h. */
export function seqAfter(a: number, b: number): boolean {
  return seqBefore(b, a);
}

/** A parsed TCP header (struct tcphdr without options, include/uapi/linux/tcp.h). */
export interface TcpHeader {
  readonly sport: number;
  readonly dport: number;
  readonly seq: number;
  readonly ack: number;
  /** Header length in bytes (doff * 4). */
  readonly doff: number;
  readonly flags: number;
  readonly window: number;
}

/** Parses a TCP header found in the `len` bytes of a segment at `off` (tcp_v4_rcv's header checks). */
export function parseTcpHeader(buf: Uint8Array, off: number, len: number): Result<TcpHeader> {
  if (len < TCP_HLEN) return err(`TCP header is truncated: expected >= ${TCP_HLEN} bytes but got ${len}`);
  const doff = (buf[off + 12]! >>> 4) * 4;
  if (doff < TCP_HLEN || doff > len) return err(`TCP doff is corrupt: expected ${TCP_HLEN} <= x <= ${len} but got ${doff}`);
  return ok({
    sport: get16(buf, off),
    dport: get16(buf, off + 2),
    seq: get32(buf, off + 4),
    ack: get32(buf, off + 8),
    doff,
    flags: buf[off + 13]! & 0x3f,
    window: get16(buf, off + 14),
  });
}

/** An Ethernet/IPv4/TCP frame's fields and where its payload lies. */
export interface TcpFrame {
  readonly ethDst: number;
  readonly ethSrc: number;
  readonly saddr: number;
  readonly daddr: number;
  readonly tcp: TcpHeader;
  /** Offset of the TCP header in the buffer. */
  readonly tcpOff: number;
  /** Ethernet + IPv4 + TCP header bytes. */
  readonly hdrLen: number;
  /** Offset of the payload in the buffer. */
  readonly payloadOff: number;
  /** Payload bytes (IPv4 tot_len minus headers; Ethernet padding excluded). */
  readonly payloadLen: number;
}

/** Parses an Ethernet frame of `len` bytes at `off` as TCP over IPv4; every header is peer data. */
export function parseTcpFrame(buf: Uint8Array, off: number, len: number): Result<TcpFrame> {
  const eth = parseEthHeader(buf, off, len);
  if (!eth.ok) return eth;
  if (eth.value.proto !== ETH_P_IP) return err(`ethertype is not IPv4: expected 0x800 but got 0x${eth.value.proto.toString(16)}`);
  const l3 = off + ETH_HLEN;
  const ip = parseIpv4Header(buf, l3, len - ETH_HLEN);
  if (!ip.ok) return ip;
  const h = ip.value;
  if (h.proto !== IPPROTO_TCP) return err(`IPv4 protocol is not TCP: expected ${IPPROTO_TCP} but got ${h.proto}`);
  const frag = get16(buf, l3 + 6) & 0x3fff;
  if (frag !== 0) return err(`IPv4 fragment is not supported: expected frag_off 0 but got 0x${frag.toString(16)}`);
  const tcpOff = l3 + h.ihl;
  const tcp = parseTcpHeader(buf, tcpOff, h.totalLen - h.ihl);
  if (!tcp.ok) return tcp;
  const hdrLen = ETH_HLEN + h.ihl + tcp.value.doff;
  return ok({
    ethDst: eth.value.dst,
    ethSrc: eth.value.src,
    saddr: h.saddr,
    daddr: h.daddr,
    tcp: tcp.value,
    tcpOff,
    hdrLen,
    payloadOff: off + hdrLen,
    payloadLen: h.totalLen - h.ihl - tcp.value.doff,
  });
}

/** Options of a TcpEndpoint. */
export interface TcpEndpointOptions {
  readonly ctx: SkbContext;
  readonly clock: Clock;
  readonly random: Random;
  /** Device name on the bridge. Default 'tcp0'. */
  readonly name?: string;
  /** The endpoint's MAC address on the bridge (and on the uplink). */
  readonly mac: number;
  /** The endpoint's IPv4 address (u32), for guests and for the peer. */
  readonly ip: number;
  /** The TCP port guests connect to. */
  readonly port: number;
  /** MTU of the endpoint's bridge port. Default 1500. */
  readonly mtu?: number;
  /** The uplink NIC its outbound connections use (its mtu sets the MSS, its tso feature the GSO sizes). */
  readonly uplink: NetDevice;
  /** The remote peer's (or gateway's) MAC, IPv4 address and port. */
  readonly peerMac: number;
  readonly peerIp: number;
  readonly peerPort: number;
  /** Per guest connection: bytes the receive queue may hold (the advertised window). Default 65535, at most 65535. */
  readonly rcvBuf?: number;
  /** Per outbound connection: payload bytes the write and retransmit queues may hold. Default 262144, >= rcvBuf. */
  readonly sndBuf?: number;
  /** Initial congestion window, segments. Default TCP_INIT_CWND. */
  readonly initCwnd?: number;
  /** Largest congestion window, bytes (keeps the model bounded). Default sndBuf. */
  readonly maxCwnd?: number;
  /** RTO bounds and initial value, ms. Defaults TCP_RTO_MIN_MS, TCP_RTO_MAX_MS, TCP_TIMEOUT_INIT_MS. */
  readonly rtoMinMs?: number;
  readonly rtoMaxMs?: number;
  readonly rtoInitMs?: number;
  /** Most guest connections open at once. Default 64. */
  readonly maxConnections?: number;
  /** Try skb_try_coalesce of small writes into an unsent tail skb. Default true. */
  readonly coalesce?: boolean;
}

/** Endpoint counters (page get/put events are counted by the skbuff model's stats, not here). */
export interface TcpEndpointStats {
  /** Frames handed to the endpoint by the bridge. */
  framesIn: number;
  /** Frames not for this endpoint (other MAC, address, protocol or port): dropped silently. */
  notForUs: number;
  /** Malformed frames (see lastError). */
  badFrames: number;
  /** Segments for no connection (answered with RST unless they were RSTs). */
  noConnection: number;
  /** SYNs refused (port already relayed, or too many connections). */
  refused: number;
  rstsSent: number;
  connectionsOpened: number;
  /** Connections whose relay finished (the peer ACKed our FIN). */
  connectionsClosed: number;
  /** Connections torn down by a RST from either side. */
  connectionsAborted: number;
  /** Guest payload bytes accepted in order. */
  bytesIn: number;
  /** Guest segments that arrived ahead of rcv_nxt (dropped, duplicate ACK sent). */
  outOfOrder: number;
  /** Guest segments entirely below rcv_nxt. */
  duplicateSegments: number;
  /** Guest payload bytes beyond the advertised window (trimmed off). */
  beyondWindow: number;
  /** ACK, SYN-ACK and FIN-ACK frames sent to guests (RSTs are counted in rstsSent). */
  acksSent: number;
  /** Frames for the bridge dropped because no bridge is connected. */
  lanDropped: number;
  /** Received skbs linearized because they carried a frag_list. */
  linearized: number;
  /** Payload bytes moved onto outbound write queues. */
  bytesRelayed: number;
  /** Payload bytes the peer ACKed. */
  bytesAcked: number;
  /** Segments handed to the uplink (first transmissions and retransmissions; a GSO skb counts once). */
  segmentsSent: number;
  /** Of segmentsSent, GSO skbs (payload > MSS). */
  gsoSent: number;
  /** Retransmitted segments. */
  retransmits: number;
  rtoEvents: number;
  fastRetransmits: number;
  /** Partial ACKs that trimmed the head of a queued skb (tcp_trim_head). */
  partialAcks: number;
  /** tcp_fragment splits (skbSplit). */
  fragments: number;
  /** Small writes appended to the unsent tail skb by skb_try_coalesce. */
  coalesced: number;
  /** skb_try_coalesce attempts that failed (ctx.stats.coalesceRefused counts those refused by the design). */
  coalesceRefused: number;
  /** Transmissions of a still-cloned skb, which take a pskb_copy instead of a clone. */
  pskbCopies: number;
  /** Transmit copies whose header area was shared or too small (pskb_expand_head before pushing headers). */
  headerExpands: number;
  /** Received skbs uncloned before queueing (their head was shared with a tap or flood clone). */
  uncloned: number;
  /** Duplicate ACKs received from the peer. */
  dupAcks: number;
  /** Uplink frames that are malformed, not for us, or not acceptable for their connection. */
  uplinkBad: number;
  /** Uplink frames for a connection that no longer exists (late ACKs after the close; no TIME_WAIT). */
  uplinkStale: number;
  /** Operations that failed with -ENOMEM (the data stays queued and is retried). */
  allocFailures: number;
}

/** One queued skb of an outbound connection with TCP_SKB_CB's fields (seq, end_seq, flags, when, sacked). */
interface TxEntry {
  skb: SkBuff;
  seq: number;
  /** seq + payload length (+1 for SYN or FIN). */
  endSeq: number;
  /** TCPHDR_SYN or TCPHDR_FIN for the control entries, 0 for data. */
  flags: number;
  /** When it was last transmitted (clock ms). */
  sentAt: number;
  /** Ever retransmitted (Karn: no RTT sample from it). */
  retransmitted: boolean;
  /** Marked lost and not retransmitted since (TCPCB_LOST). */
  lost: boolean;
}

/** The outbound relay connection to the peer (struct tcp_sock, sender side only). */
class OutConn {
  state = TCP_SYN_SENT;
  readonly sport: number;
  readonly iss: number;
  sndUna: number;
  sndNxt: number;
  /** Sequence number after the last queued byte (write_seq). */
  writeSeq: number;
  /** The peer's next sequence number (what our segments ACK). */
  rcvNxt = 0;
  sndWnd = 0;
  /** Congestion window and slow-start threshold, bytes. */
  cwnd: number;
  ssthresh = 0x7fffffff;
  srtt = -1;
  rttvar = 0;
  rto: number;
  /** RTO deadline (clock ms) or Infinity when nothing is outstanding. */
  rtoAt = Infinity;
  dupAcks = 0;
  /** TCP_CA_Open, or TCP_CA_Recovery / TCP_CA_Loss until high_seq is ACKed. */
  caState = TCP_CA_Open;
  highSeq = 0;
  ipId = 0;
  /** [0, sendHead) sent and unACKed (the retransmit queue); [sendHead, n) not sent yet (the write queue). */
  readonly queue: TxEntry[] = [];
  sendHead = 0;
  /** Payload bytes queued (write + retransmit). */
  queuedBytes = 0;
  /** Sequence space sent and not ACKed nor marked lost (bytes in flight). */
  pipe = 0;
  finQueued = false;

  constructor(sport: number, iss: number, cwnd: number, rto: number) {
    this.sport = sport;
    this.iss = iss;
    this.sndUna = iss;
    this.sndNxt = iss;
    this.writeSeq = (iss + 1) >>> 0;
    this.cwnd = cwnd;
    this.rto = rto;
  }
}

/** A guest's connection to the endpoint (receiver side only). */
class GuestConn {
  state = TCP_SYN_RECV;
  readonly key: number;
  readonly saddr: number;
  readonly sport: number;
  readonly mac: number;
  readonly irs: number;
  readonly iss: number;
  rcvNxt: number;
  /** Payload-only skbs waiting for room on the outbound write queue. */
  readonly rcvQueue: SkBuff[] = [];
  rcvQueueBytes = 0;
  /** rcv_nxt + window as last advertised. */
  rcvWup: number;
  ackPending = true;
  finReceived = false;
  readonly out: OutConn;

  constructor(key: number, saddr: number, sport: number, mac: number, irs: number, iss: number, out: OutConn) {
    this.key = key;
    this.saddr = saddr;
    this.sport = sport;
    this.mac = mac;
    this.irs = irs;
    this.iss = iss;
    this.rcvNxt = (irs + 1) >>> 0;
    this.rcvWup = this.rcvNxt;
    this.out = out;
  }
}

/** The local TCP endpoint: a bridge port that relays guest streams to a remote peer out of guest pages. */
export class TcpEndpoint implements NetDevice, SkbHolder {
  readonly name: string;
  readonly mtu: number;
  readonly features: NetdevFeatures = { sg: true, tso: true };
  readonly stats: TcpEndpointStats = {
    framesIn: 0,
    notForUs: 0,
    badFrames: 0,
    noConnection: 0,
    refused: 0,
    rstsSent: 0,
    connectionsOpened: 0,
    connectionsClosed: 0,
    connectionsAborted: 0,
    bytesIn: 0,
    outOfOrder: 0,
    duplicateSegments: 0,
    beyondWindow: 0,
    acksSent: 0,
    lanDropped: 0,
    linearized: 0,
    bytesRelayed: 0,
    bytesAcked: 0,
    segmentsSent: 0,
    gsoSent: 0,
    retransmits: 0,
    rtoEvents: 0,
    fastRetransmits: 0,
    partialAcks: 0,
    fragments: 0,
    coalesced: 0,
    coalesceRefused: 0,
    pskbCopies: 0,
    headerExpands: 0,
    uncloned: 0,
    dupAcks: 0,
    uplinkBad: 0,
    uplinkStale: 0,
    allocFailures: 0,
  };
  /** The first malformed-frame message seen (guest or uplink), for diagnostics. */
  lastError: string | null = null;
  /** The MSS of outbound segments: uplink MTU minus IPv4 and TCP headers. */
  readonly mss: number;

  private readonly ctx: SkbContext;
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly mac: number;
  private readonly ip: number;
  private readonly port: number;
  private readonly uplink: NetDevice;
  private readonly peerMac: number;
  private readonly peerIp: number;
  private readonly peerPort: number;
  private readonly rcvBuf: number;
  private readonly sndBuf: number;
  private readonly initCwnd: number;
  private readonly maxCwnd: number;
  private readonly rtoMin: number;
  private readonly rtoMax: number;
  private readonly rtoInit: number;
  private readonly maxConnections: number;
  private readonly coalesce: boolean;
  /** Largest payload of one transmitted skb: MSS, or a multiple of it up to 64 KiB with TSO. */
  private readonly sizeGoal: number;
  private readonly lanMss: number;
  private lan: ((skb: SkBuff) => void) | null = null;
  /** Guest connections by (saddr << 16 | sport), as an exact number. */
  private readonly guests = new Map<number, GuestConn>();
  /** Outbound connections by source port (the peer's stream id). */
  private readonly outs = new Map<number, GuestConn>();
  private readonly entryPool: TxEntry[] = [];

  constructor(opts: TcpEndpointOptions) {
    this.ctx = opts.ctx;
    this.clock = opts.clock;
    this.random = opts.random;
    this.name = opts.name ?? 'tcp0';
    this.mtu = opts.mtu ?? 1500;
    this.mac = opts.mac;
    this.ip = opts.ip >>> 0;
    this.port = checkPort('port', opts.port);
    this.uplink = opts.uplink;
    this.peerMac = opts.peerMac;
    this.peerIp = opts.peerIp >>> 0;
    this.peerPort = checkPort('peerPort', opts.peerPort);
    this.mss = opts.uplink.mtu - IPV4_HLEN - TCP_HLEN;
    if (!Number.isInteger(this.mss) || this.mss < 64) throw new RangeError(`tcp uplink mtu must give an MSS >= 64, got mtu ${opts.uplink.mtu}`);
    this.lanMss = this.mtu - IPV4_HLEN - TCP_HLEN;
    this.rcvBuf = checkInt('rcvBuf', opts.rcvBuf ?? 0xffff, 1, 0xffff);
    this.sndBuf = checkInt('sndBuf', opts.sndBuf ?? 262144, this.rcvBuf, 2 ** 30);
    this.initCwnd = checkInt('initCwnd', opts.initCwnd ?? TCP_INIT_CWND, 1, 1 << 16);
    this.maxCwnd = checkInt('maxCwnd', opts.maxCwnd ?? this.sndBuf, this.mss, 2 ** 30);
    this.rtoMin = checkInt('rtoMinMs', opts.rtoMinMs ?? TCP_RTO_MIN_MS, 1, 2 ** 30);
    this.rtoMax = checkInt('rtoMaxMs', opts.rtoMaxMs ?? TCP_RTO_MAX_MS, this.rtoMin, 2 ** 30);
    this.rtoInit = checkInt('rtoInitMs', opts.rtoInitMs ?? TCP_TIMEOUT_INIT_MS, this.rtoMin, this.rtoMax);
    this.maxConnections = checkInt('maxConnections', opts.maxConnections ?? 64, 1, 1 << 16);
    this.coalesce = opts.coalesce ?? true;
    this.sizeGoal = opts.uplink.features.tso ? Math.floor(TCP_TSO_MAX_PAYLOAD / this.mss) * this.mss : this.mss;
  }

  /** Connects the endpoint's bridge side: frames it sends to guests go to `input` (e.g. bridge.input(skb, endpoint)). */
  connectLan(input: (skb: SkBuff) => void): void {
    this.lan = input;
  }

  /** Open guest connections. */
  get connections(): number {
    return this.guests.size;
  }

  /** ndo_start_xmit of the endpoint's bridge port: a frame from a guest arrives (one reference handed over). */
  startXmit(skb: SkBuff): void {
    this.stats.framesIn++;
    if (skbShared(skb)) {
      // skb_share_check: someone else holds this skb object; work on our own clone.
      const c = skbClone(skb);
      kfreeSkb(skb);
      skb = c;
    }
    const r = this.pullHeaders(skb);
    if (!r.ok) {
      this.stats.badFrames++;
      this.lastError ??= r.error;
      kfreeSkb(skb);
      return;
    }
    if (r.value === null) {
      this.stats.notForUs++;
      kfreeSkb(skb);
      return;
    }
    this.segmentArrived(skb, r.value);
  }

  /** A frame from the uplink (the peer's ACKs); the bytes are read during the call only. */
  uplinkReceive(frame: Uint8Array, len: number = frame.length): void {
    const r = parseTcpFrame(frame, 0, len);
    if (!r.ok) {
      this.stats.uplinkBad++;
      this.lastError ??= r.error;
      return;
    }
    const f = r.value;
    if (f.ethDst !== this.mac || f.daddr !== this.ip || f.saddr !== this.peerIp || f.tcp.sport !== this.peerPort) {
      this.stats.uplinkBad++;
      return;
    }
    const g = this.outs.get(f.tcp.dport);
    if (g === undefined) {
      this.stats.uplinkStale++;
      return;
    }
    this.peerSegment(g, f.tcp, f.payloadLen, this.clock.now());
  }

  /** Timers and deferred work: RTOs, relaying queued data, ACKs and window updates to guests. */
  poll(now: number): void {
    // Deleting the current entry while iterating a Map is safe.
    for (const g of this.guests.values()) {
      const out = g.out;
      if (out.rtoAt <= now && out.state !== TCP_CLOSE) this.retransmitTimer(g, now);
      this.relay(g, now);
      if (this.guests.get(g.key) !== g) continue;
      const edge = (g.rcvNxt + this.rcvWindow(g)) >>> 0;
      if (((edge - g.rcvWup) | 0) >= this.lanMss) g.ackPending = true; // window update
      if (g.ackPending) this.sendGuestAck(g);
    }
  }

  /** The earliest time at which `poll` has work (now when an ACK is pending), or Infinity. */
  nextDeadline(): number {
    let t = Infinity;
    for (const g of this.guests.values()) {
      if (g.ackPending) return this.clock.now();
      if (g.out.rtoAt < t) t = g.out.rtoAt;
    }
    return t;
  }

  /** Visits every skb the endpoint holds: receive queues, write queues and retransmit queues, once each. */
  forEachSkb(fn: (skb: SkBuff) => void): void {
    for (const g of this.guests.values()) {
      for (const skb of g.rcvQueue) fn(skb);
      for (const e of g.out.queue) fn(e.skb);
    }
  }

  /** Frees everything the endpoint holds and forgets every connection (device teardown; no RSTs are sent). */
  close(): void {
    for (const g of this.guests.values()) this.destroy(g);
  }

  // -------------------------------------------------------------------------------------------------------
  // Guest side

  /** Makes the Ethernet, IPv4 and TCP headers linear and parses them; null when the frame is not for us. */
  private pullHeaders(skb: SkBuff): Result<TcpFrame | null> {
    if (!pskbMayPull(skb, ETH_HLEN)) return err(`frame is too short: expected >= ${ETH_HLEN} bytes but got ${skb.len}`);
    let b = skb.head;
    const d = skb.data;
    const eth = parseEthHeader(b, d, skb.len);
    if (!eth.ok) return eth;
    if (eth.value.dst !== this.mac || eth.value.proto !== ETH_P_IP) return ok(null);
    // Pull the IPv4 header, then the TCP header, as far as the frame has them; the parser judges the rest.
    const l3len = skb.len - ETH_HLEN;
    if (!pskbMayPull(skb, ETH_HLEN + Math.min(l3len, IPV4_HLEN))) return err('IPv4 header could not be pulled');
    b = skb.head;
    const ihl = l3len >= 1 ? (b[skb.data + ETH_HLEN]! & 0x0f) * 4 : 0;
    if (ihl > IPV4_HLEN && ihl <= l3len && !pskbMayPull(skb, ETH_HLEN + ihl)) return err('IPv4 options could not be pulled');
    b = skb.head;
    const ip = parseIpv4Header(b, skb.data + ETH_HLEN, l3len);
    if (!ip.ok) return ip;
    if (ip.value.daddr !== this.ip || ip.value.proto !== IPPROTO_TCP) return ok(null);
    const l4len = ip.value.totalLen - ip.value.ihl;
    const l4 = ETH_HLEN + ip.value.ihl;
    if (!pskbMayPull(skb, l4 + Math.min(l4len, TCP_HLEN))) return err('TCP header could not be pulled');
    b = skb.head;
    const doff = l4len >= TCP_HLEN ? (b[skb.data + l4 + 12]! >>> 4) * 4 : 0;
    if (doff > TCP_HLEN && doff <= l4len && !pskbMayPull(skb, l4 + doff)) return err('TCP options could not be pulled');
    const f = parseTcpFrame(skb.head, skb.data, skb.len);
    if (!f.ok) return f;
    if (f.value.tcp.dport !== this.port) return ok(null);
    return f;
  }

  /** tcp_v4_rcv + tcp_rcv_state_process + tcp_data_queue for one guest segment; consumes `skb`. */
  private segmentArrived(skb: SkBuff, f: TcpFrame): void {
    const t = f.tcp;
    const key = f.saddr * 0x10000 + t.sport;
    const g = this.guests.get(key);
    const now = this.clock.now();
    if ((t.flags & TCPHDR_RST) !== 0) {
      if (g !== undefined) this.abort(g, false);
      kfreeSkb(skb);
      return;
    }
    if ((t.flags & TCPHDR_SYN) !== 0) {
      if (g === undefined) this.listen(f, now);
      else if (g.irs === t.seq && g.state === TCP_SYN_RECV) g.ackPending = true; // retransmitted SYN
      kfreeSkb(skb);
      return;
    }
    if (g === undefined) {
      this.stats.noConnection++;
      // RFC 793: <SEQ=SEG.ACK><CTL=RST>, or <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK> without ACK.
      const segLen = f.payloadLen + ((t.flags & TCPHDR_FIN) !== 0 ? 1 : 0);
      if ((t.flags & TCPHDR_ACK) !== 0) this.sendLan(f.ethSrc, f.saddr, t.sport, t.ack, 0, TCPHDR_RST, 0);
      else this.sendLan(f.ethSrc, f.saddr, t.sport, 0, (t.seq + segLen) >>> 0, TCPHDR_RST | TCPHDR_ACK, 0);
      this.stats.rstsSent++;
      kfreeSkb(skb);
      return;
    }
    if ((t.flags & TCPHDR_ACK) === 0) {
      kfreeSkb(skb); // RFC 793: without ACK a segment is dropped in synchronized states
      return;
    }
    if (g.state === TCP_SYN_RECV) {
      if (t.ack !== ((g.iss + 1) >>> 0)) {
        kfreeSkb(skb);
        return;
      }
      g.state = TCP_ESTABLISHED;
    }
    this.dataArrived(g, skb, f, now);
  }

  /** A SYN for a new connection: open the guest side and the outbound relay connection. */
  private listen(f: TcpFrame, now: number): void {
    const t = f.tcp;
    if (this.outs.has(t.sport) || this.guests.size >= this.maxConnections) {
      this.stats.refused++;
      this.stats.rstsSent++;
      this.sendLan(f.ethSrc, f.saddr, t.sport, 0, (t.seq + 1) >>> 0, TCPHDR_RST | TCPHDR_ACK, 0);
      return;
    }
    const out = new OutConn(t.sport, this.random.u32(), this.initCwnd * this.mss, this.rtoInit);
    const g = new GuestConn(f.saddr * 0x10000 + t.sport, f.saddr, t.sport, f.ethSrc, t.seq, this.random.u32(), out);
    this.guests.set(g.key, g);
    this.outs.set(t.sport, g);
    this.stats.connectionsOpened++;
    // Our SYN to the peer is the first entry of the outbound queue, retransmitted like data.
    const syn = this.controlSkb();
    this.queueEntry(out, syn, out.iss, (out.iss + 1) >>> 0, TCPHDR_SYN);
    this.writeXmit(g, now);
  }

  /** tcp_data_queue, in order only: strip the headers and queue the payload skb; consumes `skb`. */
  private dataArrived(g: GuestConn, skb: SkBuff, f: TcpFrame, now: number): void {
    const t = f.tcp;
    const fin = (t.flags & TCPHDR_FIN) !== 0;
    const plen = f.payloadLen;
    if (plen === 0 && !fin) {
      kfreeSkb(skb); // a pure ACK: we send no data, so there is nothing to learn from it
      return;
    }
    const d = (t.seq - g.rcvNxt) | 0;
    if (d > 0) {
      this.stats.outOfOrder++;
      g.ackPending = true;
      kfreeSkb(skb);
      return;
    }
    if (g.finReceived || d + plen < 0 || (d + plen === 0 && !fin)) {
      this.stats.duplicateSegments++;
      g.ackPending = true;
      kfreeSkb(skb);
      return;
    }
    const overlap = -d;
    const fresh = plen - overlap;
    const accept = Math.min(fresh, this.rcvWindow(g));
    const finAccepted = fin && accept === fresh;
    if (accept < fresh) this.stats.beyondWindow += fresh - accept;
    g.ackPending = true;
    if (accept === 0) {
      if (finAccepted) this.finArrived(g, now);
      kfreeSkb(skb);
      return;
    }
    // Keep only [overlap, overlap + accept) of the payload: headers off, padding and excess trimmed.
    __skbPull(skb, f.hdrLen);
    if (pskbTrim(skb, overlap + accept) !== 0 || !this.dropFragList(skb) || (overlap > 0 && tcpTrimHead(skb, overlap) !== 0)) {
      this.stats.allocFailures++;
      kfreeSkb(skb);
      return;
    }
    skb.macHeader = -1;
    skb.networkHeader = -1;
    skb.transportHeader = -1;
    g.rcvQueue.push(skb);
    g.rcvQueueBytes += accept;
    g.rcvNxt = (g.rcvNxt + accept) >>> 0;
    this.stats.bytesIn += accept;
    if (finAccepted) this.finArrived(g, now);
    this.relay(g, now);
  }

  /** TCP's queues never hold a frag_list skb (tcp_trim_head and skb_split refuse them): linearize such an skb. */
  private dropFragList(skb: SkBuff): boolean {
    if (skb.shinfo.fragList === null) return true;
    if (skbLinearize(skb) !== 0) return false;
    this.stats.linearized++;
    return true;
  }

  /** The guest's FIN is in order: it takes a sequence number; the outbound FIN follows the relayed data. */
  private finArrived(g: GuestConn, now: number): void {
    g.rcvNxt = (g.rcvNxt + 1) >>> 0;
    g.finReceived = true;
    g.ackPending = true;
    this.relay(g, now);
  }

  /** The window we advertise to a guest: room left in its receive queue. */
  private rcvWindow(g: GuestConn): number {
    return Math.max(0, this.rcvBuf - g.rcvQueueBytes);
  }

  /** Sends the cumulative ACK (with SYN while the handshake is open, with FIN once the guest closed). */
  private sendGuestAck(g: GuestConn): void {
    g.ackPending = false;
    this.stats.acksSent++;
    const wnd = this.rcvWindow(g);
    g.rcvWup = (g.rcvNxt + wnd) >>> 0;
    let flags = TCPHDR_ACK;
    let seq = (g.iss + 1) >>> 0;
    if (g.state === TCP_SYN_RECV) {
      flags |= TCPHDR_SYN;
      seq = g.iss;
    } else if (g.finReceived) {
      flags |= TCPHDR_FIN;
    }
    this.sendLan(g.mac, g.saddr, g.sport, seq, g.rcvNxt, flags, wnd);
  }

  /** Builds a header-only frame to a guest as a fresh local skb and hands it to the bridge. */
  private sendLan(dstMac: number, daddr: number, dport: number, seq: number, ack: number, flags: number, window: number): void {
    const skb = this.controlSkb();
    this.pushHeaders(skb, this.mac, dstMac, this.ip, daddr, this.port, dport, seq, ack, flags, window, 0, false);
    if (this.lan === null) {
      this.stats.lanDropped++;
      kfreeSkb(skb);
      return;
    }
    this.lan(skb);
  }

  // -------------------------------------------------------------------------------------------------------
  // Relay: guest receive queue -> outbound write queue

  /** Moves received payload skbs onto the outbound write queue while it has room, then transmits. */
  private relay(g: GuestConn, now: number): void {
    const out = g.out;
    while (g.rcvQueue.length > 0 && out.state !== TCP_CLOSE) {
      const skb = g.rcvQueue[0]!;
      const len = skb.len;
      if (out.queuedBytes + len > this.sndBuf) break;
      if (!this.prepareForWriteQueue(skb)) break;
      g.rcvQueue.shift();
      g.rcvQueueBytes -= len;
      this.sendSkb(out, skb);
    }
    if (g.finReceived && g.rcvQueue.length === 0 && !out.finQueued && out.state !== TCP_CLOSE) {
      out.finQueued = true;
      const fin = this.controlSkb();
      this.queueEntry(out, fin, out.writeSeq, (out.writeSeq + 1) >>> 0, TCPHDR_FIN);
      out.writeSeq = (out.writeSeq + 1) >>> 0;
    }
    this.writeXmit(g, now);
  }

  /**
   * A received skb becomes a TCP write-queue skb: private data (its head may be shared with a tap's or a
   * flooded clone, whose headers our pushes would overwrite: skb_unclone), no frag_list (tcp_fragment and
   * tcp_trim_head never see one), gso fields reset, and its header area released to transmit clones.
   */
  private prepareForWriteQueue(skb: SkBuff): boolean {
    if (!this.dropFragList(skb)) {
      this.stats.allocFailures++;
      return false;
    }
    if (skbCloned(skb) || skbHeadroom(skb) < TCP_TX_HEADERS) {
      if (pskbExpandHead(skb, Math.max(0, MAX_TCP_HEADER - skbHeadroom(skb)), 0) !== 0) {
        this.stats.allocFailures++;
        return false;
      }
      this.stats.uncloned++;
    }
    const s = skb.shinfo;
    s.gsoSize = 0;
    s.gsoSegs = 0;
    s.gsoType = 0;
    skbHeaderRelease(skb);
    return true;
  }

  /** tcp_sendpage's append: coalesce a small write into the unsent tail skb, or queue it as a new entry. */
  private sendSkb(out: OutConn, skb: SkBuff): void {
    const len = skb.len;
    this.stats.bytesRelayed += len;
    out.queuedBytes += len;
    const n = out.queue.length;
    const tail = n > out.sendHead ? out.queue[n - 1]! : null;
    if (this.coalesce && tail !== null && tail.flags === 0 && len < this.mss && tail.skb.len + len <= this.sizeGoal) {
      const r = skbTryCoalesce(tail.skb, skb);
      if (r.ok) {
        this.stats.coalesced++;
        tail.endSeq = (tail.endSeq + len) >>> 0;
        out.writeSeq = (out.writeSeq + len) >>> 0;
        kfreeSkbPartial(skb, r.fragstolen);
        return;
      }
      this.stats.coalesceRefused++;
    }
    this.queueEntry(out, skb, out.writeSeq, (out.writeSeq + len) >>> 0, 0);
    out.writeSeq = (out.writeSeq + len) >>> 0;
  }

  /** A fresh local skb with headroom for all headers and no payload (ACKs, SYN, FIN, RST). */
  private controlSkb(): SkBuff {
    const skb = allocSkb(this.ctx, MAX_TCP_HEADER);
    skbReserve(skb, MAX_TCP_HEADER);
    return skb;
  }

  private queueEntry(out: OutConn, skb: SkBuff, seq: number, endSeq: number, flags: number): void {
    const e = this.entryPool.pop() ?? { skb, seq, endSeq, flags, sentAt: 0, retransmitted: false, lost: false };
    e.skb = skb;
    e.seq = seq;
    e.endSeq = endSeq;
    e.flags = flags;
    e.sentAt = 0;
    e.retransmitted = false;
    e.lost = false;
    out.queue.push(e);
  }

  // -------------------------------------------------------------------------------------------------------
  // Peer side: output

  /** tcp_xmit_retransmit_queue + tcp_write_xmit: lost segments first, then new data, within cwnd and the peer's window. */
  private writeXmit(g: GuestConn, now: number): void {
    const out = g.out;
    if (out.state === TCP_CLOSE) return;
    const q = out.queue;
    for (let i = 0; i < out.sendHead; i++) {
      const e = q[i]!;
      if (!e.lost) continue;
      const room = out.cwnd - out.pipe;
      if (room <= 0) return;
      if (!this.fitSegment(out, i, room)) return;
      this.transmit(g, e, now, true);
    }
    while (out.sendHead < q.length) {
      const e = q[out.sendHead]!;
      if (out.state === TCP_SYN_SENT && e.flags !== TCPHDR_SYN) return; // data waits for the handshake
      const room = Math.min(out.cwnd - out.pipe, ((out.sndUna + out.sndWnd - e.seq) | 0) + (e.flags === TCPHDR_SYN ? 1 : 0));
      if (room <= 0) return;
      if (!this.fitSegment(out, out.sendHead, room)) return;
      out.sendHead++;
      if (seqAfter(e.endSeq, out.sndNxt)) out.sndNxt = e.endSeq;
      this.transmit(g, e, now, false);
    }
  }

  /**
   * Makes queue[i] at most one segment (MSS, or the TSO size goal) and at most `room` bytes, splitting it
   * with tcp_fragment; false when not even one full segment (or the whole entry) fits: wait for ACKs.
   */
  private fitSegment(out: OutConn, i: number, room: number): boolean {
    const e = out.queue[i]!;
    const len = (e.endSeq - e.seq) >>> 0;
    if (e.flags !== 0) return len <= room || out.pipe === 0;
    let want = Math.min(len, this.sizeGoal);
    if (want > room) {
      if (room < this.mss) {
        // Silly window avoidance: send a sub-MSS piece only when nothing else is in flight.
        if (out.pipe > 0) return false;
        want = Math.min(want, Math.max(room, 1));
      } else {
        want = Math.floor(room / this.mss) * this.mss;
      }
    }
    if (want < len) return this.fragment(out, i, want);
    return true;
  }

  /** tcp_fragment: queue[i] keeps its first `len` bytes, a new skb (skb_split) gets the rest, right after it. */
  private fragment(out: OutConn, i: number, len: number): boolean {
    const e = out.queue[i]!;
    const skb = e.skb;
    if (skbUnclone(skb) !== 0) {
      this.stats.allocFailures++;
      return false;
    }
    const nsize = Math.max(0, skbHeadlen(skb) - len);
    const buff = allocSkb(this.ctx, MAX_TCP_HEADER + nsize);
    skbReserve(buff, MAX_TCP_HEADER);
    skbSplit(skb, buff, len);
    skbHeaderRelease(buff);
    this.stats.fragments++;
    const endSeq = e.endSeq;
    e.endSeq = (e.seq + len) >>> 0;
    this.queueEntry(out, buff, e.endSeq, endSeq, 0);
    const ne = out.queue.pop()!;
    ne.sentAt = e.sentAt;
    ne.retransmitted = e.retransmitted;
    ne.lost = e.lost;
    out.queue.splice(i + 1, 0, ne);
    if (i < out.sendHead) {
      // Both halves were sent: the new one is in the retransmit queue too.
      out.sendHead++;
    }
    return true;
  }

  /**
   * tcp_transmit_skb + ip_queue_xmit + the Ethernet header: a clone of the queued skb (a pskb_copy while an
   * earlier clone is still in flight) gets the headers pushed into its headroom and goes to the uplink; the
   * original stays queued until ACKed.
   */
  private transmit(g: GuestConn, e: TxEntry, now: number, retransmit: boolean): void {
    const out = g.out;
    const skb = e.skb;
    const len = (e.endSeq - e.seq - (e.flags !== 0 ? 1 : 0)) >>> 0;
    if (len !== skb.len) throw new Error(`tcp: entry [${e.seq}, ${e.endSeq}) holds an skb of ${skb.len} bytes`);
    // tcp_set_skb_tso_segs on the original (its shinfo is private: we unclone before resizing).
    const gso = len > this.mss;
    const s = skb.shinfo;
    const gsoSize = gso ? this.mss : 0;
    if (s.gsoSize !== gsoSize) {
      if (skbUnclone(skb) !== 0) {
        this.stats.allocFailures++;
        return;
      }
      skb.shinfo.gsoSize = gsoSize;
      skb.shinfo.gsoSegs = gso ? Math.ceil(len / this.mss) : 1;
      skb.shinfo.gsoType = gso ? SKB_GSO_TCPV4 : 0;
    }
    if (!skb.nohdr && !skbCloned(skb)) skbHeaderRelease(skb); // __skb_header_release after an unclone
    let c: SkBuff;
    if (skbCloned(skb)) {
      c = pskbCopy(skb);
      this.stats.pskbCopies++;
    } else {
      c = skbClone(skb);
    }
    if (skbHeaderCloned(c) || skbHeadroom(c) < TCP_TX_HEADERS) {
      if (pskbExpandHead(c, Math.max(0, MAX_TCP_HEADER - skbHeadroom(c)), 0) !== 0) {
        this.stats.allocFailures++;
        kfreeSkb(c);
        return;
      }
      this.stats.headerExpands++;
    }
    let flags = TCPHDR_ACK;
    if (e.flags === TCPHDR_SYN) flags = TCPHDR_SYN;
    else if (e.flags === TCPHDR_FIN) flags |= TCPHDR_FIN;
    else if (e.endSeq === out.writeSeq) flags |= TCPHDR_PSH;
    const ack = out.state === TCP_SYN_SENT ? 0 : out.rcvNxt;
    this.pushHeaders(c, this.mac, this.peerMac, this.ip, this.peerIp, out.sport, this.peerPort, e.seq, ack, flags, 0xffff, out.ipId, len > 0);
    out.ipId = (out.ipId + (gso ? skb.shinfo.gsoSegs : 1)) & 0xffff;
    e.sentAt = now;
    if (retransmit) {
      e.retransmitted = true;
      this.stats.retransmits++;
    }
    if (retransmit !== e.lost) throw new Error('tcp: only unsent or lost segments are transmitted');
    out.pipe += (e.endSeq - e.seq) >>> 0;
    e.lost = false;
    if (out.rtoAt === Infinity) out.rtoAt = now + out.rto;
    this.stats.segmentsSent++;
    if (gso) this.stats.gsoSent++;
    this.uplink.startXmit(c);
  }

  /**
   * Pushes TCP, IPv4 and Ethernet headers in front of skb's data. With `partial` the TCP checksum is left
   * to the device (CHECKSUM_PARTIAL with the pseudo-header sum, as tcp_v4_send_check); otherwise the
   * header-only segment gets its full checksum.
   */
  private pushHeaders(
    skb: SkBuff,
    srcMac: number,
    dstMac: number,
    saddr: number,
    daddr: number,
    sport: number,
    dport: number,
    seq: number,
    ack: number,
    flags: number,
    window: number,
    ipId: number,
    partial: boolean,
  ): void {
    const l4len = TCP_HLEN + skb.len;
    const th = skbPush(skb, TCP_HLEN);
    writeTcpHeader(skb.head, th, { sport, dport, seq, ack, flags, window });
    writeL4Checksum(skb.head, th, partial ? l4len : TCP_HLEN, IPPROTO_TCP, saddr, daddr, partial);
    skb.transportHeader = th;
    if (partial) {
      skb.ipSummed = CHECKSUM_PARTIAL;
      skb.csumStart = th;
      skb.csumOffset = TCP_CSUM_OFFSET;
    } else {
      skb.ipSummed = CHECKSUM_NONE;
    }
    const nh = skbPush(skb, IPV4_HLEN);
    writeIpv4Header(skb.head, nh, { totalLen: Math.min(0xffff, IPV4_HLEN + l4len), id: ipId, ttl: 64, proto: IPPROTO_TCP, saddr, daddr });
    skb.networkHeader = nh;
    const mh = skbPush(skb, ETH_HLEN);
    writeEthHeader(skb.head, mh, dstMac, srcMac, ETH_P_IP);
    skb.macHeader = mh;
    skb.protocol = ETH_P_IP;
  }

  // -------------------------------------------------------------------------------------------------------
  // Peer side: input (tcp_ack)

  /** tcp_rcv_synsent_state_process / tcp_ack for one segment from the peer. */
  private peerSegment(g: GuestConn, t: TcpHeader, payloadLen: number, now: number): void {
    const out = g.out;
    if ((t.flags & TCPHDR_RST) !== 0) {
      this.abort(g, true);
      return;
    }
    if ((t.flags & TCPHDR_ACK) === 0 || out.state === TCP_CLOSE) return;
    if (out.state === TCP_SYN_SENT) {
      if ((t.flags & TCPHDR_SYN) === 0 || t.ack !== ((out.iss + 1) >>> 0)) {
        this.stats.uplinkBad++;
        return;
      }
      out.rcvNxt = (t.seq + 1) >>> 0;
      out.state = TCP_ESTABLISHED;
    }
    const ack = t.ack;
    if (seqAfter(ack, out.sndNxt)) {
      this.stats.uplinkBad++; // ACKs something never sent (RFC 5961 would answer with an ACK)
      return;
    }
    if (seqBefore(ack, out.sndUna)) return; // an old ACK
    if (ack === out.sndUna) {
      if (payloadLen === 0 && t.window === out.sndWnd && out.sendHead > 0 && (t.flags & TCPHDR_SYN) === 0) {
        this.duplicateAck(g, now);
      }
      out.sndWnd = t.window;
    } else {
      out.sndWnd = t.window;
      this.ackAdvanced(g, ack, now);
    }
    if (this.guests.get(g.key) !== g) return;
    this.relay(g, now);
  }

  /** tcp_fastretrans_alert for a duplicate ACK: after TCP_FASTRETRANS_THRESH, retransmit the head (Reno). */
  private duplicateAck(g: GuestConn, now: number): void {
    const out = g.out;
    this.stats.dupAcks++;
    out.dupAcks++;
    if (out.caState === TCP_CA_Recovery) {
      out.cwnd = Math.min(this.maxCwnd, out.cwnd + this.mss); // window inflation: a segment left the network
      return;
    }
    if (out.caState !== TCP_CA_Open || out.dupAcks < TCP_FASTRETRANS_THRESH) return;
    this.stats.fastRetransmits++;
    out.ssthresh = Math.max(out.pipe >>> 1, 2 * this.mss);
    out.cwnd = Math.min(this.maxCwnd, out.ssthresh + TCP_FASTRETRANS_THRESH * this.mss);
    out.caState = TCP_CA_Recovery;
    out.highSeq = out.sndNxt;
    this.markLost(out, 0);
    this.forceRetransmitHead(g, now);
  }

  /** tcp_ack + tcp_clean_rtx_queue for an ACK that advances snd_una. */
  private ackAdvanced(g: GuestConn, ack: number, now: number): void {
    const out = g.out;
    const q = out.queue;
    const acked = (ack - out.sndUna) >>> 0;
    let rtt = -1;
    let finAcked = false;
    while (out.sendHead > 0 && !seqAfter(q[0]!.endSeq, ack)) {
      const e = q.shift()!;
      out.sendHead--;
      const n = (e.endSeq - e.seq) >>> 0;
      if (!e.lost) out.pipe -= n;
      if (!e.retransmitted && rtt < 0) rtt = now - e.sentAt; // the oldest ACKed segment (seq_rtt), Karn's rule
      if (e.flags === 0) {
        out.queuedBytes -= n;
        this.stats.bytesAcked += n;
      } else if (e.flags === TCPHDR_FIN) {
        finAcked = true;
      }
      consumeSkb(e.skb);
      this.releaseEntry(e);
    }
    if (out.sendHead > 0 && seqAfter(ack, q[0]!.seq)) {
      // A partial ACK of the head skb: tcp_trim_head eats the ACKed bytes (and may drop pages).
      const e = q[0]!;
      const n = (ack - e.seq) >>> 0;
      if (tcpTrimHead(e.skb, n) !== 0) {
        this.stats.allocFailures++;
      } else {
        e.seq = ack;
        if (!e.lost) out.pipe -= n;
        out.queuedBytes -= n;
        this.stats.bytesAcked += n;
        this.stats.partialAcks++;
      }
    }
    out.sndUna = ack;
    if (rtt >= 0) this.rttSample(out, rtt);
    if (out.caState !== TCP_CA_Open && !seqBefore(ack, out.highSeq)) {
      // Recovery is over: deflate the window to ssthresh after fast recovery (tcp_end_cwnd_reduction).
      if (out.caState === TCP_CA_Recovery) out.cwnd = Math.max(this.mss, Math.min(out.cwnd, out.ssthresh));
      out.caState = TCP_CA_Open;
    } else if (out.caState === TCP_CA_Recovery) {
      // NewReno (RFC 6582): a partial ACK in fast recovery means the new head is lost too.
      out.cwnd = Math.max(this.mss, out.cwnd - acked + this.mss);
      this.markLost(out, 0);
      this.forceRetransmitHead(g, now);
    } else if (out.cwnd < out.ssthresh) {
      out.cwnd = Math.min(this.maxCwnd, out.cwnd + Math.min(acked, 2 * this.mss)); // slow start (RFC 3465, L = 2)
    } else {
      out.cwnd = Math.min(this.maxCwnd, out.cwnd + Math.max(1, Math.floor((this.mss * acked) / out.cwnd)));
    }
    out.dupAcks = 0;
    out.rtoAt = out.sendHead > 0 ? now + out.rto : Infinity;
    if (finAcked) this.finished(g);
  }

  /** RFC 6298 (tcp_rtt_estimator / tcp_set_rto): SRTT, RTTVAR and RTO from one sample, backoff reset. */
  private rttSample(out: OutConn, r: number): void {
    if (out.srtt < 0) {
      out.srtt = r;
      out.rttvar = r / 2;
    } else {
      out.rttvar = 0.75 * out.rttvar + 0.25 * Math.abs(out.srtt - r);
      out.srtt = 0.875 * out.srtt + 0.125 * r;
    }
    out.rto = Math.min(this.rtoMax, Math.max(this.rtoMin, out.srtt + Math.max(1, 4 * out.rttvar)));
  }

  /** tcp_retransmit_timer: enter loss (every sent segment lost, cwnd 1 MSS), back the RTO off, retransmit. */
  private retransmitTimer(g: GuestConn, now: number): void {
    const out = g.out;
    if (out.sendHead === 0) {
      out.rtoAt = Infinity;
      return;
    }
    this.stats.rtoEvents++;
    const flight = (out.sndNxt - out.sndUna) >>> 0;
    out.ssthresh = Math.max(flight >>> 1, 2 * this.mss);
    out.cwnd = this.mss;
    for (let i = 0; i < out.sendHead; i++) this.markLost(out, i);
    out.caState = TCP_CA_Loss;
    out.highSeq = out.sndNxt;
    out.dupAcks = 0;
    out.rto = Math.min(this.rtoMax, out.rto * 2);
    out.rtoAt = now + out.rto;
    this.writeXmit(g, now);
  }

  private markLost(out: OutConn, i: number): void {
    const e = out.queue[i]!;
    if (e.lost) return;
    e.lost = true;
    out.pipe -= (e.endSeq - e.seq) >>> 0;
  }

  /** Fast retransmit sends the head at once, whatever cwnd says (one segment). */
  private forceRetransmitHead(g: GuestConn, now: number): void {
    const out = g.out;
    if (out.sendHead === 0) return;
    const e = out.queue[0]!;
    if (!e.lost) return;
    if (e.flags === 0 && !this.fitSegment(out, 0, this.mss)) return;
    this.transmit(g, e, now, true);
  }

  private releaseEntry(e: TxEntry): void {
    e.skb = null as unknown as SkBuff; // the pool must not pin a freed skb
    this.entryPool.push(e);
  }

  // -------------------------------------------------------------------------------------------------------
  // Teardown

  /** The peer ACKed our FIN: the relay is complete. */
  private finished(g: GuestConn): void {
    this.stats.connectionsClosed++;
    if (g.ackPending) this.sendGuestAck(g); // the guest's FIN still waits for our FIN-ACK
    this.destroy(g);
  }

  /** A RST from either side: free everything; tell the other side. */
  private abort(g: GuestConn, fromPeer: boolean): void {
    this.stats.connectionsAborted++;
    if (fromPeer) {
      this.sendLan(g.mac, g.saddr, g.sport, (g.iss + 1) >>> 0, g.rcvNxt, TCPHDR_RST | TCPHDR_ACK, 0);
      this.stats.rstsSent++;
    } else if (g.out.state !== TCP_SYN_SENT) {
      const out = g.out;
      const skb = this.controlSkb();
      this.pushHeaders(skb, this.mac, this.peerMac, this.ip, this.peerIp, out.sport, this.peerPort, out.sndNxt, out.rcvNxt, TCPHDR_RST | TCPHDR_ACK, 0, out.ipId, false);
      this.stats.rstsSent++;
      this.uplink.startXmit(skb);
    }
    this.destroy(g);
  }

  private destroy(g: GuestConn): void {
    for (const skb of g.rcvQueue) kfreeSkb(skb);
    g.rcvQueue.length = 0;
    g.rcvQueueBytes = 0;
    const out = g.out;
    for (const e of out.queue) {
      kfreeSkb(e.skb);
      this.releaseEntry(e);
    }
    out.queue.length = 0;
    out.sendHead = 0;
    out.state = TCP_CLOSE;
    out.rtoAt = Infinity;
    this.guests.delete(g.key);
    this.outs.delete(g.sport);
  }
}

function checkPort(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1 || v > 0xffff) throw new RangeError(`tcp ${name} must be an integer in [1, 65535], got ${v}`);
  return v;
}

function checkInt(name: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`tcp ${name} must be an integer in [${lo}, ${hi}], got ${v}`);
  return v;
}
