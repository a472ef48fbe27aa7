import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FilePcapSink, MemoryPcapSink, PcapWriter } from '../../backend/pcap.js';
import { ETH_HLEN, ETH_P_IP, writeEthHeader } from '../../shared/ether.js';
import { IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, TCP_HLEN, UDP_HLEN, ipv4, writeIpv4Header, writeL4Checksum, writeTcpHeader, writeUdpHeader } from '../../shared/inet.js';
import { fillPattern } from '../../shared/payload.js';

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const FRAME14 = hex('ffffffffffff 020000000001 0800');

test('golden: file header and one record written by hand', (t) => {
  const sink = new MemoryPcapSink();
  const w = new PcapWriter(sink, { epochMs: 1_700_000_000_000 });
  w.writeFrame(1234.5, FRAME14, 0, FRAME14.length);
  w.close();
  const want = hex(
    // magic d4c3b2a1 (LE a1b2c3d4), v2.4, thiszone 0, sigfigs 0, snaplen 262144, linktype 1
    'd4c3b2a1 0200 0400 00000000 00000000 00000400 01000000' +
      // ts_sec 1700000001 = 0x6553f101, ts_usec 234500 = 0x00039404, incl 14, orig 14
      '01f15365 04940300 0e000000 0e000000' +
      'ffffffffffff 020000000001 0800',
  );
  t.deepEqual(sink.bytes(), want);
  t.true(sink.closed);
});

test('golden: a frame over the snaplen is truncated (incl_len < orig_len)', (t) => {
  const sink = new MemoryPcapSink();
  const w = new PcapWriter(sink, { snaplen: 8 });
  w.writeFrame(0.001, FRAME14, 0, FRAME14.length);
  w.flush();
  const want = hex(
    'd4c3b2a1 0200 0400 00000000 00000000 08000000 01000000' +
      // ts 0 s 1 us, incl 8, orig 14, then only the first 8 bytes
      '00000000 01000000 08000000 0e000000 ffffffffffff0200',
  );
  t.deepEqual(sink.bytes(), want);
  t.is(w.truncated, 1);
});

test('options are validated with exact messages', (t) => {
  const sink = new MemoryPcapSink();
  t.throws(() => new PcapWriter(sink, { snaplen: 0 }), { message: 'pcap snaplen must be an integer in 1..262144, got 0' });
  t.throws(() => new PcapWriter(sink, { snaplen: 262145 }), { message: 'pcap snaplen must be an integer in 1..262144, got 262145' });
  t.throws(() => new PcapWriter(sink, { epochMs: -1 }), { message: 'pcap epochMs must be finite and >= 0, got -1' });
  const w = new PcapWriter(sink);
  w.close();
  t.throws(() => w.writeFrame(0, FRAME14, 0, 14), { message: 'pcap writer is closed' });
});

interface Rec {
  sec: number;
  usec: number;
  incl: number;
  orig: number;
  data: Uint8Array;
}

// An independent reader of what we wrote (little-endian classic pcap).
function readPcap(bytes: Uint8Array): { snaplen: number; linktype: number; recs: Rec[] } {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, true) !== 0xa1b2c3d4) throw new Error('bad magic');
  const recs: Rec[] = [];
  let o = 24;
  while (o < bytes.length) {
    const incl = v.getUint32(o + 8, true);
    recs.push({ sec: v.getUint32(o, true), usec: v.getUint32(o + 4, true), incl, orig: v.getUint32(o + 12, true), data: bytes.slice(o + 16, o + 16 + incl) });
    o += 16 + incl;
  }
  if (o !== bytes.length) throw new Error('trailing bytes');
  return { snaplen: v.getUint32(16, true), linktype: v.getUint32(20, true), recs };
}

