// Rate sampling for the bench: completions are counted in fixed time windows, and a run is summarised as the
// p10, p50 and p90 of the per-window rates (two-thread throughput swings within one run on this machine, so a
// single mean would hide it; TOOLCHAIN.md).

/** Counts completions per window of `windowMs`, after a warm-up; no allocation per completion. */
export class WindowCounter {
  private readonly counts: Float64Array;
  private t0 = 0;
  private last = -1;

  constructor(
    readonly windowMs: number,
    readonly maxWindows: number,
  ) {
    if (!(windowMs > 0)) throw new RangeError(`windowMs must be > 0 but got ${windowMs}`);
    if (!Number.isInteger(maxWindows) || maxWindows < 1) throw new RangeError(`maxWindows must be a positive integer but got ${maxWindows}`);
    this.counts = new Float64Array(maxWindows);
  }

  /** Starts counting at time `now` (ms). */
  start(now: number): void {
    this.t0 = now;
    this.last = -1;
    this.counts.fill(0);
  }

  /** Adds `n` completions at time `now`; returns false once the last window has passed. */
  add(now: number, n = 1): boolean {
    const w = Math.floor((now - this.t0) / this.windowMs);
    if (w >= this.maxWindows) return false;
    if (w >= 0) {
      this.counts[w]! += n;
      if (w > this.last) this.last = w;
    }
    return true;
  }

  /** Whether time `now` is past the last window. */
  done(now: number): boolean {
    return now - this.t0 >= this.windowMs * this.maxWindows;
  }

  /** Rates per second of the complete windows seen so far, skipping the first `skip` (warm-up). */
  rates(skip = 0): number[] {
    const out: number[] = [];
    for (let w = skip; w < this.last; w++) out.push((this.counts[w]! * 1000) / this.windowMs);
    return out;
  }
}

/** p10, p50 and p90 of a sample, plus its mean. */
export interface RateRange {
  p10: number;
  p50: number;
  p90: number;
  mean: number;
  windows: number;
}

/** The q-quantile (0..1) of a sample by linear interpolation between order statistics; NaN when empty. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo);
}

/** Summarises per-window rates as a p10..p90 range. */
export function rateRange(rates: readonly number[]): RateRange {
  let sum = 0;
  for (const r of rates) sum += r;
  return {
    p10: quantile(rates, 0.1),
    p50: quantile(rates, 0.5),
    p90: quantile(rates, 0.9),
    mean: rates.length === 0 ? NaN : sum / rates.length,
    windows: rates.length,
  };
}

/** Multiplies every figure of a range (packets/s to bytes/s). */
export function scaleRange(r: RateRange, k: number): RateRange {
  return { p10: r.p10 * k, p50: r.p50 * k, p90: r.p90 * k, mean: r.mean * k, windows: r.windows };
}

/** The range of a/b for two ranges measured in the same run: p10 of a over p90 of b and so on (a pessimistic band). */
export function ratioRange(a: RateRange, b: RateRange): { low: number; mid: number; high: number } {
  return { low: a.p10 / b.p90, mid: a.p50 / b.p50, high: a.p90 / b.p10 };
}
