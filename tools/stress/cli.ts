// `npm run stress -- --seconds N [--guests G] [--seed S] [--sim] [--json] [--design D] [--schedule TEXT]`: many
// guests, mixed traffic, a seeded fault schedule (tools/sim/faults.ts) and the adversary catalogue, then the audit.
// Thread mode (the default) runs the real workers (./threads.ts); --sim runs the same code in one thread under a
// seeded scheduler on virtual time (tools/sim). Progress and faults go to stderr as they happen; the summary to
// stdout, with --json a last line holding one object. Exit status: 0 clean, 1 failure, 2 usage error. A failure
// prints its seed, its schedule and the command that replays it with --sim (and the failed adversary cases alone).
import { designByName } from '../../backend/release.js';
import { ADVERSARY_CASES } from '../../frontend/adversary.js';
import { formatMixSettings, type MixSettings } from '../../frontend/traffic.js';
import { err, ok, type Result } from '../../shared/result.js';
import { integerFlag, mixFlag, mixUsage, numberFlag, parseFlags, seedFlag, stringFlag, switchFlag, type Flag } from '../cli-args.js';
import { FAULT_TYPES, SIM_MAX_GUESTS, faultGuest, formatFaultSchedule, makeFaultSchedule, parseFaultSchedule, type FaultEvent, type FaultType } from '../sim/index.js';
import type { AdversaryFigures, StressAudit, StressProgress, StressReport, ThreadRunOptions } from './threads.js';

/** Exit codes: clean, failure, bad command line. */
export const EXIT_OK = 0;
export const EXIT_FAIL = 1;
export const EXIT_USAGE = 2;

/** Bounds of the flags. */
export const MAX_GUESTS = SIM_MAX_GUESTS;
export const MAX_SECONDS = 3600;

/** The parsed command line. */
export interface StressArgs {
  readonly seconds: number;
  readonly guests: number;
  readonly seed: number;
  readonly sim: boolean;
  readonly json: boolean;
  readonly design: string;
  /** A schedule to replay instead of the seed's, or null. */
  readonly schedule: FaultEvent[] | null;
  readonly adversary: boolean;
  /** The adversary cases to play, by name, in catalogue order; null: all of them. */
  readonly cases: readonly string[] | null;
  /** What the guests' mix changes (--mix), or null for the mode's own mix. */
  readonly mix: MixSettings | null;
  readonly help: boolean;
}

/** The --help text. */
export const USAGE = [
  'usage: npm run stress -- --seconds N [--guests G] [--seed S] [--sim] [--json] [--design D] [--mix TEXT]',
  '                          [--schedule TEXT] [--cases NAMES | --no-adversary]',
  '',
  'Runs G guests with mixed traffic for N seconds under a seeded fault schedule (wire loss, NIC stalls, long tap',
  'holds, slow and stalled receivers, a guest killed mid-traffic, the backend killed and restarted with every',
  'guest reconnecting, revokes of grants still mapped, event storms) while the adversary catalogue plays malicious',
  'guests against the same backend; then shuts down in order and audits every grant across every death.',
  '',
  `  --seconds N      seconds of traffic, a number in (0, ${MAX_SECONDS}] (required)`,
  `  --guests G       guests, an integer in [1, ${MAX_GUESTS}] (default 4)`,
  '  --seed S         seed of the schedule and of every random choice, an integer in [0, 4294967295] (default 1)',
  '  --sim            one thread, virtual time, seeded scheduler: one seed gives one execution (a failing seed is',
  '                   a permanent reproduction)',
  '  --json           make the last stdout line a JSON object: {mode, seed, seconds, guests, design, packets, bytes,',
  '                   audit, faults, adversary}',
  '  --design D       release design of the backend (default rusty)',
  ...mixUsage(19, 'guest=1,uplink=1,broadcast=0.1,tcp=1,small=0.4,mtu=0.4 (tcp=0.5 with --sim)'),
  "  --schedule TEXT  replay this fault schedule instead of the seed's (events separated by ';', as a failure prints)",
  '  --cases NAMES    play only these adversary cases (comma-separated names, as the report prints them)',
  '  --no-adversary   do not play the adversary catalogue',
  '  --help           this text',
  '',
  'Exit status: 0 when the audit is clean (nothing leaked, returned early or twice, corrupt or outstanding), every',
  'scheduled fault was injected, every adversary case was handled and the backend never crashed; 1 otherwise; 2 for',
  'a usage error.',
].join('\n');

