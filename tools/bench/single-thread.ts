// Each side's CPU cost per packet, measured with the guest and the backend alternating in one thread (the rig):
// the guest's turn (take grant returns, upcall, TX responses, RX, transmit a batch) and the backend's turn (one
// softirq round: events, TX action, stack, RX, dealloc flush) are timed separately and divided by the packets
// sent. No cross-core traffic and no wake-ups, so the figures are stable to about ±10%: the ones to watch for
// regressions (TOOLCHAIN.md). On a machine other processes load, a total would count the time we are descheduled:
// steps are summed into chunks of a few dozen packets and each side reports the median chunk.
import { RealClock } from '../../shared/clock.js';
import { FixedSource } from '../../frontend/loop.js';
import type { BackendConfig } from '../../backend/loop.js';
import { OneThreadRig } from './rig.js';

/** What one per-side measurement found (medians over chunks of steps). */
export interface SidesResult {
  readonly size: number;
  readonly grantCopy: boolean;
  readonly packets: number;
  /** Guest CPU per packet, ns. */
  readonly guestNs: number;
  /** Backend CPU per packet, ns. */
  readonly backendNs: number;
  /** Packets per second of one core doing both sides at those medians. */
  readonly pps: number;
}

/** Options of a per-side measurement. */
export interface SidesOptions {
  readonly size: number;
  readonly grantCopy: boolean;
  readonly config: BackendConfig;
  readonly durationMs: number;
  readonly warmupMs?: number;
}

/** Steps are summed into chunks of at least this many packets (and CHUNK_STEPS steps) before their rates are taken. */
export const CHUNK_PACKETS = 64;
const CHUNK_STEPS = 4;

/**
 * Runs one guest sending `size`-byte frames to the remote host against dom0, alternating, for durationMs. Steps
 * are grouped into chunks of at least CHUNK_PACKETS packets; each side reports the median over chunks of its time
 * per packet. A chunk during which another process ran in our place is an outlier the median ignores, where a
 * plain total would count the time we were descheduled.
 */
export function measureSides(opts: SidesOptions): SidesResult {
  const clock = new RealClock();
  const config: BackendConfig = { ...opts.config, grantCopy: opts.grantCopy, nicCompletionDelayMs: 0, uplinkVerify: false, tap: false, pcapPath: null };
  const rig = new OneThreadRig({
    clock,
    config,
    guests: 1,
    source: (domid) => new FixedSource(opts.size, { mac: 0x00_16_3e_00_00_00 + domid, ip: 0x0a_00_00_00 + domid }, config.remote, config.mtu, domid),
  });
  const g = rig.guests[0]!;
  const guestRates: number[] = [];
  const backendRates: number[] = [];
  const run = (ms: number, record: boolean): number => {
    const p0 = g.nf.stats.txPackets;
    const end = performance.now() + ms;
    let t0 = performance.now();
    let guest = 0;
    let backend = 0;
    let steps = 0;
    let from = p0;
    while (t0 < end) {
      rig.guestStep(g, true);
      const t1 = performance.now();
      rig.backendStep();
      const t2 = performance.now();
      guest += t1 - t0;
      backend += t2 - t1;
      t0 = t2;
      const sent = g.nf.stats.txPackets - from;
      if (++steps >= CHUNK_STEPS && sent >= CHUNK_PACKETS) {
        if (record) {
          guestRates.push((guest * 1e6) / sent);
          backendRates.push((backend * 1e6) / sent);
        }
        guest = 0;
        backend = 0;
        steps = 0;
        from = g.nf.stats.txPackets;
      }
    }
    return g.nf.stats.txPackets - p0;
  };
  run(opts.warmupMs ?? 200, false);
  const packets = run(opts.durationMs, true);
  // Let everything come back so a broken run shows up as an exception here rather than in the figures.
  for (let i = 0; i < 1000 && !rig.quiescent(); i++) {
    rig.guestStep(g, false);
    rig.backendStep();
  }
  if (!rig.quiescent()) throw new Error(`bench: ${g.nf.grantsOutstanding} grants did not come back after the measurement`);
  rig.dom0.close();
  if (guestRates.length === 0) throw new Error(`bench: ${packets} packets in ${opts.durationMs} ms make no chunk of ${CHUNK_PACKETS}`);
  const guestNs = median(guestRates);
  const backendNs = median(backendRates);
  return { size: opts.size, grantCopy: opts.grantCopy, packets, guestNs, backendNs, pps: 1e9 / (guestNs + backendNs) };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
