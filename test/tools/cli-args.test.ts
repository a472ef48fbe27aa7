import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import {
  commandLine,
  DECIMAL,
  enumFlag,
  EXIT_OK,
  EXIT_USAGE,
  formatInterval,
  integerFlag,
  integerListFlag,
  numberFlag,
  parseFlags,
  seedFlag,
  selectionFlag,
  stringFlag,
  switchFlag,
  type Flag,
} from '../../tools/cli-args.js';
import { err, ok, type Result } from '../../shared/result.js';

const KNOWN = ['alpha', 'beta', 'gamma'];
const SPEC = {
  n: integerFlag(1, 64),
  runs: integerFlag(1, Number.MAX_SAFE_INTEGER, '--runs must be a positive integer'),
  seed: seedFlag,
  secs: numberFlag({ min: 0, minOpen: true, max: 3600 }),
  loss: numberFlag({ min: 0, max: 1, maxOpen: true }),
  half: numberFlag({ min: 0.5, max: 60 }),
  strict: numberFlag({ min: 0, minOpen: true, max: 600 }, /^[0-9]*\.?[0-9]+$/),
  file: stringFlag('a file name'),
  one: enumFlag(KNOWN, (s) => (KNOWN.includes(s) ? s : undefined)),
  sizes: integerListFlag(50, 65535),
  pick: selectionFlag(KNOWN, (s) => s),
  json: switchFlag,
};
const NONE = { n: null, runs: null, seed: null, secs: null, loss: null, half: null, strict: null, file: null, one: null, sizes: null, pick: null, json: null };

// The flags given (as `--name`: value) and help, or the exact error.
function parse(argv: readonly string[]): Result<unknown> {
  const r = parseFlags(argv, SPEC, NONE);
  if (!r.ok) return r;
  const given: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(r.value)) if (v !== null && k !== 'help') given[`--${k}`] = v;
  return ok({ ...given, help: r.value.help });
}

