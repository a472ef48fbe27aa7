// Each side's CPU cost per packet, measured with the guest and the backend alternating in one thread (the rig):
// the guest's turn (take grant returns, upcall, TX responses, RX, transmit a batch) and the backend's turn (one
// softirq round: events, TX action, stack, RX, dealloc flush) are timed separately and divided by the packets
// sent. No cross-core traffic and no wake-ups, so the figures are stable to about ±10%: the ones to watch for
// regressions (TOOLCHAIN.md). On a machine other processes load, wall time counts the time we are descheduled:
// the process CPU time of each window is split between the sides, and each side's best window is reported.
import { RealClock } from '../../shared/clock.js';
import { FixedSource } from '../../frontend/loop.js';
import type { BackendConfig } from '../../backend/loop.js';
import { OneThreadRig } from './rig.js';

/** What one per-side measurement found (CPU time, each side's best window). */
export interface SidesResult {
  readonly size: number;
  readonly grantCopy: boolean;
  readonly packets: number;
  /** Guest CPU per packet, ns. */
  readonly guestNs: number;
  /** Backend CPU per packet, ns. */
  readonly backendNs: number;
  /** Packets per second of one core doing both sides, over the whole measurement. */
  readonly pps: number;
}

/** Options of a per-side measurement. */
export interface SidesOptions {
  readonly size: number;
  readonly grantCopy: boolean;
  readonly config: BackendConfig;
  readonly durationMs: number;
  readonly warmupMs?: number;
  /** The measurement is split into this many windows and each side's best window is reported. Default 5. */
  readonly windows?: number;
}

/**
 * Runs one guest sending `size`-byte frames to the remote host against dom0, alternating, for durationMs. Each
 * window's process CPU time (not wall time: a loaded machine deschedules us) is split between the sides by their
 * shares of its wall time; each side reports its best window, the figure least disturbed by other processes.
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
  const cpuMs = (): number => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const run = (ms: number): { guest: number; backend: number; packets: number; cpu: number; wall: number } => {
    let guest = 0;
    let backend = 0;
    const p0 = g.nf.stats.txPackets;
    const c0 = cpuMs();
    const w0 = performance.now();
    const end = w0 + ms;
    let t0 = w0;
    while (t0 < end) {
      rig.guestStep(g, true);
      const t1 = performance.now();
      rig.backendStep();
      const t2 = performance.now();
      guest += t1 - t0;
      backend += t2 - t1;
      t0 = t2;
    }
    return { guest, backend, packets: g.nf.stats.txPackets - p0, cpu: cpuMs() - c0, wall: t0 - w0 };
  };
  run(opts.warmupMs ?? 200);
  const windows = Math.max(1, opts.windows ?? 5);
  let guestNs = Infinity;
  let backendNs = Infinity;
  let packets = 0;
  let busyMs = 0;
  for (let w = 0; w < windows; w++) {
    const r = run(opts.durationMs / windows);
    const n = Math.max(1, r.packets);
    // CPU over wall time, at most 1: the share of the window this thread really ran.
    const f = r.wall > 0 ? Math.min(1, r.cpu / r.wall) : 1;
    guestNs = Math.min(guestNs, (r.guest * f * 1e6) / n);
    backendNs = Math.min(backendNs, (r.backend * f * 1e6) / n);
    packets += r.packets;
    busyMs += (r.guest + r.backend) * f;
  }
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
    packets,
    guestNs,
    backendNs,
    pps: busyMs > 0 ? (packets * 1000) / busyMs : 0,
  };
}