testProp(
  'every record round-trips: incl_len = min(len, snaplen), prefix bytes, exact microsecond timestamps; writes are batched',
  [
    fc.array(fc.record({ len: fc.integer({ min: 1, max: 3000 }), dt: fc.double({ min: 0, max: 5000, noNaN: true }) }), { maxLength: 40 }),
    fc.integer({ min: 1, max: 2000 }),
    fc.integer({ min: 0, max: 20000 }),
    fc.integer({ min: 0, max: 2 ** 40 }),
  ],
  (t, frames, snaplen, bufferSize, epochMs) => {
    const sink = new MemoryPcapSink();
    const w = new PcapWriter(sink, { snaplen, bufferSize, epochMs });
    let now = 0;
    const times: number[] = [];
    const src = new Uint8Array(3000);
    for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 0xff;
    for (const f of frames) {
      now += f.dt;
      times.push(now);
      w.writeFrame(now, src, 0, f.len);
    }
    w.close();
    const got = readPcap(sink.bytes());
    t.is(got.snaplen, snaplen);
    t.is(got.linktype, 1);
    t.is(got.recs.length, frames.length);
    let total = 24;
    frames.forEach((f, i) => {
      const r = got.recs[i]!;
      const incl = Math.min(f.len, snaplen);
      t.is(r.orig, f.len);
      t.is(r.incl, incl);
      t.deepEqual(r.data, src.slice(0, incl));
      t.true(r.usec < 1e6);
      t.is(r.sec * 1e6 + r.usec, Math.floor((epochMs + times[i]!) * 1000));
      total += 16 + incl;
    });
    // Buffered: each sink write carries at least a buffer's worth, except the last.
    const bufSize = Math.max(bufferSize, 24 + 16 + snaplen);
    t.true(sink.writes <= Math.ceil(total / (bufSize - 16 - snaplen)) + 1, `${sink.writes} writes for ${total} bytes`);
    t.is(w.bytesFlushed, total);
    t.is(w.truncated, frames.filter((f) => f.len > snaplen).length);
  },
);

// Frames of several kinds, built as a guest would build them.
const MAC_A = 0x0216_3e00_0001;
const MAC_B = 0x0216_3e00_0002;
const IP_A = ipv4(10, 0, 0, 1);
const IP_B = ipv4(10, 0, 0, 2);

function udpFrame(payload: number): Uint8Array {
  const f = new Uint8Array(ETH_HLEN + IPV4_HLEN + UDP_HLEN + payload);
  writeEthHeader(f, 0, MAC_B, MAC_A, ETH_P_IP);
  writeIpv4Header(f, ETH_HLEN, { totalLen: f.length - ETH_HLEN, id: 1, ttl: 64, proto: IPPROTO_UDP, saddr: IP_A, daddr: IP_B });
  writeUdpHeader(f, ETH_HLEN + IPV4_HLEN, 5000, 6000, UDP_HLEN + payload);
  fillPattern(f, ETH_HLEN + IPV4_HLEN + UDP_HLEN, payload, 1, 0);
  writeL4Checksum(f, ETH_HLEN + IPV4_HLEN, UDP_HLEN + payload, IPPROTO_UDP, IP_A, IP_B, false);
  return f;
}

/** A TCP frame; `partial` leaves the checksum as CHECKSUM_PARTIAL does (a GSO frame is seen that way). */
function tcpFrame(payload: number, partial: boolean): Uint8Array {
  const f = new Uint8Array(ETH_HLEN + IPV4_HLEN + TCP_HLEN + payload);
  writeEthHeader(f, 0, MAC_B, MAC_A, ETH_P_IP);
  writeIpv4Header(f, ETH_HLEN, { totalLen: f.length - ETH_HLEN, id: 2, ttl: 64, proto: IPPROTO_TCP, saddr: IP_A, daddr: IP_B });
  writeTcpHeader(f, ETH_HLEN + IPV4_HLEN, { sport: 40000, dport: 80, seq: 1000, ack: 1, flags: 0x18, window: 65535 });
  fillPattern(f, ETH_HLEN + IPV4_HLEN + TCP_HLEN, payload, 2, 0);
  writeL4Checksum(f, ETH_HLEN + IPV4_HLEN, TCP_HLEN + payload, IPPROTO_TCP, IP_A, IP_B, partial);
  return f;
}

