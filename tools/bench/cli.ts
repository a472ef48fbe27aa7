// `npm run bench -- [--seconds S] [--sizes 64,1500,65535] [--out DIR] [--json]`: one run measuring, side by side for
// each frame size, this zero-copy design, the same path with netback grant-copying instead of mapping, a plain
// postMessage pipeline that transfers ArrayBuffers and gets them back, and one that copies them. Two-thread rates
// are p10..p90 ranges (they swing within a run here); each side's CPU cost per packet is measured with guest and
// backend alternating in one thread (the stable figure for catching regressions). Results go to
// DIR/latest.json and a dated copy; the table goes to stdout, progress to stderr.
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, platform, release, totalmem } from 'node:os';
import { join } from 'node:path';
import type { BackendConfig } from '../../backend/loop.js';
import type { Result } from '../../shared/result.js';
import { commandLine, EXIT_OK, EXIT_USAGE, integerListFlag, numberFlag, parseFlags, stringFlag, switchFlag } from '../cli-args.js';
import { ENDPOINT, REMOTE } from '../toolstack.js';
import { runPostMessage, type PostMessageResult } from './postmessage.js';
import { ratioRange, scaleRange, type RateRange } from './rates.js';
import { measureSides, type SidesResult } from './single-thread.js';
import { runPipeline, type PipelineResult } from './two-thread.js';

/** Exit codes: done (EXIT_OK), a measurement failed (or its audit was not clean), bad command line (EXIT_USAGE). */
export { EXIT_OK, EXIT_USAGE };
export const EXIT_FAILED = 1;

/** The frame sizes measured by default: small, MTU-sized, and the largest a tx_request can carry (~64 KiB). */
export const DEFAULT_SIZES: readonly number[] = [64, 1500, 65535];

/** The parsed command line. */
export interface BenchArgs {
  readonly seconds: number;
  readonly sizes: readonly number[];
  readonly out: string;
  readonly json: boolean;
  readonly help: boolean;
}

/** The --help text. */
export const USAGE = [
  'usage: npm run bench -- [--seconds S] [--sizes 64,1500,65535] [--out DIR] [--json]',
  '',
  'Measures, for each frame size: the zero-copy TX path (netback maps the guest pages), the same path with',
  'netback grant-copying instead, a postMessage pipeline transferring ArrayBuffers back and forth, and one',
  'copying them. Two-thread packet rates are p10..p90 over 100 ms windows; each side\'s CPU ns per packet is',
  'measured with guest and backend alternating in one thread. The grant oracle and the guests\' page poisoning',
  'stay on; the remote host does not verify payloads (the bench measures the data path, not the checker).',
  '',
  '  --seconds S   measurement time of each two-thread run, a number in [0.5, 60] (default 3)',
  '  --sizes L     comma-separated frame sizes in bytes, each an integer in [50, 65535] (default 64,1500,65535)',
  '  --out DIR     where latest.json and the dated copy go (default bench-results)',
  '  --json        make the last stdout line the results as JSON',
  '  --help        this text',
  '',
  'Exit status: 0 done, 1 a measurement failed, 2 usage error.',
].join('\n');

/** Parses argv (without node and script); errors are exact messages. */
export function parseBenchArgs(argv: readonly string[]): Result<BenchArgs> {
  return parseFlags(
    argv,
    { seconds: numberFlag({ min: 0.5, max: 60 }), sizes: integerListFlag(50, 65535), out: stringFlag('a directory'), json: switchFlag },
    { seconds: 3, sizes: DEFAULT_SIZES, out: 'bench-results', json: false },
  );
}

/** One frame size's figures. */
export interface SizeResults {
  readonly size: number;
  /** Two threads: packets/s and GB/s ranges. */
  readonly zeroCopy: { readonly pps: RateRange; readonly gbytesPerSec: RateRange; readonly returnLatencyUs: { p50: number; p99: number } };
  readonly grantCopy: { readonly pps: RateRange; readonly gbytesPerSec: RateRange; readonly returnLatencyUs: { p50: number; p99: number } };
  readonly postMessageTransfer: { readonly pps: RateRange; readonly gbytesPerSec: RateRange };
  readonly postMessageCopy: { readonly pps: RateRange; readonly gbytesPerSec: RateRange };
  /** Ratios of p50s, with a pessimistic band (p10 over p90 .. p90 over p10). */
  readonly ratios: {
    readonly zeroCopyOverGrantCopy: { low: number; mid: number; high: number };
    readonly zeroCopyOverTransfer: { low: number; mid: number; high: number };
    readonly zeroCopyOverPostMessageCopy: { low: number; mid: number; high: number };
  };
  /** One thread, guest and backend alternating: CPU ns per packet. */
  readonly cpu: {
    readonly zeroCopy: { readonly guestNs: number; readonly backendNs: number };
    readonly grantCopy: { readonly guestNs: number; readonly backendNs: number };
    /** Backend ns per packet, grant copy over zero-copy. */
    readonly backendCopyOverMap: number;
  };
}

