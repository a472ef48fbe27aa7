// `npm run lab` as a command: the entry point's output (progress, table, JSON last line, files), exit codes and exact
// usage errors. The contract with every design and reproducibility are in lab-contract.test.ts.
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EXIT_OK, EXIT_UNSOUND, EXIT_USAGE, main, markdownPath, parseArgs, usage } from '../../tools/lab/cli.js';
import { labDesigns, type LabDesign } from '../../tools/lab/designs.js';
import type { LabResult } from '../../tools/lab/results.js';
import { WORKLOADS } from '../../tools/lab/workloads.js';

const ENTRY = fileURLToPath(new URL('../../tools/lab.js', import.meta.url));

function run(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [ENTRY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function lastLine(s: string): string {
  const lines = s.trimEnd().split('\n');
  return lines[lines.length - 1]!;
}

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'grantwire-lab-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs main in-process, collecting its output. */
function runMain(argv: readonly string[], designs?: readonly LabDesign[]): { code: number; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  const code = main(argv, { out: (l) => out.push(l), err: (l) => err.push(l) }, { warmup: false, speedPasses: 1, ...(designs !== undefined && { designs }) });
  return { code, out, err };
}

test('the entry point: progress on stderr, the table on stdout, the JSON object as the last line, exit 0', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'sub', 'out.json');
  const r = await run(['--designs', 'rusty,naive', '--workloads', 'tcp-loss,fuzz', '--seconds', '0.02', '--seed', '5', '--json', '--out', file]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /^lab: 2 designs × 2 workloads, 0\.02 virtual s each, seed 5$/m);
  t.regex(r.stderr, /^lab: \[\d\/8\] naive × fuzz: \d+ packets, unsafe \(expected\): /m);
  t.regex(r.stderr, /^lab: \[8\/8\] (rusty|naive) × fuzz: timing pass 2, \d+\.\d\d s$/m);
  t.regex(r.stdout, /^design +workload +safe +early/);
  t.regex(r.stdout, /^naive +fuzz +no /m);
  t.regex(r.stdout, /^ {2}naive × fuzz: seed \d+: .*; shrunk to \d+ ops \[build(, \w+)*\], breaking op: \w+ a=\d+ b=\d+ c=\d+ \(replay: npm run fuzz -- --seed \d+ --runs 1 --design naive\)$/m);
  const j = JSON.parse(lastLine(r.stdout)) as { results: LabResult[]; seed: number };
  t.deepEqual(
    j.results.map((x) => `${x.design}/${x.workload}`),
    ['rusty/tcp-loss', 'rusty/fuzz', 'naive/tcp-loss', 'naive/fuzz'],
  );
  t.is(j.seed, 5);
  t.true(existsSync(file));
  t.false(existsSync(markdownPath(file)), 'no markdown without --md');
});

test('exit 1 when a design meant to be sound is not clean', (t) => {
  const naive = labDesigns().find((d) => d.name === 'naive')!;
  const claimedSound: LabDesign = { ...naive, expectedSound: true };
  const dir = tempDir(t);
  const r = runMain(['--workloads', 'fuzz', '--seconds', '0.05', '--out', join(dir, 'x.json')], [claimedSound]);
  t.is(r.code, EXIT_UNSOUND);
  t.regex(r.out.join('\n'), /^FAIL: 1 runs of designs meant to be sound are not clean$/m);
  t.regex(r.out.join('\n'), /^naive +fuzz +NO /m);
});

const USAGE_ERRORS: [string[], string][] = [
  [['--seconds', '0'], '--seconds must be a number in (0, 600] but got "0"'],
  [['--seconds', '601'], '--seconds must be a number in (0, 600] but got "601"'],
  [['--seconds', '1e3'], '--seconds must be a number in (0, 600] but got "1e3"'],
  [['--seconds'], '--seconds needs a value'],
  [['--seed', '-1'], '--seed must be an integer in [0, 4294967295] but got "-1"'],
  [['--seed', '4294967296'], '--seed must be an integer in [0, 4294967295] but got "4294967296"'],
  [['--seed', 'x'], '--seed must be an integer in [0, 4294967295] but got "x"'],
  [['--designs', 'rusty,nope'], `--designs: unknown "nope"; expected some of ${labDesigns().map((d) => d.name).join(', ')}`],
  [['--designs', 'rusty,,naive'], '--designs has an empty item in "rusty,,naive"'],
  [['--designs', 'rusty,rusty'], '--designs names "rusty" twice'],
  [['--workloads', 'tap,bogus'], `--workloads: unknown "bogus"; expected some of ${WORKLOADS.map((w) => w.name).join(', ')}`],
  [['--workloads'], '--workloads needs a value'],
  [['--out'], '--out needs a file name'],
  [['--json=1'], '--json takes no value'],
  [['--md=yes'], '--md takes no value'],
  [['--bogus'], 'unknown option: --bogus'],
];

test('usage errors: exact messages, nothing on stdout, exit 2', (t) => {
  for (const [argv, message] of USAGE_ERRORS) {
    const p = parseArgs(argv);
    t.deepEqual(p, { ok: false, error: message }, argv.join(' '));
    const r = runMain(argv);
    t.is(r.code, EXIT_USAGE);
    t.deepEqual(r.out, []);
    t.deepEqual(r.err, [`lab: ${message}`, 'try --help']);
  }
});

test('--help prints the usage and exits 0; options parse with = or a separate value', (t) => {
  const r = runMain(['--help']);
  t.is(r.code, EXIT_OK);
  t.deepEqual(r.out, [usage()]);
  const p = parseArgs(['--designs=naive', '--workloads', 'tap', '--seconds=2.5', '--seed', '7', '--json', '--md', '--out', 'x/y.json']);
  t.true(p.ok);
  if (!p.ok) return;
  t.like(p.value, { seconds: 2.5, seed: 7, json: true, md: true, out: 'x/y.json', help: false });
  t.deepEqual(
    p.value.designs.map((d) => d.name),
    ['naive'],
  );
  t.deepEqual(
    p.value.workloads.map((w) => w.name),
    ['tap'],
  );
  t.is(markdownPath('a/b.json'), 'a/b.md');
  t.is(markdownPath('a/b'), 'a/b.md');
});
