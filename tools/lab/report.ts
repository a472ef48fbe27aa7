// The lab's outputs: the plain-text table (stdout), the markdown report (--md), and the JSON object.
import type { Claim } from './claims.js';
import type { LabResult } from './results.js';
import type { LabReport } from './runner.js';
import { WORKLOADS } from './workloads.js';

/** Where and when the lab ran (for the report's header; not part of what the seed reproduces). */
export interface LabMeta {
  readonly date: string;
  readonly machine: string;
  readonly node: string;
}

const num = (x: number | null, digits = 2): string => {
  if (x === null) return '-';
  if (Number.isInteger(x)) return String(x);
  return x.toFixed(digits);
};

const rate = (pps: number): string => (pps >= 1e6 ? `${(pps / 1e6).toFixed(2)}M` : pps >= 1e3 ? `${(pps / 1e3).toFixed(1)}k` : pps.toFixed(0));

const share = (x: number | null): string => (x === null ? '-' : `${(x * 100).toFixed(1)}%`);

/** The table's columns: header and cell. */
const COLUMNS: readonly (readonly [string, (r: LabResult) => string])[] = [
  ['design', (r) => r.design],
  ['workload', (r) => r.workload],
  ['safe', (r) => (r.safe ? 'yes' : r.expectedSound ? 'NO' : 'no')],
  ['early', (r) => String(r.earlyReturns)],
  ['double', (r) => String(r.doubleReturns)],
  ['leaks', (r) => String(r.leaks)],
  ['other', (r) => String(r.otherFailures)],
  ['late p50/p99/max steps', (r) => (r.lateP99 === null ? `mean ${num(r.lateMeanSteps)}` : `${r.lateP50}/${r.lateP99}/${r.lateMax}`)],
  ['late p99 ms', (r) => num(r.lateP99Ms)],
  ['held late', (r) => share(r.heldLateShare)],
  ['copied B/B', (r) => num(r.copiedBytesPerByte, 3)],
  ['copied compl', (r) => share(r.copiedCompletionShare)],
  ['allocs/pkt', (r) => num(r.allocsPerPacket)],
  ['refops/pkt', (r) => num(r.refOpsPerPacket)],
  ['cb/pkt', (r) => num(r.callbacksPerPacket)],
  ['B/page', (r) => num(r.bookkeepingBytesPerPage)],
  ['B/skb', (r) => num(r.bookkeepingBytesPerSkb)],
  ['pps', (r) => rate(r.pps)],
  ['vs rusty', (r) => num(r.relativeThroughput)],
];

/** Pads cells into aligned columns. */
function align(rows: readonly (readonly string[])[]): string[] {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}

/** The result table as plain text lines. */
export function formatTable(results: readonly LabResult[]): string[] {
  return align([COLUMNS.map(([h]) => h), ...results.map((r) => COLUMNS.map(([, f]) => f(r)))]);
}

/** One line per unsafe row: what broke it first. */
export function formatViolations(results: readonly LabResult[]): string[] {
  return results.filter((r) => !r.safe).map((r) => `${r.design} × ${r.workload}: ${r.firstViolation ?? 'unsafe'}`);
}

/** The claims as plain text lines. */
export function formatClaims(claims: readonly Claim[]): string[] {
  const out: string[] = [];
  for (const c of claims) {
    out.push(`- "${c.claim}" (${c.source})`);
    out.push(`    measured: ${c.measured}`);
    out.push(`    verdict:  ${c.verdict}    [rule: ${c.rule}]`);
  }
  return out;
}

/** One line per note a run left (aborted holders, a timing pass that did not reproduce the figures). */
export function formatNotes(results: readonly LabResult[]): string[] {
  return results.flatMap((r) => r.notes.map((n) => `${r.design} × ${r.workload}: ${n}`));
}

/** The whole plain-text report (stdout). */
export function formatText(report: LabReport): string[] {
  const out = [...formatTable(report.results)];
  const v = formatViolations(report.results);
  if (v.length > 0) out.push('', 'violations (first per run, with the operation that breaks the design):', ...v.map((l) => `  ${l}`));
  const n = formatNotes(report.results);
  if (n.length > 0) out.push('', 'notes:', ...n.map((l) => `  ${l}`));
  out.push('', 'the debate\'s claims:', ...formatClaims(report.claims));
  return out;
}

const mdCell = (s: string): string => s.replace(/\|/g, '\\|');

/** The markdown report (--md): header, workloads, table, violations, claims. */
export function formatMarkdown(report: LabReport, meta: LabMeta): string {
  const lines: string[] = [];
  lines.push('# grantwire lab: every release design, the same workloads', '');
  lines.push(`Run ${meta.date} on ${meta.machine}, Node ${meta.node}: seed ${report.seed}, ${report.seconds} virtual s per workload.`);
  lines.push('Everything but pps and "vs rusty" (wall-clock) is reproduced by the seed: `npm run lab -- --seed ' + report.seed + ` --seconds ${report.seconds}\`.`, '');
  lines.push('Workloads:', '');
  for (const name of report.workloads) {
    const w = WORKLOADS.find((x) => x.name === name);
    lines.push(`- **${name}**: ${w?.title ?? ''}`);
  }
  lines.push('');
  lines.push('| ' + COLUMNS.map(([h]) => h).join(' | ') + ' |');
  lines.push('|' + COLUMNS.map(() => '---').join('|') + '|');
  for (const r of report.results) lines.push('| ' + COLUMNS.map(([, f]) => mdCell(f(r))).join(' | ') + ' |');
  lines.push('');
  lines.push(
    'Columns: safety from the grant oracle (early returns, double returns, leaks; "other": data mismatches, corrupt payloads, errors); ' +
      'late: delay from the step the page became unreachable to its grant\'s return (steps of 0.1 ms busy time; fuzz: mean only); ' +
      'held late: share of grants returned a step or more late; copied B/B: bytes copied per byte sent; copied compl: zerocopy ' +
      'completions that completed as copied; allocs, refops (page gets/puts, parent refs) and cb (destructor/callback calls) per packet; ' +
      'B/page, B/skb: the design\'s declared bookkeeping; pps: packets per wall-clock second of the data path; vs rusty: pps over rusty\'s.',
  );
  const v = formatViolations(report.results);
  if (v.length > 0) {
    lines.push('', '## Violations (first per run)', '');
    for (const l of v) lines.push(`- ${l}`);
  }
  const n = formatNotes(report.results);
  if (n.length > 0) {
    lines.push('', '## Notes', '');
    for (const l of n) lines.push(`- ${l}`);
  }
  lines.push('', '## The debate\'s claims', '');
  lines.push('| claim | source | measured | verdict | rule |');
  lines.push('|---|---|---|---|---|');
  for (const c of report.claims) lines.push(`| ${mdCell(c.claim)} | ${mdCell(c.source)} | ${mdCell(c.measured)} | **${mdCell(c.verdict)}** | ${mdCell(c.rule)} |`);
  lines.push('');
  return lines.join('\n');
}

/** The JSON object (the last stdout line with --json, and the --out file). */
export function toJson(report: LabReport, meta: LabMeta): Record<string, unknown> {
  return {
    results: report.results,
    claims: report.claims,
    seed: report.seed,
    seconds: report.seconds,
    designs: report.designs,
    workloads: report.workloads,
    meta,
  };
}
