// The design's own pipeline on two threads: the real system (toolstack, backend worker, one guest in the piscina
// pool) with one guest sending fixed-size frames to the remote host as fast as grants come back, netback either
// mapping the payload (zero-copy) or grant-copying it. The rate is sampled from the guest's statistics block in
// fixed windows, reported as p10..p90.
import { Toolstack } from '../toolstack.js';
import { rateRange, type RateRange } from './rates.js';
import { sTxPackets } from '../../frontend/loop.js';

/** Options of one two-thread run. */
export interface PipelineOptions {
  readonly size: number;
  readonly grantCopy: boolean;
  readonly durationMs: number;
  readonly mtu?: number;
  /** Rate window, ms (default 100) and warm-up windows skipped (default 3). */
  readonly windowMs?: number;
  readonly warmupWindows?: number;
  readonly seed?: number;
}

/** What one two-thread run measured. */
export interface PipelineResult {
  readonly size: number;
  readonly grantCopy: boolean;
  readonly pps: RateRange;
  readonly packets: number;
  /** Grant-return latency over the run, us. */
  readonly returnLatencyUs: { readonly p50: number; readonly p99: number };
  /** The audit must be clean for the figures to count. */
  readonly clean: boolean;
  readonly errors: readonly string[];
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Boots the system with one guest, runs the fixed traffic for durationMs after a warm-up, shuts down and reports. */
export async function runPipeline(opts: PipelineOptions): Promise<PipelineResult> {
  const windowMs = opts.windowMs ?? 100;
  const warmup = opts.warmupWindows ?? 3;
  const ts = await Toolstack.boot({
    guests: 1,
    seconds: 0,
    mtu: opts.mtu ?? 1500,
    loss: 0,
    tap: false,
    pcapPath: null,
    seed: opts.seed ?? 1,
    traffic: 'fixed',
    fixedSize: opts.size,
    grantCopy: opts.grantCopy,
    uplinkVerify: false,
    nicCompletionDelayMs: 0,
    guestThreads: 1,
    publishEveryMs: Math.max(1, windowMs / 10),
  });
  const rates: number[] = [];
  let failure: string | null = null;
  try {
    let prev = await ts.startTraffic();
    const windows = warmup + Math.ceil(opts.durationMs / windowMs);
    for (let w = 0; w < windows; w++) {
      await sleep(windowMs);
      const cur = ts.sample(prev);
      const dt = (cur[0]!.at - prev[0]!.at) / 1000;
      if (w >= warmup && dt > 0) rates.push((cur[0]!.counters[sTxPackets]! - prev[0]!.counters[sTxPackets]!) / dt);
      prev = cur;
    }
    await ts.stopTraffic();
  } catch (e) {
    failure = e instanceof Error ? e.message : String(e);
  }
  // A failed start still shuts everything down.
  const r = await ts.shutdown();
  const errors = failure === null ? r.errors : [failure, ...r.errors];
  const a = r.audit;
  const clean = errors.length === 0 && a.outstanding + a.leaked + a.earlyReturns + a.doubleReturns + a.corruptPayloads === 0;
  return {
    size: opts.size,
    grantCopy: opts.grantCopy,
    pps: rateRange(rates),
    packets: r.packets,
    returnLatencyUs: r.returnLatencyUs,
    clean,
    errors,
  };
}
