// `npm start -- [--guests N] [--seconds S] [--mtu M] [--loss P] [--mix TEXT] [--tap] [--pcap FILE] [--seed S] [--json]`: boots
// the system (tools/toolstack.ts), runs mixed traffic, prints one progress line a second (stderr: rewritten in
// place on a TTY, plain lines otherwise), shuts down in order and prints the audit on stdout; with --json the last
// stdout line is one JSON object. Exit status: 0 clean, 1 audit failure, 2 usage error.
import { pathToFileURL } from 'node:url';
import { ok, type Result } from '../shared/result.js';
import type { MixSettings } from '../frontend/traffic.js';
import { commandLine, EXIT_OK, EXIT_USAGE, integerFlag, mixFlag, mixUsage, numberFlag, parseFlags, seedFlag, stringFlag, switchFlag } from './cli-args.js';
import type { SystemProgress, SystemReport, ToolstackOptions } from './toolstack.js';

/** Exit codes: clean (EXIT_OK), audit failure, bad command line (EXIT_USAGE). */
export { EXIT_OK, EXIT_USAGE };
export const EXIT_AUDIT = 1;

/** Bounds of the flags (the guest count is bounded by memory: each guest gets its own frames). */
export const MAX_GUESTS = 64;
export const MAX_SECONDS = 3600;
/** IPv4's minimum reassembly size (RFC 791) up to a jumbo frame. */
export const MIN_MTU = 576;
export const MAX_MTU = 9000;

/** The parsed command line. */
export interface StartArgs {
  readonly guests: number;
  readonly seconds: number;
  readonly mtu: number;
  readonly loss: number;
  /** What the guests' mix changes (--mix), or null for the demo's. */
  readonly mix: MixSettings | null;
  readonly tap: boolean;
  readonly pcap: string | null;
  readonly seed: number;
  readonly json: boolean;
  readonly help: boolean;
}

/** The --help text. */
export const USAGE = [
  'usage: npm start -- [--guests N] [--seconds S] [--mtu M] [--loss P] [--mix TEXT] [--tap] [--pcap FILE] [--seed S] [--json]',
  '',
  'Boots a backend domain (netback, bridge, uplink NIC, local TCP endpoint) and N guests (netfront), runs mixed',
  'traffic (guest->uplink, guest->guest, broadcast, TCP bulk through the local endpoint), then shuts down in order',
  'and audits every grant: the oracle (early/double returns, leaks) and the guests (poisoned or corrupt payloads).',
  '',
  `  --guests N    number of guests, an integer in [1, ${MAX_GUESTS}] (default 4)`,
  `  --seconds S   seconds of traffic, a number in (0, ${MAX_SECONDS}] (default 10)`,
  `  --mtu M       MTU of the vifs, the bridge and the uplink, an integer in [${MIN_MTU}, ${MAX_MTU}] (default 1500)`,
  '  --loss P      probability that the uplink loses a frame on the wire, a number in [0, 1) (default 0)',
  ...mixUsage(16, 'guest=1,uplink=1,broadcast=0.1,tcp=1,small=0.4,mtu=0.4'),
  '  --tap         capture every bridge port\'s frames with a tap that holds each clone for a while',
  '  --pcap FILE   write what the tap saw to FILE (classic pcap; implies --tap)',
  '  --seed S      seed of every random choice, an integer in [0, 4294967295] (default 1)',
  '  --json        make the last stdout line a JSON summary',
  '  --help        this text',
  '',
  'Progress goes to stderr once a second; stdout carries only the final summary.',
  'Exit status: 0 clean, 1 audit failure (leaked, early or double returns, corrupt payloads, or grants',
  'still outstanding after shutdown), 2 usage error.',
].join('\n');

/** Parses argv (without node and script); errors are exact messages. */
export function parseStartArgs(argv: readonly string[]): Result<StartArgs> {
  const parsed = parseFlags(
    argv,
    {
      guests: integerFlag(1, MAX_GUESTS),
      seconds: numberFlag({ min: 0, minOpen: true, max: MAX_SECONDS }),
      mtu: integerFlag(MIN_MTU, MAX_MTU),
      loss: numberFlag({ min: 0, max: 1, maxOpen: true }),
      mix: mixFlag,
      tap: switchFlag,
      pcap: stringFlag('a file name'),
      seed: seedFlag,
      json: switchFlag,
    },
    { guests: 4, seconds: 10, mtu: 1500, loss: 0, mix: null, tap: false, pcap: null, seed: 1, json: false },
  );
  // --pcap implies --tap.
  return parsed.ok ? ok({ ...parsed.value, tap: parsed.value.tap || parsed.value.pcap !== null }) : parsed;
}

