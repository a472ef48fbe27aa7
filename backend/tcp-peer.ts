// The remote end of the local TCP endpoint's outbound connections: a host beyond the uplink NIC. It reads
// the bytes of every frame the NIC puts on the wire (it never keeps an skb), checks every payload byte
// against the stream pattern (shared/payload.ts: stream = the connection's source port, position from the
// sequence number), and answers cumulative ACKs after a round-trip time, sometimes ACKing only a prefix of
// a segment so that the sender must trim the head of a queued skb. Loss and reordering come from Random.
// Departures: the peer sends no data and no FIN of its own, keeps no payload (it verifies on arrival and
// remembers byte ranges only), never shrinks its window, and does not check TCP checksums (the sender
// leaves CHECKSUM_PARTIAL to the NIC; the payload pattern is the stronger check).
import type { Clock } from '../shared/clock.js';
import { ETH_HLEN, ETH_P_IP, macToString, writeEthHeader } from '../shared/ether.js';
import {
  IPPROTO_TCP,
  IPV4_HLEN,
  TCP_HLEN,
  TCPHDR_ACK,
  TCPHDR_FIN,
  TCPHDR_RST,
  TCPHDR_SYN,
  ipToString,
  writeIpv4Header,
  writeL4Checksum,
  writeTcpHeader,
} from '../shared/inet.js';
import { findPatternMismatch, patternByte } from '../shared/payload.js';
import type { Random } from '../shared/random.js';
import { type SkBuff, skbCopyBits } from './skbuff.js';
import { parseTcpFrame } from './tcp.js';

/** Largest frame the peer accepts from the wire: an Ethernet header plus a maximal IPv4 datagram (TSO frames). */
export const PEER_MAX_FRAME = ETH_HLEN + 0xffff;

/** Options of a TcpPeer. */
export interface TcpPeerOptions {
  readonly clock: Clock;
  readonly random: Random;
  /** The peer's MAC address (frames to another address are ignored). */
  readonly mac: number;
  /** The peer's IPv4 address (u32). */
  readonly ip: number;
  /** The TCP port the peer listens on. */
  readonly port: number;
  /** Where the peer's ACK frames go (the endpoint's uplink receive path); the buffer is reused after the call. */
  readonly deliver: (frame: Uint8Array) => void;
  /** Time from a frame reaching the peer to its ACK reaching the endpoint, ms. Default 1. */
  readonly rttMs?: number;
  /** Probability that a frame arriving from the wire is lost. Default 0. */
  readonly loss?: number;
  /** Probability that an ACK the peer sends is lost. Default 0. */
  readonly ackLoss?: number;
  /** Probability that an arriving frame is held back and processed `reorderDelayMs` later. Default 0. */
  readonly reorder?: number;
  /** How long a reordered frame is held, ms. Default 2 * rttMs. */
  readonly reorderDelayMs?: number;
  /** Probability that an in-order segment of 2+ bytes is first ACKed only for a prefix. Default 0. */
  readonly partialAck?: number;
  /** How long the rest of a partially ACKed segment waits for its ACK (delayed ACK), ms. Default 40. */
  readonly delayedAckMs?: number;
  /** The receive window the peer advertises, bytes (no window scaling: <= 65535). Default 65535. */
  readonly window?: number;
}

/** What the peer knows about one incoming stream. */
export interface PeerStreamInfo {
  /** The stream id (the sender's source port). */
  readonly stream: number;
  /** The sender's initial sequence number (from its SYN). */
  readonly isn: number;
  /** Bytes received in order (the stream position the peer ACKs up to, FIN excluded). */
  readonly bytes: number;
  /** Data segments whose payload did not match the stream pattern. */
  readonly corruptSegments: number;
  /** True once the sender's FIN arrived in order. */
  readonly finished: boolean;
}

/** Peer counters. */
export interface TcpPeerStats {
  /** Frames seen on the wire (before loss). */
  frames: number;
  /** Frames dropped by the loss model. */
  lost: number;
  /** Frames held back by the reorder model. */
  reordered: number;
  /** Frames that are not well-formed TCP/IPv4 for this peer. */
  badFrames: number;
  /** Segments for no known stream (no SYN seen). */
  unknownStream: number;
  /** Payload bytes that advanced a stream. */
  dataBytes: number;
  /** Payload bytes seen in data segments (new, duplicate or out of order). */
  payloadBytes: number;
  /** Segments that arrived ahead of the next expected byte. */
  outOfOrder: number;
  /** Data segments whose payload did not match the pattern, over all streams. */
  corruptSegments: number;
  /** ACKs handed to the endpoint (SYN-ACKs included). */
  acksSent: number;
  /** ACKs lost by the ACK loss model. */
  acksLost: number;
  /** ACKs covering only a prefix of what had arrived in order. */
  partialAcks: number;
}