/** The results file. */
export interface BenchResults {
  readonly date: string;
  readonly machine: { readonly cpu: string; readonly cores: number; readonly memoryGiB: number; readonly node: string; readonly os: string };
  readonly seconds: number;
  readonly sizes: readonly SizeResults[];
  readonly elapsedSeconds: number;
}

/** Where the bench writes and how it reads time (injected so tests can run it small). */
export interface BenchIo {
  out(line: string): void;
  err(line: string): void;
  now(): number;
  date(): Date;
}

/** A backend config for the one-thread measurements (the toolstack's addresses). */
export function benchBackendConfig(): BackendConfig {
  return {
    domid: 0,
    seed: 1,
    mtu: 1500,
    loss: 0,
    tap: false,
    tapHoldMs: 0,
    pcapPath: null,
    design: 'rusty',
    grantCopy: false,
    endpoint: ENDPOINT,
    remote: REMOTE,
    remoteRttMs: 1,
    nicCompletionDelayMs: 0,
    rxDrainTimeoutMs: 10_000,
    uplinkVerify: false,
  };
}

function gb(r: RateRange, size: number): RateRange {
  return scaleRange(r, size / 1e9);
}

function pipeline(p: PipelineResult, size: number): SizeResults['zeroCopy'] {
  return { pps: p.pps, gbytesPerSec: gb(p.pps, size), returnLatencyUs: p.returnLatencyUs };
}

function pm(p: PostMessageResult, size: number): SizeResults['postMessageTransfer'] {
  return { pps: p.pps, gbytesPerSec: gb(p.pps, size) };
}

/** Runs every measurement; throws when one fails (an audit that is not clean is a failure). */
export async function runBench(args: BenchArgs, io: BenchIo): Promise<BenchResults> {
  const t0 = io.now();
  const ms = args.seconds * 1000;
  const out: SizeResults[] = [];
  for (const size of args.sizes) {
    const step = (what: string): void => io.err(`bench: ${size} B: ${what} (${((io.now() - t0) / 1000).toFixed(0)} s)`);
    step('zero-copy, two threads');
    const map = await runPipeline({ size, grantCopy: false, durationMs: ms });
    step('grant copy, two threads');
    const copy = await runPipeline({ size, grantCopy: true, durationMs: ms });
    for (const r of [map, copy]) {
      if (!r.clean) throw new Error(`${size} B ${r.grantCopy ? 'grant copy' : 'zero-copy'} run was not clean: ${r.errors.join('; ') || 'audit failure'}`);
    }
    step('postMessage transfer');
    const transfer = await runPostMessage({ mode: 'transfer', size, durationMs: ms / 2, windowMs: 100, warmupWindows: 3 });
    step('postMessage copy');
    const pmCopy = await runPostMessage({ mode: 'copy', size, durationMs: ms / 2, windowMs: 100, warmupWindows: 3 });
    step('CPU per packet, one thread');
    const sideMs = Math.min(1500, ms / 2);
    const cpuMap: SidesResult = measureSides({ size, grantCopy: false, config: benchBackendConfig(), durationMs: sideMs });
    const cpuCopy: SidesResult = measureSides({ size, grantCopy: true, config: benchBackendConfig(), durationMs: sideMs });
    out.push({
      size,
      zeroCopy: pipeline(map, size),
      grantCopy: pipeline(copy, size),
      postMessageTransfer: pm(transfer, size),
      postMessageCopy: pm(pmCopy, size),
      ratios: {
        zeroCopyOverGrantCopy: ratioRange(map.pps, copy.pps),
        zeroCopyOverTransfer: ratioRange(map.pps, transfer.pps),
        zeroCopyOverPostMessageCopy: ratioRange(map.pps, pmCopy.pps),
      },
      cpu: {
        zeroCopy: { guestNs: cpuMap.guestNs, backendNs: cpuMap.backendNs },
        grantCopy: { guestNs: cpuCopy.guestNs, backendNs: cpuCopy.backendNs },
        backendCopyOverMap: cpuCopy.backendNs / cpuMap.backendNs,
      },
    });
  }
  const c = cpus();
  return {
    date: io.date().toISOString(),
    machine: {
      cpu: c[0]?.model.trim() ?? 'unknown',
      cores: availableParallelism(),
      memoryGiB: Math.round(totalmem() / 2 ** 30),
      node: process.version,
      os: `${platform()} ${release()}`,
    },
    seconds: args.seconds,
    sizes: out,
    elapsedSeconds: (io.now() - t0) / 1000,
  };
}