// Each row: the command line, and the exact message (or the values) parseFlags gives.
const CASES: ReadonlyArray<readonly [readonly string[], Result<unknown>]> = [
  [[], ok({ help: false })],
  [['--n', '7'], ok({ '--n': 7, help: false })],
  [['--n=7'], ok({ '--n': 7, help: false })],
  [['--n', '007'], ok({ '--n': 7, help: false })],
  [['--n', '1', '--n', '64'], ok({ '--n': 64, help: false })],
  [['--n'], err('--n needs a value')],
  [['--n', '--json'], err('--n needs a value')],
  [['--n='], err('--n must be an integer in [1, 64] but got ""')],
  [['--n', '0'], err('--n must be an integer in [1, 64] but got "0"')],
  [['--n', '65'], err('--n must be an integer in [1, 64] but got "65"')],
  [['--n', '-1'], err('--n must be an integer in [1, 64] but got "-1"')],
  [['--n', '1.0'], err('--n must be an integer in [1, 64] but got "1.0"')],
  [['--n', ' 5'], err('--n must be an integer in [1, 64] but got " 5"')],
  [['--runs', '0'], err('--runs must be a positive integer')],
  [['--runs', '9007199254740991'], ok({ '--runs': 9007199254740991, help: false })],
  [['--runs', '9007199254740992'], err('--runs must be a positive integer')],
  [['--seed', '0'], ok({ '--seed': 0, help: false })],
  [['--seed', '4294967295'], ok({ '--seed': 4294967295, help: false })],
  [['--seed', '4294967296'], err('--seed must be an integer in [0, 4294967295] but got "4294967296"')],
  [['--seed', '0x10'], err('--seed must be an integer in [0, 4294967295] but got "0x10"')],
  [['--secs', '2.5'], ok({ '--secs': 2.5, help: false })],
  [['--secs', '5.'], ok({ '--secs': 5, help: false })],
  [['--secs', '.5'], ok({ '--secs': 0.5, help: false })],
  [['--secs', '3600'], ok({ '--secs': 3600, help: false })],
  [['--secs', '0'], err('--secs must be a number in (0, 3600] but got "0"')],
  [['--secs', '3600.1'], err('--secs must be a number in (0, 3600] but got "3600.1"')],
  [['--secs', '1e3'], err('--secs must be a number in (0, 3600] but got "1e3"')],
  [['--secs', '.'], err('--secs must be a number in (0, 3600] but got "."')],
  [['--secs='], err('--secs must be a number in (0, 3600] but got ""')],
  [['--secs'], err('--secs needs a value')],
  [['--loss', '0'], ok({ '--loss': 0, help: false })],
  [['--loss', '1'], err('--loss must be a number in [0, 1) but got "1"')],
  [['--half', '0.5'], ok({ '--half': 0.5, help: false })],
  [['--half', '0.49'], err('--half must be a number in [0.5, 60] but got "0.49"')],
  [['--half', '60.5'], err('--half must be a number in [0.5, 60] but got "60.5"')],
  [['--strict', '.5'], ok({ '--strict': 0.5, help: false })],
  [['--strict', '5.'], err('--strict must be a number in (0, 600] but got "5."')],
  [['--file', 'x.pcap'], ok({ '--file': 'x.pcap', help: false })],
  [['--file', '-h'], ok({ '--file': '-h', help: false })],
  [['--file'], err('--file needs a file name')],
  [['--file='], err('--file needs a file name')],
  [['--file', ''], err('--file needs a file name')],
  [['--one', 'beta'], ok({ '--one': 'beta', help: false })],
  [['--one', 'delta'], err('--one must be one of alpha, beta, gamma but got "delta"')],
  [['--one'], err('--one needs a value')],
  [['--sizes', '64,1500'], ok({ '--sizes': [64, 1500], help: false })],
  [['--sizes='], err('--sizes needs a value')],
  [['--sizes'], err('--sizes needs a value')],
  [['--sizes', '64,49'], err('--sizes must list integers in [50, 65535] but got "49"')],
  [['--sizes', '64,'], err('--sizes must list integers in [50, 65535] but got ""')],
  [['--sizes', '65536'], err('--sizes must list integers in [50, 65535] but got "65536"')],
  [['--pick', 'gamma,alpha'], ok({ '--pick': ['gamma', 'alpha'], help: false })],
  [['--pick'], err('--pick needs a value')],
  [['--pick='], err('--pick has an empty item in ""')],
  [['--pick', 'alpha,,beta'], err('--pick has an empty item in "alpha,,beta"')],
  [['--pick', 'alpha,delta'], err('--pick: unknown "delta"; expected some of alpha, beta, gamma')],
  [['--pick', 'beta,beta'], err('--pick names "beta" twice')],
  [['--json'], ok({ '--json': true, help: false })],
  [['--json', '7'], err('unknown option: 7')],
  [['--json=1'], err('--json takes no value')],
  [['--json='], err('--json takes no value')],
  [['--help'], ok({ help: true })],
  [['-h'], ok({ help: true })],
  [['--help=yes'], ok({ help: true })],
  [['-h=yes'], err('unknown option: -h=yes')],
  [['--help', '--fast'], err('unknown option: --fast')],
  [['--fast=1'], err('unknown option: --fast=1')],
  [['stray'], err('unknown option: stray')],
  [['toString'], err('unknown option: toString')],
  [['__proto__'], err('unknown option: __proto__')],
  [['--__proto__'], err('unknown option: --__proto__')],
  [['--toString=1'], err('unknown option: --toString=1')],
  [['n', '5'], err('unknown option: n')],
  [['-xn', '5'], err('unknown option: -xn')],
  [['--', 'x'], err('unknown option: --')],
  [['--n', '3', '--n', '99'], err('--n must be an integer in [1, 64] but got "99"')],
];

for (const [argv, expected] of CASES) {
  test(`parseFlags ${JSON.stringify(argv)}`, (t) => {
    t.deepEqual(parse(argv), expected);
  });
}

test('the first bad argument is the one reported', (t) => {
  t.deepEqual(parse(['--bogus', '--n', '0']), err('unknown option: --bogus'));
  t.deepEqual(parse(['--n', '0', '--bogus']), err('--n must be an integer in [1, 64] but got "0"'));
});