interface Stream {
  readonly stream: number;
  readonly isn: number;
  /** Sequence number of stream position 0 (isn + 1). */
  readonly base: number;
  /** Next expected stream position. */
  rcv: number;
  /** Position up to which the peer has ACKed (<= rcv; lower while a partial ACK is outstanding). */
  acked: number;
  /** Out-of-order byte ranges [start, end) above rcv, sorted and disjoint. */
  readonly ofo: number[];
  /** Position of the FIN when seen (it occupies one sequence number), or -1. */
  fin: number;
  finished: boolean;
  corrupt: number;
  /** Addresses to answer (the endpoint's MAC and IPv4 address as seen in its frames). */
  replyMac: number;
  replyIp: number;
  /** Time at which a withheld ACK must go out anyway, or Infinity. */
  ackDue: number;
}

interface PendingAck {
  at: number;
  stream: Stream;
  ack: number; // absolute sequence number
  flags: number;
}

interface HeldFrame {
  at: number;
  bytes: Uint8Array;
}

/** A remote TCP receiver behind the uplink: verifies payload bytes and answers ACKs through `deliver`. */
export class TcpPeer {
  readonly stats: TcpPeerStats = {
    frames: 0,
    lost: 0,
    reordered: 0,
    badFrames: 0,
    unknownStream: 0,
    dataBytes: 0,
    payloadBytes: 0,
    outOfOrder: 0,
    corruptSegments: 0,
    acksSent: 0,
    acksLost: 0,
    partialAcks: 0,
  };
  /** The first malformed-frame and payload-corruption messages seen (for test diagnostics). */
  firstError: string | null = null;

  private readonly clock: Clock;
  private readonly random: Random;
  private readonly mac: number;
  private readonly ip: number;
  private readonly port: number;
  private readonly deliver: (frame: Uint8Array) => void;
  private readonly rttMs: number;
  private readonly loss: number;
  private readonly ackLoss: number;
  private readonly reorder: number;
  private readonly reorderDelayMs: number;
  private readonly partialAck: number;
  private readonly delayedAckMs: number;
  private readonly window: number;
  private readonly streams = new Map<number, Stream>();
  private readonly acks: PendingAck[] = [];
  private acksHead = 0;
  private readonly held: HeldFrame[] = [];
  private readonly rxBuf = new Uint8Array(PEER_MAX_FRAME);
  private readonly txBuf = new Uint8Array(ETH_HLEN + IPV4_HLEN + TCP_HLEN);
  private readonly iss: number;

  constructor(opts: TcpPeerOptions) {
    this.clock = opts.clock;
    this.random = opts.random;
    this.mac = opts.mac;
    this.ip = opts.ip >>> 0;
    this.port = opts.port;
    this.deliver = opts.deliver;
    this.rttMs = checkNonNegative('rttMs', opts.rttMs ?? 1);
    this.loss = checkProbability('loss', opts.loss ?? 0);
    this.ackLoss = checkProbability('ackLoss', opts.ackLoss ?? 0);
    this.reorder = checkProbability('reorder', opts.reorder ?? 0);
    this.reorderDelayMs = checkNonNegative('reorderDelayMs', opts.reorderDelayMs ?? 2 * this.rttMs);
    this.partialAck = checkProbability('partialAck', opts.partialAck ?? 0);
    this.delayedAckMs = checkNonNegative('delayedAckMs', opts.delayedAckMs ?? 40);
    const w = opts.window ?? 0xffff;
    if (!Number.isInteger(w) || w < 1 || w > 0xffff) throw new RangeError(`peer window must be an integer in [1, 65535], got ${w}`);
    this.window = w;
    this.iss = this.random.u32();
  }

  /** The NIC's wire callback: copies the frame's bytes out of `skb` (skbCopyBits) and never keeps the skb. */
  wire(skb: SkBuff): void {
    const len = skb.len;
    if (len > PEER_MAX_FRAME) {
      this.bad(`frame is too long: expected <= ${PEER_MAX_FRAME} bytes but got ${len}`);
      return;
    }
    if (skbCopyBits(skb, 0, this.rxBuf, 0, len) !== 0) {
      this.bad(`frame could not be read: skb_copy_bits failed for ${len} bytes`);
      return;
    }
    this.receive(this.rxBuf, len);
  }

