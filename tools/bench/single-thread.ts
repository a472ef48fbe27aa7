// Each side's CPU cost per packet, measured with the guest and the backend alternating in one thread (the rig):
// the guest's turn (take grant returns, upcall, TX responses, RX, transmit a batch) and the backend's turn (one
// softirq round: events, TX action, stack, RX, dealloc flush) are timed separately and divided by the packets
// sent. No cross-core traffic and no wake-ups, so the figures are stable to about ±10%: the ones to watch for
// regressions (TOOLCHAIN.md).
import { RealClock } from '../../shared/clock.js';
import { FixedSource } from '../../frontend/loop.js';
import type { BackendConfig } from '../../backend/loop.js';
import { OneThreadRig } from './rig.js';

/** What one per-side measurement found. */
export interface SidesResult {
  readonly size: number;
  readonly grantCopy: boolean;
  readonly packets: number;
  /** Guest CPU per packet, ns. */
  readonly guestNs: number;
  /** Backend CPU per packet, ns. */
  readonly backendNs: number;
  /** Packets per second of one core doing both sides. */
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

/** Runs one guest sending `size`-byte frames to the remote host against dom0, alternating, for durationMs. */
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
  const run = (ms: number): { guest: number; backend: number; packets: number } => {
    let guest = 0;
    let backend = 0;
    const p0 = g.nf.stats.txPackets;
    const end = performance.now() + ms;
    let t0 = performance.now();
    while (t0 < end) {
      rig.guestStep(g, true);
      const t1 = performance.now();
      rig.backendStep();
      const t2 = performance.now();
      guest += t1 - t0;
      backend += t2 - t1;
      t0 = t2;
    }
    return { guest, backend, packets: g.nf.stats.txPackets - p0 };
  };
  run(opts.warmupMs ?? 200);
  const r = run(opts.durationMs);
  const packets = Math.max(1, r.packets);
  // Let everything come back so a broken run shows up as an exception here rather than in the figures.
  for (let i = 0; i < 1000 && !rig.quiescent(); i++) {
    rig.guestStep(g, false);
    rig.backendStep();
  }
  if (!rig.quiescent()) throw new Error(`bench: ${g.nf.grantsOutstanding} grants did not come back after the measurement`);
  rig.dom0.close();
  return {
    size: opts.size,
    grantCopy: opts.grantCopy,
    packets: r.packets,
    guestNs: (r.guest * 1e6) / packets,
    backendNs: (r.backend * 1e6) / packets,
    pps: (r.packets * 1000) / (r.guest + r.backend),
  };
}