test('defaults stand for flags not given; the last occurrence wins', (t) => {
  const spec = { n: integerFlag(1, 64), json: switchFlag, file: stringFlag('a file name') };
  t.deepEqual(parseFlags([], spec, { n: 4, json: false, file: null }), ok({ n: 4, json: false, file: null, help: false }));
  t.deepEqual(parseFlags(['--n', '5', '--file=a', '--n=6'], spec, { n: 4, json: false, file: null }), ok({ n: 6, json: false, file: 'a', help: false }));
});

test('formatInterval marks open ends', (t) => {
  t.is(formatInterval({ min: 0, max: 1 }), '[0, 1]');
  t.is(formatInterval({ min: 0, minOpen: true, max: 1 }), '(0, 1]');
  t.is(formatInterval({ min: 0, max: 1, maxOpen: true }), '[0, 1)');
});

testProp('an integer in range reads back the same, as `--f v` and as `--f=v`', [fc.integer({ min: 0, max: 0xffffffff })], (t, n) => {
  const flag: Flag<number> = integerFlag(0, 0xffffffff);
  t.deepEqual(parseFlags(['--f', String(n)], { f: flag }, { f: -1 }), ok({ f: n, help: false }));
  t.deepEqual(parseFlags([`--f=${n}`], { f: flag }, { f: -1 }), ok({ f: n, help: false }));
});

testProp('integerFlag accepts exactly the digit strings in [min, max]', [fc.integer({ min: 0, max: 100 }), fc.integer({ min: 0, max: 100 }), fc.string()], (t, a, b, v) => {
  const [min, max] = a <= b ? [a, b] : [b, a];
  const r = integerFlag(min, max).read('--f', v);
  const good = /^[0-9]+$/.test(v) && Number(v) >= min && Number(v) <= max;
  t.deepEqual(r, good ? ok(Number(v)) : err(`--f must be an integer in [${min}, ${max}] but got "${v}"`));
});

testProp('numberFlag: a DECIMAL string is accepted exactly when its value lies inside the interval', [fc.double({ min: 0, max: 10, noNaN: true }), fc.boolean(), fc.boolean()], (t, x, minOpen, maxOpen) => {
  const v = String(x);
  fc.pre(DECIMAL.test(v));
  const range = { min: 2, max: 8, minOpen, maxOpen };
  const inside = (minOpen ? x > 2 : x >= 2) && (maxOpen ? x < 8 : x <= 8);
  t.deepEqual(numberFlag(range).read('--f', v), inside ? ok(x) : err(`--f must be a number in ${formatInterval(range)} but got "${v}"`));
});

function recorder(): { io: { out(l: string): void; err(l: string): void }; out: string[]; errs: string[] } {
  const out: string[] = [];
  const errs: string[] = [];
  return { io: { out: (l) => out.push(l), err: (l) => errs.push(l) }, out, errs };
}

test('commandLine: a bad command line prints `tool: message` and `try --help` on stderr and exits 2', (t) => {
  const r = recorder();
  t.deepEqual(commandLine('tool', err('--n needs a value'), 'USAGE', r.io), { exit: EXIT_USAGE });
  t.is(EXIT_USAGE, 2);
  t.deepEqual(r.errs, ['tool: --n needs a value', 'try --help']);
  t.deepEqual(r.out, []);
});

test('commandLine: --help prints the usage on stdout and exits 0', (t) => {
  const r = recorder();
  t.deepEqual(commandLine('tool', ok({ help: true }), 'USAGE', r.io), { exit: EXIT_OK });
  t.is(EXIT_OK, 0);
  t.deepEqual(r.out, ['USAGE']);
  t.deepEqual(r.errs, []);
});

test('commandLine: otherwise the arguments go through and nothing is printed', (t) => {
  const r = recorder();
  const args = { help: false, n: 3 };
  t.deepEqual(commandLine('tool', ok(args), 'USAGE', r.io), { args });
  t.deepEqual(r.out, []);
  t.deepEqual(r.errs, []);
});