  /** A frame of `len` bytes at the start of `frame` reached the peer (loss and reordering apply here). */
  receive(frame: Uint8Array, len: number): void {
    this.stats.frames++;
    if (this.loss > 0 && this.random.chance(this.loss)) {
      this.stats.lost++;
      return;
    }
    if (this.reorder > 0 && this.random.chance(this.reorder)) {
      this.stats.reordered++;
      this.held.push({ at: this.clock.now() + this.reorderDelayMs, bytes: frame.slice(0, len) });
      return;
    }
    this.process(frame, len);
  }

  /** Processes held frames and hands due ACKs to the endpoint. */
  poll(now: number): void {
    if (this.held.length > 0) {
      // Held frames are released in arrival order once due (a later frame never overtakes an earlier held one).
      let n = 0;
      while (n < this.held.length && this.held[n]!.at <= now) n++;
      if (n > 0) {
        const due = this.held.splice(0, n);
        for (const h of due) this.process(h.bytes, h.bytes.length);
      }
    }
    for (const s of this.streams.values()) {
      if (s.ackDue <= now) {
        s.ackDue = Infinity;
        if (s.acked < s.rcv) this.queueAck(s, s.rcv, TCPHDR_ACK);
      }
    }
    while (this.acksHead < this.acks.length && this.acks[this.acksHead]!.at <= now) {
      const a = this.acks[this.acksHead]!;
      this.acksHead++;
      this.sendAck(a.stream, a.ack, a.flags);
    }
    if (this.acksHead > 64 && this.acksHead * 2 > this.acks.length) {
      this.acks.splice(0, this.acksHead);
      this.acksHead = 0;
    }
  }

  /** The earliest time at which `poll` has work, or Infinity. */
  nextDeadline(): number {
    let t = this.acksHead < this.acks.length ? this.acks[this.acksHead]!.at : Infinity;
    if (this.held.length > 0) t = Math.min(t, this.held[0]!.at);
    for (const s of this.streams.values()) t = Math.min(t, s.ackDue);
    return t;
  }

  /** True when no ACK is waiting to be delivered and no frame is held back. */
  idle(): boolean {
    return this.acksHead >= this.acks.length && this.held.length === 0;
  }

  /** What the peer knows about the stream with this id (source port), or undefined. */
  stream(id: number): PeerStreamInfo | undefined {
    const s = this.streams.get(id);
    if (s === undefined) return undefined;
    return { stream: s.stream, isn: s.isn, bytes: s.rcv, corruptSegments: s.corrupt, finished: s.finished };
  }

  /** Every stream the peer has seen. */
  allStreams(): PeerStreamInfo[] {
    return [...this.streams.keys()].map((id) => this.stream(id)!);
  }

  private bad(message: string): void {
    this.stats.badFrames++;
    this.firstError ??= message;
  }

  private process(frame: Uint8Array, len: number): void {
    const parsed = parseTcpFrame(frame, 0, len);
    if (!parsed.ok) {
      this.bad(parsed.error);
      return;
    }
    const f = parsed.value;
    if (f.ethDst !== this.mac || f.daddr !== this.ip || f.tcp.dport !== this.port) {
      const want = `${macToString(this.mac)} ${ipToString(this.ip)}:${this.port}`;
      this.bad(`frame is not for this peer: expected ${want} but got ${macToString(f.ethDst)} ${ipToString(f.daddr)}:${f.tcp.dport}`);
      return;
    }
    const t = f.tcp;
    let s = this.streams.get(t.sport);
    if ((t.flags & TCPHDR_SYN) !== 0) {
      if (s === undefined || s.isn !== t.seq) {
        // A new incarnation of the port starts a new stream (the old one must have finished).
        s = {
          stream: t.sport,
          isn: t.seq,
          base: (t.seq + 1) >>> 0,
          rcv: 0,
          acked: 0,
          ofo: [],
          fin: -1,
          finished: false,
          corrupt: 0,
          replyMac: f.ethSrc,
          replyIp: f.saddr,
          ackDue: Infinity,
        };
        this.streams.set(t.sport, s);
      }
      this.queueAck(s, 0, TCPHDR_SYN | TCPHDR_ACK);
      return;
    }
    if (s === undefined) {
      this.stats.unknownStream++;
      return;
    }
    if ((t.flags & TCPHDR_RST) !== 0) {
      this.streams.delete(t.sport);
      return;
    }
    const fin = (t.flags & TCPHDR_FIN) !== 0;
    const len0 = f.payloadLen;
    // Signed distance from the next expected sequence number; stream positions stay below 2^31 here.
    const start = s.rcv + ((t.seq - ((s.base + s.rcv) >>> 0)) | 0);
    if (start < 0) {
      this.bad(`segment starts before the stream: position ${start}`);
      return;
    }
    if (len0 > 0) {
      const bad = findPatternMismatch(frame, f.payloadOff, len0, s.stream, start);
      if (bad >= 0) {
        s.corrupt++;
        this.stats.corruptSegments++;
        const got = frame[f.payloadOff + bad]!;
        const want = patternByte(s.stream, start + bad);
        this.firstError ??= `stream ${s.stream} payload is corrupt at position ${start + bad}: expected 0x${want.toString(16)} but got 0x${got.toString(16)}`;
      }
    }
    this.stats.payloadBytes += len0;
    const end = start + len0;
    if (fin && s.fin < 0) s.fin = end;
    const before = s.rcv;
    if (start > s.rcv) {
      this.stats.outOfOrder++;
      addRange(s.ofo, start, end);
      this.queueAck(s, s.rcv, TCPHDR_ACK); // a duplicate ACK, at once
      return;
    }
    if (end > s.rcv) {
      s.rcv = end;
      mergeOfo(s);
    }
    this.stats.dataBytes += s.rcv - before;
    if (s.fin >= 0 && s.rcv === s.fin) s.finished = true;
    if (s.rcv - before >= 2 && this.partialAck > 0 && this.random.chance(this.partialAck)) {
      // ACK a prefix now; the rest waits for the next ACK or the delayed-ACK deadline.
      this.stats.partialAcks++;
      this.queueAck(s, before + this.random.int(1, s.rcv - before - 1), TCPHDR_ACK);
      if (s.ackDue === Infinity) s.ackDue = this.clock.now() + this.delayedAckMs;
      return;
    }
    this.queueAck(s, s.rcv, TCPHDR_ACK);
  }