/** --design: a release design known to backend/release.ts. */
const designFlag: Flag<string> = {
  takesValue: true,
  read: (flag, value) => {
    if (value === null) return err(`${flag} needs a value`);
    return designByName(value) === undefined ? err(`${flag}: unknown release design "${value}"`) : ok(value);
  },
};

/** --cases: adversary case names, each in the catalogue; returned in catalogue order without repeats. */
const casesFlag: Flag<readonly string[]> = {
  takesValue: true,
  read: (flag, value) => {
    if (value === null || value === '') return err(`${flag} needs adversary case names separated by ','`);
    const names = value.split(',').map((n) => n.trim());
    const known = ADVERSARY_CASES.map((c) => c.name);
    const unknown = names.find((n) => !known.includes(n));
    if (unknown !== undefined) return err(`${flag}: unknown adversary case "${unknown}"; the cases are: ${known.join(', ')}`);
    return ok(known.filter((n) => names.includes(n)));
  },
};

/** Parses argv (without node and script); errors are exact messages. */
export function parseStressArgs(argv: readonly string[]): Result<StressArgs> {
  const parsed = parseFlags(
    argv,
    {
      seconds: numberFlag({ min: 0, max: MAX_SECONDS, minOpen: true }),
      guests: integerFlag(1, MAX_GUESTS),
      seed: seedFlag,
      design: designFlag,
      schedule: stringFlag('a value'),
      sim: switchFlag,
      json: switchFlag,
      mix: mixFlag,
      cases: casesFlag,
      'no-adversary': switchFlag,
    },
    { seconds: null, guests: 4, seed: 1, design: 'rusty', schedule: null, sim: false, json: false, mix: null, cases: null, 'no-adversary': false },
  );
  if (!parsed.ok) return parsed;
  const { seconds, guests, seed, design, sim, json, help } = parsed.value;
  const scheduleText = parsed.value.schedule;
  const adversary = !parsed.value['no-adversary'];
  const { cases, mix } = parsed.value;
  if (help) return ok({ seconds: seconds ?? 0, guests, seed, sim, json, design, schedule: null, adversary, cases, mix, help });
  if (seconds === null) return err('--seconds is required');
  if (cases !== null && !adversary) return err('--cases and --no-adversary exclude each other');
  let schedule: FaultEvent[] | null = null;
  if (scheduleText !== null) {
    const s = parseFaultSchedule(scheduleText);
    if (!s.ok) return err(`--schedule: ${s.error}`);
    for (const e of s.value) {
      const g = faultGuest(e);
      if (g > guests) return err(`--schedule: ${e.type} at ${e.at} ms names guest slot ${g} but there are ${guests} guests`);
      if (e.at > seconds * 1000) return err(`--schedule: ${e.type} at ${e.at} ms is after the run's ${seconds} s`);
    }
    schedule = s.value;
  }
  return ok({ seconds, guests, seed, sim, json, design, schedule, adversary, cases, mix, help });
}

/** What either mode reports (the simulator's report has the same figures). */
export interface StressOutcome {
  readonly mode: 'threads' | 'sim';
  readonly seed: number;
  readonly seconds: number;
  readonly guests: number;
  readonly design: string;
  readonly packets: number;
  readonly bytes: number;
  readonly audit: StressAudit;
  readonly faults: Record<FaultType, number>;
  readonly adversary: AdversaryFigures;
  /** The adversary cases that were not handled, by name. */
  readonly failedCases: readonly string[];
  /** Failures beyond the figures (faults not injected, guests that did not reconnect, errors). */
  readonly errors: readonly string[];
  readonly notes: readonly string[];
}

/** The `--json` object: exactly these keys, in this order. */
export interface StressJson {
  mode: 'threads' | 'sim';
  seed: number;
  seconds: number;
  guests: number;
  design: string;
  packets: number;
  bytes: number;
  audit: StressAudit;
  faults: Record<FaultType, number>;
  adversary: AdversaryFigures;
}

/** The JSON summary of an outcome. */
export function stressJson(o: StressOutcome): StressJson {
  const a = o.audit;
  const faults = {} as Record<FaultType, number>;
  for (const t of FAULT_TYPES) faults[t] = o.faults[t] ?? 0;
  return {
    mode: o.mode,
    seed: o.seed,
    seconds: o.seconds,
    guests: o.guests,
    design: o.design,
    packets: o.packets,
    bytes: o.bytes,
    audit: {
      granted: a.granted,
      returned: a.returned,
      outstanding: a.outstanding,
      leaked: a.leaked,
      earlyReturns: a.earlyReturns,
      doubleReturns: a.doubleReturns,
      corruptPayloads: a.corruptPayloads,
    },
    faults,
    adversary: { cases: o.adversary.cases, handled: o.adversary.handled, backendCrashes: o.adversary.backendCrashes },
  };
}

