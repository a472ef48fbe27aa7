import test from 'ava';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { EXIT_OK, EXIT_USAGE, EXIT_VIOLATIONS, main, parseArgs, USAGE } from '../../tools/fuzz/cli.js';
import { DESIGN_NAMES } from '../../backend/release.js';

const ENTRY = fileURLToPath(new URL('../../tools/fuzz.js', import.meta.url));
const JSON_KEYS = ['design', 'runs', 'steps', 'violations', 'earlyReturns', 'doubleReturns', 'leaks', 'dataMismatches', 'firstFailingSeed'];

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

test('rusty: --json makes the last line one object with exactly the documented keys; exit 0', async (t) => {
  const r = await run(['--runs', '25', '--seed', '1', '--json']);
  t.is(r.code, 0, r.stdout + r.stderr);
  const j = JSON.parse(lastLine(r.stdout)) as Record<string, unknown>;
  t.deepEqual(Object.keys(j), JSON_KEYS);
  t.like(j, { design: 'rusty', runs: 25, violations: 0, earlyReturns: 0, doubleReturns: 0, leaks: 0, dataMismatches: 0, firstFailingSeed: null });
  t.true((j['steps'] as number) >= 25 * 8);
});

test('naive: exit 1, the shrunk sequence and a replay command that reproduces the failing seed', async (t) => {
  const r = await run(['--runs', '40', '--seed', '7', '--design', 'naive', '--json']);
  t.is(r.code, 1);
  const j = JSON.parse(lastLine(r.stdout)) as Record<string, number>;
  t.deepEqual(Object.keys(j), JSON_KEYS);
  t.true(j['violations']! > 0);
  t.true(j['earlyReturns']! > 0);
  const seed = j['firstFailingSeed']!;
  t.true(seed >= 7 && seed < 47);
  t.regex(r.stdout, new RegExp(`^FAIL seed ${seed}: `, 'm'));
  t.regex(r.stdout, /^shrunk to \d+ ops \(\d+ replays\); replayed with a trace:$/m);
  t.regex(r.stdout, /^ {2} {2}1\. build a=\d+ b=\d+ c=\d+ {4}# /m);
  t.regex(r.stdout, new RegExp(`^replay: npm run fuzz -- --seed ${seed} --runs 1 --design naive$`, 'm'));
  const again = await run(['--seed', String(seed), '--runs', '1', '--design', 'naive', '--json']);
  t.is(again.code, 1);
  t.is((JSON.parse(lastLine(again.stdout)) as Record<string, number>)['firstFailingSeed'], seed);
});

test('a usage error exits 2 with an exact message on stderr', async (t) => {
  const r = await run(['--runs', '0']);
  t.is(r.code, 2);
  t.is(r.stdout, '');
  t.is(r.stderr, 'fuzz: --runs must be a positive integer\ntry --help\n');
});

const usageErrors: [string[], string][] = [
  [['--runs', '0'], '--runs must be a positive integer'],
  [['--runs', '1.5'], '--runs must be a positive integer'],
  [['--runs', 'abc'], '--runs must be a positive integer'],
  [['--runs=-3'], '--runs must be a positive integer'],
  [['--runs'], '--runs needs a value'],
  [['--runs', '--json'], '--runs needs a value'],
  [['--seed', '-1'], '--seed must be an integer in [0, 4294967295]'],
  [['--seed', '4294967296'], '--seed must be an integer in [0, 4294967295]'],
  [['--seed'], '--seed needs a value'],
  [['--design', 'bogus'], `--design must be one of ${DESIGN_NAMES.join(', ')} but got "bogus"`],
  [['--design'], '--design needs a value'],
  [['--json=yes'], '--json takes no value'],
  [['--bogus'], 'unknown option: --bogus'],
  [['5'], 'unknown option: 5'],
];

for (const [argv, message] of usageErrors) {
  test(`parseArgs ${JSON.stringify(argv)} → ${message}`, (t) => {
    t.deepEqual(parseArgs(argv), { ok: false, error: message });
  });
}

test('parseArgs: defaults and both --flag value and --flag=value forms', (t) => {
  t.deepEqual(parseArgs([]), { ok: true, value: { runs: 1000, seed: 1, design: 'rusty', json: false, help: false } });
  t.deepEqual(parseArgs(['--runs=20000', '--seed', '4294967295', '--design=naive', '--json']), {
    ok: true,
    value: { runs: 20000, seed: 4294967295, design: 'naive', json: true, help: false },
  });
  t.true(parseArgs(['-h']).ok && (parseArgs(['-h']) as { value: { help: boolean } }).value.help);
});

function fakeIo(stepMs: number): { out: string[]; err: string[]; io: { out(l: string): void; err(l: string): void; now(): number } } {
  const out: string[] = [];
  const err: string[] = [];
  let t = 0;
  return { out, err, io: { out: (l) => out.push(l), err: (l) => err.push(l), now: () => (t += stepMs) } };
}

test('main: --help prints the usage and exits 0; bad flags exit 2 without running', (t) => {
  const h = fakeIo(0);
  t.is(main(['--help'], h.io), EXIT_OK);
  t.deepEqual(h.out, [USAGE]);
  const b = fakeIo(0);
  t.is(main(['--design', 'x'], b.io), EXIT_USAGE);
  t.deepEqual(b.err, [`fuzz: --design must be one of ${DESIGN_NAMES.join(', ')} but got "x"`, 'try --help']);
  t.deepEqual(b.out, []);
});

test('main: progress goes to stderr (at most once a second), the summary to stdout, exit codes 0 and 1', (t) => {
  const ok = fakeIo(400); // the fake clock advances 400 ms per reading
  t.is(main(['--runs', '10', '--seed', '3'], ok.io), EXIT_OK);
  t.true(ok.err.length >= 2);
  for (const l of ok.err) t.regex(l, /^fuzz: \d+\/10 runs \(\d+%\), \d+ steps, 0 violations, \d+\.\d s$/);
  t.regex(ok.err[ok.err.length - 1]!, /^fuzz: 10\/10 runs \(100%\)/);
  t.regex(ok.out[ok.out.length - 1]!, /^violations 0 in 0 runs: early returns 0, double returns 0, leaks 0, data mismatches 0, errors 0$/);
  const quiet = fakeIo(0);
  main(['--runs', '10', '--seed', '3'], quiet.io);
  t.deepEqual(quiet.err, []);
  const bad = fakeIo(0);
  t.is(main(['--runs', '30', '--seed', '1', '--design', 'naive'], bad.io), EXIT_VIOLATIONS);
  t.regex(bad.out.join('\n'), /first failing seed \d+$/);
});