/** The `--json` summary: exactly the documented keys, in the documented order. */
export interface StartSummary {
  guests: number;
  seconds: number;
  packets: number;
  bytes: number;
  pps: number;
  gbps: number;
  returnLatencyUs: { p50: number; p99: number };
  audit: {
    granted: number;
    returned: number;
    outstanding: number;
    leaked: number;
    earlyReturns: number;
    doubleReturns: number;
    corruptPayloads: number;
  };
}

/** Builds the JSON summary from the system's final report. */
export function startSummary(r: SystemReport): StartSummary {
  const secs = r.trafficSeconds;
  return {
    guests: r.guests,
    seconds: round(secs, 3),
    packets: r.packets,
    bytes: r.bytes,
    pps: secs > 0 ? Math.round(r.packets / secs) : 0,
    gbps: secs > 0 ? round((r.bytes * 8) / secs / 1e9, 3) : 0,
    returnLatencyUs: { p50: finite(round(r.returnLatencyUs.p50, 1)), p99: finite(round(r.returnLatencyUs.p99, 1)) },
    audit: {
      granted: r.audit.granted,
      returned: r.audit.returned,
      outstanding: r.audit.outstanding,
      leaked: r.audit.leaked,
      earlyReturns: r.audit.earlyReturns,
      doubleReturns: r.audit.doubleReturns,
      corruptPayloads: r.audit.corruptPayloads,
    },
  };
}

/** Whether the audit passed: nothing leaked, returned early or twice, corrupt, or still outstanding. */
export function auditClean(s: StartSummary): boolean {
  const a = s.audit;
  return a.leaked === 0 && a.earlyReturns === 0 && a.doubleReturns === 0 && a.corruptPayloads === 0 && a.outstanding === 0;
}

/** The audit failures by name, for the human summary (empty when clean). */
export function auditFailures(s: StartSummary): string[] {
  const a = s.audit;
  const out: string[] = [];
  if (a.leaked !== 0) out.push(`${a.leaked} leaked`);
  if (a.earlyReturns !== 0) out.push(`${a.earlyReturns} early returns`);
  if (a.doubleReturns !== 0) out.push(`${a.doubleReturns} double returns`);
  if (a.corruptPayloads !== 0) out.push(`${a.corruptPayloads} corrupt payloads`);
  if (a.outstanding !== 0) out.push(`${a.outstanding} grants outstanding after shutdown`);
  return out;
}

/** One progress line: totals, then one short group per guest. */
export function formatProgress(p: SystemProgress): string {
  const head =
    `${p.elapsedSeconds.toFixed(0).padStart(3)} s  ${fmtRate(p.pps)} pkt/s  ${p.gbps.toFixed(2)} Gbit/s  ` +
    `outstanding ${p.outstanding}  return p50/p99 ${fmtUs(p.returnLatencyUs.p50)}/${fmtUs(p.returnLatencyUs.p99)}`;
  const per = p.perGuest.map(
    (g) => `d${g.domid} ${fmtRate(g.pps)}/${g.gbps.toFixed(2)}G o${g.outstanding} ${fmtUs(g.returnLatencyUs.p50)}/${fmtUs(g.returnLatencyUs.p99)}`,
  );
  return per.length === 0 ? head : `${head}  |  ${per.join('  ')}`;
}