function rate(x: number): string {
  if (!Number.isFinite(x)) return '-';
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)}M`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(0)}k`;
  return x.toFixed(0);
}

function range(r: RateRange): string {
  return `${rate(r.p10)}..${rate(r.p90)} (${rate(r.p50)})`;
}

function ratio(r: { low: number; mid: number; high: number }): string {
  return `${r.mid.toFixed(2)} [${r.low.toFixed(2)}..${r.high.toFixed(2)}]`;
}

/** The human table. */
export function formatResults(r: BenchResults): string[] {
  const m = r.machine;
  const lines = [
    `grantwire bench ${r.date}: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, node ${m.node}, ${m.os}; ${r.elapsedSeconds.toFixed(0)} s`,
    '',
    'two threads, packets/s p10..p90 (p50), GB/s at p50:',
  ];
  const pad = (s: string, n: number): string => s.padEnd(n);
  lines.push(`  ${pad('size', 8)}${pad('zero-copy (map)', 30)}${pad('grant copy', 30)}${pad('postMessage transfer', 30)}postMessage copy`);
  for (const s of r.sizes) {
    const cell = (x: { pps: RateRange; gbytesPerSec: RateRange }): string => pad(`${range(x.pps)} ${x.gbytesPerSec.p50.toFixed(2)}`, 30);
    lines.push(`  ${pad(`${s.size} B`, 8)}${cell(s.zeroCopy)}${cell(s.grantCopy)}${cell(s.postMessageTransfer)}${cell(s.postMessageCopy).trimEnd()}`);
  }
  lines.push('', 'ratios of p50 rates [p10/p90 .. p90/p10]:');
  lines.push(`  ${pad('size', 8)}${pad('zero-copy / grant copy', 28)}${pad('zero-copy / transfer', 28)}zero-copy / postMessage copy`);
  for (const s of r.sizes) {
    const q = s.ratios;
    lines.push(`  ${pad(`${s.size} B`, 8)}${pad(ratio(q.zeroCopyOverGrantCopy), 28)}${pad(ratio(q.zeroCopyOverTransfer), 28)}${ratio(q.zeroCopyOverPostMessageCopy)}`);
  }
  lines.push('', 'one thread, guest and backend alternating: CPU ns per packet (medians over chunks of steps):');
  lines.push(`  ${pad('size', 8)}${pad('zero-copy guest', 18)}${pad('zero-copy backend', 20)}${pad('copy guest', 14)}${pad('copy backend', 16)}backend copy/map`);
  for (const s of r.sizes) {
    const c = s.cpu;
    lines.push(
      `  ${pad(`${s.size} B`, 8)}${pad(c.zeroCopy.guestNs.toFixed(0), 18)}${pad(c.zeroCopy.backendNs.toFixed(0), 20)}` +
        `${pad(c.grantCopy.guestNs.toFixed(0), 14)}${pad(c.grantCopy.backendNs.toFixed(0), 16)}${c.backendCopyOverMap.toFixed(2)}`,
    );
  }
  lines.push('', BENCH_CHECKS);
  return lines;
}

/** What the bench leaves on and off (the demo keeps every check on). */
export const BENCH_CHECKS =
  'checks: the grant oracle and the guests\' page poisoning are on; the remote host does not verify payloads (uplinkVerify off)';

/** Writes DIR/latest.json and DIR/<date>.json; returns both paths. */
export function writeResults(dir: string, r: BenchResults): string[] {
  mkdirSync(dir, { recursive: true });
  const text = `${JSON.stringify(r, null, 2)}\n`;
  const dated = join(dir, `${r.date.replace(/:/g, '-').replace(/\.\d+Z$/, 'Z')}.json`);
  const latest = join(dir, 'latest.json');
  writeFileSync(latest, text);
  writeFileSync(dated, text);
  return [latest, dated];
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: readonly string[], io: BenchIo): Promise<number> {
  const cmd = commandLine('bench', parseBenchArgs(argv), USAGE, io);
  if ('exit' in cmd) return cmd.exit;
  const args = cmd.args;
  let results: BenchResults;
  try {
    results = await runBench(args, io);
  } catch (e) {
    io.err(`bench: ${e instanceof Error ? e.message : String(e)}`);
    return EXIT_FAILED;
  }
  for (const line of formatResults(results)) io.out(line);
  const paths = writeResults(args.out, results);
  io.out(`results: ${paths.join(', ')}`);
  if (args.json) io.out(JSON.stringify(results));
  return EXIT_OK;
}

