// `npm run lab`'s contract with every design: one row per design × workload with the documented keys, every design
// meant to be sound clean, the negative control caught, claims with figures and verdicts, the files it writes; and
// reproducibility by seed (timing passes and warm-up change nothing but speed).
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT_OK, main, markdownPath } from '../../tools/lab/cli.js';
import { labDesigns } from '../../tools/lab/designs.js';
import { SPEED_FIELDS, type LabResult } from '../../tools/lab/results.js';
import { runLab } from '../../tools/lab/runner.js';
import { WORKLOADS } from '../../tools/lab/workloads.js';

/** The documented keys of each result, in order, first. */
const RESULT_KEYS = ['design', 'workload', 'earlyReturns', 'doubleReturns', 'leaks', 'lateP99', 'copiedBytesPerByte', 'allocsPerPacket', 'refOpsPerPacket', 'pps'];

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'grantwire-lab-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs main in-process, collecting its output. */
function runMain(argv: readonly string[]): { code: number; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  const code = main(argv, { out: (l) => out.push(l), err: (l) => err.push(l) }, { warmup: false, speedPasses: 1 });
  return { code, out, err };
}

test('every design × every workload: one object per run with the documented keys first, claims with figures and verdicts', (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'lab.json');
  const r = runMain(['--seconds', '0.01', '--json', '--out', file, '--md']);
  const designs = labDesigns();
  const j = JSON.parse(r.out[r.out.length - 1]!) as { results: LabResult[]; claims: { claim: string; measured: string; verdict: string }[] };
  t.is(j.results.length, designs.length * WORKLOADS.length);
  if (designs.length >= 9) t.true(j.results.length >= 9 * 5);
  for (const row of j.results) t.deepEqual(Object.keys(row).slice(0, RESULT_KEYS.length), RESULT_KEYS);
  t.deepEqual(
    [...new Set(j.results.map((x) => x.design))],
    designs.map((d) => d.name),
  );
  // Every design meant to be sound is clean; the negative control is caught where the seeds say it breaks.
  for (const row of j.results) if (row.expectedSound) t.true(row.safe, `${row.design} × ${row.workload}: ${row.firstViolation}`);
  t.is(r.code, EXIT_OK);
  const naiveEarly = j.results.filter((x) => x.design === 'naive').reduce((n, x) => n + x.earlyReturns, 0);
  t.true(naiveEarly > 0);
  for (const c of j.claims) t.true(c.claim.length > 0 && c.measured.length > 0 && c.verdict.length > 0);
  const measured = j.claims.filter((c) => !c.verdict.startsWith('not measured')).length;
  // Four claims need only rusty and naive; all eight once every design exists.
  t.true(measured >= (designs.length >= 11 ? 8 : 4), `${measured} claims measured`);
  // The file holds the same object; the markdown report has the table and the claims.
  t.deepEqual(JSON.parse(readFileSync(file, 'utf8')), j);
  const md = readFileSync(markdownPath(file), 'utf8');
  t.regex(md, /^\| design \| workload \| safe \|/m);
  t.regex(md, /^## The debate's claims$/m);
});


test('two runs with one seed give identical results and untimed claims, warm-up and timing passes or not (speed aside)', (t) => {
  const designs = labDesigns().filter((d) => d.name === 'rusty' || d.name === 'naive' || d.name === 'token');
  const opts = { designs, workloads: WORKLOADS, seconds: 0.02, seed: 42, timing: false, probeDraws: 4 };
  const a = runLab({ ...opts, warmup: true, speedPasses: 2 });
  const b = runLab({ ...opts, warmup: false, speedPasses: 1 });
  t.deepEqual(
    a.results.flatMap((r) => r.notes),
    [],
    'the second timing pass reproduced the first',
  );
  const strip = (rows: readonly LabResult[]): unknown[] =>
    rows.map((r) => {
      const o: Record<string, unknown> = { ...r };
      for (const k of SPEED_FIELDS) delete o[k];
      return o;
    });
  t.deepEqual(strip(a.results), strip(b.results));
  t.deepEqual(a.claims, b.claims);
  const c = runLab({ ...opts, seed: 43, warmup: false, speedPasses: 1 });
  t.notDeepEqual(strip(c.results), strip(a.results), 'another seed changes the figures');
});

