// `npm run fuzz -- --runs N --seed S [--design NAME] [--json]`: argument parsing, progress on stderr,
// the failure report and the summary on stdout; with --json the last stdout line is one JSON object.
import { DESIGN_NAMES, designByName } from '../../backend/release.js';
import { err, ok, type Result } from '../../shared/result.js';
import { formatOp } from './ops.js';
import { runFuzz, type FuzzSummary } from './runner.js';

/** The designs the CLI advertises (designByName decides what is accepted). */
export const KNOWN_DESIGNS: readonly string[] = DESIGN_NAMES;

/** Exit codes: no violation, violations, bad command line. */
export const EXIT_OK = 0;
export const EXIT_VIOLATIONS = 1;
export const EXIT_USAGE = 2;

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
  let runs = 1000;
  let seed = 1;
  let design = 'rusty';
  let json = false;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq >= 0 ? arg.slice(0, eq) : arg;
    const takeValue = (): string | null => {
      if (eq >= 0) return arg.slice(eq + 1);
      const v = argv[i + 1];
      if (v === undefined || v.startsWith('--')) return null;
      i++;
      return v;
    };
    switch (name) {
      case '--runs': {
        const v = takeValue();
        if (v === null) return err('--runs needs a value');
        if (!/^[0-9]+$/.test(v) || Number(v) < 1 || !Number.isSafeInteger(Number(v))) return err('--runs must be a positive integer');
        runs = Number(v);
        break;
      }
      case '--seed': {
        const v = takeValue();
        if (v === null) return err('--seed needs a value');
        if (!/^[0-9]+$/.test(v) || Number(v) > 0xffffffff) return err('--seed must be an integer in [0, 4294967295]');
        seed = Number(v);
        break;
      }
      case '--design': {
        const v = takeValue();
        if (v === null) return err('--design needs a value');
        if (designByName(v) === undefined) return err(`--design must be one of ${KNOWN_DESIGNS.join(', ')} but got "${v}"`);
        design = v;
        break;
      }
      case '--json':
        if (eq >= 0) return err('--json takes no value');
        json = true;
        break;
      case '--help':
      case '-h':
        help = true;
        break;
      default:
        return err(`unknown option: ${arg}`);
    }
  }
  return ok({ runs, seed, design, json, help });
}

/** Where the CLI writes and how it reads time (injected so tests and the entry point differ only here). */
export interface CliIo {
  out(line: string): void;
  err(line: string): void;
  now(): number;
}

/** Runs the CLI; returns the exit code. */
export function main(argv: readonly string[], io: CliIo): number {
  const parsed = parseArgs(argv);
  if (!parsed.ok) {
    io.err(`fuzz: ${parsed.error}`);
    io.err('try --help');
    return EXIT_USAGE;
  }
  const args = parsed.value;
  if (args.help) {
    io.out(USAGE);
    return EXIT_OK;
  }
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
