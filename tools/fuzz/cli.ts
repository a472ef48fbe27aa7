// `npm run fuzz -- --runs N --seed S [--design NAME] [--json]`: argument parsing, progress on stderr,
// the failure report and the summary on stdout; with --json the last stdout line is one JSON object.
import { DESIGN_NAMES, designByName } from '../../backend/release.js';
import type { Result } from '../../shared/result.js';
import { commandLine, enumFlag, EXIT_OK, EXIT_USAGE, integerFlag, parseFlags, switchFlag } from '../cli-args.js';
import { formatOp } from './ops.js';
import { runFuzz, type FuzzSummary } from './runner.js';

/** The designs the CLI advertises (designByName decides what is accepted). */
export const KNOWN_DESIGNS: readonly string[] = DESIGN_NAMES;

/** Exit codes: no violation (EXIT_OK), violations, bad command line (EXIT_USAGE). */
export { EXIT_OK, EXIT_USAGE };
export const EXIT_VIOLATIONS = 1;

/** Parsed command line. */
export interface FuzzArgs {
  readonly runs: number;
  readonly seed: number;
  readonly design: string;
  readonly json: boolean;
  readonly help: boolean;
}

/** The --help text. */
export const USAGE = [
  'usage: npm run fuzz -- [--runs N] [--seed S] [--design NAME] [--json]',
  '',
  'Seeded random sk_buff operation sequences over skbs built from foreign (granted) pages, checked after',
  'every step by the grant-lifetime oracle (early return, double return, leak at quiescence) and by reading',
  'every live skb back against an independent content model.',
  '',
  '  --runs N      number of runs (default 1000); run i uses seed S + i',
  '  --seed S      first seed, an integer in [0, 4294967295] (default 1)',
  `  --design D    release design: rusty (default), naive (the negative control), or ${DESIGN_NAMES.filter((n) => n !== 'rusty' && n !== 'naive').join(', ')}`,
  '  --json        make the last stdout line a JSON summary',
  '  --help        this text',
  '',
  'Exit status: 0 no violation, 1 violations, 2 usage error.',
].join('\n');

/** Parses argv (without node and script); errors are exact messages. */
export function parseArgs(argv: readonly string[]): Result<FuzzArgs> {
  return parseFlags(
    argv,
    {
      runs: integerFlag(1, Number.MAX_SAFE_INTEGER, '--runs must be a positive integer'),
      seed: integerFlag(0, 0xffffffff, '--seed must be an integer in [0, 4294967295]'),
      design: enumFlag(KNOWN_DESIGNS, designByName),
      json: switchFlag,
    },
    { runs: 1000, seed: 1, design: 'rusty', json: false },
  );
}

/** Where the CLI writes and how it reads time (injected so tests and the entry point differ only here). */
export interface CliIo {
  out(line: string): void;
  err(line: string): void;
  now(): number;
}

/** Runs the CLI; returns the exit code. */
export function main(argv: readonly string[], io: CliIo): number {
  const cmd = commandLine('fuzz', parseArgs(argv), USAGE, io);
  if ('exit' in cmd) return cmd.exit;
  const args = cmd.args;
  const design = designByName(args.design)!;
  const start = io.now();
  let lastPrint = start;
  let nextPct = 2;
  const summary = runFuzz({ runs: args.runs, seed: args.seed, design }, (done, s) => {
    const pct = (100 * done) / args.runs;
    const t = io.now();
    // Every ~2% but at most once a second; always at the end of a run taking more than a second.
    if ((pct >= nextPct && t - lastPrint >= 1000) || (done === args.runs && t - start >= 1000)) {
      io.err(`fuzz: ${done}/${args.runs} runs (${Math.floor(pct)}%), ${s.steps} steps, ${s.violations} violations, ${((t - start) / 1000).toFixed(1)} s`);
      lastPrint = t;
      while (nextPct <= pct) nextPct += 2;
    }
  });
  const elapsed = (io.now() - start) / 1000;
  for (const line of formatSummary(summary, args.seed, elapsed)) io.out(line);
  if (args.json) io.out(JSON.stringify(jsonSummary(summary)));
  return summary.violations === 0 ? EXIT_OK : EXIT_VIOLATIONS;
}

/** The summary object of `--json`, with exactly the documented keys. */
export function jsonSummary(s: FuzzSummary): {
  design: string;
  runs: number;
  steps: number;
  violations: number;
  earlyReturns: number;
  doubleReturns: number;
  leaks: number;
  dataMismatches: number;
  firstFailingSeed: number | null;
} {
  return {
    design: s.design,
    runs: s.runs,
    steps: s.steps,
    violations: s.violations,
    earlyReturns: s.earlyReturns,
    doubleReturns: s.doubleReturns,
    leaks: s.leaks,
    dataMismatches: s.dataMismatches,
    firstFailingSeed: s.firstFailingSeed,
  };
}

/** Human-readable report: the first failure (shrunk, with its replay command), then the totals. */
export function formatSummary(s: FuzzSummary, firstSeed: number, elapsedSec: number): string[] {
  const lines: string[] = [];
  const f = s.firstFailure;
  if (f !== null) {
    const r = f.result;
    lines.push(
      `FAIL seed ${f.seed}: ${r.violations} violations (early returns ${r.earlyReturns}, double returns ${r.doubleReturns}, ` +
        `leaks ${r.leaks}, data mismatches ${r.dataMismatches}, errors ${r.errors}) in ${f.ops.length} ops`,
    );
    for (const m of r.messages.slice(0, 5)) lines.push(`  ${m}`);
    lines.push(`shrunk to ${f.shrunk.length} ops (${f.shrinkTries} replays); replayed with a trace:`);
    for (let i = 0; i < f.shrunk.length; i++) {
      const desc = f.shrunkResult.trace[i];
      lines.push(`  ${String(i + 1).padStart(3)}. ${formatOp(f.shrunk[i]!)}${desc === undefined ? '' : `    # ${desc}`}`);
    }
    for (const m of f.shrunkResult.messages.slice(0, 5)) lines.push(`  => ${m}`);
    lines.push(`replay: npm run fuzz -- --seed ${f.seed} --runs 1 --design ${s.design}`);
  }
  const last = runSeedRange(firstSeed, s.runs);
  lines.push(
    `fuzz: design ${s.design}, ${s.runs} runs (seeds ${last}), ${s.steps} steps in ${elapsedSec.toFixed(1)} s; ` +
      `late page-steps ${s.lateTotal}`,
  );
  lines.push(
    `violations ${s.violations} in ${s.failingRuns} runs: early returns ${s.earlyReturns}, double returns ${s.doubleReturns}, ` +
      `leaks ${s.leaks}, data mismatches ${s.dataMismatches}, errors ${s.errors}` +
      (s.firstFailingSeed === null ? '' : `; first failing seed ${s.firstFailingSeed}`),
  );
  return lines;
}

function runSeedRange(seed: number, runs: number): string {
  return runs === 1 ? `${seed}` : `${seed}..${(seed + runs - 1) >>> 0}`;
}
