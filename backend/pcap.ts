// Classic libpcap capture files (libpcap sf-pcap.c, pcap/pcap.h; https://www.tcpdump.org/manpages/pcap-savefile.5.html):
// a 24-byte file header, then per frame a 16-byte record header and incl_len bytes of the frame. We write
// little-endian (readers detect byte order from the magic). Records are assembled in one buffer and handed to
// the sink in large chunks, never one write per frame.
import { closeSync, openSync, writeSync } from 'node:fs';

export const TCPDUMP_MAGIC = 0xa1b2c3d4; // sf-pcap.c: microsecond timestamps
export const PCAP_VERSION_MAJOR = 2; // pcap/pcap.h
export const PCAP_VERSION_MINOR = 4;
export const MAXIMUM_SNAPLEN = 262144; // pcap-int.h: the largest snaplen tcpdump uses
export const LINKTYPE_ETHERNET = 1; // pcap/dlt.h (DLT_EN10MB)
export const PCAP_FILE_HEADER_LEN = 24; // struct pcap_file_header
export const PCAP_RECORD_HEADER_LEN = 16; // struct pcap_sf_pkthdr: ts_sec, ts_usec, incl_len (caplen), orig_len (len)

const DEFAULT_BUFFER_SIZE = 1 << 20;

/** Where a writer's bytes go; `write` may only read `bytes` during the call. */
export interface PcapSink {
  write(bytes: Uint8Array): void;
  close(): void;
}

/** Fills `len` bytes of the frame being recorded into `dst` at `dstOff` (a tap fills straight from its skb). */
export interface PcapFill {
  fill(dst: Uint8Array, dstOff: number, len: number): void;
}

/** A sink that keeps everything in memory (tests, or a capture shipped elsewhere). */
export class MemoryPcapSink implements PcapSink {
  private readonly chunks: Uint8Array[] = [];
  /** How many times `write` was called (to check buffering). */
  writes = 0;
  closed = false;

  write(bytes: Uint8Array): void {
    this.chunks.push(bytes.slice());
    this.writes++;
  }

  close(): void {
    this.closed = true;
  }

  /** Everything written so far, concatenated. */
  bytes(): Uint8Array {
    let n = 0;
    for (const c of this.chunks) n += c.length;
    const out = new Uint8Array(n);
    let off = 0;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}

/** A sink that writes a file synchronously (the backend loop is single-threaded; writes are already batched). */
export class FilePcapSink implements PcapSink {
  private fd: number;

  constructor(path: string) {
    this.fd = openSync(path, 'w');
  }

  write(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) off += writeSync(this.fd, bytes, off, bytes.length - off);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Options of a PcapWriter. */
export interface PcapWriterOptions {
  /** Bytes kept of each frame (the file header's snaplen); 1..MAXIMUM_SNAPLEN, default MAXIMUM_SNAPLEN. */
  readonly snaplen?: number;
  /** Bytes buffered before the sink is called; raised to hold at least one full record. Default 1 MiB. */
  readonly bufferSize?: number;
  /** Added to Clock times (ms) to form the record timestamps: the wall time the Clock's 0 stands for. Default 0. */
  readonly epochMs?: number;
}

/** Writes a classic pcap file: the header at construction, then one record per frame, buffered. */
export class PcapWriter {
  readonly snaplen: number;
  /** Records written. */
  records = 0;
  /** Records whose frame was longer than the snaplen (incl_len < orig_len). */
  truncated = 0;
  /** Bytes handed to the sink so far. */
  bytesFlushed = 0;

  private readonly sink: PcapSink;
  private readonly epochMs: number;
  private readonly buf: Uint8Array;
  private readonly view: DataView;
  private used = 0;
  private closed = false;
  private readonly bytesFill: { bytes: Uint8Array; off: number } & PcapFill;

  constructor(sink: PcapSink, opts: PcapWriterOptions = {}) {
    const snaplen = opts.snaplen ?? MAXIMUM_SNAPLEN;
    if (!Number.isInteger(snaplen) || snaplen < 1 || snaplen > MAXIMUM_SNAPLEN) {
      throw new RangeError(`pcap snaplen must be an integer in 1..${MAXIMUM_SNAPLEN}, got ${snaplen}`);
    }
    const epochMs = opts.epochMs ?? 0;
    if (!Number.isFinite(epochMs) || epochMs < 0) throw new RangeError(`pcap epochMs must be finite and >= 0, got ${epochMs}`);
    this.sink = sink;
    this.snaplen = snaplen;
    this.epochMs = epochMs;
    const size = Math.max(opts.bufferSize ?? DEFAULT_BUFFER_SIZE, PCAP_FILE_HEADER_LEN + PCAP_RECORD_HEADER_LEN + snaplen);
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
    this.bytesFill = {
      bytes: this.buf,
      off: 0,
      fill(dst: Uint8Array, dstOff: number, len: number): void {
        dst.set(this.bytes.subarray(this.off, this.off + len), dstOff);
      },
    };
    // struct pcap_file_header: magic, version_major, version_minor, thiszone, sigfigs, snaplen, linktype.
    const v = this.view;
    v.setUint32(0, TCPDUMP_MAGIC, true);
    v.setUint16(4, PCAP_VERSION_MAJOR, true);
    v.setUint16(6, PCAP_VERSION_MINOR, true);
    v.setInt32(8, 0, true);
    v.setUint32(12, 0, true);
    v.setUint32(16, snaplen, true);
    v.setUint32(20, LINKTYPE_ETHERNET, true);
    this.used = PCAP_FILE_HEADER_LEN;
  }

  /** Records one frame of `origLen` bytes seen at Clock time `timeMs`; `src` supplies its first incl_len bytes. */
  writeRecord(timeMs: number, origLen: number, src: PcapFill): void {
    if (this.closed) throw new Error('pcap writer is closed');
    const incl = origLen < this.snaplen ? origLen : this.snaplen;
    if (this.used + PCAP_RECORD_HEADER_LEN + incl > this.buf.length) this.flush();
    // Microseconds as an integer first, so ts_usec is always < 1e6 and never rounds up to a full second.
    const usecTotal = Math.floor((this.epochMs + timeMs) * 1000);
    const sec = Math.floor(usecTotal / 1e6);
    const o = this.used;
    this.view.setUint32(o, sec, true);
    this.view.setUint32(o + 4, usecTotal - sec * 1e6, true);
    this.view.setUint32(o + 8, incl, true);
    this.view.setUint32(o + 12, origLen, true);
    src.fill(this.buf, o + PCAP_RECORD_HEADER_LEN, incl);
    this.used = o + PCAP_RECORD_HEADER_LEN + incl;
    this.records++;
    if (incl < origLen) this.truncated++;
  }

  /** Records `len` contiguous frame bytes at `off` in `bytes`. */
  writeFrame(timeMs: number, bytes: Uint8Array, off: number, len: number): void {
    this.bytesFill.bytes = bytes;
    this.bytesFill.off = off;
    this.writeRecord(timeMs, len, this.bytesFill);
    this.bytesFill.bytes = this.buf;
  }

  /** Hands everything buffered to the sink. */
  flush(): void {
    if (this.used === 0) return;
    this.sink.write(this.buf.subarray(0, this.used));
    this.bytesFlushed += this.used;
    this.used = 0;
  }

  /** Flushes and closes the sink; later writes throw. */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.sink.close();
  }
}