function tsharkAvailable(): boolean {
  return spawnSync('tshark', ['--version'], { stdio: 'ignore' }).status === 0;
}

test('tshark reads small UDP, 1500-byte TCP, a 64 KiB GSO frame and truncated frames without Malformed', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'grantwire-pcap-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const gso = tcpFrame(65535 - IPV4_HLEN - TCP_HLEN, true);
  const frames = [udpFrame(18), tcpFrame(1460, false), gso, udpFrame(300)];
  const full = join(dir, 'full.pcap');
  const w = new PcapWriter(new FilePcapSink(full), { epochMs: 1_700_000_000_000 });
  frames.forEach((f, i) => w.writeFrame(i * 1.5, f, 0, f.length));
  w.close();
  // Truncated capture: the same frames with a 96-byte snaplen (what `tcpdump -s 96` writes).
  const trunc = join(dir, 'trunc.pcap');
  const wt = new PcapWriter(new FilePcapSink(trunc), { snaplen: 96 });
  frames.forEach((f, i) => wt.writeFrame(i, f, 0, f.length));
  wt.close();
  t.is(wt.truncated, 3);
  if (!tsharkAvailable()) {
    // .ci/run installs tshark: under CI its absence is a failure, not a silent pass.
    if (process.env['CI'] === 'true') t.fail('tshark is not installed but CI must read the pcap back with it');
    else t.log('tshark is not installed: the tshark assertions were not run (install Debian package tshark)');
    return;
  }
  for (const [file, caplens] of [
    [full, frames.map((f) => f.length)],
    [trunc, frames.map((f) => Math.min(96, f.length))],
  ] as const) {
    const fields = spawnSync('tshark', ['-r', file, '-T', 'fields', '-e', 'frame.len', '-e', 'frame.cap_len', '-e', 'ip.len', '-e', '_ws.malformed'], { encoding: 'utf8' });
    t.is(fields.status, 0, fields.stderr);
    const rows = fields.stdout.trim().split('\n').map((l) => l.split('\t'));
    t.deepEqual(rows.map((r) => Number(r[0])), frames.map((f) => f.length), file);
    t.deepEqual(rows.map((r) => Number(r[1])), [...caplens], file);
    // IPv4 tot_len of the GSO frame is what the guest wrote, not clamped.
    t.is(Number(rows[2]![2]), 65535);
    const expert = spawnSync('tshark', ['-r', file, '-q', '-z', 'expert'], { encoding: 'utf8' });
    t.is(expert.status, 0, expert.stderr);
    t.false(/malformed/i.test(expert.stdout), expert.stdout);
    t.false(/^Errors \(/m.test(expert.stdout), expert.stdout);
    t.false(rows.some((r) => (r[3] ?? '') !== ''), 'a frame carries _ws.malformed');
  }
  // Control: a record whose IPv4 header lies about its length IS reported, so the check above can fail.
  const bad = udpFrame(18);
  bad[ETH_HLEN + 2] = 0x00;
  bad[ETH_HLEN + 3] = 0x08; // tot_len 8 < ihl
  const badFile = join(dir, 'bad.pcap');
  const sink = new MemoryPcapSink();
  const wb = new PcapWriter(sink);
  wb.writeFrame(0, bad, 0, bad.length);
  wb.close();
  writeFileSync(badFile, sink.bytes());
  const expert = spawnSync('tshark', ['-r', badFile, '-q', '-z', 'expert'], { encoding: 'utf8' });
  t.regex(expert.stdout, /^Errors \(1\)/m);
  t.regex(expert.stdout, /Bogus IP length/);
});