  /** Queues an ACK of stream position `pos` (plus the FIN once it is in order and `pos` reaches it). */
  private queueAck(s: Stream, pos: number, flags: number): void {
    if (pos > s.acked) s.acked = pos;
    if (s.acked >= s.rcv) s.ackDue = Infinity;
    const ack = (s.base + pos + (s.finished && pos === s.rcv ? 1 : 0)) >>> 0;
    this.acks.push({ at: this.clock.now() + this.rttMs, stream: s, ack, flags });
  }

  private sendAck(s: Stream, ack: number, flags: number): void {
    if (this.ackLoss > 0 && this.random.chance(this.ackLoss)) {
      this.stats.acksLost++;
      return;
    }
    const b = this.txBuf;
    writeEthHeader(b, 0, s.replyMac, this.mac, ETH_P_IP);
    writeIpv4Header(b, ETH_HLEN, {
      totalLen: IPV4_HLEN + TCP_HLEN,
      id: 0,
      ttl: 64,
      proto: IPPROTO_TCP,
      saddr: this.ip,
      daddr: s.replyIp,
    });
    const seq = (flags & TCPHDR_SYN) !== 0 ? this.iss : (this.iss + 1) >>> 0;
    writeTcpHeader(b, ETH_HLEN + IPV4_HLEN, { sport: this.port, dport: s.stream, seq, ack, flags, window: this.window });
    writeL4Checksum(b, ETH_HLEN + IPV4_HLEN, TCP_HLEN, IPPROTO_TCP, this.ip, s.replyIp, false);
    this.stats.acksSent++;
    this.deliver(b);
  }
}

/** Records [start, end) in a sorted list of disjoint ranges (flattened pairs), merging overlaps. */
function addRange(r: number[], start: number, end: number): void {
  if (end <= start) return;
  let lo = start;
  let hi = end;
  let i = 0;
  while (i < r.length && r[i + 1]! < lo) i += 2;
  let j = i;
  while (j < r.length && r[j]! <= hi) {
    lo = Math.min(lo, r[j]!);
    hi = Math.max(hi, r[j + 1]!);
    j += 2;
  }
  r.splice(i, j - i, lo, hi);
}

/** Advances a stream's next expected position over the out-of-order ranges it now reaches. */
function mergeOfo(s: Stream): void {
  const r = s.ofo;
  let n = 0;
  while (n < r.length && r[n]! <= s.rcv) {
    if (r[n + 1]! > s.rcv) s.rcv = r[n + 1]!;
    n += 2;
  }
  if (n > 0) r.splice(0, n);
}

function checkProbability(name: string, p: number): number {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`peer ${name} must be a probability in [0, 1], got ${p}`);
  return p;
}

function checkNonNegative(name: string, v: number): number {
  if (!(v >= 0) || !Number.isFinite(v)) throw new RangeError(`peer ${name} must be a finite number >= 0, got ${v}`);
  return v;
}