/** Why a run failed, one phrase each (empty: it passed). */
export function stressFailures(o: StressOutcome, schedule: readonly FaultEvent[]): string[] {
  const a = o.audit;
  const out: string[] = [];
  if (a.leaked !== 0) out.push(`${a.leaked} leaked`);
  if (a.earlyReturns !== 0) out.push(`${a.earlyReturns} early returns`);
  if (a.doubleReturns !== 0) out.push(`${a.doubleReturns} double returns`);
  if (a.corruptPayloads !== 0) out.push(`${a.corruptPayloads} corrupt payloads`);
  if (a.outstanding !== 0) out.push(`${a.outstanding} grants outstanding after shutdown`);
  if (a.granted !== a.returned + a.outstanding) out.push(`granted ${a.granted} but returned ${a.returned} + outstanding ${a.outstanding}`);
  const wanted: Partial<Record<FaultType, number>> = {};
  for (const e of schedule) wanted[e.type] = (wanted[e.type] ?? 0) + 1;
  for (const t of FAULT_TYPES) {
    const w = wanted[t] ?? 0;
    if ((o.faults[t] ?? 0) < w) out.push(`${t} injected ${o.faults[t] ?? 0} of ${w} times`);
  }
  if (o.adversary.handled !== o.adversary.cases) out.push(`${o.adversary.cases - o.adversary.handled} of ${o.adversary.cases} adversary cases not handled`);
  if (o.adversary.backendCrashes !== 0) out.push(`${o.adversary.backendCrashes} backend crashes`);
  if (o.errors.length > 0) out.push(`${o.errors.length} errors`);
  return out;
}

// The flags that make up a run besides seed, seconds and guests: design, mix.
function runFlags(o: Pick<StressArgs, 'design' | 'mix'>): string {
  const design = o.design === 'rusty' ? '' : ` --design ${o.design}`;
  const mix = o.mix === null ? '' : ` --mix ${formatMixSettings(o.mix)}`;
  return design + mix;
}

/** The command that replays a run's schedule (and its choice of adversary cases) in the simulator. */
export function replayCommand(o: Pick<StressArgs, 'seed' | 'seconds' | 'guests' | 'design' | 'mix' | 'adversary' | 'cases'>, schedule: readonly FaultEvent[]): string {
  const sched = formatFaultSchedule(schedule).split('\n').join('; ');
  const cases = !o.adversary ? ' --no-adversary' : o.cases === null ? '' : ` --cases ${o.cases.join(',')}`;
  return `npm run stress -- --sim --seed ${o.seed} --seconds ${o.seconds} --guests ${o.guests}${runFlags(o)}${cases} --schedule '${sched}'`;
}

/** Seconds of traffic before the cases in the command that plays failed adversary cases alone. */
export const CASES_ALONE_SECONDS = 1;

/** The command that plays only the failed adversary cases, in the mode they failed in, after a short run. */
export function casesAloneCommand(o: Pick<StressOutcome, 'mode' | 'seed' | 'failedCases'>, args: Pick<StressArgs, 'design' | 'mix'>): string {
  const sim = o.mode === 'sim' ? ' --sim' : '';
  return `npm run stress --${sim} --seed ${o.seed} --seconds ${CASES_ALONE_SECONDS}${runFlags(args)} --cases ${o.failedCases.join(',')}`;
}