/** The human summary printed at the end (stdout). */
export function formatSummary(s: StartSummary, r: SystemReport): string[] {
  const a = s.audit;
  const lines = [
    `grantwire: ${s.guests} guests, ${s.seconds} s of traffic: ${s.packets} packets, ${s.bytes} bytes, ` +
      `${fmtRate(s.pps)} pkt/s, ${s.gbps} Gbit/s; grant-return latency p50 ${s.returnLatencyUs.p50} us, p99 ${s.returnLatencyUs.p99} us`,
  ];
  for (const g of r.perGuest) {
    lines.push(
      `  d${g.domid}: tx ${g.txPackets} pkts ${g.txBytes} B, rx ${g.rxPackets} pkts ${g.rxBytes} B, granted ${g.granted}, ` +
        `returned ${g.returned}, outstanding ${g.outstanding}, corrupt ${g.corruptPayloads}, tx errors ${g.txErrors}` +
        (g.error === null ? '' : `, error: ${g.error}`),
    );
  }
  for (const line of r.notes) lines.push(`  note: ${line}`);
  for (const line of r.errors) lines.push(`  error: ${line}`);
  lines.push(
    `audit: granted ${a.granted}, returned ${a.returned}, outstanding ${a.outstanding}, leaked ${a.leaked}, ` +
      `early returns ${a.earlyReturns}, double returns ${a.doubleReturns}, corrupt payloads ${a.corruptPayloads}`,
  );
  const bad = auditFailures(s);
  if (r.errors.length > 0) bad.push(`${r.errors.length} errors`);
  lines.push(bad.length === 0 ? 'audit: clean' : `audit: FAILED: ${bad.join(', ')}`);
  return lines;
}

// JSON has no NaN: a figure without samples is reported as 0.
function finite(x: number): number {
  return Number.isFinite(x) ? x : 0;
}

function round(x: number, digits: number): number {
  const k = 10 ** digits;
  return Math.round(x * k) / k;
}

function fmtRate(x: number): string {
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)}M`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)}k`;
  return x.toFixed(0);
}

function fmtUs(x: number): string {
  if (!Number.isFinite(x)) return '-';
  return x >= 1000 ? `${(x / 1000).toFixed(1)}ms` : `${x.toFixed(0)}us`;
}

/** Where the demo writes (injected so tests and the entry point differ only here). */
export interface StartIo {
  out(line: string): void;
  /** A progress line (rewritten in place on a TTY). */
  progress(line: string): void;
  err(line: string): void;
}

/** Runs the demo; returns the exit code. `boot` is injected so tests can run a smaller system. */
export async function main(
  argv: readonly string[],
  io: StartIo,
  boot: (opts: ToolstackOptions) => Promise<{ run(onProgress: (p: SystemProgress) => void): Promise<SystemReport> }>,
): Promise<number> {
  const cmd = commandLine('start', parseStartArgs(argv), USAGE, io);
  if ('exit' in cmd) return cmd.exit;
  const args = cmd.args;
  let report: SystemReport;
  try {
    const sys = await boot({
      guests: args.guests,
      seconds: args.seconds,
      mtu: args.mtu,
      loss: args.loss,
      ...(args.mix !== null && { mix: args.mix }),
      tap: args.tap,
      pcapPath: args.pcap,
      seed: args.seed,
    });
    report = await sys.run((p) => io.progress(formatProgress(p)));
  } catch (e) {
    io.err(`start: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    return EXIT_AUDIT;
  }
  const summary = startSummary(report);
  for (const line of formatSummary(summary, report)) io.out(line);
  if (args.json) io.out(JSON.stringify(summary));
  return auditClean(summary) && report.errors.length === 0 ? EXIT_OK : EXIT_AUDIT;
}

/** The terminal side of StartIo: progress rewritten in place on a TTY, plain lines to stderr otherwise. */
export function processIo(): StartIo {
  const tty = process.stderr.isTTY === true;
  let shown = false;
  const endProgress = (): void => {
    if (tty && shown) process.stderr.write('\n');
    shown = false;
  };
  return {
    out(line) {
      endProgress();
      process.stdout.write(`${line}\n`);
    },
    progress(line) {
      if (tty) {
        const cols = process.stderr.columns ?? 120;
        process.stderr.write(`\r\x1b[2K${line.length > cols - 1 ? line.slice(0, cols - 1) : line}`);
        shown = true;
      } else {
        process.stderr.write(`${line}\n`);
      }
    },
    err(line) {
      endProgress();
      process.stderr.write(`${line}\n`);
    },
  };
}

// Run only as the entry point (tests import this module).
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { bootSystem } = await import('./toolstack.js');
  process.exitCode = await main(process.argv.slice(2), processIo(), bootSystem);
}
