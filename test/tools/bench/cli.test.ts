import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BENCH_CHECKS, DEFAULT_SIZES, EXIT_OK, EXIT_USAGE, USAGE, formatResults, main, parseBenchArgs, type BenchIo, type BenchResults } from '../../../tools/bench/cli.js';

test('defaults: 3 s per run, 64 B, 1500 B and the largest tx_request frame', (t) => {
  t.deepEqual(parseBenchArgs([]), { ok: true, value: { seconds: 3, sizes: DEFAULT_SIZES, out: 'bench-results', json: false, help: false } });
  t.deepEqual(DEFAULT_SIZES, [64, 1500, 65535]);
  t.deepEqual(parseBenchArgs(['--seconds=0.5', '--sizes', '1500,64', '--out', 'x', '--json']), {
    ok: true,
    value: { seconds: 0.5, sizes: [1500, 64], out: 'x', json: true, help: false },
  });
});

const bad: [string[], string][] = [
  [['--seconds', '0.4'], '--seconds must be a number in [0.5, 60] but got "0.4"'],
  [['--seconds', '61'], '--seconds must be a number in [0.5, 60] but got "61"'],
  [['--seconds'], '--seconds needs a value'],
  [['--sizes', '64,,1500'], '--sizes must list integers in [50, 65535] but got ""'],
  [['--sizes', '49'], '--sizes must list integers in [50, 65535] but got "49"'],
  [['--sizes', '65536'], '--sizes must list integers in [50, 65535] but got "65536"'],
  [['--sizes='], '--sizes needs a value'],
  [['--out'], '--out needs a directory'],
  [['--json=1'], '--json takes no value'],
  [['--fast'], 'unknown option: --fast'],
];
for (const [argv, message] of bad) {
  test(`refuses ${JSON.stringify(argv)}`, (t) => {
    t.deepEqual(parseBenchArgs(argv), { ok: false, error: message });
  });
}

function io(): BenchIo & { outs: string[]; errs: string[] } {
  const outs: string[] = [];
  const errs: string[] = [];
  return {
    outs,
    errs,
    out: (l) => void outs.push(...l.split('\n')),
    err: (l) => void errs.push(l),
    now: () => performance.now(),
    date: () => new Date('2026-01-02T03:04:05.678Z'),
  };
}

test('usage errors exit 2; --help prints the usage', async (t) => {
  const o = io();
  t.is(await main(['--sizes', 'x'], o), EXIT_USAGE);
  t.deepEqual(o.errs, ['bench: --sizes must list integers in [50, 65535] but got "x"', 'try --help']);
  const h = io();
  t.is(await main(['--help'], h), EXIT_OK);
  t.is(h.outs.join('\n'), USAGE);
});

test('one small run: every measurement, ratios from the same run, the results file and a dated copy', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'grantwire-bench-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const o = io();
  t.is(await main(['--sizes', '1500', '--seconds', '0.5', '--out', dir, '--json'], o), EXIT_OK, o.errs.join('\n'));
  t.deepEqual(readdirSync(dir).sort(), ['2026-01-02T03-04-05Z.json', 'latest.json']);
  const r = JSON.parse(readFileSync(join(dir, 'latest.json'), 'utf8')) as BenchResults;
  t.deepEqual(JSON.parse(o.outs[o.outs.length - 1]!), r);
  t.is(r.date, '2026-01-02T03:04:05.678Z');
  t.true(r.machine.cores >= 1 && r.machine.node.startsWith('v'));
  const s = r.sizes[0]!;
  t.is(s.size, 1500);
  for (const x of [s.zeroCopy, s.grantCopy, s.postMessageTransfer, s.postMessageCopy]) {
    t.true(x.pps.windows >= 3 && x.pps.p10 > 0 && x.pps.p10 <= x.pps.p50 && x.pps.p50 <= x.pps.p90);
    t.true(Math.abs(x.gbytesPerSec.p50 - (x.pps.p50 * 1500) / 1e9) < 1e-9);
  }
  t.true(Math.abs(s.ratios.zeroCopyOverGrantCopy.mid - s.zeroCopy.pps.p50 / s.grantCopy.pps.p50) < 1e-9);
  t.true(s.cpu.zeroCopy.guestNs > 0 && s.cpu.zeroCopy.backendNs > 0 && s.cpu.grantCopy.backendNs > 0);
  t.true(Math.abs(s.cpu.backendCopyOverMap - s.cpu.grantCopy.backendNs / s.cpu.zeroCopy.backendNs) < 1e-9);
  const table = formatResults(r);
  t.true(table.some((l) => l.startsWith('  1500 B ')));
  t.is(table[table.length - 1], BENCH_CHECKS, 'the table says which checks were off');
  t.true(o.outs.includes(`results: ${join(dir, 'latest.json')}, ${join(dir, '2026-01-02T03-04-05Z.json')}`));
  t.true(existsSync(join(dir, 'latest.json')));
});