/** The human summary (stdout). */
export function formatStressSummary(o: StressOutcome, args: StressArgs, schedule: readonly FaultEvent[]): string[] {
  const a = o.audit;
  const lines = [
    `stress (${o.mode}): ${o.guests} guests, ${o.seconds} s, seed ${o.seed}, design ${o.design}` +
      `${args.mix === null ? '' : `, mix ${formatMixSettings(args.mix)}`}: ${o.packets} packets, ${o.bytes} bytes`,
    `faults: ${FAULT_TYPES.map((t) => `${t} ${o.faults[t] ?? 0}`).join(', ')}`,
    `adversary: ${o.adversary.cases} cases, ${o.adversary.handled} handled, ${o.adversary.backendCrashes} backend crashes`,
  ];
  for (const n of o.notes) lines.push(`  note: ${n}`);
  for (const e of o.errors) lines.push(`  error: ${e}`);
  lines.push(
    `audit: granted ${a.granted}, returned ${a.returned}, outstanding ${a.outstanding}, leaked ${a.leaked}, ` +
      `early returns ${a.earlyReturns}, double returns ${a.doubleReturns}, corrupt payloads ${a.corruptPayloads}`,
  );
  const bad = stressFailures(o, schedule);
  if (bad.length === 0) {
    lines.push('stress: clean');
    return lines;
  }
  lines.push(`stress: FAILED: ${bad.join(', ')}`);
  lines.push(`seed: ${o.seed}`);
  lines.push('schedule:');
  for (const l of formatFaultSchedule(schedule).split('\n')) if (l !== '') lines.push(`  ${l}`);
  lines.push(`replay: ${replayCommand(args, schedule)}`);
  if (o.failedCases.length > 0) lines.push(`failed cases alone: ${casesAloneCommand(o, args)}`);
  return lines;
}

/** One progress line. */
export function formatStressProgress(p: StressProgress): string {
  const rate = p.pps >= 1e3 ? `${(p.pps / 1e3).toFixed(1)}k` : p.pps.toFixed(0);
  return (
    `${p.elapsedSeconds.toFixed(0).padStart(4)} s  ${rate} pkt/s  outstanding ${p.outstanding}  guests ${p.guests}  ` +
    `backend #${p.backend}  faults ${p.injected}/${p.scheduled}`
  );
}

/** Where the tool writes (injected so tests and the entry point differ only here). */
export interface StressIo {
  out(line: string): void;
  err(line: string): void;
}

/** How the two modes run (injected: tests run smaller systems). */
export interface StressModes {
  threads(args: StressArgs, schedule: FaultEvent[], io: StressIo): Promise<StressOutcome>;
  sim(args: StressArgs, schedule: FaultEvent[], io: StressIo): Promise<StressOutcome>;
}

/** Runs the tool; returns the exit code. */
export async function main(argv: readonly string[], io: StressIo, modes: StressModes): Promise<number> {
  const parsed = parseStressArgs(argv);
  if (!parsed.ok) {
    io.err(`stress: ${parsed.error}`);
    io.err('try --help');
    return EXIT_USAGE;
  }
  const args = parsed.value;
  if (args.help) {
    io.out(USAGE);
    return EXIT_OK;
  }
  const schedule = args.schedule ?? makeFaultSchedule(args.seed, args.seconds, args.guests);
  io.err(`stress: seed ${args.seed}, ${schedule.length} faults scheduled`);
  let outcome: StressOutcome;
  try {
    outcome = await (args.sim ? modes.sim(args, schedule, io) : modes.threads(args, schedule, io));
  } catch (e) {
    io.err(`stress: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    io.err(`seed: ${args.seed}`);
    io.err(`replay: ${replayCommand(args, schedule)}`);
    return EXIT_FAIL;
  }
  for (const line of formatStressSummary(outcome, args, schedule)) io.out(line);
  if (args.json) io.out(JSON.stringify(stressJson(outcome)));
  return stressFailures(outcome, schedule).length === 0 ? EXIT_OK : EXIT_FAIL;
}

/** Thread mode from the command line (the real system). */
export async function threadMode(args: StressArgs, schedule: FaultEvent[], io: StressIo, extra: Partial<ThreadRunOptions> = {}): Promise<StressOutcome> {
  const { runThreads } = await import('./threads.js');
  const r: StressReport = await runThreads({
    seed: args.seed,
    seconds: args.seconds,
    guests: args.guests,
    schedule,
    design: args.design,
    adversary: args.adversary,
    ...(args.cases !== null && { adversaryCases: args.cases }),
    ...(args.mix !== null && { mix: args.mix }),
    onProgress: (p) => io.err(formatStressProgress(p)),
    onFault: (l) => io.err(l),
    onCase: (l) => io.err(l),
    ...extra,
  });
  return {
    mode: 'threads',
    seed: r.seed,
    seconds: r.seconds,
    guests: r.guests,
    design: args.design,
    packets: r.packets,
    bytes: r.bytes,
    audit: r.audit,
    faults: r.faults,
    adversary: r.adversary,
    failedCases: r.failedCases,
    errors: r.errors,
    notes: [...r.notes, `revokes of mapped grants: ${r.revokes.refused} refused, ${r.revokes.ended} ended later`, `backend incarnations: ${r.backends}`],
  };
}
