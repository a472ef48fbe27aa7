// `npm run lab -- [--designs a,b] [--workloads x,y] [--seconds N] [--seed S] [--json] [--out FILE] [--md]`: argument
// parsing, progress on stderr, the table and the claims on stdout, the JSON file (and the markdown report); with
// --json the last stdout line is the JSON object. Exit status: 0 when every design meant to be sound is clean.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname } from 'node:path';
import type { Result } from '../../shared/result.js';
import { commandLine, EXIT_OK, EXIT_USAGE, numberFlag, parseFlags, seedFlag, selectionFlag, stringFlag, switchFlag } from '../cli-args.js';
import { labDesigns, type LabDesign } from './designs.js';
import { formatMarkdown, formatText, toJson, type LabMeta } from './report.js';
import { runLab, soundFailures, type LabProgress, type LabReport } from './runner.js';
import { WORKLOADS, type Workload } from './workloads.js';

/** Exit codes: every sound design clean (EXIT_OK); a sound design violated; bad command line (EXIT_USAGE). */
export { EXIT_OK, EXIT_USAGE };
export const EXIT_UNSOUND = 1;

/** Default virtual seconds per workload: the whole default lab takes a minute or two on a 2-core machine. */
export const DEFAULT_SECONDS = 0.5;
/** Longest run accepted, virtual seconds. */
export const MAX_SECONDS = 600;
/** Where the JSON goes by default (the markdown report goes next to it, .md). */
export const DEFAULT_OUT = 'lab-results/latest.json';

/** Parsed command line. */
export interface LabArgs {
  readonly designs: readonly LabDesign[];
  readonly workloads: readonly Workload[];
  readonly seconds: number;
  readonly seed: number;
  readonly json: boolean;
  readonly out: string;
  readonly md: boolean;
  readonly help: boolean;
}

/** The --help text. */
export function usage(designs: readonly LabDesign[] = labDesigns()): string {
  return [
    'usage: npm run lab -- [--designs a,b] [--workloads x,y] [--seconds N] [--seed S] [--json] [--out FILE] [--md]',
    '',
    'Runs every release design against the same workloads and operation sequences, in one thread with virtual time,',
    'and prints one table: safety (the grant oracle), promptness of grant returns, copies, cost and speed, then the',
    '2006-2008 debate\'s claims with the figures measured here and a verdict.',
    '',
    `  --designs a,b     designs to run (default all): ${designs.map((d) => d.name).join(', ')}`,
    `  --workloads x,y   workloads to run (default all): ${WORKLOADS.map((w) => w.name).join(', ')}`,
    `  --seconds N       virtual seconds per workload, 0 < N <= ${MAX_SECONDS} (default ${DEFAULT_SECONDS})`,
    '  --seed S          seed, an integer in [0, 4294967295] (default 1); everything but speed is reproduced by it',
    '  --json            make the last stdout line the JSON object',
    `  --out FILE        where to write the JSON (default ${DEFAULT_OUT})`,
    '  --md              also write a markdown report next to it (FILE with .md)',
    '  --help            this text',
    '',
    'Exit status: 0 every design meant to be sound is clean, 1 one is not, 2 usage error.',
  ].join('\n');
}

/** How lab writes a number of seconds: unlike the other tools, no trailing dot (`5.`). */
const SECONDS_SYNTAX = /^[0-9]*\.?[0-9]+$/;

/** Parses argv (without node and script) against the designs that exist; errors are exact messages. */
export function parseArgs(argv: readonly string[], allDesigns: readonly LabDesign[] = labDesigns()): Result<LabArgs> {
  return parseFlags(
    argv,
    {
      designs: selectionFlag(allDesigns, (d) => d.name),
      workloads: selectionFlag(WORKLOADS, (w) => w.name),
      seconds: numberFlag({ min: 0, minOpen: true, max: MAX_SECONDS }, SECONDS_SYNTAX),
      seed: seedFlag,
      json: switchFlag,
      out: stringFlag('a file name'),
      md: switchFlag,
    },
    { designs: allDesigns, workloads: WORKLOADS, seconds: DEFAULT_SECONDS, seed: 1, json: false, out: DEFAULT_OUT, md: false },
  );
}

/** Where the CLI writes (injected so tests and the entry point differ only here). */
export interface CliIo {
  out(line: string): void;
  err(line: string): void;
}

/** The markdown report's path for JSON path `out`. */
export function markdownPath(out: string): string {
  return out.endsWith('.json') ? `${out.slice(0, -'.json'.length)}.md` : `${out}.md`;
}

/** This machine and now, for the report's header. */
export function currentMeta(): LabMeta {
  const c = cpus();
  return { date: new Date().toISOString(), machine: `${c[0]?.model.trim() ?? 'unknown CPU'} × ${c.length}`, node: process.versions.node };
}

function progressLine(p: LabProgress): string {
  const r = p.result;
  if (p.pass > 1) return `lab: [${p.done}/${p.total}] ${r.design} × ${r.workload}: timing pass ${p.pass}, ${(r.wallMs / 1000).toFixed(2)} s`;
  const safety = r.safe
    ? 'safe'
    : `${r.expectedSound ? 'UNSAFE' : 'unsafe (expected)'}: ${r.earlyReturns} early, ${r.doubleReturns} double, ${r.leaks} leaks, ${r.otherFailures} other`;
  const late = r.lateP99 === null ? `late mean ${r.lateMeanSteps.toFixed(2)} steps` : `late p99 ${r.lateP99} steps`;
  return `lab: [${p.done}/${p.total}] ${r.design} × ${r.workload}: ${r.packets} packets, ${safety}, ${late}, ${(r.wallMs / 1000).toFixed(2)} s`;
}

/** What main runs against (tests replace the designs; the entry point uses the defaults). */
export interface MainOptions {
  /** The designs that exist (default: every design backend/release.ts knows). */
  readonly designs?: readonly LabDesign[];
  /** Warm the JIT up before timing (default true). */
  readonly warmup?: boolean;
  /** Timed passes per workload (default 2; see LabOptions). */
  readonly speedPasses?: number;
}

/** Runs the CLI; returns the exit code. */
export function main(argv: readonly string[], io: CliIo, opts: MainOptions = {}): number {
  const known = opts.designs ?? labDesigns();
  const cmd = commandLine('lab', parseArgs(argv, known), usage(known), io);
  if ('exit' in cmd) return cmd.exit;
  const args = cmd.args;
  io.err(`lab: ${args.designs.length} designs × ${args.workloads.length} workloads, ${args.seconds} virtual s each, seed ${args.seed}`);
  const report: LabReport = runLab(
    { designs: args.designs, workloads: args.workloads, seconds: args.seconds, seed: args.seed, warmup: opts.warmup ?? true, speedPasses: opts.speedPasses ?? 2 },
    (p) => io.err(progressLine(p)),
  );
  const meta = currentMeta();
  const json = toJson(report, meta);
  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(args.out, `${JSON.stringify(json, null, 2)}\n`);
  io.err(`lab: wrote ${args.out}`);
  if (args.md) {
    const mdPath = markdownPath(args.out);
    writeFileSync(mdPath, formatMarkdown(report, meta));
    io.err(`lab: wrote ${mdPath}`);
  }
  for (const line of formatText(report)) io.out(line);
  const failures = soundFailures(report);
  if (failures.length > 0) io.out(`\nFAIL: ${failures.length} runs of designs meant to be sound are not clean`);
  if (args.json) io.out(JSON.stringify(json));
  return failures.length > 0 ? EXIT_UNSOUND : EXIT_OK;
}
